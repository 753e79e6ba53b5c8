-- OPT3 verify after revert: the functions are again exactly what OPT3 captured, nothing of OPT3 is left.
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
DECLARE
    snap record;
    f oid;
    checked int := 0;
BEGIN
    FOR snap IN SELECT * FROM stage4.function_snapshots WHERE change = 'opt3_search_matview' LOOP
        f := to_regprocedure(snap.function);
        IF f IS NULL OR pg_get_functiondef(f) IS DISTINCT FROM snap.definition THEN
            RAISE EXCEPTION 'OPT3 revert: % differs from its captured definition', snap.function;
        END IF;
        IF (SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE oid = f) IS DISTINCT FROM snap.owner
           OR obj_description(f, 'pg_proc') IS DISTINCT FROM snap.comment
           OR (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
               FROM pg_proc p, stage4.grant_statements(coalesce(p.proacl, acldefault('f', p.proowner)),
                                                       format('FUNCTION %s', p.oid::regprocedure)) WITH ORDINALITY g(stmt, n)
               WHERE p.oid = f) IS DISTINCT FROM snap.acl THEN
            RAISE EXCEPTION 'OPT3 revert: owner, grants or comment of % differ from the captured ones', snap.function;
        END IF;
        checked := checked + 1;
    END LOOP;
    IF EXISTS (SELECT 1 FROM stage4.function_snapshots WHERE change = 'opt3_search_matview:applied') THEN
        RAISE EXCEPTION 'OPT3 revert: the definitions prepare_revert.sql saved are left in stage4.function_snapshots';
    END IF;
    IF checked <> 2 THEN
        RAISE EXCEPTION 'OPT3 revert: % captured functions, expected search_geometrias() and geometrias_no_raio()', checked;
    END IF;
    IF EXISTS (SELECT 1 FROM stage4.accepted_read_policies WHERE change = 'opt3_search_matview') THEN
        RAISE EXCEPTION 'OPT3 revert: its accepted read policies are left in stage4.accepted_read_policies';
    END IF;
    IF to_regnamespace('stage4_search') IS NOT NULL OR to_regnamespace('stage4_search_api') IS NOT NULL THEN
        RAISE EXCEPTION 'OPT3 revert: schema stage4_search or stage4_search_api is left behind';
    END IF;
    PERFORM stage4.assert_api_answers();
END $$;
