-- OPT2 cleanup: removes what prepare.sql left (capture triggers on the closed partitions, their
-- shadows, the logs of written keys) when the deploy failed or OPT2 is reverted before it was
-- applied. The partitions and their rows are untouched. Dropping a trigger waits for its lock
-- within stage4.lock_timeout.
SELECT set_config('lock_timeout', coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'), true);
SELECT stage4.abort_online_rebuild(pt.relid)
FROM pg_partition_tree('public.geometrias') pt
WHERE pt.isleaf AND pt.relid <> 'public.geometrias'::regclass;
