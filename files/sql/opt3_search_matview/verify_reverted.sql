-- OPT3 verify after revert: the functions are again exactly what OPT3 captured, nothing of OPT3 is left.
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
DECLARE
    snap stage4.function_snapshots%ROWTYPE;
    mismatch text;
    checked int := 0;
BEGIN
    FOR snap IN SELECT * FROM stage4.function_snapshots WHERE change = 'opt3_search_matview' LOOP
        mismatch := stage4.function_snapshot_mismatch(snap);
        IF mismatch IS NOT NULL THEN
            RAISE EXCEPTION 'OPT3 revert: % differs from the captured one (%)', snap.function, mismatch;
        END IF;
        checked := checked + 1;
    END LOOP;
    IF EXISTS (SELECT 1 FROM stage4.function_snapshots WHERE change = 'opt3_search_matview:applied') THEN
        RAISE EXCEPTION 'OPT3 revert: the definitions prepare_revert.sql saved are left in stage4.function_snapshots';
    END IF;
    IF checked < 1 THEN
        RAISE EXCEPTION 'OPT3 revert: % captured functions, expected search_geometrias() (and geometrias_no_raio() when OPT3 rewrote it)', checked;
    END IF;
    IF EXISTS (SELECT 1 FROM stage4.accepted_read_policies WHERE change = 'opt3_search_matview') THEN
        RAISE EXCEPTION 'OPT3 revert: its accepted read policies are left in stage4.accepted_read_policies';
    END IF;
    IF to_regnamespace('stage4_search') IS NOT NULL OR to_regnamespace('stage4_search_api') IS NOT NULL THEN
        RAISE EXCEPTION 'OPT3 revert: schema stage4_search or stage4_search_api is left behind';
    END IF;
    PERFORM stage4.assert_api_answers();
END $$;
