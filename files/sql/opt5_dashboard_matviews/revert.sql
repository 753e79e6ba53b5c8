-- OPT5 revert: the refresh jobs unscheduled, the dashboard functions it served back to their captured
-- definitions, owners, grants and comments (stage4.function_snapshots; through stage4_change,
-- prepare_revert.sql did it already, committed, and this does it again), then the views, the
-- materialized views and both schemas dropped. No CASCADE: anything else that came to depend on
-- them makes the revert fail and roll back. The pg_cron extension and server settings stay (the
-- stage4_pg_cron role owns them; other jobs may use them).
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '5min';
SET LOCAL search_path = pg_catalog, pg_temp;

-- Jobs of this change only (also the one of OPT3's view, which OPT5 scheduled: OPT3 applied without
-- OPT5 goes stale, hence the warning); a refresh running right now holds its view's lock and makes
-- the DROPs below wait at most lock_timeout (retried).
DO $$
DECLARE
    job text;
BEGIN
    IF to_regclass('cron.job') IS NOT NULL THEN
        FOR job IN
            SELECT c.jobname FROM cron.job c
            WHERE c.username = current_user
              AND c.jobname IN ('stage4_refresh_resumo_categoria_ano', 'stage4_refresh_extensao_categoria',
                                'stage4_refresh_geometrias_busca')
        LOOP
            PERFORM cron.unschedule(job);
        END LOOP;
    END IF;
    IF to_regclass('stage4_search.geometrias_busca') IS NOT NULL THEN
        RAISE WARNING 'OPT5 revert: OPT3''s stage4_search.geometrias_busca stays, but nothing refreshes it any more: '
                      'search results stay as of its last refresh. Revert opt3 too, or re-apply opt5.';
    END IF;
END $$;

SELECT stage4.forget_read_policies('opt5_dashboard_matviews');

DO $$
DECLARE
    restored int := stage4.restore_function_snapshots('opt5_dashboard_matviews');
BEGIN
    IF restored < 1 THEN
        RAISE EXCEPTION 'OPT5 revert: no snapshot of the functions it served';
    END IF;
END $$;
-- OPT5's own definitions, saved by prepare_revert.sql for cleanup.sql: no longer needed.
SELECT stage4.forget_applied_functions('opt5_dashboard_matviews');

DROP FUNCTION stage4_dashboard_api.papel_exato();
-- Each exists only when a served function read it.
DROP VIEW IF EXISTS stage4_dashboard_api.resumo_categoria_ano, stage4_dashboard_api.extensao_categoria;
DROP SCHEMA stage4_dashboard_api;
DROP FUNCTION stage4_dashboard.refresh_jobs();
DROP MATERIALIZED VIEW IF EXISTS stage4_dashboard.resumo_categoria_ano, stage4_dashboard.extensao_categoria;
DROP SCHEMA stage4_dashboard;

-- PostgREST reloads its schema cache at the commit (stage4.notify_api_changed()).
SELECT stage4.notify_api_changed();
