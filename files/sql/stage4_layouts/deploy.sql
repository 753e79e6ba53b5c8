-- stage4_layouts: the layouts OPT1, OPT2 and OPT4 ask for.
--
-- Yearly RANGE partitions from the data (OPT1, OPT4) and the storage layout of closed
-- partitions (OPT2: columnar where available, else TOAST settings and GiST order). Repeatable.
SET LOCAL lock_timeout = '2s';

-- Yearly RANGE bounds [p_from, p_to] for rebuild_table()/create_secured_partition():
-- partitions named <p_table_name>_pYYYY.
CREATE OR REPLACE FUNCTION stage4.yearly_partitions(p_table_name text, p_from int, p_to int)
RETURNS jsonb LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'name', format('%s_p%s', p_table_name, y),
               'bound', format('FOR VALUES FROM (%L) TO (%L)', make_date(y, 1, 1), make_date(y + 1, 1, 1)))
           ORDER BY y), '[]')
    FROM generate_series(p_from, p_to) y
$$;

-- The layout of a table partitioned by year on p_column, for rebuild_table() and the online
-- rebuild: RANGE (p_column), one partition per year from the oldest row's (or the current) year
-- through p_through_year plus DEFAULT, and a primary key extended by p_column.
-- The plain table p_change's snapshot of p_relation describes, as a layout for the online rebuild
-- that reverts the change: its primary key and storage parameters, not partitioned.
CREATE OR REPLACE FUNCTION stage4.layout_in_snapshot(p_change text, p_relation text)
RETURNS jsonb LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object('partition_by', NULL, 'primary_key', s->'primary_key'->'columns', 'partitions', '[]'::jsonb,
                              'reloptions', coalesce(s->'reloptions', '[]'::jsonb))
    FROM stage4.snapshot(p_change, p_relation) s
$$;

CREATE OR REPLACE FUNCTION stage4.yearly_layout(p_table regclass, p_column name, p_through_year int)
RETURNS jsonb LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    table_name text := (SELECT relname FROM pg_class WHERE oid = p_table);
    primary_key text[];
    first_year int;
BEGIN
    primary_key := ARRAY(SELECT a.attname::text
                         FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
                         JOIN pg_attribute a ON a.attrelid = p_table AND a.attnum = k.attnum
                         WHERE c.conrelid = p_table AND c.contype = 'p' ORDER BY k.ord);
    IF NOT p_column = ANY (primary_key) THEN
        primary_key := primary_key || p_column::text;
    END IF;
    EXECUTE format('SELECT extract(year FROM min(%I))::int FROM %s', p_column, p_table) INTO first_year;
    RETURN jsonb_build_object(
        'partition_by', format('RANGE (%I)', p_column),
        'primary_key', to_jsonb(primary_key),
        'partitions', stage4.yearly_partitions(table_name, coalesce(first_year, extract(year FROM current_date)::int),
                                               p_through_year)
                      || jsonb_build_array(jsonb_build_object('name', table_name || '_default', 'bound', 'DEFAULT')));
END $$;

-- Physical layout of every relation of a partition tree, per relation: access method, the
-- column's compression and storage, and the index it is clustered on (OPT2 records and compares it).
CREATE OR REPLACE FUNCTION stage4.storage_layout(p_parent regclass, p_column name)
RETURNS jsonb LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_object_agg(format('%I.%I', n.nspname, c.relname), jsonb_build_object(
               'am', am.amname,
               'compression', a.attcompression::text,
               'storage', a.attstorage::text,
               'clustered', (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                             WHERE i.indrelid = c.oid AND i.indisclustered)))
    FROM pg_partition_tree(p_parent) pt
    JOIN pg_class c ON c.oid = pt.relid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_am am ON am.oid = c.relam
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = p_column AND NOT a.attisdropped
$$;

-- The leaf partitions of p_parent; closed: a RANGE partition on a date whose upper bound is on or
-- before p_closed_before (the rows of past years, which the application no longer writes).
CREATE OR REPLACE FUNCTION stage4.leaf_partitions(p_parent regclass, p_closed_before date)
RETURNS TABLE (rel regclass, name text, closed boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid::regclass, format('%I.%I', n.nspname, c.relname),
           coalesce((regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)$'))[1]::date <= p_closed_before,
                    false)
    FROM pg_partition_tree(p_parent) pt
    JOIN pg_class c ON c.oid = pt.relid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE pt.isleaf AND c.relkind = 'r'
    ORDER BY c.relname
$$;

-- The name of p_table's plain, valid GiST index on p_column alone (NULL when it has none).
CREATE OR REPLACE FUNCTION stage4.gist_index_on(p_table regclass, p_column name)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ic.relname::text
    FROM pg_index i
    JOIN pg_class ic ON ic.oid = i.indexrelid
    JOIN pg_am am ON am.oid = ic.relam
    JOIN pg_attribute a ON a.attrelid = p_table AND a.attname = p_column
    WHERE i.indrelid = p_table AND am.amname = 'gist' AND i.indnatts = 1 AND i.indkey[0] = a.attnum
      AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid
    ORDER BY ic.relname
    LIMIT 1
$$;

-- OPT2's choice: the path (columnar where a "columnar" table access method exists, else portable)
-- and the TOAST mode of the portable path (lz4 where the server has it, else external), unless
-- p_path or p_toast names one ('auto' lets it choose).
CREATE OR REPLACE FUNCTION stage4.storage_choice(p_path text, p_toast text)
RETURNS jsonb LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'path', CASE WHEN lower(p_path) <> 'auto' THEN lower(p_path)
                     WHEN EXISTS (SELECT 1 FROM pg_am WHERE amname = 'columnar' AND amtype = 't') THEN 'columnar'
                     ELSE 'portable' END,
        'toast', CASE WHEN lower(p_toast) <> 'auto' THEN lower(p_toast)
                      WHEN EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals))
                      THEN 'lz4' ELSE 'external' END,
        'lz4_available', EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)))
$$;

-- The layout of an online rebuild (prepare_online_rebuild()) that keeps p_table as it is (same
-- kind, same primary key) but stores p_column with TOAST mode p_toast (lz4 or external) and
-- orders the rows by the GiST index on p_column: OPT2 on one partition, outside any lock.
CREATE OR REPLACE FUNCTION stage4.clustered_layout(p_table regclass, p_column name, p_toast text)
RETURNS jsonb LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- Without a GiST index on p_column (or a primary key) the key is left out, not null.
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'partition_by', NULL,
        'primary_key', (SELECT jsonb_agg(a.attname ORDER BY k.ord)
                        FROM pg_constraint c, unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
                        JOIN pg_attribute a ON a.attrelid = p_table AND a.attnum = k.attnum
                        WHERE c.conrelid = p_table AND c.contype = 'p'),
        'partitions', '[]'::jsonb,
        'toast', jsonb_build_object('column', p_column, 'mode', p_toast),
        'cluster_on', stage4.gist_index_on(p_table, p_column)))
$$;

-- Preconditions shared by the optimizations' prechecks; p_label names the change in the message.
CREATE OR REPLACE FUNCTION stage4.assert_partitioned_by_year(p_label text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t regclass := to_regclass('public.geometrias');
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION '%: table public.geometrias does not exist', p_label;
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = t) <> 'p'
       OR pg_get_partkeydef(t) IS DISTINCT FROM 'RANGE (data_referencia)' THEN
        RAISE EXCEPTION '%: public.geometrias is not partitioned by RANGE (data_referencia); apply OPT1 (opt1_temporal_partitioning) first',
            p_label;
    END IF;
END $$;

-- Nothing of schema stage4 is for the API: what this change created loses PUBLIC's default EXECUTE.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA stage4 FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA stage4 FROM PUBLIC;
