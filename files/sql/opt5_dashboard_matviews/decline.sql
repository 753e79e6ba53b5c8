-- OPT5 decline. A table too small to pay (stage4.small_table: below stage4.min_table_bytes, by
-- default the server's min_parallel_table_scan_size) is aggregated at each call in less time than
-- the materialized groups are read, and those would lag up to a refresh behind: OPT5 waits until the
-- table has grown. Otherwise OPT5 serves each dashboard RPC it recognises
-- (stage4.dashboard_rpc_mismatch: the reference aggregates, in any spelling) from its materialized
-- aggregates and leaves the others as they are; when it recognises none, it declines, saying why
-- for each.
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT stage4.use_postgis_search_path();
-- Each reason is computed once (reading an RPC parses it several times).
SELECT small || ': aggregating a table this small at each call costs less than reading materialized groups, '
                'which would lag up to a refresh behind. OPT5 applies once the table reaches that size'
FROM (SELECT stage4.small_table('public.geometrias') AS small) AS s
WHERE to_regclass('public.geometrias') IS NOT NULL AND small IS NOT NULL
UNION ALL
SELECT 'OPT5 serves none of the dashboard RPCs: ' || string_agg(format('%s: %s', f, m.why), '; ' ORDER BY f)
FROM unnest(ARRAY['public.area_por_categoria(integer)', 'public.extensao_por_categoria()', 'public.resumo_anual()']) AS f,
     LATERAL (SELECT stage4.dashboard_rpc_mismatch(f) AS why) AS m
WHERE to_regclass('public.geometrias') IS NOT NULL
HAVING bool_and(m.why IS NOT NULL)
LIMIT 1;
