-- OPT4 verify: every year through the target has its partition, every partition carries every
-- index of the parent and is secured, the job is scheduled exactly when pg_cron is installed,
-- nothing was lost, the API answers. (Calling the function for a later date is tested
-- elsewhere: here it would create partitions a verify must not create.)
DO $$
DECLARE
    geometrias regclass := 'public.geometrias';
    policy stage4.partition_policy%ROWTYPE;
    now_ date := coalesce(nullif(current_setting('stage4.now', true), '')::date, current_date);
    through_year int;
    missing text;
    bad text;
    parent_indexes int;
    job_count int;
BEGIN
    SELECT * INTO policy FROM stage4.partition_policy WHERE relation = 'public.geometrias';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'OPT4: no partition policy for public.geometrias';
    END IF;
    IF to_regprocedure('stage4.ensure_future_partitions(date, integer)') IS NULL THEN
        RAISE EXCEPTION 'OPT4: stage4.ensure_future_partitions(date, integer) is missing';
    END IF;
    through_year := greatest(policy.min_through_year, extract(year FROM now_)::int + policy.years_ahead);

    SELECT string_agg(y::text, ', ') INTO missing
    FROM generate_series(policy.min_through_year, through_year) y
    WHERE NOT EXISTS (SELECT 1 FROM stage4.opt4_partition_ranges(geometrias) r
                      WHERE r.lower_bound = make_date(y, 1, 1) AND r.upper_bound = make_date(y + 1, 1, 1));
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'OPT4: no partition for the year(s) % (target: through %)', missing, through_year;
    END IF;
    SELECT string_agg(l.relation, ', ') INTO missing
    FROM stage4.opt4_created_partitions l
    WHERE NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhparent = geometrias AND i.inhrelid = to_regclass(l.relation));
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'OPT4: recorded partitions that are not partitions of public.geometrias: %', missing;
    END IF;

    -- Every partition has its own valid index for each of the parent's (partitioned) indexes.
    SELECT count(*) INTO parent_indexes FROM pg_index WHERE indrelid = geometrias;
    SELECT string_agg(format('%s (%s of %s indexes)', pt.relid::regclass, n.attached, parent_indexes), ', ') INTO bad
    FROM pg_partition_tree(geometrias) pt
    CROSS JOIN LATERAL (
        SELECT count(*) AS attached
        FROM pg_index pi
        JOIN pg_inherits ii ON ii.inhparent = pi.indexrelid
        JOIN pg_index ci ON ci.indexrelid = ii.inhrelid AND ci.indrelid = pt.relid AND ci.indisvalid
        WHERE pi.indrelid = geometrias) n
    WHERE pt.isleaf AND n.attached <> parent_indexes;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'OPT4: partitions without all of the parent''s indexes: %', bad;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        EXECUTE 'SELECT count(*) FROM cron.job WHERE jobname = $1 AND schedule = $2 AND command = $3 AND active'
            INTO job_count USING policy.job_name, policy.schedule, 'SELECT stage4.ensure_future_partitions()';
        IF job_count <> 1 OR NOT policy.scheduled THEN
            RAISE EXCEPTION 'OPT4: pg_cron is installed but the job % is not scheduled (% jobs, policy says %)',
                policy.job_name, job_count, policy.scheduled;
        END IF;
    ELSIF policy.scheduled THEN
        RAISE EXCEPTION 'OPT4: the policy says scheduled, but pg_cron is not installed';
    END IF;

    PERFORM stage4.assert_table_preserved(geometrias, stage4.snapshot('opt4_future_partitions', 'public.geometrias'), false);
    PERFORM stage4.assert_partitions_secured(geometrias);
    PERFORM stage4.assert_api_answers(p_under_lock => true);  -- planned only: nothing of the API runs under the lock
END $$;
