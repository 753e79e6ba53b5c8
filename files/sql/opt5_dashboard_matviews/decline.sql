-- OPT5 decline: OPT5 serves each dashboard RPC it recognises (stage4.dashboard_rpc_mismatch: the
-- reference aggregates, in any spelling) from its materialized aggregates and leaves the others as
-- they are. When it recognises none, it declines, saying why for each.
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT stage4.use_postgis_search_path();
SELECT 'OPT5 serves none of the dashboard RPCs: '
       || string_agg(format('%s: %s', f, stage4.dashboard_rpc_mismatch(f)), '; ' ORDER BY f)
FROM unnest(ARRAY['public.area_por_categoria(integer)', 'public.extensao_por_categoria()', 'public.resumo_anual()']) AS f
WHERE to_regclass('public.geometrias') IS NOT NULL
HAVING bool_and(stage4.dashboard_rpc_mismatch(f) IS NOT NULL);
