-- OPT5 verify after revert: the three functions are again exactly what OPT5 captured, no refresh
-- job and nothing else of OPT5 is left.
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
DECLARE
    snap record;
    f pg_proc%ROWTYPE;
BEGIN
    IF (SELECT count(*) FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews') <> 3 THEN
        RAISE EXCEPTION 'OPT5 revert: expected snapshots of three functions';
    END IF;
    IF EXISTS (SELECT 1 FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews:applied') THEN
        RAISE EXCEPTION 'OPT5 revert: the definitions prepare_revert.sql saved are left in stage4.function_snapshots';
    END IF;
    FOR snap IN SELECT * FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews' LOOP
        SELECT * INTO f FROM pg_proc WHERE oid = snap.function::regprocedure;
        IF pg_get_functiondef(f.oid) IS DISTINCT FROM snap.definition THEN
            RAISE EXCEPTION 'OPT5 revert: % differs from its captured definition', snap.function;
        END IF;
        IF pg_get_userbyid(f.proowner) IS DISTINCT FROM snap.owner
           OR obj_description(f.oid, 'pg_proc') IS DISTINCT FROM snap.comment
           OR (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
               FROM stage4.grant_statements(coalesce(f.proacl, acldefault('f', f.proowner)),
                                            format('FUNCTION %s', f.oid::regprocedure)) WITH ORDINALITY g(stmt, n))
              IS DISTINCT FROM snap.acl THEN
            RAISE EXCEPTION 'OPT5 revert: owner, grants or comment of % differ from the captured ones', snap.function;
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
