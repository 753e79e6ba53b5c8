-- OPT2 revert: every relation of public.geometrias gets back the access method, geom
-- compression, geom storage and clustered index it had before OPT2 (stage4.opt2_layout.previous);
-- the rows stay as they are now. The physical order CLUSTER gave is not undone (it is not part
-- of the schema). Partitions created after OPT2 inherited the parent's OPT2 setting: they get
-- the parent's previous setting back.
--
-- Not exact in one corner: ALTER COLUMN ... SET STORAGE also sets the storage of the matching
-- column of the table's indexes, so after the external path is reverted the GiST index column
-- carries the table's storage (main) instead of its key type's (plain). Invisible to pg_dump and
-- without effect on 16-byte index keys; the lz4 path (the default wherever lz4 exists) and the
-- columnar path are restored exactly.
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '30min';
-- In a DO block: the Supabase CLI (2.117.0) sends a migration as a pipeline without BEGIN, where a
-- top-level LOCK TABLE is refused (25P01); the block runs in the same transaction either way.
DO $$ BEGIN LOCK TABLE public.geometrias IN ACCESS EXCLUSIVE MODE; END $$;

DO $$
DECLARE
    parent regclass := 'public.geometrias';
    r record;
    cur record;
    parent_row record;
    prev jsonb;
BEGIN
    -- The rows as they are before the revert: verify_reverted.sql compares against them. The
    -- portable path's revert only changes settings (compression, storage, clustered index) under
    -- this lock and writes no row, so their count is enough; SET ACCESS METHOD rewrites every row,
    -- so the columnar path's revert is checksummed.
    IF (SELECT path FROM stage4.opt2_layout WHERE relation = 'public.geometrias') = 'portable' THEN
        PERFORM stage4.save_proven_snapshot('opt2_storage_layout:before_revert', parent,
                                            jsonb_build_object('rows_written', 0, 'reason', 'settings only'));
    ELSE
        PERFORM stage4.save_snapshot('opt2_storage_layout:before_revert', parent);
    END IF;

    -- The parent first: SET STORAGE on it reaches every partition, which are then set one by one.
    FOR r IN SELECT l.relation, l.previous, to_regclass(l.relation) AS rel
             FROM stage4.opt2_layout l
             ORDER BY l.relation <> 'public.geometrias', l.relation LOOP
        CONTINUE WHEN r.rel IS NULL;  -- dropped since
        prev := r.previous;
        SELECT am.amname AS am, a.attcompression::text AS compression, a.attstorage::text AS storage,
               (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                WHERE i.indrelid = c.oid AND i.indisclustered) AS clustered
          INTO cur
        FROM pg_class c
        LEFT JOIN pg_am am ON am.oid = c.relam
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'geom'
        WHERE c.oid = r.rel;
        IF prev->>'am' IS NOT NULL AND cur.am IS DISTINCT FROM prev->>'am' THEN
            EXECUTE format('ALTER TABLE %s SET ACCESS METHOD %I', r.rel, prev->>'am');
        END IF;
        IF cur.compression IS DISTINCT FROM prev->>'compression' THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN geom SET COMPRESSION %s', r.rel,
                           CASE prev->>'compression' WHEN 'p' THEN 'pglz' WHEN 'l' THEN 'lz4' ELSE 'DEFAULT' END);
        END IF;
        IF cur.storage IS DISTINCT FROM prev->>'storage' THEN
            EXECUTE format('ALTER TABLE %s ALTER COLUMN geom SET STORAGE %s', r.rel,
                           CASE prev->>'storage' WHEN 'p' THEN 'PLAIN' WHEN 'e' THEN 'EXTERNAL'
                                                 WHEN 'x' THEN 'EXTENDED' ELSE 'MAIN' END);
        END IF;
        IF cur.clustered IS DISTINCT FROM prev->>'clustered' THEN
            IF prev->>'clustered' IS NULL THEN
                EXECUTE format('ALTER TABLE %s SET WITHOUT CLUSTER', r.rel);
            ELSE
                EXECUTE format('ALTER TABLE %s CLUSTER ON %I', r.rel, prev->>'clustered');
            END IF;
        END IF;
    END LOOP;

    -- Partitions created after OPT2 (say by OPT4's scheduled job) inherited the parent's setting.
    SELECT previous, details INTO parent_row FROM stage4.opt2_layout WHERE relation = 'public.geometrias';
    IF parent_row.details->>'toast' IS NOT NULL THEN
        FOR r IN
            SELECT c.oid::regclass AS rel, a.attcompression::text AS compression, a.attstorage::text AS storage
            FROM pg_partition_tree(parent) pt
            JOIN pg_class c ON c.oid = pt.relid
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'geom'
            WHERE pt.isleaf
              AND NOT EXISTS (SELECT 1 FROM stage4.opt2_layout l WHERE to_regclass(l.relation) = c.oid)
        LOOP
            IF parent_row.details->>'toast' = 'lz4' AND r.compression = 'l'
               AND parent_row.previous->>'compression' <> 'l' THEN
                EXECUTE format('ALTER TABLE %s ALTER COLUMN geom SET COMPRESSION %s', r.rel,
                               CASE parent_row.previous->>'compression' WHEN 'p' THEN 'pglz' ELSE 'DEFAULT' END);
            ELSIF parent_row.details->>'toast' = 'external' AND r.storage = 'e'
                  AND parent_row.previous->>'storage' <> 'e' THEN
                EXECUTE format('ALTER TABLE %s ALTER COLUMN geom SET STORAGE %s', r.rel,
                               CASE parent_row.previous->>'storage' WHEN 'p' THEN 'PLAIN' WHEN 'x' THEN 'EXTENDED'
                                                                    ELSE 'MAIN' END);
            END IF;
        END LOOP;
    END IF;

    DROP TABLE stage4.opt2_layout;
END $$;
