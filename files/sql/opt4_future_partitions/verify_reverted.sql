-- OPT4 verify after revert: the functions, the job and the config are gone, no partition beyond
-- those that existed before OPT4 remains, the structure is as before OPT4 and the rows as before
-- the revert: their count, and the rows it moved (those of the dropped partitions, in DEFAULT
-- now) by their checksum.
DO $$
DECLARE
    geometrias regclass := 'public.geometrias';
    snap jsonb := stage4.snapshot('opt4_future_partitions', 'public.geometrias');
    left_over text;
BEGIN
    SELECT string_agg(f, ', ') INTO left_over
    FROM unnest(ARRAY['stage4.ensure_future_partitions(date, integer)', 'stage4.schedule_future_partitions()',
                      'stage4.opt4_partition_ranges(regclass)', 'stage4.opt4_column_list(regclass)',
                      'stage4.opt4_move_rows(regclass, regclass, regclass, text, date, date, boolean)']) f
    WHERE to_regprocedure(f) IS NOT NULL;
    IF left_over IS NOT NULL OR to_regclass('stage4.partition_policy') IS NOT NULL
       OR to_regclass('stage4.opt4_created_partitions') IS NOT NULL THEN
        RAISE EXCEPTION 'OPT4 revert: left behind: %', concat_ws(', ', left_over,
            CASE WHEN to_regclass('stage4.partition_policy') IS NOT NULL THEN 'stage4.partition_policy' END,
            CASE WHEN to_regclass('stage4.opt4_created_partitions') IS NOT NULL THEN 'stage4.opt4_created_partitions' END);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        EXECUTE 'SELECT string_agg(jobname, '', '') FROM cron.job WHERE jobname = ''stage4_ensure_future_partitions'''
            INTO left_over;
        IF left_over IS NOT NULL THEN
            RAISE EXCEPTION 'OPT4 revert: the pg_cron job is still scheduled: %', left_over;
        END IF;
    END IF;
    SELECT string_agg(c.relname, ', ') INTO left_over
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = geometrias
      AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(snap->'partitions') p WHERE p->>'name' = c.relname);
    IF left_over IS NOT NULL THEN
        RAISE EXCEPTION 'OPT4 revert: partitions that did not exist before OPT4 remain: %', left_over;
    END IF;
    -- The moved rows' proof (revert.sql) is checksummed again there.
    PERFORM stage4.assert_table_preserved(geometrias, snap, false,
                                          stage4.snapshot('opt4_future_partitions:before_revert', 'public.geometrias'));
    PERFORM stage4.assert_partitions_secured(geometrias);
    PERFORM stage4.assert_api_answers(p_under_lock => true);  -- planned only: nothing of the API runs under the lock
END $$;
