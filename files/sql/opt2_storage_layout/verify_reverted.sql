-- OPT2 verify after revert: the record is gone, every relation that existed before OPT2 has the
-- access method, geom compression, geom storage and clustered index it had then, the table's
-- structure is as before OPT2 and its rows as before the revert.
DO $$
DECLARE
    parent regclass := 'public.geometrias';
    before jsonb := stage4.snapshot('opt2_storage_layout:layout', 'public.geometrias');
    now_ jsonb;
    differ text;
BEGIN
    IF to_regclass('stage4.opt2_layout') IS NOT NULL THEN
        RAISE EXCEPTION 'OPT2 revert: stage4.opt2_layout is still there';
    END IF;
    now_ := stage4.storage_layout(parent, 'geom');
    SELECT string_agg(format('%s: now %s, was %s', b.key, now_->b.key, b.value), '; ') INTO differ
    FROM jsonb_each(before) b
    WHERE now_ ? b.key AND now_->b.key IS DISTINCT FROM b.value;
    IF differ IS NOT NULL THEN
        RAISE EXCEPTION 'OPT2 revert: storage layout differs from before OPT2: %', differ;
    END IF;
    PERFORM stage4.assert_table_preserved(parent, stage4.snapshot('opt2_storage_layout', 'public.geometrias'), false,
                                          stage4.snapshot('opt2_storage_layout:before_revert', 'public.geometrias'));
    PERFORM stage4.assert_partitions_secured(parent);
    PERFORM stage4.assert_api_answers(p_under_lock => true);  -- planned only: nothing of the API runs under the lock
END $$;
