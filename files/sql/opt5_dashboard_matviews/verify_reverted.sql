-- OPT5 verify after revert: the functions it served are again exactly what OPT5 captured, no refresh
-- job and nothing else of OPT5 is left.
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
DECLARE
    snap stage4.function_snapshots%ROWTYPE;
    mismatch text;
BEGIN
    IF (SELECT count(*) FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews') < 1 THEN
        RAISE EXCEPTION 'OPT5 revert: no snapshot of the functions it served';
    END IF;
    IF EXISTS (SELECT 1 FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews:applied') THEN
        RAISE EXCEPTION 'OPT5 revert: the definitions prepare_revert.sql saved are left in stage4.function_snapshots';
    END IF;
    FOR snap IN SELECT * FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews' LOOP
        mismatch := stage4.function_snapshot_mismatch(snap);
        IF mismatch IS NOT NULL THEN
            RAISE EXCEPTION 'OPT5 revert: % differs from the captured one (%)', snap.function, mismatch;
        END IF;
    END LOOP;
    IF to_regclass('cron.job') IS NOT NULL
       AND EXISTS (SELECT 1 FROM cron.job
                   WHERE jobname IN ('stage4_refresh_resumo_categoria_ano', 'stage4_refresh_extensao_categoria',
                                     'stage4_refresh_geometrias_busca')) THEN
        RAISE EXCEPTION 'OPT5 revert: refresh jobs are left in cron.job';
    END IF;
    IF EXISTS (SELECT 1 FROM stage4.accepted_read_policies WHERE change = 'opt5_dashboard_matviews') THEN
        RAISE EXCEPTION 'OPT5 revert: its accepted read policies are left in stage4.accepted_read_policies';
    END IF;
    IF to_regnamespace('stage4_dashboard') IS NOT NULL OR to_regnamespace('stage4_dashboard_api') IS NOT NULL THEN
        RAISE EXCEPTION 'OPT5 revert: schema stage4_dashboard or stage4_dashboard_api is left behind';
    END IF;
    PERFORM stage4.assert_api_answers();
END $$;
