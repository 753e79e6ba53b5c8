-- OPT4 revert: unschedules the daily job, drops every partition OPT4 created (by deploy or by a
-- later call, as listed in stage4.opt4_created_partitions) and puts their rows back into the
-- DEFAULT partition, so nothing is lost and OPT1's layout is what remains; then drops the
-- functions and the config tables. The rows are kept as they are now (including any written
-- since deploy): verify_reverted compares with them. Only the rows the revert moves are
-- checksummed (those dated from OPT4's first partition on, few: they are in the future), with the
-- table's row count: the other partitions are not touched, and checksumming their million rows
-- before and after kept the application waiting 35 s under this lock (rollback under load at
-- 1,000,000 features, run 20261127T130439Z).
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '30min';

DO $$
DECLARE
    geometrias regclass := 'public.geometrias';
    job text := coalesce((SELECT job_name FROM stage4.partition_policy WHERE relation = 'public.geometrias'),
                         'stage4_ensure_future_partitions');
    default_part regclass;
    r record;
    moved bigint;
    moved_rows text;
BEGIN
    -- Locked first, so that the rows verify_reverted compares with are those the revert moves.
    EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', geometrias);
    SELECT format('t.data_referencia >= %L', coalesce(min(rg.lower_bound), 'infinity')) INTO moved_rows
    FROM stage4.opt4_created_partitions l
    JOIN stage4.opt4_partition_ranges(geometrias) rg ON rg.partition = to_regclass(l.relation);
    PERFORM stage4.save_proven_snapshot('opt4_future_partitions:before_revert', geometrias,
        stage4.rows_checksum(geometrias, moved_rows) || jsonb_build_object('condition', moved_rows));

    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        EXECUTE 'SELECT cron.unschedule(jobid) FROM cron.job WHERE jobname = $1' USING job;
    END IF;

    SELECT partition INTO default_part FROM stage4.opt4_partition_ranges(geometrias) WHERE is_default;
    IF default_part IS NOT NULL THEN
        EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', default_part);
    END IF;

    FOR r IN
        SELECT l.relation, rg.partition, rg.lower_bound, rg.upper_bound
        FROM stage4.opt4_created_partitions l
        JOIN stage4.opt4_partition_ranges(geometrias) rg ON rg.partition = to_regclass(l.relation)
        ORDER BY l.year DESC
    LOOP
        -- Detached first: DEFAULT may then take its rows (without firing the application's triggers).
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', geometrias, r.partition);
        moved := stage4.opt4_move_rows(geometrias, r.partition, default_part, 'data_referencia', r.lower_bound,
                                       r.upper_bound, false);
        EXECUTE format('DROP TABLE %s', r.partition);
        RAISE NOTICE 'OPT4 revert: dropped %, % row(s) put back into %', r.relation, moved, coalesce(default_part::text, '-');
    END LOOP;
END $$;

DROP FUNCTION stage4.schedule_future_partitions();
DROP FUNCTION stage4.ensure_future_partitions(date, int);
DROP FUNCTION stage4.opt4_move_rows(regclass, regclass, regclass, text, date, date, boolean);
DROP FUNCTION stage4.opt4_column_list(regclass);
DROP FUNCTION stage4.opt4_partition_ranges(regclass);
DROP TABLE stage4.opt4_created_partitions;
DROP TABLE stage4.partition_policy;

-- PostgREST reloads its schema cache at the commit (stage4.notify_api_changed()).
SELECT stage4.notify_api_changed();
