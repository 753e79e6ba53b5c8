-- stage4_shadow: the new table an online change builds beside the old one.
--
-- Secured partitions (RLS and grants as the parent's), the key registry that keeps a
-- partitioned table's primary key unique across partitions, the shadow table with every
-- column, default, constraint and index of the original, and what a swap retires (dropped
-- once the transactions older than the swap have ended). Repeatable.
SET LOCAL lock_timeout = '2s';

-- A new partition of p_parent that is safe in a Supabase public schema: RLS enabled with no
-- policy of its own and no grants to the API roles, so naming the partition directly never
-- bypasses the parent's policies. Rows reached through the parent keep the parent's policies.
-- p_schema: where the partition lives (default: the parent's schema).
DROP FUNCTION IF EXISTS stage4.create_secured_partition(regclass, text, text);  -- now with p_schema
CREATE OR REPLACE FUNCTION stage4.create_secured_partition(p_parent regclass, p_name text, p_bound text,
                                                           p_schema text DEFAULT NULL)
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    schema_name text := coalesce(p_schema, (SELECT relnamespace::regnamespace::text FROM pg_class WHERE oid = p_parent));
    partition regclass;
    api_role text;
BEGIN
    EXECUTE format('CREATE TABLE %s.%I PARTITION OF %s %s', schema_name, p_name, p_parent, p_bound);
    partition := format('%s.%I', schema_name, p_name)::regclass;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', partition);
    EXECUTE format('REVOKE ALL ON %s FROM PUBLIC', partition);
    FOR api_role IN SELECT rolname FROM pg_roles WHERE rolname IN ('anon', 'authenticated') LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %I', partition, api_role);
    END LOOP;
    EXECUTE format('COMMENT ON TABLE %s IS %L', partition,
                   format('Partition %s. Query the partitioned parent: RLS is enabled here without policies.', p_bound));
    PERFORM stage4.add_key_truncate_guard(partition);
    RETURN partition;
END $$;

-- The columns a copy of p_table's rows writes (qualified by p_alias when given): all but the
-- generated ones, which the new table computes again (writing them is an error).
CREATE OR REPLACE FUNCTION stage4.copied_columns(p_table regclass, p_alias text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(CASE WHEN p_alias IS NULL THEN quote_ident(attname) ELSE format('%I.%I', p_alias, attname) END,
                      ', ' ORDER BY attnum)
    FROM pg_attribute
    WHERE attrelid = p_table AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
$$;

-- Key registries. A partitioned table's primary key must include its partition key, so OPT1's
-- (id, data_referencia) alone would let two rows share an id, and the revert, which puts back the
-- primary key (id), would then fail. A rebuild into a primary key wider than the table's has one:
-- stage4_keys.<table> holds the original key of every row, under a primary key, kept by a row
-- trigger of the new table (cloned to every partition, present and future) that answers a duplicate
-- as the original primary key did (SQLSTATE 23505, its name, "Key (id)=(5) already exists.").
-- INSERT ... ON CONFLICT DO NOTHING waits for a concurrent insert of the same key, as a unique index
-- does, whatever the isolation level, and needs no subtransaction per row. TRUNCATE forgets the
-- keys of what it empties: a statement trigger on the table and on each partition (statement
-- triggers are not cloned; add_key_truncate_guard() gives one to partitions made later).
CREATE OR REPLACE FUNCTION stage4.is_rollout_trigger(p_trigger oid)
RETURNS boolean LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.nspname IN ('stage4_keys', 'stage4_online')
    FROM pg_trigger t JOIN pg_proc f ON f.oid = t.tgfoid JOIN pg_namespace n ON n.oid = f.pronamespace
    WHERE t.oid = p_trigger
$$;

CREATE OR REPLACE FUNCTION stage4.create_key_registry(p_table regclass, p_name text, p_key_columns text[], p_constraint text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    registry text := format('stage4_keys.%I', p_name);
    guard text := format('stage4_keys.%I()', p_name || '_unique_key');
    columns text := (SELECT string_agg(quote_ident(c), ', ') FROM unnest(p_key_columns) c);
    target regclass;
BEGIN
    IF to_regnamespace('stage4_keys') IS NULL THEN
        CREATE SCHEMA stage4_keys;
        REVOKE ALL ON SCHEMA stage4_keys FROM PUBLIC;
        COMMENT ON SCHEMA stage4_keys IS 'Stage 4: the original primary key of partitioned tables, kept unique (stage4.create_key_registry()).';
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS %s', registry);
    EXECUTE format('CREATE TABLE %s AS SELECT %s FROM %s WITH NO DATA', registry, columns, p_table);
    EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (%s)', registry, columns);
    EXECUTE format('COMMENT ON TABLE %s IS %L', registry,
                   format('The %s of every row of the table %s, kept unique by its trigger %s.', columns, p_name, guard));
    -- SECURITY DEFINER: the application's roles keep the registry without any right on it.
    EXECUTE format($f$
        CREATE OR REPLACE FUNCTION %1$s RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $body$
        BEGIN
            IF TG_OP = 'TRUNCATE' THEN
                IF (SELECT relispartition FROM pg_class WHERE oid = TG_RELID) THEN
                    EXECUTE format('DELETE FROM %2$s r USING %%I.%%I t WHERE %3$s = %4$s', TG_TABLE_SCHEMA, TG_TABLE_NAME);
                ELSE
                    DELETE FROM %2$s;
                END IF;
                RETURN NULL;
            END IF;
            IF TG_OP = 'UPDATE' AND %5$s IS NOT DISTINCT FROM %6$s THEN
                RETURN NULL;
            END IF;
            IF TG_OP <> 'INSERT' THEN
                DELETE FROM %2$s r WHERE %3$s = %5$s;
            END IF;
            IF TG_OP <> 'DELETE' THEN
                INSERT INTO %2$s (%7$s) VALUES %6$s ON CONFLICT DO NOTHING;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'duplicate key value violates unique constraint "%8$s"' USING
                        ERRCODE = 'unique_violation', CONSTRAINT = %9$L, SCHEMA = TG_TABLE_SCHEMA, TABLE = TG_TABLE_NAME,
                        DETAIL = format('Key (%7$s)=(%%s) already exists.', concat_ws(', ', %10$s));
                END IF;
            END IF;
            RETURN NULL;
        END $body$$f$,
        guard, registry, stage4.key_row(p_table, p_key_columns, 'r'), stage4.key_row(p_table, p_key_columns, 't'),
        stage4.key_row(p_table, p_key_columns, 'old'), stage4.key_row(p_table, p_key_columns, 'new'), columns,
        replace(p_constraint, '"', '""'), p_constraint,
        (SELECT string_agg(format('new.%I', c), ', ') FROM unnest(p_key_columns) c));
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', guard);
    EXECUTE format('CREATE TRIGGER stage4_unique_key AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION %s',
                   p_table, guard);
    -- ALWAYS: rows written in replica mode (logical replication) are registered too.
    EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER stage4_unique_key', p_table);
    FOR target IN SELECT p_table UNION ALL SELECT relid FROM pg_partition_tree(p_table) WHERE relid <> p_table LOOP
        PERFORM stage4.add_key_truncate_guard(target);
    END LOOP;
END $fn$;

-- The TRUNCATE trigger of a key registry on p_table, when p_table or a table it is a partition of
-- has a registry (its row trigger stage4_unique_key).
CREATE OR REPLACE FUNCTION stage4.add_key_truncate_guard(p_table regclass)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    guard regprocedure := (SELECT t.tgfoid::regprocedure FROM pg_trigger t
                           WHERE t.tgname = 'stage4_unique_key' AND t.tgparentid = 0
                             AND t.tgrelid IN (SELECT p_table UNION ALL SELECT relid FROM pg_partition_ancestors(p_table)));
BEGIN
    IF guard IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = p_table AND tgname = 'stage4_unique_key_truncate') THEN
        EXECUTE format('CREATE TRIGGER stage4_unique_key_truncate BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION %s',
                       p_table, guard);
        EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER stage4_unique_key_truncate', p_table);
    END IF;
END $$;

-- A registry for p_shadow, the rebuild of p_table into primary key p_primary_key, when that key is
-- wider than p_table's: the original key stays unique (create_key_registry()).
CREATE OR REPLACE FUNCTION stage4.register_original_key(p_table regclass, p_shadow regclass, p_primary_key text[])
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    original jsonb := stage4.describe_table(p_table, false)->'primary_key';
    original_columns text[] := ARRAY(SELECT jsonb_array_elements_text(original->'columns'));
BEGIN
    IF original IS NOT NULL AND p_primary_key @> original_columns AND NOT original_columns @> p_primary_key THEN
        PERFORM stage4.create_key_registry(p_shadow, (SELECT relname FROM pg_class WHERE oid = p_table), original_columns,
                                           original->>'name');
    END IF;
END $$;

-- Drops the registries no table uses any more (a revert's, once its retired table is gone).
CREATE OR REPLACE FUNCTION stage4.drop_unused_key_registries()
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    guard record;
BEGIN
    IF to_regnamespace('stage4_keys') IS NULL THEN
        RETURN;
    END IF;
    FOR guard IN SELECT f.oid::regprocedure AS fn, left(f.proname, -length('_unique_key')) AS registry
                 FROM pg_proc f
                 WHERE f.pronamespace = 'stage4_keys'::regnamespace AND f.proname LIKE '%\_unique\_key'
                   AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = f.oid) LOOP
        EXECUTE format('DROP FUNCTION %s', guard.fn);
        EXECUTE format('DROP TABLE IF EXISTS stage4_keys.%I', guard.registry);
    END LOOP;
    IF NOT EXISTS (SELECT 1 FROM pg_class WHERE relnamespace = 'stage4_keys'::regnamespace)
       AND NOT EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4_keys'::regnamespace) THEN
        DROP SCHEMA stage4_keys;
    END IF;
END $$;

-- A rebuild builds the new table as a "shadow" under the same name in schema stage4_online, so
-- that its primary key, constraints and indexes get their final names while the original still
-- holds them in its own schema; swap_shadow() then moves it into place. Partitions are created
-- directly in the original's schema (their names are new there), where they get that schema's
-- default privileges as any partition does.
--   p_partition_by  NULL for a plain table, else e.g. 'RANGE (data_referencia)'
--   p_partitions    [{"name": ..., "bound": "FOR VALUES FROM (...) TO (...)" | "DEFAULT"}]
-- Same columns, defaults, identity, generated columns, storage, compression and CHECK
-- constraints; no rows, no keys, no indexes, no triggers yet.
CREATE OR REPLACE FUNCTION stage4.create_shadow(p_table regclass, p_partition_by text, p_partitions jsonb)
RETURNS regclass LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel pg_class%ROWTYPE;
    shadow regclass;
    item jsonb;
BEGIN
    SELECT * INTO rel FROM pg_class WHERE oid = p_table;
    IF to_regnamespace('stage4_online') IS NULL THEN
        CREATE SCHEMA stage4_online;
        REVOKE ALL ON SCHEMA stage4_online FROM PUBLIC;
        COMMENT ON SCHEMA stage4_online IS 'Stage 4: tables being rebuilt (shadows, delta logs); empty between rebuilds.';
    END IF;
    EXECUTE format('CREATE TABLE stage4_online.%I (LIKE %s INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED '
                   'INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING CONSTRAINTS)%s',
                   rel.relname, p_table,
                   CASE WHEN p_partition_by IS NULL THEN '' ELSE ' PARTITION BY ' || p_partition_by END);
    shadow := format('stage4_online.%I', rel.relname)::regclass;
    FOR item IN SELECT jsonb_array_elements(p_partitions) LOOP
        PERFORM stage4.create_secured_partition(shadow, item->>'name', item->>'bound', rel.relnamespace::regnamespace::text);
    END LOOP;
    RETURN shadow;
END $$;

-- Primary key (p_primary_key's columns, the original's name), the other constraints and the
-- indexes (same names and comments) on a shadow holding its rows: built in bulk, once.
CREATE OR REPLACE FUNCTION stage4.complete_shadow(p_shadow regclass, p_before jsonb, p_primary_key text[])
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    item jsonb;
BEGIN
    IF p_before->'primary_key' IS NOT NULL THEN
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY (%s)', p_shadow,
                       p_before->'primary_key'->>'name',
                       (SELECT string_agg(quote_ident(c), ', ') FROM unnest(p_primary_key) c));
        IF p_before->'primary_key'->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', p_before->'primary_key'->>'name', p_shadow,
                           p_before->'primary_key'->>'comment');
        END IF;
    END IF;
    FOR item IN SELECT jsonb_array_elements(p_before->'constraints') LOOP
        IF item->>'type' <> 'c' THEN
            EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', p_shadow, item->>'name', item->>'definition');
        END IF;
        IF item->>'comment' IS NOT NULL THEN
            EXECUTE format('COMMENT ON CONSTRAINT %I ON %s IS %L', item->>'name', p_shadow, item->>'comment');
        END IF;
    END LOOP;
    FOR item IN SELECT jsonb_array_elements(p_before->'indexes') LOOP
        PERFORM stage4.create_shadow_index(p_shadow, p_before, item->>'name');
    END LOOP;
END $$;

-- The index p_name of the original (p_before) on its shadow, same name and comment, unless the
-- shadow has it already (the index a clustered layout is ordered by is built first).
CREATE OR REPLACE FUNCTION stage4.create_shadow_index(p_shadow regclass, p_before jsonb, p_name text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    item jsonb := (SELECT i FROM jsonb_array_elements(p_before->'indexes') i WHERE i->>'name' = p_name);
BEGIN
    IF item IS NULL THEN
        RAISE EXCEPTION 'stage4: % has no index %', p_before->>'relation', p_name;
    END IF;
    IF to_regclass(format('stage4_online.%I', p_name)) IS NOT NULL THEN
        RETURN;
    END IF;
    -- pg_get_indexdef() names the original table: point the definition at the shadow.
    EXECUTE replace(item->>'definition', format(' ON %s USING ', p_before->>'relation'), format(' ON %s USING ', p_shadow));
    IF item->>'comment' IS NOT NULL THEN
        EXECUTE format('COMMENT ON INDEX stage4_online.%I IS %L', p_name, item->>'comment');
    END IF;
END $$;

-- Retirement: what swap_shadow() replaces (the old table, and the functions returning its rows, which
-- a call already under way may still use) moves to schema stage4_retired, which no API role can reach,
-- instead of being dropped in the swap's transaction; drop_retired() drops it after the commit. A
-- temporary table, gone at the commit, marks the transaction as one that retired something.
CREATE OR REPLACE FUNCTION stage4.retire(p_object text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF to_regnamespace('stage4_retired') IS NULL THEN
        CREATE SCHEMA stage4_retired;
        REVOKE ALL ON SCHEMA stage4_retired FROM PUBLIC;
        COMMENT ON SCHEMA stage4_retired IS 'Stage 4: what a swap replaced, kept for the calls under way; dropped after it (stage4.drop_retired()).';
    END IF;
    EXECUTE format('ALTER %s SET SCHEMA stage4_retired', p_object);
    IF to_regclass('pg_temp.stage4_retiring') IS NULL THEN
        CREATE TEMP TABLE stage4_retiring () ON COMMIT DROP;
    END IF;
END $$;

-- Drops schema stage4_retired and what it holds, once no other session of this database has a
-- transaction that began before this call (one may be using a retired function), or after
-- p_wait_seconds anyway. Run after the swap's commit (settle.sql), and with 0 by the next swap of a
-- later transaction (what a swap whose settle never ran left).
-- Returns what it did, for the run's output.
CREATE OR REPLACE FUNCTION stage4.drop_retired(p_wait_seconds double precision)
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    since timestamptz := statement_timestamp();
    deadline timestamptz := clock_timestamp() + make_interval(secs => p_wait_seconds);
    older int;
    object text;
    kept text[] := '{}';
    detail text;
BEGIN
    IF to_regnamespace('stage4_retired') IS NULL THEN
        PERFORM stage4.drop_unused_key_registries();
        RETURN 'nothing retired';
    END IF;
    LOOP
        PERFORM pg_stat_clear_snapshot();  -- pg_stat_activity is read once per transaction otherwise
        SELECT count(*) INTO older FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'
          AND xact_start < since;
        EXIT WHEN older = 0 OR clock_timestamp() >= deadline;
        PERFORM pg_sleep(0.05);
    END LOOP;
    -- Each object on its own and never with CASCADE: what still depends on one (something a swap did
    -- not carry) keeps it, and is named.
    FOR object IN
        SELECT format('FUNCTION %s', p.oid::regprocedure) FROM pg_proc p WHERE p.pronamespace = 'stage4_retired'::regnamespace
        UNION ALL
        (SELECT format('TABLE %s', c.oid::regclass) FROM pg_class c
         WHERE c.relnamespace = 'stage4_retired'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
         ORDER BY c.relkind = 'p' DESC)
        UNION ALL
        SELECT format('TABLE %s', c.oid::regclass) FROM pg_class c
        WHERE c.relnamespace = 'stage4_retired'::regnamespace AND c.relkind IN ('r', 'p') AND c.relispartition
    LOOP
        BEGIN
            IF object LIKE 'TABLE %' AND to_regclass(substr(object, 7)) IS NULL THEN
                CONTINUE;  -- a partition, gone with its parent
            END IF;
            EXECUTE format('DROP %s RESTRICT', object);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
            kept := kept || format('%s (%s)', object, replace(detail, E'\n', '; '));
        END;
    END LOOP;
    IF cardinality(kept) > 0 THEN
        RAISE WARNING 'stage4: retired objects kept because something still depends on them: %', array_to_string(kept, ', ');
        RETURN format('retired objects kept because something still depends on them: %s', array_to_string(kept, ', '));
    END IF;
    DROP SCHEMA stage4_retired RESTRICT;
    PERFORM stage4.drop_unused_key_registries();
    RETURN CASE WHEN older = 0 THEN 'retired objects dropped'
                ELSE format('retired objects dropped while %s older transactions were still open', older) END;
END $$;

-- What a change's settle.sql runs once its swap has committed (OPT1's, OPT2's): drop_retired()
-- with the change's stage4.settle_wait_seconds (default 30), waiting for locks at most its
-- stage4.lock_timeout (default 2s).
CREATE OR REPLACE FUNCTION stage4.settle_retired()
RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM set_config('lock_timeout', coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'), true);
    RETURN stage4.drop_retired(coalesce(nullif(current_setting('stage4.settle_wait_seconds', true), ''), '30')::double precision);
END $$;

-- Tells PostgREST (self-hosted; Supabase's event triggers do it too) that the API's tables or
-- functions changed, so that it reloads its schema cache. Delivered at the commit, once per
-- transaction; harmless where nothing listens.
CREATE OR REPLACE FUNCTION stage4.notify_api_changed()
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    NOTIFY pgrst, 'reload schema'
$$;

-- Puts back on p_table (and its partitions, where the setting is per partition) the settings that
-- p_before (describe_table()) records and that a new table does not get from CREATE TABLE ... LIKE:
-- replica identity, per-column statistics targets and options, extended statistics, and the
-- ownership of serial columns' sequences. Snapshots of earlier toolkits lack them: nothing to do.
CREATE OR REPLACE FUNCTION stage4.restore_table_settings(p_table regclass, p_before jsonb)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    item jsonb;
    target regclass;
    mode text := p_before->'replica_identity'->>'mode';
    identity_index regclass := CASE WHEN p_before->'replica_identity'->>'index' IS NOT NULL THEN
        to_regclass(format('%s.%I', p_before->>'schema', p_before->'replica_identity'->>'index')) END;
BEGIN
    FOR target IN SELECT p_table UNION ALL SELECT relid FROM pg_partition_tree(p_table) WHERE relid <> p_table LOOP
        IF mode IS NOT NULL AND mode <> 'i' THEN
            EXECUTE format('ALTER TABLE ONLY %s REPLICA IDENTITY %s', target,
                           CASE mode WHEN 'f' THEN 'FULL' WHEN 'n' THEN 'NOTHING' ELSE 'DEFAULT' END);
        ELSIF mode = 'i' THEN
            -- The index of the same name on the table, or the one of this partition attached to it.
            EXECUTE format('ALTER TABLE ONLY %s REPLICA IDENTITY USING INDEX %I', target, (
                SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                WHERE i.indrelid = target AND (i.indexrelid = identity_index
                                               OR i.indexrelid IN (SELECT relid FROM pg_partition_tree(identity_index)))));
        END IF;
        FOR item IN SELECT jsonb_array_elements(coalesce(p_before->'column_statistics', '[]')) LOOP
            IF (item->>'target')::int <> -1 THEN
                EXECUTE format('ALTER TABLE ONLY %s ALTER COLUMN %I SET STATISTICS %s', target, item->>'name', item->>'target');
            END IF;
            IF jsonb_typeof(item->'options') = 'array' THEN
                EXECUTE format('ALTER TABLE ONLY %s ALTER COLUMN %I SET (%s)', target, item->>'name',
                               (SELECT string_agg(o, ', ') FROM jsonb_array_elements_text(item->'options') o));
            END IF;
        END LOOP;
    END LOOP;
    FOR item IN SELECT jsonb_array_elements(coalesce(p_before->'statistics', '[]')) LOOP
        -- pg_get_statisticsobjdef() names the table by name: the new one, now in place.
        EXECUTE item->>'definition';
        IF (item->>'target')::int <> -1 THEN
            EXECUTE format('ALTER STATISTICS %s SET STATISTICS %s', item->>'name', item->>'target');
        END IF;
        EXECUTE format('ALTER STATISTICS %s OWNER TO %I', item->>'name', item->>'owner');
        EXECUTE format('COMMENT ON STATISTICS %s IS %L', item->>'name', item->>'comment');
    END LOOP;
    FOR item IN SELECT jsonb_array_elements(coalesce(p_before->'owned_sequences', '[]')) LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNED BY %s.%I', item->>'sequence', p_table, item->>'column');
    END LOOP;
END $$;

-- Nothing of schema stage4 is for the API: what this change created loses PUBLIC's default EXECUTE.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA stage4 FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA stage4 FROM PUBLIC;
