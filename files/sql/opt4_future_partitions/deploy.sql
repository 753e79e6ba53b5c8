-- OPT4 automatic creation of future partitions: OPT1 created yearly partitions of
-- public.geometrias through 2028; rows of a later year would pile up in the DEFAULT partition,
-- where pruning cannot separate them and from which no partition for their year can be created
-- while they are there. This change keeps a partition for every year through
-- max(2029, current year + years_ahead), years_ahead = stage4.partition_years_ahead (default 2),
-- and does it again every day.
--
-- stage4.ensure_future_partitions(p_now date DEFAULT current_date, p_years_ahead int DEFAULT NULL)
--   creates each missing year with stage4.create_secured_partition() (RLS enabled, no grants
--   to anon/authenticated; the parent's partitioned indexes give it every index). If the DEFAULT
--   partition already holds rows of that year, PostgreSQL refuses the new partition, so in the
--   same transaction DEFAULT is detached, the partition created, and the rows moved from one to
--   the other while both are detached (stage4.opt4_move_rows()): a detached partition has none
--   of the parent's triggers, so the application's row triggers (audit, webhooks, Realtime, a
--   BEFORE INSERT that rewrites the row) do not fire for a move that changes nothing; ids are
--   kept (OVERRIDING SYSTEM VALUE) and a content checksum of the moved rows is compared. Returns the
--   partitions it created; a second call creates nothing. p_now makes it testable in any year:
--   SELECT stage4.ensure_future_partitions('2033-06-01') keeps 2029..2035. It must run as the
--   table's owner (as deploy and the scheduled job do); it is not SECURITY DEFINER. When the
--   caller set no lock_timeout it waits at most 5 s for its locks (then fails; the next daily
--   run tries again, years ahead of need).
--
-- Scheduling: if the pg_cron extension is installed in this database, a daily job
-- 'stage4_ensure_future_partitions' ('17 3 * * *') calls it; cron.schedule with a job name
-- replaces a job of that name. Without pg_cron (Supabase offers it, but it may not be enabled;
-- OPT5 installs and loads it) the deploy does not fail: it says so in a NOTICE and records
-- scheduled = false in stage4.partition_policy; SELECT stage4.schedule_future_partitions()
-- schedules the job once pg_cron is there.
--
-- pg_partman is not used, even where it is installed: Supabase may not offer it, and pg_partman
-- 4.7's create_parent() names partitions <table>_p<YYYY> with its own time formats, keeps its own
-- template table and config, and expects to own the partition set, which would have to take over
-- OPT1's layout (secured partitions, DEFAULT). A 100-line function with the same conventions as
-- OPT1 is simpler to review and to revert. A NOTICE says so when pg_partman is detected.
--
-- What this change created is listed in stage4.opt4_created_partitions (by deploy and by every
-- later call), so revert.sql drops exactly those, putting their rows back into DEFAULT.
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '5min';

-- The rows verify.sql compares the table with are counted under the lock that
-- ensure_future_partitions() takes anyway (a new partition is always missing right after OPT1):
-- taken later, the application's writes in between would count as rows gained. No checksum of
-- every row (seconds per million rows, under this lock): creating a partition rewrites no row
-- but those it moves out of DEFAULT, whose checksum ensure_future_partitions() compares.
-- In a DO block: the Supabase CLI (2.117.0) sends a migration as a pipeline without BEGIN, where a
-- top-level LOCK TABLE is refused (25P01); the block runs in the same transaction either way.
DO $$ BEGIN LOCK TABLE ONLY public.geometrias IN ACCESS EXCLUSIVE MODE; END $$;
SELECT stage4.save_proven_snapshot('opt4_future_partitions', 'public.geometrias', jsonb_build_object(
           'rows', 'only the rows moved out of the DEFAULT partition are rewritten; ensure_future_partitions() compares their checksum'))
       IS NOT NULL AS snapshot_saved;

CREATE TABLE stage4.partition_policy (
    relation         text        PRIMARY KEY,
    years_ahead      int         NOT NULL CHECK (years_ahead BETWEEN 0 AND 99),
    min_through_year int         NOT NULL DEFAULT 2029,
    job_name         text        NOT NULL DEFAULT 'stage4_ensure_future_partitions',
    schedule         text        NOT NULL DEFAULT '17 3 * * *',
    scheduled        boolean     NOT NULL DEFAULT false,
    note             text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE stage4.partition_policy IS
    'OPT4: yearly partitions are kept through max(min_through_year, current year + years_ahead); '
    'scheduled says whether the pg_cron job job_name runs stage4.ensure_future_partitions().';

CREATE TABLE stage4.opt4_created_partitions (
    relation   text        PRIMARY KEY,
    parent     text        NOT NULL,
    year       int         NOT NULL,
    rows_moved bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text        NOT NULL DEFAULT current_user
);
COMMENT ON TABLE stage4.opt4_created_partitions IS
    'OPT4: partitions created by stage4.ensure_future_partitions() (revert drops exactly these), '
    'with the rows moved into them from the DEFAULT partition.';

-- Range partitions of p_parent with their bounds (MINVALUE/MAXVALUE as -infinity/infinity).
CREATE OR REPLACE FUNCTION stage4.opt4_partition_ranges(p_parent regclass)
RETURNS TABLE (partition regclass, lower_bound date, upper_bound date, is_default boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid::regclass,
           CASE WHEN m[1] = 'MINVALUE' THEN '-infinity'::date ELSE btrim(m[1], '''')::date END,
           CASE WHEN m[2] = 'MAXVALUE' THEN 'infinity'::date ELSE btrim(m[2], '''')::date END,
           b = 'DEFAULT'
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL pg_get_expr(c.relpartbound, c.oid) b
    CROSS JOIN LATERAL regexp_match(b, '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') m
    WHERE i.inhparent = p_parent
$$;

-- The insertable columns of p_table, quoted, in order (generated columns are recomputed).
CREATE OR REPLACE FUNCTION stage4.opt4_column_list(p_table regclass)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum)
    FROM pg_attribute
    WHERE attrelid = p_table AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
$$;

-- Moves the rows of partition p_source with p_key in [p_from, p_to) into partition p_target, both
-- of p_parent (whose ACCESS EXCLUSIVE lock the caller holds), without firing the application's
-- row triggers (audit rows, webhooks, Realtime events, a BEFORE INSERT that rewrites the row): both
-- are detached for the move, which takes away the triggers they have from the parent, and attached
-- again with their bounds (p_source only with p_reattach_source). Raises unless p_target then holds
-- exactly the rows taken out (count and content). Returns how many moved.
CREATE OR REPLACE FUNCTION stage4.opt4_move_rows(p_parent regclass, p_source regclass, p_target regclass, p_key text,
                                                 p_from date, p_to date, p_reattach_source boolean)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols text := stage4.opt4_column_list(p_parent);
    in_range text := format('%I >= %L AND %I < %L', p_key, p_from, p_key, p_to);
    source_bound text := (SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = p_source AND relispartition);
    target_bound text := (SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE oid = p_target AND relispartition);
    taken jsonb;
    found jsonb;
    moved bigint;
BEGIN
    IF p_target IS NULL THEN
        RAISE EXCEPTION 'stage4: cannot move the rows of % from % to %: no partition takes them (no DEFAULT partition?)',
            p_source, p_from, p_to;
    END IF;
    taken := stage4.rows_checksum(p_source, in_range);
    IF (taken->>'row_count')::bigint = 0 THEN
        RETURN 0;
    END IF;
    IF source_bound IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', p_parent, p_source);
    END IF;
    IF target_bound IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', p_parent, p_target);
    END IF;
    EXECUTE format('WITH gone AS (DELETE FROM %1$s WHERE %2$s RETURNING %3$s) '
                   'INSERT INTO %4$s (%3$s) OVERRIDING SYSTEM VALUE SELECT %3$s FROM gone', p_source, in_range, cols, p_target);
    GET DIAGNOSTICS moved = ROW_COUNT;
    found := stage4.rows_checksum(p_target, in_range);
    IF found IS DISTINCT FROM taken THEN
        RAISE EXCEPTION 'stage4: rows moved into % differ from the rows taken out of %: % rows (checksum %), expected % (%)',
            p_target, p_source, found->>'row_count', found->>'checksum', taken->>'row_count', taken->>'checksum';
    END IF;
    -- A DEFAULT partition is attached last: its rows are checked against every other bound.
    IF target_bound IS NOT NULL AND target_bound <> 'DEFAULT' THEN
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s %s', p_parent, p_target, target_bound);
    END IF;
    IF source_bound IS NOT NULL AND p_reattach_source THEN
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s %s', p_parent, p_source, source_bound);
    END IF;
    IF target_bound = 'DEFAULT' THEN
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s DEFAULT', p_parent, p_target);
    END IF;
    RETURN moved;
END $$;

CREATE OR REPLACE FUNCTION stage4.ensure_future_partitions(p_now date DEFAULT current_date, p_years_ahead int DEFAULT NULL)
RETURNS text[] LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    parent regclass := to_regclass('public.geometrias');
    parent_schema text;
    parent_table text;
    key text;
    policy stage4.partition_policy%ROWTYPE;
    years_ahead int;
    through_year int;
    first_year int;
    lo date;
    hi date;
    overlapping text;
    part_name text;
    default_part regclass;
    new_part regclass;
    moved bigint;
    default_rows boolean;
    locked boolean := false;
    created text[] := '{}';
BEGIN
    IF parent IS NULL OR (SELECT relkind FROM pg_class WHERE oid = parent) <> 'p' THEN
        RAISE EXCEPTION 'stage4: public.geometrias is not a partitioned table';
    END IF;
    SELECT n.nspname, c.relname INTO parent_schema, parent_table
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = parent;
    SELECT a.attname INTO key
    FROM pg_partitioned_table pt JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = parent AND pt.partstrat = 'r' AND pt.partnatts = 1;
    IF key IS NULL THEN
        RAISE EXCEPTION 'stage4: % is not partitioned by RANGE on one column', parent;
    END IF;
    SELECT * INTO policy FROM stage4.partition_policy WHERE relation = 'public.geometrias';
    years_ahead := coalesce(p_years_ahead, nullif(current_setting('stage4.partition_years_ahead', true), '')::int,
                            policy.years_ahead, 2);
    IF years_ahead < 0 THEN
        RAISE EXCEPTION 'stage4: years ahead must not be negative (%)', years_ahead;
    END IF;
    through_year := greatest(coalesce(policy.min_through_year, 2029), extract(year FROM p_now)::int + years_ahead);

    -- One caller at a time (the daily job and a manual call): the second sees what the first made.
    PERFORM pg_advisory_xact_lock(hashtext('stage4.ensure_future_partitions'));

    SELECT coalesce(min(extract(year FROM lower_bound))::int, extract(year FROM p_now)::int) INTO first_year
    FROM stage4.opt4_partition_ranges(parent) WHERE NOT is_default AND lower_bound > '-infinity';
    SELECT partition INTO default_part FROM stage4.opt4_partition_ranges(parent) WHERE is_default;

    FOR y IN first_year .. through_year LOOP
        lo := make_date(y, 1, 1);
        hi := make_date(y + 1, 1, 1);
        CONTINUE WHEN EXISTS (SELECT 1 FROM stage4.opt4_partition_ranges(parent)
                              WHERE lower_bound = lo AND upper_bound = hi);
        SELECT string_agg(format('%s [%s, %s)', partition, lower_bound, upper_bound), ', ') INTO overlapping
        FROM stage4.opt4_partition_ranges(parent)
        WHERE NOT is_default AND lower_bound < hi AND upper_bound > lo;
        IF overlapping IS NOT NULL THEN
            RAISE EXCEPTION 'stage4: no yearly partition can be made for %: % already cover(s) part of it', y, overlapping;
        END IF;
        part_name := format('%s_p%s', parent_table, y);
        IF to_regclass(format('%I.%I', parent_schema, part_name)) IS NOT NULL THEN
            RAISE EXCEPTION 'stage4: %.% exists but is not the partition of % for %', parent_schema, part_name, parent, y;
        END IF;

        IF NOT locked THEN
            IF current_setting('lock_timeout') IN ('0', '0ms') THEN
                PERFORM set_config('lock_timeout', '5s', true);
            END IF;
            -- Everything reaches the partitions through the parent: its lock keeps readers and
            -- writers out while DEFAULT is emptied and the partition attached.
            EXECUTE format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', parent);
            IF default_part IS NOT NULL THEN
                EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', default_part);
            END IF;
            locked := true;
        END IF;

        -- The new partition cannot be attached while DEFAULT holds rows of its range: DEFAULT steps out
        -- for it, and opt4_move_rows() moves them, attaching both again.
        moved := 0;
        default_rows := default_part IS NOT NULL AND (stage4.rows_checksum(default_part,
                            format('%I >= %L AND %I < %L', key, lo, key, hi))->>'row_count')::bigint > 0;
        IF default_rows THEN
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, default_part);
        END IF;
        new_part := stage4.create_secured_partition(parent, part_name, format('FOR VALUES FROM (%L) TO (%L)', lo, hi));
        IF default_rows THEN
            moved := stage4.opt4_move_rows(parent, default_part, new_part, key, lo, hi, false);
            EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s DEFAULT', parent, default_part);
        END IF;
        INSERT INTO stage4.opt4_created_partitions (relation, parent, year, rows_moved)
        VALUES (format('%I.%I', parent_schema, part_name), 'public.geometrias', y, moved);
        created := created || format('%I.%I', parent_schema, part_name);
        RAISE NOTICE 'stage4: created partition %.% for %, % row(s) moved from the DEFAULT partition',
            parent_schema, part_name, y, moved;
    END LOOP;
    RETURN created;
END $$;
COMMENT ON FUNCTION stage4.ensure_future_partitions(date, int) IS
    'OPT4: creates the missing yearly partitions of public.geometrias through max(2029, year of p_now + years ahead), '
    'moving matching rows out of DEFAULT; returns the partitions created. Run daily by pg_cron when available.';

-- Schedules the daily job when pg_cron is installed here; records either outcome in the policy.
CREATE OR REPLACE FUNCTION stage4.schedule_future_partitions()
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    policy stage4.partition_policy%ROWTYPE;
    job_id bigint;
BEGIN
    SELECT * INTO STRICT policy FROM stage4.partition_policy WHERE relation = 'public.geometrias';
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_cron') THEN
        EXECUTE 'SELECT cron.schedule($1, $2, $3)' INTO job_id
            USING policy.job_name, policy.schedule, 'SELECT stage4.ensure_future_partitions()';
        UPDATE stage4.partition_policy
           SET scheduled = true, updated_at = now(),
               note = format('pg_cron job %s (jobid %s) runs at %L', policy.job_name, job_id, policy.schedule)
         WHERE relation = policy.relation;
        RETURN true;
    END IF;
    UPDATE stage4.partition_policy
       SET scheduled = false, updated_at = now(),
           note = 'not scheduled: pg_cron is not installed in this database; after installing it (OPT5) run '
                  'SELECT stage4.schedule_future_partitions(), or call stage4.ensure_future_partitions() from another scheduler'
     WHERE relation = policy.relation;
    RAISE NOTICE 'OPT4: pg_cron is not installed in database %: the daily job % was NOT scheduled (recorded in stage4.partition_policy); future partitions exist through today''s target, run SELECT stage4.schedule_future_partitions() once pg_cron is installed',
        current_database(), policy.job_name;
    RETURN false;
END $$;

REVOKE ALL ON stage4.partition_policy, stage4.opt4_created_partitions FROM PUBLIC;
REVOKE ALL ON FUNCTION stage4.opt4_partition_ranges(regclass), stage4.opt4_column_list(regclass),
    stage4.opt4_move_rows(regclass, regclass, regclass, text, date, date, boolean),
    stage4.ensure_future_partitions(date, int), stage4.schedule_future_partitions() FROM PUBLIC;

DO $$
DECLARE
    years_ahead int := coalesce(nullif(current_setting('stage4.partition_years_ahead', true), ''), '2')::int;
    now_ date := coalesce(nullif(current_setting('stage4.now', true), '')::date, current_date);
    created text[];
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_partman') THEN
        RAISE NOTICE 'OPT4: pg_partman % is installed but not used: its 4.7 create_parent() naming, template table and config would have to take over OPT1''s layout; stage4.ensure_future_partitions() keeps OPT1''s conventions',
            (SELECT extversion FROM pg_extension WHERE extname = 'pg_partman');
    END IF;
    INSERT INTO stage4.partition_policy (relation, years_ahead) VALUES ('public.geometrias', years_ahead);
    created := stage4.ensure_future_partitions(now_);
    RAISE NOTICE 'OPT4: % partition(s) created: %', cardinality(created), array_to_string(created, ', ');
    PERFORM stage4.schedule_future_partitions();
END $$;

-- PostgREST reloads its schema cache at the commit (stage4.notify_api_changed()).
SELECT stage4.notify_api_changed();
