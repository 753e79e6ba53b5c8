-- OPT2 settle, run by stage4_change once the deploy has committed, outside any transaction block.
-- The cutover retired the closed partitions it replaced, detached but whole (stage4.swap_shadow()):
-- dropping them there would have removed their files at its COMMIT, with ACCESS EXCLUSIVE on
-- public.geometrias still held. They are dropped here, once every transaction that began before
-- this statement has ended, or after stage4.settle_wait_seconds (default 30) anyway. A revert
-- retires nothing ("nothing retired").
SELECT stage4.settle_retired();
