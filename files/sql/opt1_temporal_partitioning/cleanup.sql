-- OPT1 cleanup: removes what prepare.sql or prepare_revert.sql left (the trigger on
-- public.geometrias, the shadow table and its partitions, the log of written keys) when the
-- deploy or the revert failed, when OPT1 is reverted before it was applied, or when it stays
-- applied after an interrupted revert. The table and its rows are untouched. Dropping the trigger
-- waits for its lock within stage4.lock_timeout.
SELECT set_config('lock_timeout', coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'), true);
SELECT stage4.abort_online_rebuild('public.geometrias');
