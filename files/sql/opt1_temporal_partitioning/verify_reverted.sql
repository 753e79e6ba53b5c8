-- OPT1 verify after revert: a plain table again, structure as before OPT1, rows as before the revert.
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
    PERFORM stage4.assert_api_answers();
END $$;
