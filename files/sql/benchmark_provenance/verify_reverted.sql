-- Verify the revert of stage4:benchmark_provenance
--
-- Fails (raises) while any column of deploy.sql is still there, or when the
-- tables of benchmark_schema are gone with them.

SET lock_timeout = '5s';

SELECT run_id, stage FROM stage4_benchmark.runs WHERE false;
SELECT run_id, stage, query_id FROM stage4_benchmark.query_results WHERE false;

DO $$
DECLARE
    left_over text;
BEGIN
    SELECT string_agg(format('%s.%s', c.table_name, c.column_name), ', ' ORDER BY c.table_name, c.column_name)
      INTO left_over
    FROM information_schema.columns AS c
    WHERE c.table_schema = 'stage4_benchmark'
      AND (c.table_name, c.column_name) IN (
          ('runs', 'prepared'), ('runs', 'execution_order'), ('runs', 'seed'),
          ('runs', 'throughput_seconds'), ('runs', 'ci_level'), ('runs', 'stats_source'),
          ('runs', 'provenance'), ('query_results', 'qps'), ('query_results', 'throughput_executions'),
          ('query_results', 'ci'), ('query_results', 'queryid'), ('query_results', 'statements'),
          ('query_results', 'plan'));
    IF left_over IS NOT NULL THEN
        RAISE EXCEPTION 'benchmark_provenance: still deployed (%)', left_over;
    END IF;
END
$$;
