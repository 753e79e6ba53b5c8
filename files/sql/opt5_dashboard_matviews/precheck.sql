-- OPT5 precheck: refuses, before anything changes, a database where materialized aggregates could
-- not reproduce what the dashboard functions return to each caller today, or where pg_cron could
-- not refresh them.
--
-- OPT1 and OPT3 are not required. When OPT3's view stage4_search.geometrias_busca exists, OPT5
-- schedules its refresh too (so list opt3 before opt5).
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
DECLARE
    t regclass := to_regclass('public.geometrias');
    missing text;
    schedule text := coalesce(nullif(current_setting('stage4.refresh_schedule', true), ''), '*/15 * * * *');
BEGIN
    -- pg_cron: installed here, loaded, and running its jobs in this database.
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron') THEN
        RAISE EXCEPTION 'OPT5: the pg_cron extension is not installed in database %: give opt5 server_role: stage4_pg_cron (it loads and creates pg_cron), or on Supabase enable pg_cron in the dashboard (Database > Extensions)',
            current_database();
    END IF;
    IF NOT ('pg_cron' = ANY (string_to_array(replace(replace(current_setting('shared_preload_libraries'), ' ', ''), '"', ''), ','))) THEN
        RAISE EXCEPTION 'OPT5: pg_cron is installed but not in shared_preload_libraries (%): its jobs would never run; restart PostgreSQL with pg_cron preloaded (role stage4_pg_cron)',
            current_setting('shared_preload_libraries');
    END IF;
    IF current_setting('cron.database_name', true) IS DISTINCT FROM current_database() THEN
        RAISE EXCEPTION 'OPT5: cron.database_name is %, the jobs must run in %', current_setting('cron.database_name', true), current_database();
    END IF;
    IF array_length(regexp_split_to_array(btrim(schedule), '\s+'), 1) <> 5 THEN
        RAISE EXCEPTION 'OPT5: stage4.refresh_schedule "%" is not a 5-field cron schedule (minute hour day-of-month month day-of-week), the only form pg_cron 1.4 accepts',
            schedule;
    END IF;

    IF t IS NULL THEN
        RAISE EXCEPTION 'OPT5: table public.geometrias does not exist';
    END IF;
    SELECT string_agg(col, ', ') INTO missing
    FROM unnest(ARRAY['categoria', 'area_m2', 'data_referencia', 'geom', 'publico', 'owner_id']) col
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = t AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'OPT5: public.geometrias lacks the columns %', missing;
    END IF;

    -- A materialized aggregate cannot evaluate policies it does not know: the read policies must be
    -- exactly the known ones (the toolkit's, shared with OPT3), or the functions would return other
    -- numbers than today.
    PERFORM stage4.assert_known_read_policies('OPT5');

    -- Which dashboard functions OPT5 serves, and why not the others, is decline.sql's and
    -- deploy.sql's (stage4.dashboard_rpc_mismatch).

    PERFORM stage4.assert_can_materialize('OPT5');
    IF to_regnamespace('stage4_dashboard') IS NOT NULL OR to_regnamespace('stage4_dashboard_api') IS NOT NULL THEN
        RAISE EXCEPTION 'OPT5: schema stage4_dashboard or stage4_dashboard_api already exists, but the ledger does not say OPT5 created it';
    END IF;
END $$;
