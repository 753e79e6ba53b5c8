-- Revert stage4:benchmark_provenance
--
-- Drops the columns deploy.sql added, with what they hold; the runs and their
-- latency statistics (benchmark_schema) stay.

SET lock_timeout = '5s';

ALTER TABLE stage4_benchmark.query_results
    DROP COLUMN IF EXISTS plan,
    DROP COLUMN IF EXISTS statements,
    DROP COLUMN IF EXISTS queryid,
    DROP COLUMN IF EXISTS ci,
    DROP COLUMN IF EXISTS throughput_executions,
    DROP COLUMN IF EXISTS qps;

ALTER TABLE stage4_benchmark.runs
    DROP COLUMN IF EXISTS provenance,
    DROP COLUMN IF EXISTS stats_source,
    DROP COLUMN IF EXISTS ci_level,
    DROP COLUMN IF EXISTS throughput_seconds,
    DROP COLUMN IF EXISTS seed,
    DROP COLUMN IF EXISTS execution_order,
    DROP COLUMN IF EXISTS prepared;
