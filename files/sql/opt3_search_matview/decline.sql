-- OPT3 decline. OPT3 rewrites two RPCs from what it reads in their own queries:
-- * public.search_geometrias() (stage4.search_rpc_shape: one text match of the table's rows, an
--   optional bounding box, a rank, a limit, in any spelling) is served from an indexed materialized
--   view, unless the table is too small for that to pay (stage4.small_table: a scan of it costs less
--   than the helper's lookups, and the view would lag up to a refresh behind);
-- * public.geometrias_no_raio() (stage4.radius_rpc_shape: ST_DWithin on geography of a point) gets a
--   bounding-box prefilter and a planar shortcut, at any size (it reads nothing but the table).
-- OPT3 declines when neither applies, saying why for each. A missing table is precheck.sql's refusal.
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT stage4.use_postgis_search_path();
SELECT format('OPT3 rewrites none of its RPCs: public.search_geometrias(): %s; public.geometrias_no_raio(): %s',
              coalesce(search.why, 'recognised'), coalesce(radius.why, 'recognised'))
FROM (SELECT CASE WHEN to_regprocedure('public.search_geometrias(text, geometry, integer)') IS NULL THEN 'it does not exist'
                  ELSE coalesce(stage4.small_table('public.geometrias') || ': the search view would not pay',
                                'not a text search OPT3 can serve from a materialized view: '
                                || (stage4.search_rpc_shape('public.search_geometrias(text, geometry, integer)',
                                                            'public.geometrias') ->> 'reason'))
             END AS why) AS search,
     (SELECT CASE WHEN p.oid IS NULL THEN 'it does not exist'
                  WHEN p.prosecdef THEN 'it is SECURITY DEFINER'
                  WHEN NOT pg_has_role(p.proowner, 'USAGE') THEN format('%s does not own it', current_user)
                  ELSE 'not a radius search OPT3 can rewrite: '
                       || (stage4.radius_rpc_shape(p.oid::regprocedure, 'public.geometrias') ->> 'reason')
             END AS why
      FROM (SELECT to_regprocedure('public.geometrias_no_raio(double precision, double precision, double precision)') AS f) AS x
      LEFT JOIN pg_proc AS p ON p.oid = x.f) AS radius
WHERE to_regclass('public.geometrias') IS NOT NULL AND search.why IS NOT NULL AND radius.why IS NOT NULL;
