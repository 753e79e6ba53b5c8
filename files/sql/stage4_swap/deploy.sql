-- stage4_swap: the cutover from a table to its shadow, and the proof that nothing was lost.
--
-- swap_shadow() moves everything the original carries (policies, grants, triggers, comments,
-- dependent views and functions, publications) to the shadow and renames it into place in one
-- transaction; rebuild_table() does the whole copy under one lock; assert_table_preserved()
-- compares the table with its snapshot. Repeatable.
SET LOCAL lock_timeout = '2s';

-- The materialized views prebuilt over p_shadow (prebuild_matviews()): in stage4_online, reading it.
CREATE OR REPLACE FUNCTION stage4.prebuilt_matviews(p_shadow regclass)
RETURNS SETOF regclass LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT DISTINCT v.oid::regclass
    FROM pg_depend pd
    JOIN pg_rewrite r ON pd.classid = 'pg_rewrite'::regclass AND pd.objid = r.oid
    JOIN pg_class v ON v.oid = r.ev_class
    WHERE pd.refclassid = 'pg_class'::regclass AND pd.refobjid = p_shadow
      AND v.relkind = 'm' AND v.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'stage4_online')
$$;

-- Drops them: before the shadow itself (an abort), when a prepare is resumed, and after the
-- cutover (those whose original was dropped since the prepare).
CREATE OR REPLACE FUNCTION stage4.drop_prebuilt_matviews(p_shadow regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prebuilt regclass;
BEGIN
    FOR prebuilt IN SELECT m FROM stage4.prebuilt_matviews(p_shadow) m LOOP
        EXECUTE format('DROP MATERIALIZED VIEW %s', prebuilt);
    END LOOP;
END $$;

-- Moves the materialized view prebuilt over p_shadow for p_item (a dependent describe_table()
-- recorded, whose original swap_shadow() has dropped) into the original's place, once p_shadow is
-- in the table's. True when it is there with the original's definition and indexes; otherwise the
-- prebuilt one is dropped (the original changed since the prepare, say) and the caller recreates it.
CREATE OR REPLACE FUNCTION stage4.place_prebuilt_matview(p_item jsonb, p_shadow regclass)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    name text[] := parse_ident(p_item->>'identity');
    prebuilt regclass;
BEGIN
    SELECT m INTO prebuilt FROM stage4.prebuilt_matviews(p_shadow) m
    WHERE (SELECT relname FROM pg_class WHERE oid = m) = name[cardinality(name)];
    IF prebuilt IS NULL THEN
        RETURN false;
    END IF;
    IF cardinality(name) = 2 THEN
        EXECUTE format('ALTER MATERIALIZED VIEW %s SET SCHEMA %I', prebuilt, name[1]);
    END IF;
    IF stage4.view_definition(prebuilt) = p_item->>'definition'
       AND stage4.index_definitions(prebuilt) = p_item->'indexes' THEN
        RETURN true;
    END IF;
    EXECUTE format('DROP MATERIALIZED VIEW %s', prebuilt);
    RETURN false;
END $$;

-- Replaces p_table by its completed shadow, in the caller's transaction (which must hold an
-- ACCESS EXCLUSIVE lock on p_table): drops what depends on the old table (deepest first), retires
-- the table itself, moves the shadow into place, then puts back the identity's position and
-- everything else p_before (describe_table() of the old table) lists: triggers, RLS and
-- policies, storage parameters (p_reloptions), owner, grants, comments, publications, and the
-- dependent views and functions. The shadow of a partition is attached in its place (the
-- parent clones its triggers; a stage4_partition_bound CHECK on the shadow, index_shadow(),
-- spares ATTACH the scan of its rows). Catalog work only: no row is read or written.
CREATE OR REPLACE FUNCTION stage4.swap_shadow(p_table regclass, p_shadow regclass, p_before jsonb,
                                              p_reloptions text[] DEFAULT NULL)
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    before jsonb := p_before;
    schema_name text := p_before->>'schema';
    work_table regclass;
    item jsonb;
    stmt text;
    grantee text;
    identity_seq text;
    previous_check text;
BEGIN
    IF jsonb_array_length(before->'referenced_by') > 0 THEN
        RAISE EXCEPTION 'stage4: % is referenced by foreign keys %; they would not survive a rebuild',
            p_table, before->'referenced_by';
    END IF;
    PERFORM stage4.assert_carried(p_table, 'stage4');
    IF before->'identity' IS NOT NULL THEN
        SELECT s.seqrelid::regclass::text INTO identity_seq
        FROM pg_depend d JOIN pg_sequence s ON s.seqrelid = d.objid
        WHERE d.refobjid = p_shadow AND d.classid = 'pg_class'::regclass AND d.deptype = 'i';
        PERFORM setval(identity_seq, (before->'identity'->>'last_value')::bigint, (before->'identity'->>'is_called')::boolean);
    END IF;

    -- 1. Drop what depends on the old table (deepest first), then retire the old table itself.
    --    Anything else that depends on it makes this DROP fail and the whole change roll back.
    --    Its functions are retired too: a call queued behind this transaction's locks has resolved
    --    them already, and completes with them (dropped, "cache lookup failed for type").
    --    The table is retired whole (a partition detached first, a partitioned table with its
    --    partitions), not dropped or emptied: PostgreSQL removes the files of a dropped or truncated
    --    table at the COMMIT, this transaction's locks still held (OPT1's 1,000,000 rows: a 0.48 s
    --    COMMIT of a 1.58 s transaction under load, run 20261128T050803Z), where drop_retired()
    --    removes them after it. What a swap of an earlier transaction left there (its settle never
    --    ran) is dropped first, so that names cannot collide; what this one retired stays (OPT2
    --    swaps several partitions in one transaction).
    IF to_regclass('pg_temp.stage4_retiring') IS NULL THEN
        PERFORM stage4.drop_retired(0);
    END IF;
    FOR item IN SELECT value FROM jsonb_array_elements(before->'dependents') ORDER BY (value->>'depth')::int DESC LOOP
        IF item->>'kind' = 'function' THEN
            PERFORM stage4.retire('FUNCTION ' || (item->>'identity'));
        ELSE
            EXECUTE format('DROP %s %s', upper(item->>'kind'), item->>'identity');
        END IF;
    END LOOP;
    -- Out of its publications: the retired table is not the application's any more.
    FOR stmt IN SELECT jsonb_array_elements_text(before->'publications') LOOP
        EXECUTE format('ALTER PUBLICATION %I DROP TABLE %s', stmt, p_table);
    END LOOP;
    -- Extended statistics stay in their schema when the table moves: recreated on the new table below.
    FOR item IN SELECT jsonb_array_elements(coalesce(before->'statistics', '[]')) LOOP
        EXECUTE format('DROP STATISTICS %s', item->>'name');
    END LOOP;
    -- A serial column's sequence stays where it is: the new table's default already calls it.
    FOR item IN SELECT jsonb_array_elements(coalesce(before->'owned_sequences', '[]')) LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNED BY NONE', item->>'sequence');
    END LOOP;
    IF before->>'partition_of' IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', before->>'partition_of', p_table);
    END IF;
    FOR stmt IN SELECT i.inhrelid::regclass::text FROM pg_inherits i WHERE i.inhparent = p_table LOOP
        PERFORM stage4.retire('TABLE ' || stmt);
    END LOOP;
    PERFORM stage4.retire('TABLE ' || p_table::text);
    -- The table's indexes, constraints and identity sequence move with it.
    EXECUTE format('ALTER TABLE %s SET SCHEMA %s', p_shadow, schema_name);
    work_table := format('%s.%I', schema_name, before->>'name')::regclass;
    IF before->>'partition_of' IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %s %s', before->>'partition_of', work_table, before->>'partition_bound');
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT IF EXISTS stage4_partition_bound', work_table);
        PERFORM stage4.add_key_truncate_guard(work_table);
    END IF;
    IF identity_seq IS NOT NULL THEN
        identity_seq := format('%s.%I', schema_name, (parse_ident(identity_seq))[2]);
        IF identity_seq <> before->'identity'->>'sequence' THEN
            EXECUTE format('ALTER SEQUENCE %s RENAME TO %I', identity_seq, (parse_ident(before->'identity'->>'sequence'))[2]);
        END IF;
        identity_seq := before->'identity'->>'sequence';
    END IF;

    -- 2. Triggers, security, comments, ownership.
    FOR item IN SELECT jsonb_array_elements(before->'triggers') LOOP
        EXECUTE item->>'definition';
        IF item->>'enabled' <> 'O' THEN
            EXECUTE format('ALTER TABLE %s %s TRIGGER %I', work_table,
                           CASE item->>'enabled' WHEN 'D' THEN 'DISABLE' WHEN 'A' THEN 'ENABLE ALWAYS'
                                                 ELSE 'ENABLE REPLICA' END, item->>'name');
        END IF;
        IF item->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON TRIGGER %I ON %s IS %L', item->>'name', work_table, item->>'comment');
        END IF;
    END LOOP;
    IF (before->>'rls')::boolean THEN
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', work_table);
    END IF;
    IF (before->>'force_rls')::boolean THEN
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', work_table);
    END IF;
    FOR item IN SELECT jsonb_array_elements(before->'policies') LOOP
        EXECUTE format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', item->>'name', work_table,
                       CASE WHEN (item->>'permissive')::boolean THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                       item->>'command',
                       (SELECT string_agg(r, ', ') FROM jsonb_array_elements_text(item->'roles') r),
                       CASE WHEN item->>'using' IS NULL THEN '' ELSE format(' USING (%s)', item->>'using') END,
                       CASE WHEN item->>'with_check' IS NULL THEN '' ELSE format(' WITH CHECK (%s)', item->>'with_check') END);
        IF item->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON POLICY %I ON %s IS %L', item->>'name', work_table, item->>'comment');
        END IF;
    END LOOP;
    IF cardinality(p_reloptions) > 0 THEN
        EXECUTE format('ALTER TABLE %s SET (%s)', work_table, array_to_string(p_reloptions, ', '));
    END IF;
    -- The partitions too: ALTER TABLE ... OWNER TO does not reach them, and they were created by
    -- the role that deploys.
    FOR stmt IN SELECT relid::text FROM pg_partition_tree(work_table)
                UNION SELECT work_table::text LOOP
        IF (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = stmt::regclass) <> (before->>'owner') THEN
            EXECUTE format('ALTER TABLE %s OWNER TO %I', stmt, before->>'owner');
        END IF;
    END LOOP;
    PERFORM stage4.reset_acl('TABLE ' || work_table::text, before->'acl');
    EXECUTE format('COMMENT ON TABLE %s IS %L', work_table, before->>'comment');
    FOR item IN SELECT jsonb_array_elements(before->'columns') LOOP
        IF item->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', work_table, item->>'name', item->>'comment');
        END IF;
        FOR stmt IN SELECT jsonb_array_elements_text(item->'acl') LOOP
            EXECUTE stmt;
        END LOOP;
    END LOOP;
    IF identity_seq IS NOT NULL THEN
        PERFORM stage4.reset_acl('SEQUENCE ' || identity_seq, before->'identity'->'acl');
        EXECUTE format('COMMENT ON SEQUENCE %s IS %L', identity_seq, before->'identity'->>'comment');
    END IF;
    FOR stmt IN SELECT jsonb_array_elements_text(before->'publications') LOOP
        EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', stmt, work_table);
    END LOOP;
    PERFORM stage4.restore_table_settings(work_table, before);

    -- 3. Dependent views and functions, shallowest first, with their own grants and comments.
    --    Bodies are not re-validated (as pg_dump restores them): a function may rely on the
    --    caller's search_path, which this function pins to pg_catalog.
    previous_check := set_config('check_function_bodies', 'off', true);
    FOR item IN SELECT value FROM jsonb_array_elements(before->'dependents') ORDER BY (value->>'depth')::int LOOP
        IF item->>'kind' <> 'materialized view' OR NOT stage4.place_prebuilt_matview(item, p_shadow) THEN
            EXECUTE item->>'definition';
            FOR stmt IN SELECT jsonb_array_elements_text(item->'indexes') LOOP
                EXECUTE stmt;
            END LOOP;
            -- A materialized view recreated with its rows gets statistics too: the planner's
            -- estimates of one without them made the search RPC 10 to 30 times slower.
            IF item->>'kind' = 'materialized view' AND NOT (item->>'definition') LIKE '% WITH NO DATA' THEN
                EXECUTE 'ANALYZE ' || (item->>'identity');
            END IF;
        END IF;
        IF item->>'kind' = 'policy' THEN
            EXECUTE format('COMMENT ON POLICY %s IS %L', item->>'identity', item->>'comment');
            CONTINUE;
        ELSIF item->>'kind' = 'function' THEN
            stmt := format('FUNCTION %s', item->>'identity');
            EXECUTE format('ALTER %s OWNER TO %I', stmt, item->>'owner');
            EXECUTE format('COMMENT ON %s IS %L', stmt, item->>'comment');
        ELSE
            stmt := 'TABLE ' || (item->>'identity');
            EXECUTE format('ALTER %s %s OWNER TO %I', upper(item->>'kind'), item->>'identity', item->>'owner');
            EXECUTE format('COMMENT ON %s %s IS %L', upper(item->>'kind'), item->>'identity', item->>'comment');
            FOR grantee IN SELECT key FROM jsonb_each_text(item->'column_comments') LOOP
                EXECUTE format('COMMENT ON COLUMN %s.%I IS %L', item->>'identity', grantee, item->'column_comments'->>grantee);
            END LOOP;
        END IF;
        PERFORM stage4.reset_acl(stmt, item->'acl');
    END LOOP;
    PERFORM set_config('check_function_bodies', previous_check, true);
    PERFORM stage4.notify_api_changed();
    RETURN work_table;
END $$;

-- Drops schema stage4_online once no rebuild uses it, so that nothing is left between rebuilds.
CREATE OR REPLACE FUNCTION stage4.drop_online_schema_if_empty()
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regnamespace('stage4_online') IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = 'stage4_online'::regnamespace)
       AND NOT EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4_online'::regnamespace) THEN
        DROP SCHEMA stage4_online;
    END IF;
END $$;

-- ACCESS EXCLUSIVE on the views that depend on p_table (outermost first), then on p_table: the
-- order in which a query of a view takes its locks. Taken table first, a rebuild deadlocks with a
-- reader of a view, who holds the view and waits for the table while the rebuild holds the table
-- and must drop the view (OPT1's cutover at 1,000,000 features under the workload harness).
CREATE OR REPLACE FUNCTION stage4.lock_for_rebuild(p_table regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    dependent regclass;
BEGIN
    FOR dependent IN
        SELECT c.oid::regclass
        FROM stage4.dependent_objects(p_table) d
        JOIN pg_class c ON d.classid = 'pg_class'::regclass AND c.oid = d.objid
        WHERE c.relkind = 'v'  -- a materialized view cannot be locked, and its readers do not lock the table
        ORDER BY d.depth DESC
    LOOP
        BEGIN
            EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', dependent);
        EXCEPTION WHEN insufficient_privilege THEN
            -- LOCK on a view locks its tables as the view's owner, who may only read them: the view
            -- is then locked by its DROP, after the table (a deadlock with its readers is retried).
            NULL;
        END;
    END LOOP;
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p_table);
END $$;

-- Recreates p_table with a new layout and carries over everything describe_table() lists.
--   p_partition_by  NULL for a plain table, else e.g. 'RANGE (data_referencia)'
--   p_primary_key   columns of the new primary key (a partitioned key must include the partition key)
--   p_partitions    [{"name": ..., "bound": "FOR VALUES FROM (...) TO (...)" | "DEFAULT"}]
--   p_reloptions    storage parameters of a plain table (NULL: none)
-- Runs inside the caller's transaction under an ACCESS EXCLUSIVE lock for the whole copy:
-- either all of it happens or none of it. prepare_online_rebuild() + finish_online_rebuild()
-- do the same with the copy outside the lock.
CREATE OR REPLACE FUNCTION stage4.rebuild_table(
    p_table regclass,
    p_partition_by text,
    p_primary_key text[],
    p_partitions jsonb DEFAULT '[]',
    p_reloptions text[] DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    before jsonb;
    shadow regclass;
    rebuilt regclass;
BEGIN
    PERFORM stage4.lock_for_rebuild(p_table);
    before := stage4.describe_table(p_table, false);
    IF jsonb_array_length(before->'referenced_by') > 0 THEN
        RAISE EXCEPTION 'stage4: % is referenced by foreign keys %; they would not survive a rebuild',
            p_table, before->'referenced_by';
    END IF;
    shadow := stage4.create_shadow(p_table, p_partition_by, p_partitions);
    PERFORM stage4.register_original_key(p_table, shadow, p_primary_key);
    -- The rows, ids included (no trigger exists yet on the new table to touch them), then the
    -- keys and indexes in bulk.
    EXECUTE format('INSERT INTO %1$s (%3$s) OVERRIDING SYSTEM VALUE SELECT %3$s FROM %2$s', shadow, p_table,
                   stage4.copied_columns(p_table, NULL));
    PERFORM stage4.complete_shadow(shadow, before, p_primary_key);
    rebuilt := stage4.swap_shadow(p_table, shadow, before, p_reloptions);
    PERFORM stage4.drop_online_schema_if_empty();
    EXECUTE format('ANALYZE %s', rebuilt);
    RETURN stage4.describe_table(rebuilt, false);
END $$;

-- Raises unless p_table still carries everything p_snapshot recorded and exactly the rows
-- p_rows recorded (count and content checksum; p_rows defaults to p_snapshot, a revert
-- passes the rows it started from). A snapshot saved by save_proven_snapshot() has no checksum
-- of every row: the rebuild that saved it, in this transaction, compared the rows key by key, or
-- its proof names the rows the change touched (a condition, with their count and checksum then),
-- which are checksummed again. p_layout_changed relaxes only what a layout change must alter:
-- the primary key's columns; p_storage_changed, the columns' storage and compression (OPT2).
DROP FUNCTION IF EXISTS stage4.assert_table_preserved(regclass, jsonb, boolean, jsonb);  -- now with p_storage_changed
CREATE OR REPLACE FUNCTION stage4.assert_table_preserved(
    p_table regclass, p_snapshot jsonb, p_layout_changed boolean, p_rows jsonb DEFAULT NULL,
    p_storage_changed boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    now_ jsonb := stage4.describe_table(p_table, false);
    rows_ jsonb := coalesce(p_rows, p_snapshot);
    proof jsonb := rows_->'rows_proof';
    proven_now jsonb;
    row_count bigint;
    checksum text;
    key text;
    missing jsonb;
BEGIN
    EXECUTE format('SELECT count(*) FROM %s', p_table) INTO row_count;
    IF row_count <> (rows_->>'row_count')::bigint THEN
        RAISE EXCEPTION 'stage4: % has % rows, expected %', p_table, row_count, rows_->>'row_count';
    END IF;
    IF proof IS NULL THEN
        checksum := stage4.table_checksum(p_table);
        IF checksum IS DISTINCT FROM rows_->>'checksum' THEN
            RAISE EXCEPTION 'stage4: content checksum of % changed (% <> %)', p_table, checksum, rows_->>'checksum';
        END IF;
    ELSIF proof ? 'condition' THEN
        proven_now := stage4.rows_checksum(p_table, proof->>'condition');
        IF proven_now IS DISTINCT FROM jsonb_build_object('row_count', (proof->>'row_count')::bigint, 'checksum', proof->>'checksum') THEN
            RAISE EXCEPTION 'stage4: the rows of % where % are not those proven before: now %, were % rows (checksum %)',
                p_table, proof->>'condition', proven_now, proof->>'row_count', proof->>'checksum';
        END IF;
    END IF;
    -- A snapshot taken by an earlier toolkit lacks the keys added since: those are not compared.
    FOREACH key IN ARRAY ARRAY['columns', 'acl', 'policies', 'triggers', 'indexes', 'constraints', 'rls', 'force_rls',
                               'owner', 'comment', 'publications', 'column_definitions', 'column_statistics',
                               'replica_identity', 'statistics'] LOOP
        IF p_snapshot ? key AND now_->key IS DISTINCT FROM p_snapshot->key THEN
            RAISE EXCEPTION 'stage4: % of % differ from the snapshot: now %, was %', key, p_table, now_->key, p_snapshot->key;
        END IF;
    END LOOP;
    IF p_snapshot ? 'column_storage' AND NOT p_storage_changed AND now_->'column_storage' IS DISTINCT FROM p_snapshot->'column_storage' THEN
        RAISE EXCEPTION 'stage4: column storage of % differs from the snapshot: now %, was %', p_table,
            now_->'column_storage', p_snapshot->'column_storage';
    END IF;
    -- Serial columns' sequences: the same, and never behind the position they had.
    SELECT jsonb_agg(s->>'sequence') INTO missing
    FROM jsonb_array_elements(coalesce(p_snapshot->'owned_sequences', '[]')) s
    WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(now_->'owned_sequences') n WHERE n = s);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4: sequences of % missing or changed: % (now %)', p_table, missing, now_->'owned_sequences';
    END IF;
    -- Whatever depended on the table, of any kind, still does (a change may add: partitions, their indexes).
    SELECT jsonb_agg(c) INTO missing
    FROM jsonb_array_elements_text(coalesce(p_snapshot->'catalog', '[]')) c
    WHERE NOT (now_->'catalog') ? c;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4: no longer depending on %: %', p_table, missing;
    END IF;
    IF now_->'primary_key'->>'name' IS DISTINCT FROM p_snapshot->'primary_key'->>'name'
       OR (NOT p_layout_changed AND now_->'primary_key' IS DISTINCT FROM p_snapshot->'primary_key')
       OR NOT ((now_->'primary_key'->'columns') @> (p_snapshot->'primary_key'->'columns')) THEN
        RAISE EXCEPTION 'stage4: primary key of % is %, was %', p_table, now_->'primary_key', p_snapshot->'primary_key';
    END IF;
    IF (now_->'identity'->>'sequence') IS DISTINCT FROM (p_snapshot->'identity'->>'sequence')
       OR (now_->'identity'->'acl') IS DISTINCT FROM (p_snapshot->'identity'->'acl')
       OR coalesce((now_->'identity'->>'last_value')::bigint, 0) < coalesce((p_snapshot->'identity'->>'last_value')::bigint, 0) THEN
        RAISE EXCEPTION 'stage4: identity of % is %, was %', p_table, now_->'identity', p_snapshot->'identity';
    END IF;
    SELECT jsonb_agg(d->>'identity') INTO missing
    FROM jsonb_array_elements(p_snapshot->'dependents') d
    WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(now_->'dependents') n
                      WHERE n->>'identity' = d->>'identity' AND n->'acl' = d->'acl'
                        AND n->>'comment' IS NOT DISTINCT FROM d->>'comment'
                        AND (d->>'kind' IN ('function') OR n->>'definition' IS NOT DISTINCT FROM d->>'definition'));
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4: dependent objects of % missing or changed: %', p_table, missing;
    END IF;
END $$;

-- Raises if any partition of p_parent (at any depth) could be read around the parent's
-- policies: every partition must have RLS enabled and grant nothing to anon/authenticated.
CREATE OR REPLACE FUNCTION stage4.assert_partitions_secured(p_parent regclass)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    leak text;
BEGIN
    SELECT string_agg(format('%s (rls=%s)', t.relid, c.relrowsecurity), ', ') INTO leak
    FROM pg_partition_tree(p_parent) t JOIN pg_class c ON c.oid = t.relid
    WHERE t.relid <> p_parent
      AND (NOT c.relrowsecurity
           OR EXISTS (SELECT 1 FROM pg_roles r
                      WHERE r.rolname IN ('anon', 'authenticated')
                        AND has_table_privilege(r.oid, t.relid, 'SELECT,INSERT,UPDATE,DELETE')));
    IF leak IS NOT NULL THEN
        RAISE EXCEPTION 'stage4: partitions of % reachable around its RLS policies: %', p_parent, leak;
    END IF;
END $$;

-- No materialized view may be readable by the API roles (materialized views have no RLS).
CREATE OR REPLACE FUNCTION stage4.assert_no_api_readable_matviews()
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    exposed text;
BEGIN
    SELECT string_agg(c.oid::regclass::text, ', ') INTO exposed
    FROM pg_class c JOIN pg_roles r ON r.rolname IN ('anon', 'authenticated')
    WHERE c.relkind = 'm' AND has_table_privilege(r.oid, c.oid, 'SELECT');
    IF exposed IS NOT NULL THEN
        RAISE EXCEPTION 'stage4: materialized views readable by anon/authenticated: %', exposed;
    END IF;
END $$;

-- Nothing of schema stage4 is for the API: what this change created loses PUBLIC's default EXECUTE.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA stage4 FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA stage4 FROM PUBLIC;
