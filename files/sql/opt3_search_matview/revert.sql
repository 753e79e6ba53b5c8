-- OPT3 revert: public.search_geometrias() and (when OPT3 rewrote it) public.geometrias_no_raio() back to their captured
-- definitions, owners, grants and comments (stage4.function_snapshots; through stage4_change,
-- prepare_revert.sql did it already, committed, and this does it again), its accepted read policies forgotten, then the helpers, the
-- materialized view and both schemas dropped. No CASCADE: anything else that came to depend on
-- them makes the revert fail and roll back instead of vanishing silently (OPT5's refresh job of
-- the view is removed by OPT5's revert, which the ledger runs first).
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '5min';
SET LOCAL search_path = pg_catalog, pg_temp;
-- PostGIS's names unqualified, wherever it is installed (extensions on Supabase, often public).
SELECT stage4.use_postgis_search_path();

DO $$
BEGIN
    IF stage4.restore_function_snapshots('opt3_search_matview') < 1 THEN
        RAISE EXCEPTION 'OPT3 revert: no snapshot of the functions it rewrote';
    END IF;
END $$;
-- OPT3's own definitions, saved by prepare_revert.sql for cleanup.sql: no longer needed.
SELECT stage4.forget_applied_functions('opt3_search_matview');

SELECT stage4.forget_read_policies('opt3_search_matview');

-- The search's objects exist only when OPT3 served the search.
DROP FUNCTION IF EXISTS stage4_search_api.papel_exato();
DROP FUNCTION IF EXISTS stage4_search_api.candidatos(tsquery, geometry, bigint);
DROP SCHEMA IF EXISTS stage4_search_api;
DROP MATERIALIZED VIEW IF EXISTS stage4_search.geometrias_busca;
DROP TABLE stage4_search.formas;
DROP SCHEMA stage4_search;

-- PostgREST reloads its schema cache at the commit (stage4.notify_api_changed()).
SELECT stage4.notify_api_changed();
