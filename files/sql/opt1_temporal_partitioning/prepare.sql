-- OPT1 prepare, run by stage4_change before the deploy transaction and outside any transaction
-- block: builds the partitioned table as a shadow and copies the rows into it in short batches
-- while a trigger logs the keys the application writes meanwhile (see stage4.prepare_online_rebuild).
-- Only the trigger's creation waits for a lock, within stage4.lock_timeout (default 2s). Safe to
-- run again after an interruption: it resumes where it stopped.
-- One DO statement: a multi-statement string would run as one transaction, which cannot COMMIT.
DO $$
BEGIN
    CALL stage4.prepare_online_rebuild(
        'public.geometrias',
        stage4.yearly_layout('public.geometrias', 'data_referencia',
                             coalesce(nullif(current_setting('stage4.partition_through_year', true), ''), '2028')::int),
        coalesce(nullif(current_setting('stage4.batch_rows', true), ''), '10000')::int,
        coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'));
END $$;
