-- OPT1 verify after revert: a plain table again, structure as before OPT1, rows as before the revert,
-- the radius RPC and the database settings as before OPT1.
-- pg_get_functiondef() qualifies names by the search_path: the one the snapshots were taken with.
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass) <> 'r' THEN
        RAISE EXCEPTION 'OPT1 revert: public.geometrias is still partitioned';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_class WHERE relname ~ '^geometrias_(p[0-9]{4}|default)$'
                                        AND relnamespace = 'public'::regnamespace) THEN
        RAISE EXCEPTION 'OPT1 revert: partitions are left behind';
    END IF;
    PERFORM stage4.assert_table_preserved('public.geometrias',
                                          stage4.snapshot('opt1_temporal_partitioning', 'public.geometrias'), false,
                                          stage4.snapshot('opt1_temporal_partitioning:before_revert', 'public.geometrias'));
    IF EXISTS (SELECT 1 FROM stage4.function_snapshots s
               WHERE s.change = 'opt1_temporal_partitioning'
                 AND pg_get_functiondef(s.function::regprocedure) IS DISTINCT FROM s.definition) THEN
        RAISE EXCEPTION 'OPT1 revert: an RPC differs from its definition before OPT1';
    END IF;
    IF EXISTS (SELECT 1 FROM stage4.publication_settings WHERE change = 'opt1_temporal_partitioning') THEN
        RAISE EXCEPTION 'OPT1 revert: publication settings not restored';
    END IF;
    IF EXISTS (SELECT 1 FROM stage4.database_settings WHERE change = 'opt1_temporal_partitioning') THEN
        RAISE EXCEPTION 'OPT1 revert: database settings not restored';
    END IF;
    PERFORM stage4.assert_api_answers(p_under_lock => true);  -- planned only: nothing of the API runs under the lock
END $$;
