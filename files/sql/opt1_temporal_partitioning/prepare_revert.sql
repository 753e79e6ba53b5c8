-- OPT1 prepare for the revert, run by stage4_change before the revert transaction and outside any
-- transaction block: the same online copy as prepare.sql, the other way. A plain table with the
-- primary key and storage parameters public.geometrias had before OPT1 (its snapshot) is filled in
-- short batches while a trigger logs the keys the application writes meanwhile; revert.sql then
-- replays only those under its lock. Only the trigger's creation waits for a lock, within
-- stage4.lock_timeout (default 2s). Safe to run again after an interruption: it resumes.
DO $$
BEGIN
    CALL stage4.prepare_online_rebuild(
        'public.geometrias',
        stage4.layout_in_snapshot('opt1_temporal_partitioning', 'public.geometrias'),
        coalesce(nullif(current_setting('stage4.batch_rows', true), ''), '10000')::int,
        coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'));
END $$;
