-- OPT1 settle, run by stage4_change once the deploy or the revert has committed, outside any
-- transaction block. The cutover retired the old table, whole, and the RPCs returning its rows
-- (stage4.swap_shadow()): a call that had resolved them before queueing behind the cutover
-- completes with them, and the table's files are not removed at the cutover's COMMIT, under its
-- lock. They are dropped here, once every transaction that began before this statement has
-- ended, or after stage4.settle_wait_seconds (default 30) anyway.
SELECT stage4.settle_retired();
