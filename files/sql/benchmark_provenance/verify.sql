-- Verify stage4:benchmark_provenance
--
-- Fails (raises) unless every column of deploy.sql exists with its type.

SET lock_timeout = '5s';

SELECT prepared, execution_order, seed, throughput_seconds, ci_level, stats_source, provenance
FROM stage4_benchmark.runs
WHERE false;

SELECT qps, throughput_executions, ci, queryid, statements, plan
FROM stage4_benchmark.query_results
WHERE false;

DO $$
DECLARE
    wrong text;
BEGIN
    SELECT string_agg(format('%s.%s is %s, not %s', w.table_name, w.column_name,
                             coalesce(c.data_type, 'missing'), w.data_type), '; ')
      INTO wrong
    FROM (VALUES ('runs', 'prepared', 'boolean'),
                 ('runs', 'execution_order', 'text'),
                 ('runs', 'seed', 'bigint'),
                 ('runs', 'throughput_seconds', 'double precision'),
                 ('runs', 'ci_level', 'double precision'),
                 ('runs', 'stats_source', 'text'),
                 ('runs', 'provenance', 'jsonb'),
                 ('query_results', 'qps', 'double precision'),
                 ('query_results', 'throughput_executions', 'bigint'),
                 ('query_results', 'ci', 'jsonb'),
                 ('query_results', 'queryid', 'bigint'),
                 ('query_results', 'statements', 'jsonb'),
                 ('query_results', 'plan', 'jsonb')) AS w(table_name, column_name, data_type)
    LEFT JOIN information_schema.columns AS c
      ON c.table_schema = 'stage4_benchmark' AND c.table_name = w.table_name AND c.column_name = w.column_name
    WHERE c.data_type IS DISTINCT FROM w.data_type;
    IF wrong IS NOT NULL THEN
        RAISE EXCEPTION 'stage4_benchmark: %', wrong;
    END IF;
END
$$;
