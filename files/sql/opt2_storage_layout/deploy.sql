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
-- One transaction under ACCESS EXCLUSIVE on public.geometrias and all its partitions: readers
-- and writers wait while the closed partitions are rewritten (CLUSTER rewrites each one and
-- rebuilds its indexes, GIN and GiST included: measured 15 s for 100,000 rows, seven eighths of
-- them in closed partitions, on 2 vCPUs, snapshot and ANALYZE included; count on 2 to 3 minutes
-- per million rows), and lock_timeout keeps the wait for the lock itself short.
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '30min';
LOCK TABLE public.geometrias IN ACCESS EXCLUSIVE MODE;

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
    year_start date;
    requested_path text := lower(coalesce(nullif(current_setting('stage4.storage_path', true), ''), 'auto'));
    requested_toast text := lower(coalesce(nullif(current_setting('stage4.toast_mode', true), ''), 'auto'));
    has_lz4 boolean := EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals));
    chosen_path text;
    toast text;
    toast_sql text;
    stale_predicate text;
    geom_type text;
    layout jsonb;
    r record;
    t record;
    gist_index text;
    stale bigint;
    disabled_triggers jsonb;
    details jsonb;
    closed_count int := 0;
    err_state text;
    err_message text;
BEGIN
    year_start := date_trunc('year', now_)::date;
    PERFORM stage4.save_snapshot('opt2_storage_layout', parent);

    -- The layout of every relation of the tree before the change: verify_reverted compares with it.
    layout := stage4.storage_layout(parent, 'geom');
    INSERT INTO stage4.table_snapshots (change, relation, snapshot)
    VALUES ('opt2_storage_layout:layout', parent_name, layout)
    ON CONFLICT (change, relation) DO UPDATE SET snapshot = EXCLUDED.snapshot, captured_at = now();

    chosen_path := CASE WHEN requested_path <> 'auto' THEN requested_path
                        WHEN EXISTS (SELECT 1 FROM pg_am WHERE amname = 'columnar' AND amtype = 't') THEN 'columnar'
                        ELSE 'portable' END;
    IF chosen_path = 'portable' THEN
        toast := CASE WHEN requested_toast <> 'auto' THEN requested_toast WHEN has_lz4 THEN 'lz4' ELSE 'external' END;
        toast_sql := CASE toast WHEN 'lz4' THEN 'SET COMPRESSION lz4' ELSE 'SET STORAGE EXTERNAL' END;
        stale_predicate := CASE toast WHEN 'lz4' THEN 'pg_column_compression(geom) <> ''lz4'''
                                      ELSE 'pg_column_compression(geom) IS NOT NULL' END;
        SELECT format('%I.%I', tn.nspname, ty.typname) INTO geom_type
        FROM pg_attribute a JOIN pg_type ty ON ty.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = ty.typnamespace
        WHERE a.attrelid = parent AND a.attname = 'geom';
        -- The parent first: partitions created from now on (OPT4) inherit the setting.
        EXECUTE format('ALTER TABLE %s ALTER COLUMN geom %s', parent, toast_sql);
    END IF;

    FOR r IN
        SELECT c.oid::regclass AS rel, format('%I.%I', n.nspname, c.relname) AS name,
               coalesce((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)$'))[1]::date <= year_start,
                        false) AS closed
        FROM pg_partition_tree(parent) pt
        JOIN pg_class c ON c.oid = pt.relid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE pt.isleaf AND c.relkind = 'r'
        ORDER BY c.relname
    LOOP
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
            EXECUTE format('ALTER TABLE %s ALTER COLUMN geom %s', r.rel, toast_sql);
            details := jsonb_build_object('toast', toast);
            IF r.closed THEN
                -- Values compressed with another method keep it through CLUSTER: rewrite them.
                EXECUTE format('SELECT count(*) FROM %s WHERE %s', r.rel, stale_predicate) INTO stale;
                IF stale > 0 THEN
                    SELECT coalesce(jsonb_agg(jsonb_build_object('name', tg.tgname, 'enabled', tg.tgenabled)), '[]')
                      INTO disabled_triggers
                    FROM pg_trigger tg
                    WHERE tg.tgrelid = r.rel AND NOT tg.tgisinternal AND tg.tgenabled <> 'D'
                      AND (tg.tgtype::int & 16) <> 0;  -- TRIGGER_TYPE_UPDATE
                    FOR t IN SELECT value->>'name' AS name FROM jsonb_array_elements(disabled_triggers) LOOP
                        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', r.rel, t.name);
                    END LOOP;
                    EXECUTE format('UPDATE ONLY %s SET geom = (geom::text)::%s WHERE %s', r.rel, geom_type, stale_predicate);
                    FOR t IN SELECT value->>'name' AS name, value->>'enabled' AS enabled
                             FROM jsonb_array_elements(disabled_triggers) LOOP
                        EXECUTE format('ALTER TABLE %s %s TRIGGER %I', r.rel,
                                       CASE t.enabled WHEN 'A' THEN 'ENABLE ALWAYS' WHEN 'R' THEN 'ENABLE REPLICA'
                                                      ELSE 'ENABLE' END, t.name);
                    END LOOP;
                END IF;
                -- The partition's own index of the parent's GiST index on geom.
                SELECT ic.relname INTO gist_index
                FROM pg_index i
                JOIN pg_class ic ON ic.oid = i.indexrelid
                JOIN pg_am am ON am.oid = ic.relam
                JOIN pg_attribute a ON a.attrelid = r.rel AND a.attname = 'geom'
                WHERE i.indrelid = r.rel AND am.amname = 'gist' AND i.indnatts = 1 AND i.indkey[0] = a.attnum
                  AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid
                ORDER BY ic.relname
                LIMIT 1;
                IF gist_index IS NOT NULL THEN
                    EXECUTE format('CLUSTER %s USING %I', r.rel, gist_index);
                END IF;
                details := details || jsonb_build_object('recompressed', stale, 'clustered_on', gist_index);
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
                               'requested_path', requested_path, 'toast', toast, 'lz4_available', has_lz4));
    RAISE NOTICE 'OPT2: % path% on % closed partition(s) (before %)', chosen_path,
        CASE WHEN toast IS NULL THEN '' ELSE format(' (TOAST: %s, CLUSTER on the GiST index)', toast) END,
        closed_count, year_start;
END $$;
