-- OPT3 decline: OPT3 serves public.search_geometrias() from an indexed materialized view built from
-- what it reads in the function's own query (stage4.search_rpc_shape: one text match of the table's
-- rows, an optional bounding box, a rank, a limit, in any spelling). A search written otherwise is
-- left as it is, and OPT3 with it, saying what does not fit. A missing function is precheck.sql's
-- refusal, not a decline.
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT stage4.use_postgis_search_path();
SELECT 'public.search_geometrias() is not a text search OPT3 can serve from a materialized view: '
       || (stage4.search_rpc_shape(f, 'public.geometrias') ->> 'reason')
FROM (SELECT to_regprocedure('public.search_geometrias(text, geometry, integer)') AS f) AS x
WHERE f IS NOT NULL AND to_regclass('public.geometrias') IS NOT NULL
  AND stage4.search_rpc_shape(f, 'public.geometrias') ? 'reason';
