-- OPT2 storage layout of the GIS data: how the rows of public.geometrias (partitioned by year
-- by OPT1) are laid out on disk, so that reading them back costs less.
--
-- There is no column store here to switch on. PostgreSQL 15 has no built-in columnar storage,
-- and Supabase offers neither Citus (citus_columnar) nor Hydra, the extensions that provide one.
-- So this change has two paths and records in stage4.opt2_layout which one ran:
--
--   columnar  only when a table access method named "columnar" exists (pg_am, amtype 't'), i.e.
--             on a self-managed server with Citus or Hydra. The CLOSED yearly partitions (upper
--             bound <= 1 January of the current year; "now" is stage4.now, default current_date)
--             move to it with ALTER TABLE <partition> SET ACCESS METHOD columnar (PG15: works on
--             a partition, not on the partitioned parent). Caveat: Citus and Hydra columnar
--             tables accept btree and hash indexes only, and geometrias has GiST and GIN
--             indexes, so there the ALTER fails and the whole change rolls back; set
--             stage4.storage_path = portable to take the portable path instead.
--
--   portable  everywhere else (Supabase, stock PostgreSQL): the TOAST storage of geom is tuned
--             for reading, and the closed partitions are physically ordered by location.
--             * lz4 (stage4.toast_mode auto/lz4, when the server is built with lz4, as Debian's
--               and Supabase's PG15 are): ALTER COLUMN geom SET COMPRESSION lz4 on the parent
--               AND on every partition (on a partitioned table SET COMPRESSION does not reach
--               the existing partitions; partitions created later inherit it from the parent).
--               lz4 decompresses several times faster than pglz. It only concerns values that
--               get compressed at all (rows over ~2 kB: large polygons); the fixture's small
--               polygons are stored inline and uncompressed either way.
--             * EXTERNAL storage (toast_mode external, or auto without lz4): large geometries are
--               stored out of line uncompressed, so PostGIS can read a bounding box without
--               decompressing the whole value.
--             Either setting applies to values written afterwards. CLUSTER does NOT recompress
--             what is already compressed (PG15 copies compressed values as they are; it only
--             compresses values that were stored uncompressed out of line), so values of the
--             closed partitions compressed with another method (pglz) are rewritten first by an
--             UPDATE geom = (geom::text)::geometry (identical content) with the partition's
--             UPDATE triggers disabled for that statement, so updated_at does not move.
--             Then CLUSTER <partition> USING <its GiST index on geom>: the rows of each closed
--             partition are rewritten in GiST order (spatially close rows share pages), which
--             makes bounding-box and radius queries touch fewer pages. The open partitions
--             (current year, future years, DEFAULT) still take writes, so they are not clustered.
--
-- Then ANALYZE of the rewritten partitions (their physical correlation changed). Nothing else
-- changes: rows, indexes, policies, grants and RLS are checked by verify.sql. revert.sql puts
-- back, per relation, the access method, compression, storage and clustered index recorded here
-- before the change (the physical order is not undone).
--
-- Online (the playbook): prepare.sql has already rebuilt every closed partition as a shadow,
-- recompressed, clustered, analyzed and proven equal to it while the application kept writing
-- (stage4.prepare_online_rebuild with stage4.clustered_layout). Here, under ACCESS EXCLUSIVE on
-- public.geometrias, each shadow only replays the writes logged since its proof and takes its
-- partition's place (stage4.finish_online_rebuild: the old partition is dropped, the shadow
-- attached; no row is copied). Measured at 1,000,000 features: see the README's Reliability table.
--
-- Alone (a Supabase migration runs this file without prepare.sql) the closed partitions are
-- rewritten here, in one transaction under ACCESS EXCLUSIVE on public.geometrias and all its
-- partitions: readers and writers wait while CLUSTER rewrites each one and rebuilds its indexes
-- (2 to 3 minutes per million rows on 2 vCPUs). lock_timeout keeps the wait for the lock itself
-- short (the transaction is retried); statement_timeout bounds the time the lock is held.
SELECT set_config('lock_timeout', coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'), true),
       set_config('statement_timeout', coalesce(nullif(current_setting('stage4.statement_timeout', true), ''), '30min'), true);
-- In a DO block: the Supabase CLI (2.117.0) sends a migration as a pipeline without BEGIN, where a
-- top-level LOCK TABLE is refused (25P01); the block runs in the same transaction either way.
DO $$ BEGIN LOCK TABLE public.geometrias IN ACCESS EXCLUSIVE MODE; END $$;

-- What this change did to each relation, and what that relation had before (read by revert).
CREATE TABLE stage4.opt2_layout (
    relation   text        PRIMARY KEY,
    path       text        NOT NULL CHECK (path IN ('columnar', 'portable')),
    closed     boolean     NOT NULL,
    previous   jsonb       NOT NULL,
    details    jsonb       NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE stage4.opt2_layout IS
    'OPT2: storage path that ran (columnar or portable) per relation of public.geometrias, with the access method, '
    'compression, storage and clustered index each had before (previous) and what was done (details).';
REVOKE ALL ON stage4.opt2_layout FROM PUBLIC;

DO $$
DECLARE
    parent regclass := 'public.geometrias';
    parent_name text := 'public.geometrias';
    now_ date := coalesce(nullif(current_setting('stage4.now', true), '')::date, current_date);
    year_start date := date_trunc('year', now_)::date;
    requested_path text := lower(coalesce(nullif(current_setting('stage4.storage_path', true), ''), 'auto'));
    requested_toast text := lower(coalesce(nullif(current_setting('stage4.toast_mode', true), ''), 'auto'));
    choice jsonb := stage4.storage_choice(requested_path, requested_toast);
    chosen_path text := choice->>'path';
    toast text;
    toast_sql text;
    layout jsonb;
    partition_layout jsonb;
    r record;
    t record;
    gist_index text;
    disabled_triggers jsonb;
    details jsonb;
    closed_count int := 0;
    err_state text;
    err_message text;
BEGIN
    -- Every closed partition rebuilt online: their rows were proven equal key by key, the others
    -- are not rewritten; no checksum of the whole table under the lock.
    IF chosen_path = 'portable' AND NOT EXISTS (
           SELECT 1 FROM stage4.leaf_partitions(parent, year_start) p
           WHERE p.closed AND NOT EXISTS (SELECT 1 FROM stage4.online_rebuilds o WHERE o.relation = p.name)) THEN
        PERFORM stage4.save_proven_snapshot('opt2_storage_layout', parent, jsonb_build_object(
            'partitions_rebuilt_online', (SELECT jsonb_agg(o.relation ORDER BY o.relation) FROM stage4.online_rebuilds o
                                          JOIN stage4.leaf_partitions(parent, year_start) p ON o.relation = p.name)));
    ELSE
        PERFORM stage4.save_snapshot('opt2_storage_layout', parent);
    END IF;

    -- The layout of every relation of the tree before the change: verify_reverted compares with it.
    layout := stage4.storage_layout(parent, 'geom');
    INSERT INTO stage4.table_snapshots (change, relation, snapshot)
    VALUES ('opt2_storage_layout:layout', parent_name, layout)
    ON CONFLICT (change, relation) DO UPDATE SET snapshot = EXCLUDED.snapshot, captured_at = now();

    IF chosen_path = 'portable' THEN
        toast := choice->>'toast';
        toast_sql := CASE toast WHEN 'lz4' THEN 'SET COMPRESSION lz4' ELSE 'SET STORAGE EXTERNAL' END;
        -- The parent first: partitions created from now on (OPT4) inherit the setting.
        EXECUTE format('ALTER TABLE %s ALTER COLUMN geom %s', parent, toast_sql);
    END IF;

    FOR r IN SELECT * FROM stage4.leaf_partitions(parent, year_start) LOOP
        IF chosen_path = 'columnar' THEN
            CONTINUE WHEN NOT r.closed;
            BEGIN
                EXECUTE format('ALTER TABLE %s SET ACCESS METHOD columnar', r.rel);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS err_state = RETURNED_SQLSTATE, err_message = MESSAGE_TEXT;
                RAISE EXCEPTION USING ERRCODE = err_state,
                    MESSAGE = format('OPT2: %s could not move to the columnar access method: %s', r.name, err_message),
                    HINT = 'Citus/Hydra columnar tables accept only btree and hash indexes; set stage4.storage_path = portable.';
            END;
            details := jsonb_build_object('access_method', 'columnar');
        ELSE
            details := jsonb_build_object('toast', toast);
            IF r.closed AND EXISTS (SELECT 1 FROM stage4.online_rebuilds WHERE relation = r.name) THEN
                -- Prepared: the shadow (recompressed, clustered, analyzed) takes the partition's place.
                partition_layout := stage4.clustered_layout(r.rel, 'geom', toast);
                PERFORM stage4.finish_online_rebuild('opt2_storage_layout', r.rel, partition_layout);
                details := details || jsonb_build_object('rebuilt_online', true, 'clustered_on', partition_layout->>'cluster_on',
                                                         'rows_proof', stage4.snapshot('opt2_storage_layout', r.name)->'rows_proof');
                closed_count := closed_count + 1;
                INSERT INTO stage4.opt2_layout (relation, path, closed, previous, details)
                VALUES (r.name, chosen_path, r.closed, layout->r.name, details);
                CONTINUE;
            END IF;
            EXECUTE format('ALTER TABLE %s ALTER COLUMN geom %s', r.rel, toast_sql);
            IF r.closed THEN
                -- Values compressed with another method keep it through CLUSTER: rewrite them, with
                -- the partition's UPDATE triggers disabled so that updated_at does not move.
                SELECT coalesce(jsonb_agg(jsonb_build_object('name', tg.tgname, 'enabled', tg.tgenabled)), '[]')
                  INTO disabled_triggers
                FROM pg_trigger tg
                WHERE tg.tgrelid = r.rel AND NOT tg.tgisinternal AND tg.tgenabled <> 'D'
                  AND (tg.tgtype::int & 16) <> 0;  -- TRIGGER_TYPE_UPDATE
                FOR t IN SELECT value->>'name' AS name FROM jsonb_array_elements(disabled_triggers) LOOP
                    EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', r.rel, t.name);
                END LOOP;
                details := details || jsonb_build_object(
                    'recompressed', stage4.rewrite_stale_toast(r.rel, jsonb_build_object('column', 'geom', 'mode', toast), 'true'));
                FOR t IN SELECT value->>'name' AS name, value->>'enabled' AS enabled
                         FROM jsonb_array_elements(disabled_triggers) LOOP
                    EXECUTE format('ALTER TABLE %s %s TRIGGER %I', r.rel,
                                   CASE t.enabled WHEN 'A' THEN 'ENABLE ALWAYS' WHEN 'R' THEN 'ENABLE REPLICA'
                                                  ELSE 'ENABLE' END, t.name);
                END LOOP;
                -- The partition's own index of the parent's GiST index on geom.
                gist_index := stage4.gist_index_on(r.rel, 'geom');
                IF gist_index IS NOT NULL THEN
                    EXECUTE format('CLUSTER %s USING %I', r.rel, gist_index);
                END IF;
                details := details || jsonb_build_object('clustered_on', gist_index);
            END IF;
        END IF;
        IF r.closed THEN
            -- Rewritten: fresh statistics (the physical correlation changed), for this partition only.
            EXECUTE format('ANALYZE %s', r.rel);
            closed_count := closed_count + 1;
        END IF;
        INSERT INTO stage4.opt2_layout (relation, path, closed, previous, details)
        VALUES (r.name, chosen_path, r.closed, layout->r.name, details);
    END LOOP;

    -- The parent's row names the path even when there was no closed partition.
    INSERT INTO stage4.opt2_layout (relation, path, closed, previous, details)
    VALUES (parent_name, chosen_path, false, layout->parent_name,
            jsonb_build_object('now', now_, 'closed_before', year_start, 'closed_partitions', closed_count,
                               'requested_path', requested_path, 'toast', toast, 'lz4_available', choice->'lz4_available'));
    RAISE NOTICE 'OPT2: % path% on % closed partition(s) (before %)', chosen_path,
        CASE WHEN toast IS NULL THEN '' ELSE format(' (TOAST: %s, CLUSTER on the GiST index)', toast) END,
        closed_count, year_start;
END $$;
