-- OPT1 settle, run by stage4_change once the deploy or the revert has committed, outside any
-- transaction block. The cutover retired the old table, whole, and the RPCs returning its rows
-- (stage4.swap_shadow()): a call that had resolved them before queueing behind the cutover
-- completes with them, and the table's files are not removed at the cutover's COMMIT, under its
-- lock. They are dropped here, once every transaction that began before this statement has
-- ended, or after stage4.settle_wait_seconds (default 30) anyway.
SELECT set_config('lock_timeout', coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'), true),
       stage4.drop_retired(coalesce(nullif(current_setting('stage4.settle_wait_seconds', true), ''), '30')::double precision);
