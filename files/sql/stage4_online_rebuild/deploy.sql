-- stage4_online_rebuild: copying a table into its new layout while the application writes.
--
-- Capture triggers log every write, batches copy the rows, the log is replayed until the copy
-- is proven equal, then the cutover (stage4_swap) takes its short lock. Repeatable.
SET LOCAL lock_timeout = '2s';

-- Online rebuild: the same result as rebuild_table() without holding the table for the copy.
--   prepare_online_rebuild()  (a procedure, CALLed outside any transaction block) builds the new
--       table as a shadow and copies the rows in batches, each batch its own short transaction,
--       while a trigger logs the key of every row the application writes meanwhile; then it
--       builds the shadow's keys and indexes and replays the logged keys until few are left.
--       Every step commits, so a run that is killed resumes where it stopped.
--   finish_online_rebuild()  (in the deploy transaction, under ACCESS EXCLUSIVE) replays the keys
--       logged since, swaps the shadow in and drops what the rebuild used: no row is copied again.
--   abort_online_rebuild()   removes everything a prepare left: trigger, shadow, log.
-- A partition is rebuilt the same way, into a plain shadow that the cutover attaches in its place
-- (OPT2 rebuilds each closed partition with clustered_layout(): its TOAST setting and GiST order).
-- One row per table being rebuilt; the row lock (FOR UPDATE) serialises every step on it.
CREATE TABLE IF NOT EXISTS stage4.online_rebuilds (
    relation    text        PRIMARY KEY,
    layout      jsonb       NOT NULL,  -- partition_by, primary_key, partitions (as rebuild_table() takes them);
                                       -- optional: toast, cluster_on (clustered_layout()), reloptions
                                       -- (layout_in_snapshot())
    shadow      text        NOT NULL,  -- the new table, in schema stage4_online
    delta       text        NOT NULL,  -- the keys written since capture started
    capture     text        NOT NULL,  -- the trigger function that logs them
    key_columns text[]      NOT NULL,  -- the original's primary key: copy order and logged key
    phase       text        NOT NULL CHECK (phase IN ('capture', 'copy', 'index', 'catch_up')),
    upper_key   jsonb,                 -- the last key when capture started: later rows come through the log
    last_key    jsonb,                 -- the last key copied
    copied      bigint      NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    proof       jsonb                  -- the shadow equals the original but for the logged keys (prove_shadow())
);
-- Toolkits deployed before the proof existed.
ALTER TABLE stage4.online_rebuilds ADD COLUMN IF NOT EXISTS proof jsonb;

-- The online rebuild of p_table, locked for this transaction; raises when there is none.
CREATE OR REPLACE FUNCTION stage4.lock_online_rebuild(p_table regclass)
RETURNS stage4.online_rebuilds LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds;
BEGIN
    SELECT * INTO state FROM stage4.online_rebuilds WHERE relation = p_table::text FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'stage4: no online rebuild of % in progress', p_table;
    END IF;
    RETURN state;
END $$;

-- The same, for a step that needs the shadow complete (its rows, keys and indexes in).
CREATE OR REPLACE FUNCTION stage4.lock_complete_shadow(p_table regclass)
RETURNS stage4.online_rebuilds LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds := stage4.lock_online_rebuild(p_table);
BEGIN
    IF state.phase <> 'catch_up' THEN
        RAISE EXCEPTION 'stage4: the shadow of % is not complete yet (phase %)', p_table, state.phase;
    END IF;
    RETURN state;
END $$;

-- "(t.a, t.b)" for the key columns, or their values in p_key as typed literals of p_table's columns.
CREATE OR REPLACE FUNCTION stage4.key_row(p_table regclass, p_columns text[], p_alias text, p_key jsonb DEFAULT NULL)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT '(' || string_agg(CASE WHEN p_key IS NULL THEN format('%I.%I', p_alias, c)
                                  ELSE format('%L::%s', p_key->>c, format_type(a.atttypid, a.atttypmod)) END,
                             ', ' ORDER BY k.ord) || ')'
    FROM unnest(p_columns) WITH ORDINALITY k(c, ord)
    JOIN pg_attribute a ON a.attrelid = p_table AND a.attname = k.c
$$;

-- Autovacuum off (p_enabled false) or back to the server's settings on p_table, or on every leaf
-- partition of it. A rebuild's shadow and log are vacuumed by nobody while they are built: an
-- autovacuum worker on them would hold the cutover's ALTER and DROP until the deadlock check
-- cancels it (deadlock_timeout, 1 s per relation; 7.1 s for OPT2's 7 partitions at 1,000,000
-- features under load). The shadow is analyzed by analyze_shadow(), and vacuumed after the swap.
CREATE OR REPLACE FUNCTION stage4.set_autovacuum(p_table regclass, p_enabled boolean)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    leaf regclass;
BEGIN
    -- pg_partition_tree() lists nothing for a plain table that is no partition.
    FOR leaf IN SELECT oid FROM pg_class WHERE oid = p_table AND relkind = 'r'
                UNION SELECT relid FROM pg_partition_tree(p_table) WHERE isleaf LOOP
        EXECUTE format(CASE WHEN p_enabled THEN 'ALTER TABLE %s RESET (autovacuum_enabled, toast.autovacuum_enabled)'
                            ELSE 'ALTER TABLE %s SET (autovacuum_enabled = false, toast.autovacuum_enabled = false)' END,
                       leaf);
    END LOOP;
END $$;

-- Step 1: the shadow, the log of written keys and the function that fills it (not yet attached).
CREATE OR REPLACE FUNCTION stage4.start_online_rebuild(p_table regclass, p_layout jsonb)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    before jsonb;
    state stage4.online_rebuilds;
    key_columns text[];
    shadow regclass;
    delta text;
    capture text;
    columns text;
BEGIN
    SELECT * INTO state FROM stage4.online_rebuilds WHERE relation = p_table::text FOR UPDATE;
    IF FOUND THEN
        IF state.layout IS DISTINCT FROM p_layout THEN
            RAISE EXCEPTION 'stage4: % is being rebuilt online into another layout (%); abort that rebuild first',
                p_table, state.layout;
        END IF;
        RETURN;
    END IF;
    before := stage4.describe_table(p_table, false);
    IF before->'primary_key' IS NULL THEN
        RAISE EXCEPTION 'stage4: % has no primary key, which an online rebuild needs to copy in batches and replay writes',
            p_table;
    END IF;
    IF jsonb_array_length(before->'referenced_by') > 0 THEN
        RAISE EXCEPTION 'stage4: % is referenced by foreign keys %; they would not survive a rebuild',
            p_table, before->'referenced_by';
    END IF;
    key_columns := ARRAY(SELECT jsonb_array_elements_text(before->'primary_key'->'columns'));
    columns := (SELECT string_agg(quote_ident(c), ', ') FROM unnest(key_columns) c);
    shadow := stage4.create_shadow(p_table, p_layout->>'partition_by', p_layout->'partitions');
    PERFORM stage4.register_original_key(p_table, shadow, ARRAY(SELECT jsonb_array_elements_text(p_layout->'primary_key')));
    IF p_layout ? 'toast' THEN
        EXECUTE format('ALTER TABLE %s ALTER COLUMN %I %s', shadow, p_layout->'toast'->>'column',
                       CASE p_layout->'toast'->>'mode' WHEN 'lz4' THEN 'SET COMPRESSION lz4' ELSE 'SET STORAGE EXTERNAL' END);
    END IF;
    delta := format('stage4_online.%I', (before->>'name') || '_delta');
    EXECUTE format('CREATE TABLE %s AS SELECT %s FROM %s WITH NO DATA', delta, columns, p_table);
    EXECUTE format('ALTER TABLE %s ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY', delta);
    PERFORM stage4.set_autovacuum(shadow, false);
    PERFORM stage4.set_autovacuum(delta::regclass, false);
    -- SECURITY DEFINER: the application's roles write the log without any right on it.
    capture := format('stage4_online.%I()', (before->>'name') || '_capture');
    EXECUTE format($fmt$
        CREATE FUNCTION %1$s RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                RAISE EXCEPTION 'stage4: %%.%% is being rebuilt online; TRUNCATE it after the rebuild', TG_TABLE_SCHEMA, TG_TABLE_NAME;
            END IF;
            IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND %3$s IS DISTINCT FROM %4$s) THEN
                INSERT INTO %2$s (%5$s) VALUES %3$s;
            END IF;
            IF TG_OP <> 'DELETE' THEN
                INSERT INTO %2$s (%5$s) VALUES %4$s;
            END IF;
            RETURN NULL;
        END $body$$fmt$,
        capture, delta, stage4.key_row(p_table, key_columns, 'old'), stage4.key_row(p_table, key_columns, 'new'), columns);
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', capture);
    INSERT INTO stage4.online_rebuilds (relation, layout, shadow, delta, capture, key_columns, phase)
    VALUES (p_table::text, p_layout, shadow::text, delta, capture, key_columns, 'capture');
END $fn$;

-- Step 2: the trigger that logs every key written from now on. CREATE TRIGGER waits for the
-- writers in flight (the caller's lock_timeout bounds that wait), so every write either is
-- visible to the copy that follows or is logged.
CREATE OR REPLACE FUNCTION stage4.start_capture(p_table regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds := stage4.lock_online_rebuild(p_table);
    first_upper_key jsonb;
    target regclass;
BEGIN
    IF state.phase <> 'capture' THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TRIGGER stage4_online_capture AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s',
                   p_table, state.capture);
    -- ALWAYS: writes applied in replica mode (logical replication) are logged too.
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER stage4_online_capture', p_table);
    -- A statement trigger is not cloned to partitions: each gets its own, or TRUNCATE of a partition
    -- would empty it unseen.
    FOR target IN SELECT p_table UNION ALL SELECT relid FROM pg_partition_tree(p_table) WHERE relid <> p_table LOOP
        EXECUTE format('CREATE TRIGGER stage4_online_no_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s',
                       target, state.capture);
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER stage4_online_no_truncate', target);
    END LOOP;
    EXECUTE format('SELECT to_jsonb(k) FROM (SELECT %s FROM %s ORDER BY %s LIMIT 1) k',
                   (SELECT string_agg(quote_ident(c), ', ') FROM unnest(state.key_columns) c), p_table,
                   (SELECT string_agg(quote_ident(c) || ' DESC', ', ') FROM unnest(state.key_columns) c))
        INTO first_upper_key;
    UPDATE stage4.online_rebuilds SET phase = 'copy', upper_key = first_upper_key
    WHERE relation = state.relation;
END $$;

-- Removes start_capture()'s triggers from p_table and its partitions.
CREATE OR REPLACE FUNCTION stage4.drop_capture_triggers(p_table regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    target regclass;
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS stage4_online_capture ON %s', p_table);
    FOR target IN SELECT p_table UNION ALL SELECT relid FROM pg_partition_tree(p_table) WHERE relid <> p_table LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS stage4_online_no_truncate ON %s', target);
    END LOOP;
END $$;

-- Step 3: copies the next p_rows rows (in key order, up to the last key when capture started)
-- into the shadow; returns false once the copy is complete.
CREATE OR REPLACE FUNCTION stage4.copy_batch(p_table regclass, p_rows int)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds := stage4.lock_online_rebuild(p_table);
    key_t text := stage4.key_row(p_table, state.key_columns, 't');
    batch_rows bigint;
    batch_last_key jsonb;
BEGIN
    IF state.phase <> 'copy' THEN
        RETURN false;
    END IF;
    IF state.upper_key IS NOT NULL THEN
        EXECUTE format('WITH batch AS (SELECT * FROM %1$s t WHERE %2$s <= %3$s%4$s ORDER BY %5$s LIMIT %6$s), '
                       '     copied AS (INSERT INTO %7$s (%10$s) OVERRIDING SYSTEM VALUE SELECT %10$s FROM batch) '
                       'SELECT count(*), (SELECT to_jsonb(k) FROM (SELECT %8$s FROM batch ORDER BY %9$s LIMIT 1) k) FROM batch',
                       p_table, key_t, stage4.key_row(p_table, state.key_columns, NULL, state.upper_key),
                       CASE WHEN state.last_key IS NULL THEN ''
                            ELSE format(' AND %s > %s', key_t, stage4.key_row(p_table, state.key_columns, NULL, state.last_key)) END,
                       (SELECT string_agg(format('t.%I', c), ', ') FROM unnest(state.key_columns) c),
                       p_rows, state.shadow,
                       (SELECT string_agg(quote_ident(c), ', ') FROM unnest(state.key_columns) c),
                       (SELECT string_agg(quote_ident(c) || ' DESC', ', ') FROM unnest(state.key_columns) c),
                       stage4.copied_columns(p_table, NULL))
            INTO batch_rows, batch_last_key;
    END IF;
    UPDATE stage4.online_rebuilds r
    SET copied = r.copied + coalesce(batch_rows, 0),
        last_key = coalesce(batch_last_key, r.last_key),
        phase = CASE WHEN coalesce(batch_rows, 0) < p_rows THEN 'index' ELSE 'copy' END
    WHERE relation = state.relation;
    RETURN coalesce(batch_rows, 0) = p_rows;
END $$;

-- Step 4: the shadow's primary key, constraints and indexes, built in bulk once the rows are in.
-- A layout with toast first rewrites the values stored otherwise (a copy keeps a value compressed
-- as it was); one with cluster_on then orders the rows by that index (CLUSTER of the shadow, which
-- no one else reads). The shadow of a partition gets its partition constraint as a CHECK, so that
-- the cutover's ATTACH does not scan it under the lock.
CREATE OR REPLACE FUNCTION stage4.index_shadow(p_table regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds := stage4.lock_online_rebuild(p_table);
    before jsonb := stage4.describe_table(p_table, false);
BEGIN
    IF state.phase <> 'index' THEN
        RETURN;
    END IF;
    -- The rows of the keys written since capture started are replayed from the table anyway. Dropped
    -- now, they cannot break the new keys: when the new primary key drops a column of the old one
    -- (a partitioned table back to a plain one), a row whose key was updated between two batches
    -- may have been copied under both keys.
    EXECUTE format('DELETE FROM %s s USING %s d WHERE %s = %s', state.shadow, state.delta,
                   stage4.key_row(p_table, state.key_columns, 's'), stage4.key_row(p_table, state.key_columns, 'd'));
    IF state.layout ? 'toast' THEN
        PERFORM stage4.rewrite_stale_toast(state.shadow::regclass, state.layout->'toast', 'true');
    END IF;
    IF state.layout ? 'cluster_on' THEN
        PERFORM stage4.create_shadow_index(state.shadow::regclass, before, state.layout->>'cluster_on');
        EXECUTE format('CLUSTER %s USING %I', state.shadow, state.layout->>'cluster_on');
    END IF;
    PERFORM stage4.complete_shadow(state.shadow::regclass, before,
                                   ARRAY(SELECT jsonb_array_elements_text(state.layout->'primary_key')));
    IF before->>'partition_of' IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT stage4_partition_bound CHECK (%s)', state.shadow,
                       pg_get_partition_constraintdef(p_table));
    END IF;
    UPDATE stage4.online_rebuilds SET phase = 'catch_up' WHERE relation = state.relation;
END $$;

-- Rewrites the values of p_toast's column (alias t, rows meeting p_condition) that are not stored
-- as its mode asks (lz4: compressed with lz4; external: not compressed), with identical content:
-- a value copied or clustered keeps the compression it had. Returns how many rows it rewrote.
-- The caller disables the table's UPDATE triggers if it has any.
CREATE OR REPLACE FUNCTION stage4.rewrite_stale_toast(p_table regclass, p_toast jsonb, p_condition text)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    column_name text := p_toast->>'column';
    column_type text := (SELECT format_type(atttypid, atttypmod) FROM pg_attribute
                         WHERE attrelid = p_table AND attname = column_name AND NOT attisdropped);
    rewritten bigint;
BEGIN
    EXECUTE format('UPDATE ONLY %1$s t SET %2$I = (%2$I::text)::%3$s WHERE (%4$s) AND %5$s', p_table, column_name, column_type,
                   p_condition, CASE p_toast->>'mode' WHEN 'lz4' THEN format('pg_column_compression(%I) <> ''lz4''', column_name)
                                                      ELSE format('pg_column_compression(%I) IS NOT NULL', column_name) END);
    GET DIAGNOSTICS rewritten = ROW_COUNT;
    RETURN rewritten;
END $$;

-- Replays up to p_limit logged writes (all when NULL), oldest first: the shadow's rows of those
-- keys are replaced by the original's current rows (their values stored as the layout's toast
-- asks). Returns how many log entries it took and the condition (alias t) selecting their keys.
-- The entries are taken before the rows are read, so a write committed in between is still
-- logged for the next replay.
CREATE OR REPLACE FUNCTION stage4.replay_logged(p_table regclass, p_limit int, OUT taken bigint, OUT keys_condition text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds := stage4.lock_complete_shadow(p_table);
    columns text := (SELECT string_agg(quote_ident(c), ', ') FROM unnest(state.key_columns) c);
    keys jsonb;
BEGIN
    EXECUTE format('WITH taken AS (DELETE FROM %1$s WHERE seq IN (SELECT seq FROM %1$s ORDER BY seq%2$s) RETURNING %3$s) '
                   'SELECT count(*), jsonb_agg(DISTINCT to_jsonb(taken)) FROM taken',
                   state.delta, CASE WHEN p_limit IS NULL THEN '' ELSE ' LIMIT ' || p_limit END, columns)
        INTO taken, keys;
    IF taken = 0 THEN
        RETURN;
    END IF;
    keys_condition := format('%s IN (SELECT %s FROM jsonb_populate_recordset(NULL::%s, %L) k)',
                             stage4.key_row(p_table, state.key_columns, 't'),
                             (SELECT string_agg(format('k.%I', c), ', ') FROM unnest(state.key_columns) c), p_table, keys);
    EXECUTE format('DELETE FROM %s t WHERE %s', state.shadow, keys_condition);
    EXECUTE format('INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM %s t WHERE %s', state.shadow,
                   stage4.copied_columns(p_table, NULL), stage4.copied_columns(p_table, 't'), p_table, keys_condition);
    IF state.layout ? 'toast' THEN
        PERFORM stage4.rewrite_stale_toast(state.shadow::regclass, state.layout->'toast', keys_condition);
    END IF;
END $$;

-- Step 5: replays up to p_limit logged writes (all when NULL), before the proof. Returns how many
-- log entries it took. Replaying this way voids a proof (prove_shadow()), which relies on every
-- key then logged staying logged until it is proven again (replay_proven()).
CREATE OR REPLACE FUNCTION stage4.apply_delta(p_table regclass, p_limit int)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    replayed record;
BEGIN
    SELECT * INTO replayed FROM stage4.replay_logged(p_table, p_limit);
    IF replayed.taken > 0 THEN
        UPDATE stage4.online_rebuilds SET proof = NULL WHERE relation = p_table::text AND proof IS NOT NULL;
    END IF;
    RETURN replayed.taken;
END $$;

-- Step 7, after the proof: replays up to p_limit logged writes (all when NULL) and, in the same
-- transaction, compares both tables on their keys but for those logged again since (left to the
-- next replay), in one statement: at one snapshot. The proof then still holds (every key without
-- a log entry has the same row on both sides), so what was written during the proof is replayed
-- and proven outside any lock, and the cutover replays and compares only the last few keys
-- (at 1,000,000 features under the workload harness it had 9,007 to do, written during the proof's
-- 97 s). Returns how many log entries it took.
CREATE OR REPLACE FUNCTION stage4.replay_proven(p_table regclass, p_limit int)
RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds := stage4.lock_complete_shadow(p_table);
    not_logged text := format('NOT EXISTS (SELECT 1 FROM %s d WHERE %s = %s)', state.delta,
                              stage4.key_row(p_table, state.key_columns, 'd'), stage4.key_row(p_table, state.key_columns, 't'));
    replayed record;
    original jsonb;
    shadow jsonb;
BEGIN
    IF state.proof IS NULL THEN
        RAISE EXCEPTION 'stage4: the shadow of % is not proven (prove_shadow())', p_table;
    END IF;
    SELECT * INTO replayed FROM stage4.replay_logged(p_table, p_limit);
    IF replayed.taken = 0 THEN
        RETURN 0;
    END IF;
    SELECT stage4.rows_checksum(p_table, format('(%s) AND %s', replayed.keys_condition, not_logged)),
           stage4.rows_checksum(state.shadow::regclass, format('(%s) AND %s', replayed.keys_condition, not_logged))
        INTO original, shadow;
    IF original IS DISTINCT FROM shadow THEN
        RAISE EXCEPTION 'stage4: after replaying % logged writes, the shadow of % differs from it on their keys: % rows (checksum %), shadow % rows (checksum %)',
            replayed.taken, p_table, original->>'row_count', original->>'checksum', shadow->>'row_count', shadow->>'checksum';
    END IF;
    UPDATE stage4.online_rebuilds
    SET proof = proof || jsonb_build_object('writes_replayed_after_proof', coalesce((proof->>'writes_replayed_after_proof')::bigint, 0) + replayed.taken)
    WHERE relation = state.relation;
    RETURN replayed.taken;
END $$;

CREATE OR REPLACE FUNCTION stage4.analyze_shadow(p_table regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE format('ANALYZE %s', (stage4.lock_online_rebuild(p_table)).shadow);
END $$;

-- Step 6: proves, outside any exclusive lock, that the shadow holds exactly the original's rows but
-- for the keys still logged. One statement reads both tables and the log, at one snapshot: every
-- write is logged, and a replay takes its entries in the transaction that copies the rows, so at
-- that snapshot a key without an entry has the same row on both sides. The cutover then compares
-- only the keys logged by then (these and later ones: nothing replays in between), so it holds
-- its lock for the size of the log, not of the table.
CREATE OR REPLACE FUNCTION stage4.prove_shadow(p_table regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds := stage4.lock_complete_shadow(p_table);
    not_logged text := format('NOT EXISTS (SELECT 1 FROM %s d WHERE %s = %s)', state.delta,
                              stage4.key_row(p_table, state.key_columns, 'd'), stage4.key_row(p_table, state.key_columns, 't'));
    original jsonb;
    shadow jsonb;
BEGIN
    SELECT stage4.rows_checksum(p_table, not_logged), stage4.rows_checksum(state.shadow::regclass, not_logged)
        INTO original, shadow;
    IF original IS DISTINCT FROM shadow THEN
        RAISE EXCEPTION 'stage4: the shadow of % differs from it on keys not written since the copy: % rows (checksum %), shadow % rows (checksum %)',
            p_table, original->>'row_count', original->>'checksum', shadow->>'row_count', shadow->>'checksum';
    END IF;
    UPDATE stage4.online_rebuilds SET proof = original || jsonb_build_object('proven_at', now())
    WHERE relation = state.relation;
END $$;

-- The materialized views that read p_table and no other dependent of it, built over the shadow
-- before the cutover: recreated WITH DATA inside the cutover, each scans the whole table under the
-- lock (OPT3's search view and OPT5's aggregates at 1,000,000 features ran OPT1's cutover past its
-- 1.8 s transaction_timeout), where swap_shadow() only moves a prebuilt one into place. Each is
-- built in stage4_online under its own name, from its definition printed with the table's schema
-- as the search_path (the table named unqualified) and run with stage4_online first (the name then
-- finds the shadow), with its indexes and statistics, and readable by its builder alone (the cutover
-- gives it the original's grants). Its rows are the shadow's at the end of the prepare, as a REFRESH then would
-- leave them. One whose name is taken there, or that is unpopulated, is left to the cutover; so is
-- one the cutover finds different from the original (swap_shadow() compares them). Returns how many.
CREATE OR REPLACE FUNCTION stage4.prebuild_matviews(p_table regclass)
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds := stage4.lock_complete_shadow(p_table);
    table_schema text := (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = p_table);
    mv record;
    prebuilt text;
    definition text;
    index_def text;
    grantee text;
    built int := 0;
BEGIN
    PERFORM stage4.drop_prebuilt_matviews(state.shadow::regclass);  -- a resumed prepare: built again, fresher
    FOR mv IN
        SELECT v.oid, v.relname, v.oid::regclass::text AS identity, v.reloptions
        FROM stage4.dependent_objects(p_table) d JOIN pg_class v ON d.classid = 'pg_class'::regclass AND v.oid = d.objid
        WHERE v.relkind = 'm' AND v.relispopulated AND d.depth = 1
        ORDER BY v.oid
    LOOP
        prebuilt := format('stage4_online.%I', mv.relname);
        CONTINUE WHEN to_regclass(prebuilt) IS NOT NULL;
        PERFORM set_config('search_path', table_schema, true);
        definition := rtrim(pg_get_viewdef(mv.oid), ';');
        PERFORM set_config('search_path', 'stage4_online, ' || table_schema, true);
        EXECUTE format('CREATE MATERIALIZED VIEW %s%s AS %s', prebuilt,
                       CASE WHEN mv.reloptions IS NULL THEN '' ELSE format(' WITH (%s)', array_to_string(mv.reloptions, ', ')) END,
                       definition);
        PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
        FOR index_def IN SELECT jsonb_array_elements_text(stage4.index_definitions(mv.oid)) LOOP
            EXECUTE replace(index_def, format(' ON %s USING ', mv.identity), format(' ON %s USING ', prebuilt));
        END LOOP;
        -- Its statistics move with it. Without them, OPT1's cutover at 1,000,000 features left the
        -- search RPC on OPT3's view 10 to 30 times slower until autovacuum analyzed it, minutes later.
        EXECUTE 'ANALYZE ' || prebuilt;
        FOR grantee IN
            SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
            FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
            WHERE c.oid = prebuilt::regclass AND a.grantee <> c.relowner
        LOOP
            EXECUTE format('REVOKE ALL ON %s FROM %s', prebuilt, grantee);
        END LOOP;
        built := built + 1;
    END LOOP;
    RETURN built;
END $$;

-- Steps 1 to 7 (and statistics), each in its own transactions; CALL it outside a transaction
-- block. A procedure with a SET clause cannot COMMIT, hence the schema-qualified names and the
-- settings made per transaction. p_lock_timeout bounds every lock wait; once the trigger is in
-- place nothing here locks out the application.
CREATE OR REPLACE PROCEDURE stage4.prepare_online_rebuild(
    p_table regclass, p_layout jsonb, p_batch_rows int DEFAULT 10000, p_lock_timeout text DEFAULT '2s')
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout, true);
    PERFORM stage4.start_online_rebuild(p_table, p_layout);
    COMMIT;
    PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout, true);
    PERFORM stage4.start_capture(p_table);
    COMMIT;
    LOOP
        PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout, true);
        EXIT WHEN NOT stage4.copy_batch(p_table, p_batch_rows);
        COMMIT;
    END LOOP;
    COMMIT;
    PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout, true);
    PERFORM stage4.index_shadow(p_table);
    COMMIT;
    -- Replay until a batch is not full: the cutover then replays less than one batch.
    LOOP
        PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout, true);
        EXIT WHEN stage4.apply_delta(p_table, p_batch_rows) < p_batch_rows;
        COMMIT;
    END LOOP;
    COMMIT;
    PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout, true);
    PERFORM stage4.analyze_shadow(p_table);
    COMMIT;
    PERFORM stage4.prove_shadow(p_table);
    COMMIT;
    -- Replay and prove what was written meanwhile until a round takes fewer than 100 writes (or
    -- after 10 rounds, when the application writes faster than this keeps up): the cutover has that
    -- many left.
    FOR round IN 1..10 LOOP
        PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout, true);
        EXIT WHEN stage4.replay_proven(p_table, p_batch_rows) < 100;
        COMMIT;
    END LOOP;
    COMMIT;
    PERFORM pg_catalog.set_config('lock_timeout', p_lock_timeout, true);
    PERFORM stage4.prebuild_matviews(p_table);
    COMMIT;
END $$;

-- The cutover, in the caller's transaction: locks p_table (ACCESS EXCLUSIVE, within the caller's
-- lock_timeout), replays the writes logged since the prepare, saves p_change's snapshot of the
-- table and swaps the shadow in. A proven shadow (prove_shadow()) is compared with the table on the
-- replayed keys only (replay_proven()); otherwise both tables' rows are checksummed whole, under the lock. Without a
-- prepared rebuild it does the whole rebuild here (rebuild_table(), the copy under the lock), so
-- the change also runs as one transaction (a Supabase migration).
CREATE OR REPLACE FUNCTION stage4.finish_online_rebuild(p_change text, p_table regclass, p_layout jsonb)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds;
    before jsonb;
    replayed bigint;
    swapped regclass;
BEGIN
    PERFORM stage4.lock_for_rebuild(p_table);
    SELECT * INTO state FROM stage4.online_rebuilds WHERE relation = p_table::text FOR UPDATE;
    IF NOT FOUND THEN
        before := stage4.save_snapshot(p_change, p_table);
        PERFORM stage4.rebuild_table(p_table, p_layout->>'partition_by',
                                     ARRAY(SELECT jsonb_array_elements_text(p_layout->'primary_key')), p_layout->'partitions',
                                     CASE WHEN p_layout ? 'reloptions' THEN ARRAY(SELECT jsonb_array_elements_text(p_layout->'reloptions')) END);
        RETURN;
    END IF;
    IF state.layout IS DISTINCT FROM p_layout THEN
        RAISE EXCEPTION 'stage4: % was prepared for the layout %, it now needs %; prepare it again', p_table, state.layout, p_layout;
    END IF;
    IF state.phase <> 'catch_up' THEN
        RAISE EXCEPTION 'stage4: the online rebuild of % was not prepared to the end (phase %)', p_table, state.phase;
    END IF;
    PERFORM stage4.drop_capture_triggers(p_table);
    IF state.proof IS NULL THEN
        PERFORM stage4.apply_delta(p_table, NULL);
        before := stage4.save_snapshot(p_change, p_table);
    ELSE
        replayed := stage4.replay_proven(p_table, NULL);
        before := stage4.save_proven_snapshot(p_change, p_table,
            (SELECT proof FROM stage4.online_rebuilds WHERE relation = state.relation)
            || jsonb_build_object('writes_replayed_at_cutover', replayed));
    END IF;
    -- A plain table gets the layout's storage parameters, or keeps its own (a partitioned one has none).
    PERFORM stage4.set_autovacuum(state.shadow::regclass, true);
    swapped := stage4.swap_shadow(p_table, state.shadow::regclass, before,
                                  CASE WHEN p_layout->>'partition_by' IS NULL
                                       THEN ARRAY(SELECT jsonb_array_elements_text(coalesce(p_layout->'reloptions', before->'reloptions'))) END);
    -- A view prebuilt for a materialized view dropped since the prepare.
    PERFORM stage4.drop_prebuilt_matviews(swapped);
    EXECUTE format('DROP TABLE %s', state.delta);
    EXECUTE format('DROP FUNCTION %s', state.capture);
    DELETE FROM stage4.online_rebuilds WHERE relation = state.relation;
    PERFORM stage4.drop_online_schema_if_empty();
END $$;

-- Removes what a prepare left for p_table (trigger, shadow and its partitions, log); returns
-- whether there was anything. The table itself is untouched: its rows never left it.
CREATE OR REPLACE FUNCTION stage4.abort_online_rebuild(p_table regclass)
RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    state stage4.online_rebuilds;
BEGIN
    SELECT * INTO state FROM stage4.online_rebuilds WHERE relation = p_table::text FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM stage4.drop_capture_triggers(p_table);
    -- The prebuilt materialized views first: they read the shadow.
    PERFORM stage4.drop_prebuilt_matviews(to_regclass(state.shadow));
    EXECUTE format('DROP TABLE IF EXISTS %s, %s', state.shadow, state.delta);
    EXECUTE format('DROP FUNCTION IF EXISTS %s', state.capture);
    PERFORM stage4.drop_unused_key_registries();
    DELETE FROM stage4.online_rebuilds WHERE relation = state.relation;
    PERFORM stage4.drop_online_schema_if_empty();
    RETURN true;
END $$;

-- The application's API contract still answers: the view and the five RPC functions run.
-- (Their results are compared by the benchmark's fingerprints; this catches breakage early,
-- inside the change's transaction.) No pinned search_path: the API runs with the caller's.
-- With arguments that select next to nothing (a word no feature has, a 1 m radius, a year with no
-- partition) every statement of the bodies still runs. A change that holds ACCESS EXCLUSIVE on the
-- table (OPT1, OPT2, OPT4 and their reverts) passes p_under_lock true: nothing whose cost depends on
-- the application's SQL may run under that lock (a radius RPC without a bounding-box prefilter
-- scans the whole table, 18 to 31 s a call at 1,000,000 features), so each call is only planned
-- (EXPLAIN: an inlined SQL body is planned against the new table, nothing runs); the benchmark that
-- follows the change runs them all, outside the lock, and its fingerprints must match.
DROP FUNCTION IF EXISTS stage4.assert_api_answers(), stage4.assert_api_answers(boolean);  -- now with p_under_lock
CREATE OR REPLACE FUNCTION stage4.assert_api_answers(p_under_lock boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql AS $$  -- VOLATILE: EXPLAIN is not allowed in a stable function
DECLARE
    call text;
    caller_path text := current_setting('search_path');
BEGIN
    PERFORM stage4.use_api_search_path();
    FOREACH call IN ARRAY ARRAY[
        'SELECT 1 FROM public.geometrias_publicas LIMIT 1',
        'SELECT count(*) FROM public.search_geometrias(''stage4apicheck'', NULL, 1)',
        'SELECT count(*) FROM public.geometrias_no_raio(-46.63, -23.55, 1)',
        'SELECT count(*) FROM public.area_por_categoria(1900)',
        'SELECT count(*) FROM public.extensao_por_categoria()',
        'SELECT count(*) FROM public.resumo_anual()'] LOOP
        IF p_under_lock THEN
            EXECUTE 'EXPLAIN (COSTS OFF) ' || call;
        ELSE
            EXECUTE call;
        END IF;
    END LOOP;
    PERFORM set_config('search_path', caller_path, true);
END $$;

-- Nothing of schema stage4 is for the API: what this change created loses PUBLIC's default EXECUTE.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA stage4 FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA stage4 FROM PUBLIC;
