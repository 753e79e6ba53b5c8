-- Deploy stage4:benchmark_schema
--
-- Storage for the GIS benchmark (library/gis_benchmark.py): one row per
-- (run_id, stage) in runs, one row per query of that run in query_results,
-- and the catalog of the query texts in queries. The rollout gates read the
-- two views. The schema is internal: it is kept out of reach of the API roles.
--
-- The caller runs this file in a single transaction.

SET lock_timeout = '5s';

CREATE SCHEMA IF NOT EXISTS stage4_benchmark;
COMMENT ON SCHEMA stage4_benchmark IS
    'GIS benchmark results of the stage4 rollout (internal, not exposed to the API).';

CREATE TABLE IF NOT EXISTS stage4_benchmark.runs (
    run_id          text             NOT NULL,
    stage           text             NOT NULL,
    started_at      timestamptz      NOT NULL,
    finished_at     timestamptz      NOT NULL,
    iterations      integer          NOT NULL CHECK (iterations >= 1),
    warmup          integer          NOT NULL CHECK (warmup >= 0),
    concurrency     integer          NOT NULL CHECK (concurrency >= 1),
    executions      integer          NOT NULL CHECK (executions >= 0),
    duration_s      double precision NOT NULL,
    qps             double precision,
    mean_ms         double precision,
    -- NULL when the run touched no shared block at all.
    cache_hit_ratio double precision CHECK (cache_hit_ratio BETWEEN 0 AND 1),
    blks_hit        bigint,
    blks_read       bigint,
    server_version  text,
    as_role         text,
    PRIMARY KEY (run_id, stage),
    CHECK (finished_at >= started_at)
);
COMMENT ON TABLE stage4_benchmark.runs IS
    'One benchmark run of the query set at one rollout stage; cache figures are pg_stat_database deltas.';

CREATE TABLE IF NOT EXISTS stage4_benchmark.query_results (
    run_id      text             NOT NULL,
    stage       text             NOT NULL,
    query_id    text             NOT NULL,
    sql_sha256  text             NOT NULL,
    calls       integer          NOT NULL,
    result_rows bigint           NOT NULL,
    mean_ms     double precision NOT NULL,
    p50_ms      double precision NOT NULL,
    p95_ms      double precision NOT NULL,
    p99_ms      double precision NOT NULL,
    min_ms      double precision NOT NULL,
    max_ms      double precision NOT NULL,
    stddev_ms   double precision NOT NULL,
    -- sha256 of the sorted result rows: equal fingerprints mean equal results.
    fingerprint text             NOT NULL,
    shared_hit  bigint,
    shared_read bigint,
    samples_ms  double precision[] NOT NULL,
    PRIMARY KEY (run_id, stage, query_id),
    FOREIGN KEY (run_id, stage) REFERENCES stage4_benchmark.runs (run_id, stage) ON DELETE CASCADE
);
COMMENT ON TABLE stage4_benchmark.query_results IS
    'Latency statistics (ms), result fingerprint and EXPLAIN buffer counts of one query in one run.';

CREATE TABLE IF NOT EXISTS stage4_benchmark.queries (
    query_id   text        PRIMARY KEY,
    sql_sha256 text        NOT NULL,
    sql_text   text        NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL
);
COMMENT ON TABLE stage4_benchmark.queries IS
    'Catalog of the benchmark query texts, by query id (the file stem); holds the latest text.';

-- The most recent run of each stage (ties broken by run_id, so the view is deterministic).
CREATE OR REPLACE VIEW stage4_benchmark.latest_per_stage AS
SELECT r.stage,
       r.run_id,
       r.started_at,
       q.query_id,
       q.sql_sha256,
       q.calls,
       q.result_rows,
       q.mean_ms,
       q.p50_ms,
       q.p95_ms,
       q.p99_ms,
       q.min_ms,
       q.max_ms,
       q.stddev_ms,
       q.fingerprint,
       q.shared_hit,
       q.shared_read
FROM (SELECT DISTINCT ON (stage) run_id, stage, started_at
      FROM stage4_benchmark.runs
      ORDER BY stage, started_at DESC, run_id DESC) AS r
JOIN stage4_benchmark.query_results AS q USING (run_id, stage);

-- Every non-baseline stage of a run against the 'baseline' stage of the same
-- run_id. A query without a baseline row has no row here, so a gate that
-- expects one row per query notices a missing baseline.
CREATE OR REPLACE VIEW stage4_benchmark.delta_vs_baseline AS
SELECT s.run_id,
       s.stage,
       s.query_id,
       b.p50_ms                                              AS baseline_p50_ms,
       b.mean_ms                                             AS baseline_mean_ms,
       s.p50_ms,
       s.mean_ms,
       s.p50_ms - b.p50_ms                                   AS delta_p50_ms,
       s.mean_ms - b.mean_ms                                 AS delta_mean_ms,
       100.0 * (s.p50_ms - b.p50_ms) / NULLIF(b.p50_ms, 0)   AS delta_p50_pct,
       100.0 * (s.mean_ms - b.mean_ms) / NULLIF(b.mean_ms, 0) AS delta_mean_pct,
       s.fingerprint IS DISTINCT FROM b.fingerprint          AS fingerprint_changed
FROM stage4_benchmark.query_results AS s
JOIN stage4_benchmark.query_results AS b
  ON b.run_id = s.run_id
 AND b.stage = 'baseline'
 AND b.query_id = s.query_id
WHERE s.stage <> 'baseline';

-- Not for the API: no access for PUBLIC nor for the Supabase API roles, which
-- may also hold default privileges on new tables.
REVOKE ALL ON SCHEMA stage4_benchmark FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA stage4_benchmark FROM PUBLIC;
DO $$
DECLARE
    api_role text;
BEGIN
    FOR api_role IN
        SELECT rolname FROM pg_catalog.pg_roles WHERE rolname IN ('anon', 'authenticated')
    LOOP
        EXECUTE format('REVOKE ALL ON SCHEMA stage4_benchmark FROM %I', api_role);
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA stage4_benchmark FROM %I', api_role);
    END LOOP;
END
$$;
