-- OPT2 prepare, run by stage4_change before the deploy transaction and outside any transaction
-- block (portable path only). Each closed partition is rebuilt online, one after the other, as
-- OPT1 rebuilds the table (stage4.prepare_online_rebuild): a shadow with geom's TOAST setting is
-- filled in short batches while a trigger logs the keys the application writes, its stale values
-- are rewritten, it is ordered by its GiST index (CLUSTER of the shadow, which nobody reads), its
-- indexes are built, the logged writes replayed and the shadow proven equal to the partition.
-- The deploy then only swaps each shadow in (the old partition dropped, the shadow attached; no
-- row copied) under a short lock, instead of rewriting the partitions under ACCESS EXCLUSIVE on
-- the whole table.
-- Only the capture triggers' creation waits for a lock, within stage4.lock_timeout (default 2s).
-- Safe to run again after an interruption: every partition resumes where it stopped.
DO $$
DECLARE
    choice jsonb := stage4.storage_choice(coalesce(nullif(current_setting('stage4.storage_path', true), ''), 'auto'),
                                          coalesce(nullif(current_setting('stage4.toast_mode', true), ''), 'auto'));
    year_start date := date_trunc('year', coalesce(nullif(current_setting('stage4.now', true), '')::date, current_date))::date;
    closed_partitions regclass[];
    partition regclass;
BEGIN
    IF choice->>'path' <> 'portable' THEN
        RETURN;  -- SET ACCESS METHOD rewrites in the deploy: there is nothing to copy ahead
    END IF;
    closed_partitions := ARRAY(SELECT rel FROM stage4.leaf_partitions('public.geometrias', year_start) WHERE closed);
    FOREACH partition IN ARRAY closed_partitions LOOP
        CALL stage4.prepare_online_rebuild(
            partition,
            stage4.clustered_layout(partition, 'geom', choice->>'toast'),
            coalesce(nullif(current_setting('stage4.batch_rows', true), ''), '10000')::int,
            coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'));
    END LOOP;
END $$;
