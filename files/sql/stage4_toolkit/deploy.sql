-- stage4_toolkit: the functions every optimization builds on.
--
-- describe_table() captures everything a table carries (indexes, constraints, triggers, RLS
-- policies, grants, comments, identity, dependent views and functions, publications, rows);
-- rebuild_table() recreates a table under a new layout (partitioned or plain) and puts all of
-- that back; assert_table_preserved() proves nothing was lost. Optimizations call these
-- instead of repeating a fixed list of objects, so a production table with more objects than
-- the fixture keeps them too.
SET LOCAL lock_timeout = '2s';

CREATE SCHEMA IF NOT EXISTS stage4;
COMMENT ON SCHEMA stage4 IS 'Stage 4 rollout tooling: ledger, snapshots and helper functions (not exposed to the API).';
REVOKE ALL ON SCHEMA stage4 FROM PUBLIC;

-- What a table looked like before a change touched it; reverts and verifies read it back.
CREATE TABLE IF NOT EXISTS stage4.table_snapshots (
    change      text        NOT NULL,
    relation    text        NOT NULL,
    captured_at timestamptz NOT NULL DEFAULT now(),
    snapshot    jsonb       NOT NULL,
    PRIMARY KEY (change, relation)
);

-- Order-independent content checksum: the same rows give the same value whatever the
-- physical layout (heap order, partitions, clustering). It hashes the sorted row hashes, so
-- a million rows aggregate 32 MB instead of the rows' text (over the 1 GB limit of a value).
CREATE OR REPLACE FUNCTION stage4.table_checksum(p_table regclass)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result text;
BEGIN
    EXECUTE format('SELECT md5(coalesce(string_agg(h, '''' ORDER BY h), '''')) FROM (SELECT md5(t::text) AS h FROM %s t) rows',
                   p_table)
        INTO result;
    RETURN result;
END $$;

-- Row count and content checksum (as table_checksum()) of the rows of p_table (alias t) that meet
-- p_condition. STABLE: called twice in one statement, both read the statement's snapshot.
CREATE OR REPLACE FUNCTION stage4.rows_checksum(p_table regclass, p_condition text)
RETURNS jsonb LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
BEGIN
    EXECUTE format('SELECT jsonb_build_object(''row_count'', count(*), ''checksum'', md5(coalesce(string_agg(h, '''' ORDER BY h), ''''))) '
                   'FROM (SELECT md5(t::text) AS h FROM %s t WHERE %s) rows', p_table, p_condition)
        INTO result;
    RETURN result;
END $$;

-- What other objects refer to when they depend on (p_classid, p_objid): the object itself and, for a
-- relation, its row type and the array of that type.
CREATE OR REPLACE FUNCTION stage4.referable(p_classid regclass, p_objid oid)
RETURNS TABLE (refclassid regclass, refobjid oid)
LANGUAGE sql STABLE ROWS 3 SET search_path = pg_catalog, pg_temp AS $$
    SELECT p_classid, p_objid
    UNION ALL
    SELECT 'pg_type'::regclass, t.oid
    FROM pg_class c JOIN pg_type t ON t.oid = c.reltype OR (t.oid = (SELECT typarray FROM pg_type WHERE oid = c.reltype))
    WHERE p_classid = 'pg_class'::regclass AND c.oid = p_objid
$$;

-- Objects that must be dropped and recreated when p_table is replaced: views, materialized views,
-- functions and policies of other tables that depend on the table, on its row type or on the array
-- of it (a function RETURNS SETOF table or taking table[] is bound to the type's OID), transitively,
-- with the depth at which they depend. catalog_dependents() lists what else depends on it. Without
-- JIT: the recursion's estimates reach its threshold, and compiling took 0.4 s a call (2 s for
-- catalog_dependents()), for a few milliseconds of work.
CREATE OR REPLACE FUNCTION stage4.dependent_objects(p_table regclass)
RETURNS TABLE (classid regclass, objid oid, depth int)
LANGUAGE sql STABLE ROWS 20 SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    WITH RECURSIVE dependents(classid, objid, depth) AS (
        SELECT 'pg_class'::regclass, p_table::oid, 0
        UNION
        SELECT dep.classid, dep.objid, d.depth + 1
        FROM dependents d
        CROSS JOIN LATERAL stage4.referable(d.classid, d.objid) ref
        JOIN LATERAL (
            -- a view depends through its rewrite rule
            SELECT 'pg_class'::regclass AS classid, r.ev_class AS objid
            FROM pg_depend pd
            JOIN pg_rewrite r ON pd.classid = 'pg_rewrite'::regclass AND pd.objid = r.oid
            JOIN pg_class v ON v.oid = r.ev_class AND v.relkind IN ('v', 'm')
            WHERE pd.refclassid = ref.refclassid AND pd.refobjid = ref.refobjid AND r.ev_class <> d.objid
            UNION
            -- a function, through its signature or its BEGIN ATOMIC body
            SELECT 'pg_proc'::regclass, pd.objid
            FROM pg_depend pd
            WHERE pd.classid = 'pg_proc'::regclass AND pd.refclassid = ref.refclassid AND pd.refobjid = ref.refobjid
            UNION
            -- a policy of another table whose expressions read it
            SELECT 'pg_policy'::regclass, pd.objid
            FROM pg_depend pd JOIN pg_policy p ON p.oid = pd.objid
            WHERE pd.classid = 'pg_policy'::regclass AND pd.refclassid = ref.refclassid AND pd.refobjid = ref.refobjid
              AND p.polrelid <> p_table
        ) dep ON true
        WHERE d.depth < 20
    )
    SELECT classid, objid, max(depth)::int FROM dependents WHERE depth > 0 GROUP BY classid, objid
$$;

-- Every object that the catalog (pg_depend) says depends on p_table, its row type or its array
-- type, or on one of its dependent_objects(), whatever its kind, and what a swap does with it:
--   part       the table's own, carried by swap_shadow(): column defaults, constraints, indexes,
--              triggers, policies, extended statistics, owned sequences, publications, partitions,
--              row type (and, for a recreated view, its rules, indexes and row type)
--   recreated  dropped and recreated by swap_shadow(): dependent_objects()
--   refused    anything else (a column of another table typed by the row type, a rule of another
--              table, a trigger of another table calling a recreated function...): a rebuild would
--              lose it, so it is refused before any change (assert_carried()).
-- identity is pg_identify_object()'s type and identity, which stays the same when the object is
-- carried; TOAST tables (named by OID) are left out.
CREATE OR REPLACE FUNCTION stage4.catalog_dependents(p_table regclass)
RETURNS TABLE (identity text, handling text)
LANGUAGE sql STABLE ROWS 20 SET search_path = pg_catalog, pg_temp SET jit = off AS $$
    WITH recreated AS (
        SELECT classid, objid FROM stage4.dependent_objects(p_table)
    ), referenced AS (
        SELECT ref.* FROM (SELECT 'pg_class'::regclass AS classid, p_table::oid AS objid UNION ALL SELECT * FROM recreated) o
        CROSS JOIN LATERAL stage4.referable(o.classid, o.objid) ref
    ), deps AS (
        SELECT DISTINCT pd.classid, pd.objid, pd.objsubid
        FROM pg_depend pd JOIN referenced r ON pd.refclassid = r.refclassid AND pd.refobjid = r.refobjid
        WHERE pd.deptype NOT IN ('e', 'x', 'p')
    ), classified AS (
        SELECT d.*,
               CASE
               WHEN (d.classid, d.objid) IN (SELECT * FROM recreated) THEN 'recreated'
               WHEN d.classid = 'pg_class'::regclass THEN (
                   SELECT CASE
                          WHEN d.objsubid <> 0 THEN 'refused'  -- a column typed by the row type
                          WHEN c.relkind = 't' THEN 'toast'
                          WHEN c.relkind IN ('i', 'I') AND i.indrelid = p_table THEN 'part'
                          WHEN c.relkind IN ('i', 'I') AND (i.indrelid, 'pg_class'::regclass) IN (SELECT objid, classid FROM recreated) THEN 'recreated'
                          WHEN c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend o WHERE o.classid = 'pg_class'::regclass AND o.objid = c.oid
                                                               AND o.refobjid = p_table AND o.deptype IN ('a', 'i')) THEN 'part'
                          WHEN c.relkind IN ('r', 'p') AND c.relispartition
                               AND EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = c.oid AND h.inhparent = p_table) THEN 'part'
                          ELSE 'refused' END
                   FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid WHERE c.oid = d.objid)
               WHEN d.classid = 'pg_type'::regclass THEN (
                   SELECT CASE WHEN t.typrelid = p_table OR e.typrelid = p_table THEN 'part'
                               WHEN ('pg_class'::regclass, coalesce(nullif(t.typrelid, 0), e.typrelid)) IN (SELECT * FROM recreated) THEN 'recreated'
                               ELSE 'refused' END
                   FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem AND t.typcategory = 'A' WHERE t.oid = d.objid)
               WHEN d.classid = 'pg_rewrite'::regclass THEN
                   CASE WHEN ('pg_class'::regclass, (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid)) IN (SELECT * FROM recreated)
                             AND (SELECT rulename FROM pg_rewrite WHERE oid = d.objid) = '_RETURN' THEN 'recreated'
                        ELSE 'refused' END
               WHEN d.classid = 'pg_attrdef'::regclass THEN
                   CASE WHEN (SELECT adrelid FROM pg_attrdef WHERE oid = d.objid) = p_table THEN 'part' ELSE 'refused' END
               WHEN d.classid = 'pg_constraint'::regclass THEN
                   CASE WHEN (SELECT conrelid FROM pg_constraint WHERE oid = d.objid) = p_table THEN 'part' ELSE 'refused' END
               WHEN d.classid = 'pg_trigger'::regclass THEN
                   CASE WHEN (SELECT tgrelid FROM pg_trigger WHERE oid = d.objid) = p_table THEN 'part' ELSE 'refused' END
               WHEN d.classid = 'pg_policy'::regclass THEN
                   CASE WHEN (SELECT polrelid FROM pg_policy WHERE oid = d.objid) = p_table THEN 'part' ELSE 'refused' END
               WHEN d.classid = 'pg_statistic_ext'::regclass THEN
                   CASE WHEN (SELECT stxrelid FROM pg_statistic_ext WHERE oid = d.objid) = p_table THEN 'part' ELSE 'refused' END
               WHEN d.classid = 'pg_publication_rel'::regclass THEN
                   CASE WHEN (SELECT prrelid FROM pg_publication_rel WHERE oid = d.objid) = p_table THEN 'part' ELSE 'refused' END
               ELSE 'refused' END AS handling
        FROM deps d
    )
    SELECT DISTINCT o.type || ' ' || o.identity, c.handling
    FROM classified c CROSS JOIN LATERAL pg_identify_object(c.classid, c.objid, c.objsubid) o
    WHERE c.handling <> 'toast'
      AND NOT (c.classid = 'pg_class'::regclass AND c.objid = p_table::oid)
    ORDER BY 1
$$;

-- Raises, naming them, when something depends on p_table that a rebuild of it could not carry
-- (catalog_dependents()): the prechecks call it before anything changes, and swap_shadow() again.
CREATE OR REPLACE FUNCTION stage4.assert_carried(p_table regclass, p_label text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    refused text;
BEGIN
    SELECT string_agg(identity, '; ') INTO refused FROM stage4.catalog_dependents(p_table) WHERE handling = 'refused';
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION '%: % cannot be rebuilt without losing what depends on it: %. Nothing was changed; '
                        'remove or change those objects first (they would be dropped with the old table).',
            p_label, p_table, refused;
    END IF;
END $$;

-- GRANT statements that reproduce an ACL; p_object names the kind: 'TABLE x', 'SEQUENCE x',
-- 'FUNCTION f(int)'. One statement per grantee, in ACL order, so replaying them rebuilds the
-- same aclitem[] (pg_dump prints it in that order).
CREATE OR REPLACE FUNCTION stage4.grant_statements(p_acl aclitem[], p_object text, p_column text DEFAULT NULL)
RETURNS SETOF text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('GRANT %s ON %s TO %s%s',
                  string_agg(a.privilege_type || CASE WHEN p_column IS NULL THEN '' ELSE format(' (%I)', p_column) END,
                             ', ' ORDER BY a.ord),
                  p_object,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
                  CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
    FROM aclexplode(p_acl) WITH ORDINALITY a(grantor, grantee, privilege_type, is_grantable, ord)
    GROUP BY a.grantee, a.is_grantable
    ORDER BY min(a.ord)
$$;

-- The CREATE POLICY statement of a policy (names qualified: the caller's search_path is pinned).
CREATE OR REPLACE FUNCTION stage4.policy_definition(p_policy oid)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('CREATE POLICY %I ON %s AS %s FOR %s TO %s%s%s', p.polname, p.polrelid::regclass,
                  CASE WHEN p.polpermissive THEN 'PERMISSIVE' ELSE 'RESTRICTIVE' END,
                  CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                  (SELECT string_agg(CASE WHEN r.role = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r.role)) END, ', ' ORDER BY r.n)
                   FROM unnest(p.polroles) WITH ORDINALITY r(role, n)),
                  CASE WHEN p.polqual IS NULL THEN '' ELSE format(' USING (%s)', pg_get_expr(p.polqual, p.polrelid)) END,
                  CASE WHEN p.polwithcheck IS NULL THEN '' ELSE format(' WITH CHECK (%s)', pg_get_expr(p.polwithcheck, p.polrelid)) END)
    FROM pg_policy p WHERE p.oid = p_policy
$$;

-- Everything a table carries, as JSON. Read by rebuild_table() and assert_table_preserved().
CREATE OR REPLACE FUNCTION stage4.describe_table(p_table regclass, p_with_rows boolean DEFAULT true)
RETURNS jsonb LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel pg_class%ROWTYPE;
    identity_seq regclass;
    seq_last_value bigint;
    seq_is_called boolean;
    result jsonb;
BEGIN
    SELECT * INTO rel FROM pg_class WHERE oid = p_table;
    SELECT s.seqrelid INTO identity_seq
    FROM pg_depend d JOIN pg_sequence s ON s.seqrelid = d.objid
    WHERE d.refobjid = p_table AND d.classid = 'pg_class'::regclass AND d.deptype = 'i';
    IF identity_seq IS NOT NULL THEN
        EXECUTE format('SELECT last_value, is_called FROM %s', identity_seq) INTO seq_last_value, seq_is_called;
    END IF;

    result := jsonb_build_object(
        'relation', p_table::text,
        'name', rel.relname,
        'schema', rel.relnamespace::regnamespace::text,
        'owner', pg_get_userbyid(rel.relowner),
        'partitioned', rel.relkind = 'p',
        'partition_key', pg_get_partkeydef(p_table),
        'partition_of', (SELECT i.inhparent::regclass::text FROM pg_inherits i WHERE rel.relispartition AND i.inhrelid = p_table),
        'partition_bound', CASE WHEN rel.relispartition THEN pg_get_expr(rel.relpartbound, p_table) END,
        'rls', rel.relrowsecurity,
        'force_rls', rel.relforcerowsecurity,
        'reloptions', coalesce(to_jsonb(rel.reloptions), '[]'),
        'comment', obj_description(p_table, 'pg_class'),
        'acl', (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]') FROM stage4.grant_statements(coalesce(rel.relacl, acldefault('r', rel.relowner)), 'TABLE ' || p_table::text) WITH ORDINALITY g(stmt, n)),
        'columns', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'name', a.attname,
                       'type', format_type(a.atttypid, a.atttypmod),
                       'not_null', a.attnotnull,
                       'comment', col_description(p_table, a.attnum),
                       'acl', (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
                               FROM stage4.grant_statements(a.attacl, 'TABLE ' || p_table::text, a.attname) WITH ORDINALITY g(stmt, n)))
                   ORDER BY a.attnum), '[]')
            FROM pg_attribute a WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped),
        'primary_key', (
            SELECT jsonb_build_object(
                       'name', c.conname,
                       'columns', (SELECT jsonb_agg(a.attname ORDER BY k.ord)
                                   FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
                                   JOIN pg_attribute a ON a.attrelid = p_table AND a.attnum = k.attnum),
                       'comment', obj_description(c.oid, 'pg_constraint'))
            FROM pg_constraint c WHERE c.conrelid = p_table AND c.contype = 'p'),
        -- CHECK constraints travel with CREATE TABLE ... LIKE; the others are replayed.
        'constraints', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'name', c.conname, 'type', c.contype,
                       'definition', pg_get_constraintdef(c.oid),
                       'comment', obj_description(c.oid, 'pg_constraint')) ORDER BY c.conname), '[]')
            FROM pg_constraint c WHERE c.conrelid = p_table AND c.contype <> 'p' AND c.conparentid = 0),
        'referenced_by', (
            SELECT coalesce(jsonb_agg(format('%s.%I', c.conrelid::regclass, c.conname) ORDER BY 1), '[]')
            FROM pg_constraint c WHERE c.confrelid = p_table AND c.contype = 'f' AND c.conparentid = 0),
        'indexes', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'name', ic.relname,
                       -- ON ONLY is how a partitioned parent's index prints; the index is the same.
                       'definition', replace(pg_get_indexdef(i.indexrelid), ' ON ONLY ', ' ON '),
                       'unique', i.indisunique,
                       'comment', obj_description(i.indexrelid, 'pg_class')) ORDER BY ic.relname), '[]')
            FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
            WHERE i.indrelid = p_table
              AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = p_table)),
        'triggers', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'name', t.tgname,
                       'definition', pg_get_triggerdef(t.oid),
                       'enabled', t.tgenabled,
                       'comment', obj_description(t.oid, 'pg_trigger')) ORDER BY t.tgname), '[]')
            FROM pg_trigger t WHERE t.tgrelid = p_table AND NOT t.tgisinternal AND t.tgparentid = 0
              AND NOT stage4.is_rollout_trigger(t.oid)),
        'policies', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'name', p.polname,
                       'permissive', p.polpermissive,
                       'command', CASE p.polcmd WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT' WHEN 'w' THEN 'UPDATE'
                                                WHEN 'd' THEN 'DELETE' ELSE 'ALL' END,
                       'roles', (SELECT jsonb_agg(CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END ORDER BY 1)
                                 FROM unnest(p.polroles) r),
                       'using', pg_get_expr(p.polqual, p.polrelid),
                       'with_check', pg_get_expr(p.polwithcheck, p.polrelid),
                       'comment', obj_description(p.oid, 'pg_policy')) ORDER BY p.polname), '[]')
            FROM pg_policy p WHERE p.polrelid = p_table),
        'identity', (
            SELECT jsonb_build_object(
                       'sequence', identity_seq::text,
                       'column', (SELECT attname FROM pg_attribute WHERE attrelid = p_table AND attidentity <> '' LIMIT 1),
                       'last_value', seq_last_value,
                       'is_called', seq_is_called,
                       'owner', pg_get_userbyid(sc.relowner),
                       'comment', obj_description(identity_seq, 'pg_class'),
                       'acl', (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
                               FROM stage4.grant_statements(coalesce(sc.relacl, acldefault('s', sc.relowner)), 'SEQUENCE ' || identity_seq::text) WITH ORDINALITY g(stmt, n)))
            FROM pg_class sc WHERE sc.oid = identity_seq),
        'dependents', (
            SELECT coalesce(jsonb_agg(x.obj ORDER BY x.depth, x.identity), '[]')
            FROM (
                SELECT d.depth, v.oid::regclass::text AS identity, jsonb_build_object(
                    'kind', CASE v.relkind WHEN 'm' THEN 'materialized view' ELSE 'view' END,
                    'identity', v.oid::regclass::text,
                    'depth', d.depth,
                    'definition', format('CREATE %s %s%s AS %s',
                                         CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END,
                                         v.oid::regclass,
                                         CASE WHEN v.reloptions IS NULL THEN ''
                                              ELSE format(' WITH (%s)', array_to_string(v.reloptions, ', ')) END,
                                         rtrim(pg_get_viewdef(v.oid), ';'))
                                  || CASE WHEN v.relkind = 'm' AND NOT v.relispopulated THEN ' WITH NO DATA' ELSE '' END,
                    'indexes', (SELECT coalesce(jsonb_agg(pg_get_indexdef(i.indexrelid) ORDER BY i.indexrelid), '[]')
                                FROM pg_index i WHERE i.indrelid = v.oid),
                    'owner', pg_get_userbyid(v.relowner),
                    'comment', obj_description(v.oid, 'pg_class'),
                    'column_comments', (SELECT coalesce(jsonb_object_agg(a.attname, col_description(v.oid, a.attnum)), '{}')
                                        FROM pg_attribute a
                                        WHERE a.attrelid = v.oid AND a.attnum > 0 AND col_description(v.oid, a.attnum) IS NOT NULL),
                    'acl', (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
                            FROM stage4.grant_statements(coalesce(v.relacl, acldefault('r', v.relowner)), 'TABLE ' || v.oid::regclass::text) WITH ORDINALITY g(stmt, n))) AS obj
                FROM stage4.dependent_objects(p_table) d JOIN pg_class v ON d.classid = 'pg_class'::regclass AND v.oid = d.objid
                UNION ALL
                SELECT d.depth, f.oid::regprocedure::text, jsonb_build_object(
                    'kind', 'function',
                    'identity', f.oid::regprocedure::text,
                    'depth', d.depth,
                    'definition', pg_get_functiondef(f.oid),
                    'owner', pg_get_userbyid(f.proowner),
                    'comment', obj_description(f.oid, 'pg_proc'),
                    'acl', (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
                            FROM stage4.grant_statements(coalesce(f.proacl, acldefault('f', f.proowner)),
                                                         format('FUNCTION %s', f.oid::regprocedure)) WITH ORDINALITY g(stmt, n)))
                FROM stage4.dependent_objects(p_table) d JOIN pg_proc f ON d.classid = 'pg_proc'::regclass AND f.oid = d.objid
                UNION ALL
                SELECT d.depth, format('%I ON %s', p.polname, p.polrelid::regclass), jsonb_build_object(
                    'kind', 'policy',
                    'identity', format('%I ON %s', p.polname, p.polrelid::regclass),
                    'depth', d.depth,
                    'definition', stage4.policy_definition(p.oid),
                    'comment', obj_description(p.oid, 'pg_policy'),
                    'acl', '[]'::jsonb)
                FROM stage4.dependent_objects(p_table) d JOIN pg_policy p ON d.classid = 'pg_policy'::regclass AND p.oid = d.objid
            ) x),
        'publications', (
            SELECT coalesce(jsonb_agg(p.pubname ORDER BY p.pubname), '[]')
            FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid WHERE pr.prrelid = p_table),
        -- What columns carry besides their type (not in 'columns', which snapshots of earlier
        -- toolkits compare without them): defaults, generated expressions, identity, collation...
        'column_definitions', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'name', a.attname,
                       'default', pg_get_expr(ad.adbin, ad.adrelid),
                       'generated', nullif(a.attgenerated, ''),
                       'identity', nullif(a.attidentity, ''),
                       'collation', CASE WHEN a.attcollation <> 0 THEN a.attcollation::regcollation::text END)
                   ORDER BY a.attnum), '[]')
            FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
            WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped),
        -- ... what the planner is told of them (SET STATISTICS, SET (n_distinct ...)) ...
        'column_statistics', (
            SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'target', a.attstattarget,
                                                         'options', to_jsonb(a.attoptions)) ORDER BY a.attnum), '[]')
            FROM pg_attribute a
            WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped
              AND (a.attstattarget <> -1 OR a.attoptions IS NOT NULL)),
        -- ... and how their values are stored (OPT2 changes this on purpose).
        'column_storage', (
            SELECT coalesce(jsonb_agg(jsonb_build_object('name', a.attname, 'storage', a.attstorage,
                                                         'compression', nullif(a.attcompression, '')) ORDER BY a.attnum), '[]')
            FROM pg_attribute a
            WHERE a.attrelid = p_table AND a.attnum > 0 AND NOT a.attisdropped),
        'replica_identity', jsonb_build_object(
            'mode', rel.relreplident,
            'index', (SELECT ic.relname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                      WHERE i.indrelid = p_table AND i.indisreplident)),
        -- Extended statistics (CREATE STATISTICS) on the table.
        'statistics', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'name', format('%I.%I', x.stxnamespace::regnamespace, x.stxname),
                       'definition', pg_get_statisticsobjdef(x.oid),
                       'target', x.stxstattarget,
                       'owner', pg_get_userbyid(x.stxowner),
                       'comment', obj_description(x.oid, 'pg_statistic_ext')) ORDER BY x.stxname), '[]')
            FROM pg_statistic_ext x WHERE x.stxrelid = p_table),
        -- Sequences owned by a column that is not an identity (serial, bigserial, OWNED BY): the
        -- column's default calls nextval() on them, so they stay and change owner with the table.
        'owned_sequences', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'sequence', sc.oid::regclass::text,
                       'column', a.attname,
                       'owner', pg_get_userbyid(sc.relowner),
                       'comment', obj_description(sc.oid, 'pg_class'),
                       'acl', (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
                               FROM stage4.grant_statements(coalesce(sc.relacl, acldefault('s', sc.relowner)),
                                                            'SEQUENCE ' || sc.oid::regclass::text) WITH ORDINALITY g(stmt, n)))
                   ORDER BY sc.oid::regclass::text), '[]')
            FROM pg_depend d JOIN pg_class sc ON sc.oid = d.objid AND sc.relkind = 'S'
            JOIN pg_attribute a ON a.attrelid = p_table AND a.attnum = d.refobjsubid
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.refobjid = p_table
              AND d.deptype = 'a'),
        -- Whatever depends on the table, by kind and name (catalog_dependents()): a swap that lost one
        -- of them, whatever its kind, fails assert_table_preserved().
        'catalog', (SELECT coalesce(jsonb_agg(c.identity ORDER BY c.identity), '[]') FROM stage4.catalog_dependents(p_table) c),
        'partitions', (
            SELECT coalesce(jsonb_agg(jsonb_build_object(
                       'name', c.relname, 'bound', pg_get_expr(c.relpartbound, c.oid)) ORDER BY c.relname), '[]')
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = p_table)
    );
    IF p_with_rows THEN
        EXECUTE format('SELECT count(*) FROM %s', p_table) INTO rel.reltuples;
        result := result || jsonb_build_object('row_count', rel.reltuples::bigint,
                                               'checksum', stage4.table_checksum(p_table));
    END IF;
    RETURN result;
END $$;

-- Stores (or replaces) the snapshot a change takes before touching a table.
CREATE OR REPLACE FUNCTION stage4.save_snapshot(p_change text, p_table regclass)
RETURNS jsonb LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO stage4.table_snapshots (change, relation, snapshot)
    VALUES (p_change, p_table::text, stage4.describe_table(p_table))
    ON CONFLICT (change, relation) DO UPDATE SET snapshot = EXCLUDED.snapshot, captured_at = now()
    RETURNING snapshot
$$;

-- The snapshot of a table whose rows an online rebuild proved equal to its replacement's, key by
-- key (finish_online_rebuild()): everything describe_table() records, the row count, and p_proof
-- where the checksum of every row would be (computing it takes seconds per million rows, under
-- the rebuild's ACCESS EXCLUSIVE lock).
CREATE OR REPLACE FUNCTION stage4.save_proven_snapshot(p_change text, p_table regclass, p_proof jsonb)
RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    row_count bigint;
    result jsonb;
BEGIN
    EXECUTE format('SELECT count(*) FROM %s', p_table) INTO row_count;
    INSERT INTO stage4.table_snapshots (change, relation, snapshot)
    VALUES (p_change, p_table::text,
            stage4.describe_table(p_table, false) || jsonb_build_object('row_count', row_count, 'rows_proof', p_proof))
    ON CONFLICT (change, relation) DO UPDATE SET snapshot = EXCLUDED.snapshot, captured_at = now()
    RETURNING snapshot INTO result;
    RETURN result;
END $$;

CREATE OR REPLACE FUNCTION stage4.snapshot(p_change text, p_relation text)
RETURNS jsonb LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result jsonb;
BEGIN
    SELECT snapshot INTO result FROM stage4.table_snapshots WHERE change = p_change AND relation = p_relation;
    IF result IS NULL THEN
        RAISE EXCEPTION 'stage4: no snapshot of % for change %', p_relation, p_change;
    END IF;
    RETURN result;
END $$;

-- Functions a change rewrites, as they were (definition, owner, grants, comment), so that its
-- revert puts them back exactly and its verify can compare.
CREATE TABLE IF NOT EXISTS stage4.function_snapshots (
    change      text        NOT NULL,
    function    text        NOT NULL,  -- regprocedure, schema-qualified
    captured_at timestamptz NOT NULL DEFAULT now(),
    definition  text        NOT NULL,  -- pg_get_functiondef()
    owner       text        NOT NULL,
    acl         jsonb       NOT NULL,  -- stage4.grant_statements()
    comment     text,
    PRIMARY KEY (change, function)
);

CREATE OR REPLACE FUNCTION stage4.save_function_snapshots(p_change text, p_functions regprocedure[])
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO stage4.function_snapshots (change, function, definition, owner, acl, comment)
    SELECT p_change, f.oid::regprocedure::text, pg_get_functiondef(f.oid), pg_get_userbyid(f.proowner),
           (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
            FROM stage4.grant_statements(coalesce(f.proacl, acldefault('f', f.proowner)),
                                         format('FUNCTION %s', f.oid::regprocedure)) WITH ORDINALITY g(stmt, n)),
           obj_description(f.oid, 'pg_proc')
    FROM pg_proc f
    WHERE f.oid = ANY (p_functions)
    ON CONFLICT (change, function) DO UPDATE
        SET definition = EXCLUDED.definition, owner = EXCLUDED.owner, acl = EXCLUDED.acl,
            comment = EXCLUDED.comment, captured_at = now()
$$;

-- What differs between the function p_snapshot captured and that function now: NULL when nothing
-- does, else 'missing', 'definition' (with p_body_may_change, only the body and LANGUAGE sql ->
-- plpgsql may differ: 'signature or settings') or 'owner, grants or comment'. Used by the verify
-- scripts of the changes that replace or restore functions.
CREATE OR REPLACE FUNCTION stage4.function_snapshot_mismatch(p_snapshot stage4.function_snapshots,
                                                             p_body_may_change boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f regprocedure := to_regprocedure(p_snapshot.function);
    header text;
BEGIN
    IF f IS NULL THEN
        RETURN 'missing';
    END IF;
    IF p_body_may_change THEN
        header := replace(left(p_snapshot.definition, strpos(p_snapshot.definition, E'\nAS $function$')),
                          E'\n LANGUAGE sql\n', E'\n LANGUAGE plpgsql\n');
        IF left(pg_get_functiondef(f), length(header)) IS DISTINCT FROM header THEN
            RETURN 'signature or settings';
        END IF;
    ELSIF pg_get_functiondef(f) IS DISTINCT FROM p_snapshot.definition THEN
        RETURN 'definition';
    END IF;
    IF (SELECT pg_get_userbyid(p.proowner) FROM pg_proc p WHERE p.oid = f) IS DISTINCT FROM p_snapshot.owner
       OR obj_description(f, 'pg_proc') IS DISTINCT FROM p_snapshot.comment
       OR (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
           FROM pg_proc p, stage4.grant_statements(coalesce(p.proacl, acldefault('f', p.proowner)),
                                                   format('FUNCTION %s', p.oid::regprocedure)) WITH ORDINALITY g(stmt, n)
           WHERE p.oid = f) IS DISTINCT FROM p_snapshot.acl THEN
        RETURN 'owner, grants or comment';
    END IF;
    RETURN NULL;
END $$;

-- Puts back every function p_change saved; returns how many.
-- Bodies are not checked again (as pg_dump restores them): a user's SQL function without its own
-- search_path was written for another path than this one.
CREATE OR REPLACE FUNCTION stage4.restore_function_snapshots(p_change text)
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET check_function_bodies = off AS $$
DECLARE
    snap stage4.function_snapshots%ROWTYPE;
    restored int := 0;
BEGIN
    FOR snap IN SELECT * FROM stage4.function_snapshots WHERE change = p_change ORDER BY function LOOP
        EXECUTE snap.definition;
        EXECUTE format('ALTER FUNCTION %s OWNER TO %I', snap.function, snap.owner);
        PERFORM stage4.reset_acl('FUNCTION ' || snap.function, snap.acl);
        EXECUTE format('COMMENT ON FUNCTION %s IS %L', snap.function, snap.comment);
        restored := restored + 1;
    END LOOP;
    RETURN restored;
END $$;

-- The first step of a revert that drops objects the API functions of p_change read (OPT3's and
-- OPT5's prepare_revert.sql, committed before the revert's transaction): those functions go back to
-- their captured definitions, so that no new call plans on what the revert will drop; calls in
-- flight finish before it can take its locks. Otherwise a call that had planned on a view and
-- queued behind the revert's lock failed with "relation ... does not exist" once it was dropped.
-- The change's own definitions are saved first under '<p_change>:applied', once (a resumed prepare
-- must not save the originals over them), for reinstate_applied_functions. Returns how many were put back.
CREATE OR REPLACE FUNCTION stage4.restore_functions_before_revert(p_change text)
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stage4.function_snapshots WHERE change = p_change || ':applied') THEN
        PERFORM stage4.save_function_snapshots(p_change || ':applied', ARRAY(
            SELECT to_regprocedure(s.function) FROM stage4.function_snapshots s WHERE s.change = p_change));
    END IF;
    RETURN stage4.restore_function_snapshots(p_change);
END $$;

-- The copy restore_functions_before_revert saved, dropped (the revert's transaction no longer needs it).
CREATE OR REPLACE FUNCTION stage4.forget_applied_functions(p_change text)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM stage4.function_snapshots WHERE change = p_change || ':applied'
$$;

-- The cleanup of a revert prepared by restore_functions_before_revert that did not commit (it
-- failed, or the next run keeps the change applied): the change's own definitions return, and the
-- saved copy goes. Returns how many were put back (0 when no revert was prepared).
CREATE OR REPLACE FUNCTION stage4.reinstate_applied_functions(p_change text)
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    reinstated int := stage4.restore_function_snapshots(p_change || ':applied');
BEGIN
    PERFORM stage4.forget_applied_functions(p_change);
    RETURN reinstated;
END $$;

-- Gives the function p_function (SQL or PL/pgSQL) the PL/pgSQL body p_body, with the same
-- signature and settings (volatility, SECURITY, SET search_path, cost): its header is read back
-- from the catalog, so a change never restates what the user wrote. CREATE OR REPLACE keeps its
-- owner, grants and comment. The body resolves its names through the function's own search_path.
CREATE OR REPLACE FUNCTION stage4.set_plpgsql_body(p_function regprocedure, p_body text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    definition text := pg_get_functiondef(p_function);
BEGIN
    IF definition !~ E'\n LANGUAGE (sql|plpgsql)\n' OR position('$function$' IN p_body) > 0 THEN
        RAISE EXCEPTION 'stage4: cannot rewrite %: unexpected definition', p_function;
    END IF;
    EXECUTE replace(left(definition, strpos(definition, E'\nAS $function$')), E'\n LANGUAGE sql\n', E'\n LANGUAGE plpgsql\n')
            || E'AS $function$\n' || p_body || E'\n$function$';
END $$;

-- Makes the set-returning function p_function a PL/pgSQL one whose body is `RETURN QUERY
-- p_query` (stage4.set_plpgsql_body). `#variable_conflict use_column` keeps the SQL-function rule
-- that a column name wins over a parameter of the same name.
CREATE OR REPLACE FUNCTION stage4.set_returning_query(p_function regprocedure, p_query text)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    SELECT stage4.set_plpgsql_body(p_function,
        E'#variable_conflict use_column\nBEGIN\n    RETURN QUERY\n' || p_query || E';\nEND')
$$;

-- Who may call any of p_functions (their EXECUTE grantees, PUBLIC included: on Supabase a user's
-- function is executable by PUBLIC by default), as a GRANT's list of roles.
CREATE OR REPLACE FUNCTION stage4.callers_of(p_functions regprocedure[])
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT string_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END, ', ')
    FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
    WHERE p.oid = ANY (p_functions) AND a.privilege_type = 'EXECUTE'
$$;

-- Grants p_privilege on p_object ('SCHEMA s', 'FUNCTION f(geometry)', 'TABLE v') to every caller
-- of p_functions: a change's accessors stay open to whoever may call the functions it rewrites.
-- No SET clause: p_object's names resolve through the caller's search_path (PostGIS's types).
CREATE OR REPLACE FUNCTION stage4.grant_to_callers(p_privilege text, p_object text, p_functions regprocedure[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE pg_catalog.format('GRANT %s ON %s TO %s', p_privilege, p_object, stage4.callers_of(p_functions));
END $$;

-- The schema PostGIS is installed in: Supabase puts it in `extensions`, many servers in `public`.
CREATE OR REPLACE FUNCTION stage4.postgis_schema()
RETURNS name LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found name := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                   WHERE e.extname = 'postgis');
BEGIN
    IF found IS NULL THEN
        RAISE EXCEPTION 'stage4: PostGIS is not installed in database %', current_database();
    END IF;
    RETURN found;
END $$;

-- Sets the transaction's search_path to pg_catalog, PostGIS's schema, pg_temp, so that a change's
-- SQL names PostGIS's types, functions and operators unqualified wherever PostGIS lives, and
-- the helpers it creates pin that path (SET search_path FROM CURRENT). No SET clause of its own:
-- one would undo the setting when the function returns.
CREATE OR REPLACE FUNCTION stage4.use_postgis_search_path()
RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT pg_catalog.set_config('search_path',
                                 pg_catalog.format('pg_catalog, %I, pg_temp', stage4.postgis_schema()), true)
$$;

-- Sets the transaction's search_path to the one PostgREST gives the API (on Supabase public,
-- extensions: public and PostGIS's schema), through which a user's function without its own SET
-- search_path resolves its names. Used where a change calls the API's functions as the API does.
CREATE OR REPLACE FUNCTION stage4.use_api_search_path()
RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT pg_catalog.set_config('search_path',
                                 pg_catalog.format('public, %I, pg_temp', stage4.postgis_schema()), true)
$$;

-- Turns SQL-language set-returning functions into PL/pgSQL ones with the same signature,
-- settings, grants and answers: `RETURN QUERY <the same query>`. Why: a SQL function with a SET
-- clause (search_path, as every RPC here) is never inlined, and its query is planned again at
-- every call; on a partitioned table planning costs more than executing. PL/pgSQL keeps the plan
-- of its query for the session. The originals are saved under p_change first
-- (restore_function_snapshots puts them back). Returns how many were rewritten.
CREATE OR REPLACE FUNCTION stage4.cache_function_plans(p_change text, p_functions regprocedure[])
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f regprocedure;
    rewritten int := 0;
BEGIN
    PERFORM stage4.save_function_snapshots(p_change, p_functions);
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.oid = ANY (p_functions) AND p.proretset AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'sql')
        ORDER BY 1
    LOOP
        PERFORM stage4.set_returning_query(f, rtrim(btrim((SELECT prosrc FROM pg_proc WHERE oid = f)), E'; \n\t'));
        rewritten := rewritten + 1;
    END LOOP;
    RETURN rewritten;
END $$;

-- Database-level settings a change makes (ALTER DATABASE ... SET), with the value each had
-- before (NULL: not set at the database level), so that the revert puts them back. Sessions
-- opened from then on use them; open ones keep theirs.
CREATE TABLE IF NOT EXISTS stage4.database_settings (
    change   text NOT NULL,
    name     text NOT NULL,
    previous text,
    PRIMARY KEY (change, name)
);

-- The database-level value of a setting (NULL when none is set there).
CREATE OR REPLACE FUNCTION stage4.database_setting(p_name text)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT substr(s, length(p_name) + 2)
    FROM pg_db_role_setting d, unnest(d.setconfig) s
    WHERE d.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND d.setrole = 0 AND s LIKE p_name || '=%'
$$;

CREATE OR REPLACE FUNCTION stage4.set_database_setting(p_change text, p_name text, p_value text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The first value seen is the original: a second deploy must not record its own.
    INSERT INTO stage4.database_settings (change, name, previous)
    VALUES (p_change, p_name, stage4.database_setting(p_name))
    ON CONFLICT (change, name) DO NOTHING;
    EXECUTE format('ALTER DATABASE %I SET %s = %L', current_database(), quote_ident(p_name), p_value);
END $$;

-- Puts back every database-level setting p_change made; returns how many.
CREATE OR REPLACE FUNCTION stage4.restore_database_settings(p_change text)
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    setting stage4.database_settings%ROWTYPE;
    restored int := 0;
BEGIN
    FOR setting IN SELECT * FROM stage4.database_settings WHERE change = p_change ORDER BY name LOOP
        IF setting.previous IS NULL THEN
            EXECUTE format('ALTER DATABASE %I RESET %s', current_database(), quote_ident(setting.name));
        ELSE
            EXECUTE format('ALTER DATABASE %I SET %s = %L', current_database(), quote_ident(setting.name), setting.previous);
        END IF;
        restored := restored + 1;
    END LOOP;
    DELETE FROM stage4.database_settings WHERE change = p_change;
    RETURN restored;
END $$;

-- Publications: a partitioned table publishes its changes under its partitions' names unless the
-- publication says publish_via_partition_root; subscribers and Supabase Realtime know the table by
-- its own name. publications_of() lists the publications that include p_table (by name, FOR ALL
-- TABLES or FOR TABLES IN SCHEMA); publish_via_root() turns the option on in those that lack it,
-- recording what it changed for restore_publication_settings().
CREATE TABLE IF NOT EXISTS stage4.publication_settings (
    change      text NOT NULL,
    publication text NOT NULL,
    via_root    boolean NOT NULL,  -- publish_via_partition_root before the change
    PRIMARY KEY (change, publication)
);

CREATE OR REPLACE FUNCTION stage4.publications_of(p_table regclass)
RETURNS SETOF pg_publication LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.* FROM pg_publication p
    WHERE p.puballtables
       OR EXISTS (SELECT 1 FROM pg_publication_rel r WHERE r.prpubid = p.oid AND r.prrelid = p_table)
       OR EXISTS (SELECT 1 FROM pg_publication_namespace n JOIN pg_class c ON c.relnamespace = n.pnnspid
                  WHERE n.pnpubid = p.oid AND c.oid = p_table)
$$;

-- Raises when a publication of p_table may not be altered by the current role, or when turning
-- publish_via_partition_root on for p_table's sake would change how another partitioned table of
-- the same publication is published (the table owner's decision, not ours).
CREATE OR REPLACE FUNCTION stage4.assert_can_publish_via_root(p_table regclass, p_label text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    blocking text;
BEGIN
    -- The swap takes the table out of its publications and puts it back: their owner's right.
    SELECT string_agg(format('%I (owner %s)', p.pubname, pg_get_userbyid(p.pubowner)), ', ') INTO blocking
    FROM stage4.publications_of(p_table) p WHERE NOT pg_has_role(p.pubowner, 'USAGE');
    IF blocking IS NOT NULL THEN
        RAISE EXCEPTION '%: % is in publications that % may not alter: %. A rebuild takes the table out of them and '
                        'puts it back. Nothing was changed.', p_label, p_table, current_user, blocking;
    END IF;
    SELECT string_agg(format('%I (also publishes %s)', p.pubname, other.oid::regclass), ', ') INTO blocking
    FROM stage4.publications_of(p_table) p
    JOIN pg_class other ON other.relkind = 'p' AND other.oid <> p_table AND NOT other.relispartition
    WHERE NOT p.pubviaroot AND p.oid IN (SELECT o.oid FROM pg_class c, stage4.publications_of(c.oid) o WHERE c.oid = other.oid);
    IF blocking IS NOT NULL THEN
        RAISE EXCEPTION '%: % is in publications without publish_via_partition_root that publish other partitioned tables: %. '
                        'Partitioned, it would be published under its partitions'' names unless that option is on, which '
                        'would also change how those tables are published. Nothing was changed.', p_label, p_table, blocking;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION stage4.publish_via_root(p_change text, p_table regclass)
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pub name;
    changed int := 0;
BEGIN
    PERFORM stage4.assert_can_publish_via_root(p_table, p_change);
    FOR pub IN SELECT pubname FROM stage4.publications_of(p_table) WHERE NOT pubviaroot ORDER BY 1 LOOP
        INSERT INTO stage4.publication_settings (change, publication, via_root) VALUES (p_change, pub, false)
        ON CONFLICT DO NOTHING;
        EXECUTE format('ALTER PUBLICATION %I SET (publish_via_partition_root = true)', pub);
        changed := changed + 1;
    END LOOP;
    RETURN changed;
END $$;

CREATE OR REPLACE FUNCTION stage4.restore_publication_settings(p_change text)
RETURNS int LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    setting stage4.publication_settings%ROWTYPE;
    restored int := 0;
BEGIN
    FOR setting IN SELECT * FROM stage4.publication_settings WHERE change = p_change ORDER BY publication LOOP
        IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = setting.publication) THEN
            EXECUTE format('ALTER PUBLICATION %I SET (publish_via_partition_root = %s)', setting.publication,
                           CASE WHEN setting.via_root THEN 'true' ELSE 'false' END);
            restored := restored + 1;
        END IF;
    END LOOP;
    DELETE FROM stage4.publication_settings WHERE change = p_change;
    RETURN restored;
END $$;

-- Replaces an ACL by exactly the given GRANT statements. New objects receive default
-- privileges (Supabase grants anon and authenticated everything in public), which must not
-- survive on a recreated object.
CREATE OR REPLACE FUNCTION stage4.reset_acl(p_object text, p_grants jsonb)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    grantee text;
    stmt text;
    kind text := split_part(p_object, ' ', 1);
    name text := substr(p_object, length(kind) + 2);
BEGIN
    FOR grantee IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END
        FROM aclexplode(CASE WHEN kind = 'FUNCTION'
                             THEN (SELECT coalesce(proacl, acldefault('f', proowner)) FROM pg_proc WHERE oid = name::regprocedure)
                             ELSE (SELECT coalesce(relacl, acldefault((CASE relkind WHEN 'S' THEN 's' ELSE 'r' END)::"char", relowner))
                                   FROM pg_class WHERE oid = name::regclass) END) a
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %s', p_object, grantee);
    END LOOP;
    FOR stmt IN SELECT jsonb_array_elements_text(p_grants) LOOP
        EXECUTE stmt;
    END LOOP;
END $$;

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
        EXECUTE item->>'definition';
        IF item->>'kind' = 'policy' THEN
            EXECUTE format('COMMENT ON POLICY %s IS %L', item->>'identity', item->>'comment');
            CONTINUE;
        ELSIF item->>'kind' = 'function' THEN
            stmt := format('FUNCTION %s', item->>'identity');
            EXECUTE format('ALTER %s OWNER TO %I', stmt, item->>'owner');
            EXECUTE format('COMMENT ON %s IS %L', stmt, item->>'comment');
        ELSE
            stmt := 'TABLE ' || (item->>'identity');
            FOR grantee IN SELECT jsonb_array_elements_text(item->'indexes') LOOP
                EXECUTE grantee;
            END LOOP;
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
    PERFORM stage4.swap_shadow(p_table, state.shadow::regclass, before,
                               CASE WHEN p_layout->>'partition_by' IS NULL
                                    THEN ARRAY(SELECT jsonb_array_elements_text(coalesce(p_layout->'reloptions', before->'reloptions'))) END);
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

-- A materialized view is filled with its owner's rights: an owner subject to RLS would hold only
-- the rows it can see, and callers would silently miss the others. The API roles must exist too.
CREATE OR REPLACE FUNCTION stage4.assert_can_materialize(p_label text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    c pg_class%ROWTYPE;
    missing text;
BEGIN
    SELECT * INTO c FROM pg_class WHERE oid = 'public.geometrias'::regclass;
    IF c.relrowsecurity
       AND NOT (SELECT r.rolsuper OR r.rolbypassrls FROM pg_roles r WHERE r.rolname = current_user)
       AND (c.relforcerowsecurity OR NOT pg_has_role(c.relowner, 'USAGE')) THEN
        RAISE EXCEPTION '%: % is subject to the row level security of public.geometrias; apply it as the table owner (without FORCE ROW LEVEL SECURITY), a BYPASSRLS role or a superuser',
            p_label, current_user;
    END IF;
    SELECT string_agg(r, ', ') INTO missing
    FROM unnest(ARRAY['anon', 'authenticated', 'service_role']) r
    WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION '%: the API roles % do not exist', p_label, missing;
    END IF;
END $$;

-- What RLS lets a caller read of public.geometrias, for the changes that answer from a
-- materialized copy of it (OPT3's search view, OPT5's dashboard aggregates): materialized views
-- have no RLS, so these changes evaluate the table's read policies themselves, and may only do so
-- for the policies they know. One place decides it for both: the known policies (precheck), the
-- fingerprints of the policies a change accepted (deploy), and stage4.visibilidade (call time).
--
-- The policies that decide reads (command SELECT or ALL; the others never hide a row from a
-- SELECT): name, permissive, command, roles, USING, as pg_get_expr() deparses it under the
-- search_path pg_catalog, pg_temp. WITH CHECK does not affect reads and is not compared.
CREATE OR REPLACE FUNCTION stage4.read_policies()
RETURNS jsonb LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(jsonb_build_array(
               p.polname, p.polpermissive, p.polcmd,
               (SELECT jsonb_agg(x.r ORDER BY x.r)
                FROM (SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(r)::text END AS r
                      FROM unnest(p.polroles) r) x),
               pg_get_expr(p.polqual, p.polrelid)) ORDER BY p.polname), '[]')
    FROM pg_policy p
    WHERE p.polrelid = to_regclass('public.geometrias') AND p.polcmd IN ('r', '*')
$$;

-- Which rule of stage4.visibilidade a read policy (an element of read_policies()) is, whatever its
-- name and however the application wrote it, NULL when none:
--   publicas  permissive, TO anon, authenticated, USING the row's publico is true;
--   dono      permissive, TO authenticated, USING owner_id equals auth.uid() (bare, or wrapped in
--             a sub-select as Supabase advises so that it is computed once per query).
CREATE OR REPLACE FUNCTION stage4.read_policy_rule(p_policy jsonb)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE
        WHEN NOT (p_policy ->> 1)::boolean THEN NULL
        WHEN p_policy -> 3 = '["anon", "authenticated"]'
             AND p_policy ->> 4 IN ('publico', '(publico = true)', '(publico IS TRUE)') THEN 'publicas'
        WHEN p_policy -> 3 = '["authenticated"]'
             AND p_policy ->> 4 IN ('(owner_id = auth.uid())', '(auth.uid() = owner_id)',
                                    '(owner_id = ( SELECT auth.uid() AS uid))',
                                    '(( SELECT auth.uid() AS uid) = owner_id)') THEN 'dono'
    END
$$;

-- The read policies must be exactly the two rules stage4.visibilidade applies (each at least once,
-- under any name), and nothing else that decides reads: a materialized copy answers from those rules.
CREATE OR REPLACE FUNCTION stage4.assert_known_read_policies(p_label text)
RETURNS void LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found jsonb := stage4.read_policies();
    unknown text;
    missing text;
BEGIN
    SELECT string_agg(format('%s (%s, FOR %s, TO %s, USING %s)', p ->> 0,
                             CASE WHEN (p ->> 1)::boolean THEN 'permissive' ELSE 'RESTRICTIVE' END,
                             CASE p ->> 2 WHEN 'r' THEN 'SELECT' ELSE 'ALL' END,
                             (SELECT string_agg(r, ', ') FROM jsonb_array_elements_text(p -> 3) r), p ->> 4), '; ')
      INTO unknown
    FROM jsonb_array_elements(found) p
    WHERE stage4.read_policy_rule(p) IS NULL;
    SELECT string_agg(r.description, '; ') INTO missing
    FROM (VALUES ('publicas', 'anon and authenticated read the rows where publico is true'),
                 ('dono', 'authenticated reads the rows where owner_id = auth.uid()')) r(rule, description)
    WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(found) p WHERE stage4.read_policy_rule(p) = r.rule);
    IF unknown IS NOT NULL OR missing IS NOT NULL THEN
        RAISE EXCEPTION '%: the RLS policies of public.geometrias are not the known ones, so a materialized copy cannot reproduce what each caller may see.%',
            p_label,
            CASE WHEN unknown IS NULL THEN '' ELSE ' Policies that decide reads otherwise: ' || unknown || '.' END
            || CASE WHEN missing IS NULL THEN '' ELSE ' Missing: a permissive policy by which ' || missing || '.' END
            USING HINT = 'Refusing: adapt Stage 4''s visibility rules (stage4.visibilidade) to these policies first.';
    END IF;
END $$;

-- The fingerprint of the read policies in force: their catalog rows, not deparsed (any CREATE,
-- ALTER or DROP POLICY changes it, and computing it costs microseconds, deparsing ten times more).
CREATE OR REPLACE VIEW stage4.read_policies_fingerprint AS
    SELECT md5(string_agg(format('%s|%s|%s|%s|%s', p.polname, p.polpermissive, p.polcmd, p.polroles, p.polqual),
                          ';' ORDER BY p.polname)) AS fingerprint
    FROM pg_policy p
    WHERE p.polrelid = to_regclass('public.geometrias') AND p.polcmd IN ('r', '*');

-- Fingerprints of the policies a change found to be the known ones when it deployed. A change
-- records its own at deploy and removes it at revert.
CREATE TABLE IF NOT EXISTS stage4.accepted_read_policies (
    change      text        PRIMARY KEY,
    fingerprint text        NOT NULL,
    accepted_at timestamptz NOT NULL DEFAULT now()
);

-- The caller, as the materialized changes see it: the role of SET ROLE (PostgREST's SET LOCAL ROLE
-- anon/authenticated), else the session user. current_user would name the owner inside a SECURITY
-- DEFINER function (OPT3's helper), while these two are the same inside and outside one, and the
-- session may act as that role anyway (SET ROLE requires membership), so what is computed for it
-- reveals nothing the session could not read itself. Where current_user differs from it (code
-- running inside another SECURITY DEFINER function), RLS judges current_user: the public functions
-- then take the original query (they compare current_user with papel, see papel_exato() of OPT3
-- and OPT5).
--   papel     that role
--   exata     the rules below are what RLS would apply to it: row_security on (off, the original
--             query raises for RLS-bound roles), it may SELECT the table (otherwise the original
--             query raises), and the read policies are ones a change accepted as the known ones
--   todas     RLS lets it read every row: RLS off, superuser, BYPASSRLS, or owner without FORCE
--   publicas  the policy that lets anon and authenticated read public rows applies to it (member of
--             either; stage4.read_policy_rule 'publicas')
--   uid       auth.uid() when the owner's policy applies to it (member of authenticated; rule 'dono')
-- A row is visible when exata AND (todas OR (publico AND publicas) OR owner_id = uid). The rules
-- are PostgreSQL's (check_enable_rls; policy roles by privileges of role, hence pg_has_role USAGE).
-- Only built-in functions and auth.uid() (both executable by the API roles): views run their
-- functions with the reader's privileges. Looked up by name at call time, so OPT1 may rebuild
-- the table under it. OFFSET 0 keeps it a subquery, computed once per query rather than once per
-- row of what joins it.
CREATE OR REPLACE VIEW stage4.visibilidade AS
    SELECT r.rolname AS papel,
           coalesce(current_setting('row_security') = 'on'
                    AND has_table_privilege(r.oid, c.oid, 'SELECT')
                    AND (SELECT f.fingerprint FROM stage4.read_policies_fingerprint f)
                        IN (SELECT a.fingerprint FROM stage4.accepted_read_policies a), false) AS exata,
           (NOT c.relrowsecurity
            OR r.rolsuper
            OR r.rolbypassrls
            OR (NOT c.relforcerowsecurity AND pg_has_role(r.oid, c.relowner, 'USAGE'))) AS todas,
           (pg_has_role(r.oid, 'anon', 'USAGE') OR pg_has_role(r.oid, 'authenticated', 'USAGE')) AS publicas,
           CASE WHEN pg_has_role(r.oid, 'authenticated', 'USAGE') THEN auth.uid() END AS uid
    FROM pg_class AS c
    JOIN pg_roles AS r ON r.rolname = CASE current_setting('role') WHEN 'none' THEN session_user
                                                                   ELSE current_setting('role') END
    WHERE c.oid = to_regclass('public.geometrias')
    OFFSET 0;
COMMENT ON VIEW stage4.visibilidade IS
    'Stage 4: which rows of public.geometrias the session''s role (SET ROLE, else session user) may read under the known read policies, '
    'and whether those are the policies in force (exata). Read by OPT3''s search helper and OPT5''s dashboard views; never grant it to the API roles.';

-- Deploy of a change that evaluates the policies itself: they must be the known ones, and their
-- fingerprint is recorded for stage4.visibilidade.exata.
CREATE OR REPLACE FUNCTION stage4.accept_read_policies(p_change text, p_label text)
RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM stage4.assert_known_read_policies(p_label);
    INSERT INTO stage4.accepted_read_policies (change, fingerprint)
    SELECT p_change, f.fingerprint FROM stage4.read_policies_fingerprint f
    ON CONFLICT (change) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, accepted_at = now();
END $$;

CREATE OR REPLACE FUNCTION stage4.forget_read_policies(p_change text)
RETURNS void LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $$
    DELETE FROM stage4.accepted_read_policies WHERE change = p_change
$$;

-- Why public.geometrias-like p_table is too small for a change to pay, NULL when it is not: below
-- stage4.min_table_bytes (the change's variable) of heap and TOAST. 'auto' is the server's
-- min_parallel_table_scan_size, the size below which PostgreSQL judges a table too small to split
-- one scan among processes; empty or 0 never says so. Read-only (decline.sql).
CREATE OR REPLACE FUNCTION stage4.small_table(p_table regclass)
RETURNS text LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    setting text := current_setting('stage4.min_table_bytes', true);
    bytes bigint := pg_table_size(p_table);
    threshold bigint := CASE WHEN setting = 'auto' THEN pg_size_bytes(current_setting('min_parallel_table_scan_size'))
                             ELSE coalesce(nullif(setting, ''), '0')::bigint END;
    n_rows bigint;
BEGIN
    IF bytes >= threshold THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT count(*) FROM %s', p_table) INTO n_rows;
    RETURN format('%s holds %s rows in %s, below %s (%s)', p_table, n_rows, pg_size_pretty(bytes), pg_size_pretty(threshold),
                  CASE WHEN setting = 'auto' THEN 'min_parallel_table_scan_size' ELSE 'min_table_bytes' END);
END $$;

-- Reading an RPC's query. OPT3 and OPT5 rewrite the user's own RPCs; they accept a body only when
-- they recognise its shape, and read from it what their views and helpers must reproduce. The
-- recognition works on the query as PostgreSQL itself reads it (stage4.canonical_query), so
-- spelling, case, aliases, spacing, implicit casts and the search_path do not matter, and ends with
-- a proof: the query rebuilt from what was read must print exactly as the original.

-- p_text split at each p_separator outside parentheses, brackets and quotes: the top-level terms of
-- a printed expression (' AND ', ', ', E'\n').
CREATE OR REPLACE FUNCTION stage4.sql_split(p_text text, p_separator text)
RETURNS text[] LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    parts text[] := '{}';
    depth int := 0;
    quote text;
    start int := 1;
    i int := 1;
    ch text;
BEGIN
    WHILE i <= length(p_text) LOOP
        ch := substr(p_text, i, 1);
        IF quote IS NOT NULL THEN
            IF ch = quote THEN
                quote := NULL;  -- a doubled quote closes and reopens: the same state
            END IF;
        ELSIF ch IN ('''', '"') THEN
            quote := ch;
        ELSIF ch IN ('(', '[') THEN
            depth := depth + 1;
        ELSIF ch IN (')', ']') THEN
            depth := depth - 1;
        ELSIF depth = 0 AND substr(p_text, i, length(p_separator)) = p_separator THEN
            parts := parts || substr(p_text, start, i - start);
            i := i + length(p_separator);
            start := i;
            CONTINUE;
        END IF;
        i := i + 1;
    END LOOP;
    RETURN parts || substr(p_text, start);
END $$;

-- p_text without the parentheses that enclose all of it, however many pairs.
CREATE OR REPLACE FUNCTION stage4.sql_unwrap(p_text text)
RETURNS text LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t text := btrim(p_text);
    depth int;
    quote text;
    closed_at int;
    i int;
    ch text;
BEGIN
    LOOP
        EXIT WHEN left(t, 1) <> '(' OR right(t, 1) <> ')';
        -- Enclosed only when the first parenthesis closes at the last character.
        depth := 0;
        quote := NULL;
        closed_at := NULL;
        FOR i IN 1 .. length(t) LOOP
            ch := substr(t, i, 1);
            IF quote IS NOT NULL THEN
                IF ch = quote THEN
                    quote := NULL;
                END IF;
            ELSIF ch IN ('''', '"') THEN
                quote := ch;
            ELSIF ch = '(' THEN
                depth := depth + 1;
            ELSIF ch = ')' THEN
                depth := depth - 1;
                IF depth = 0 THEN
                    closed_at := i;
                    EXIT;
                END IF;
            END IF;
        END LOOP;
        EXIT WHEN closed_at IS DISTINCT FROM length(t);
        t := btrim(substr(t, 2, length(t) - 2));
    END LOOP;
    RETURN t;
END $$;

-- The single query of a set-returning RPC, as its author wrote it: a SQL body (without its final
-- semicolon), or the query of a PL/pgSQL body that is only `RETURN QUERY <query>` (as
-- stage4.cache_function_plans writes them). NULL for anything else.
CREATE OR REPLACE FUNCTION stage4.function_query(p_function regprocedure)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT CASE l.lanname
               WHEN 'sql' THEN coalesce(p.prosrc, '')
               WHEN 'plpgsql' THEN (regexp_match(p.prosrc,
                   '^\s*(?:#variable_conflict\s+use_column\s+)?BEGIN\s+RETURN\s+QUERY\s+(.*?)\s*;?\s*END\s*;?\s*$', 'i'))[1]
           END
    FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang
    WHERE p.oid = p_function AND p.prosqlbody IS NULL
$$;

-- The query of the RPC p_function (or p_query, written for its arguments) as PostgreSQL reads it:
-- parsed as the body of a temporary function with the same name, arguments, result and search_path
-- (BEGIN ATOMIC keeps the parse), printed back by pg_get_function_sqlbody() with every name
-- schema-qualified, and each parameter written $n. Two texts that print the same are the same
-- query. NULL when it is not exactly one query that parses. It creates a temporary function, so it
-- cannot run in a read-only transaction (stage4_change runs decline.sql in one it rolls back).
CREATE OR REPLACE FUNCTION stage4.canonical_query(p_function regprocedure, p_query text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p pg_proc%ROWTYPE;
    body text;
    printed text;
    probe text;
    statements text[];
    i int;
BEGIN
    SELECT * INTO p FROM pg_proc WHERE oid = p_function;
    IF p.prosqlbody IS NOT NULL AND p_query IS NULL THEN
        body := regexp_replace(pg_get_function_sqlbody(p_function), '^BEGIN ATOMIC\s*(.*?);?\s*END$', '\1');
    ELSE
        body := coalesce(p_query, stage4.function_query(p_function));
    END IF;
    IF body IS NULL THEN
        RETURN NULL;
    END IF;
    probe := format('pg_temp.%I(%s)', p.proname, oidvectortypes(p.proargtypes));
    -- Names resolve as when the RPC runs: its own search_path, else PostgreSQL's default and PostGIS's
    -- schema (Supabase's API roles have extensions on theirs).
    PERFORM set_config('search_path',
                       coalesce((SELECT substr(c, 13) FROM unnest(p.proconfig) c WHERE c LIKE 'search\_path=%'),
                                format('"$user", public, %I', stage4.postgis_schema())), true);
    BEGIN
        EXECUTE format(E'CREATE FUNCTION pg_temp.%I(%s) RETURNS %s LANGUAGE sql STABLE BEGIN ATOMIC\n%s\n; END',
                       p.proname, pg_get_function_arguments(p_function), pg_get_function_result(p_function),
                       regexp_replace(body, '[\s;]+$', ''));
    EXCEPTION WHEN syntax_error OR undefined_column OR undefined_function OR undefined_table OR undefined_object
                   OR datatype_mismatch OR ambiguous_column OR ambiguous_function OR invalid_function_definition
                   OR feature_not_supported OR grouping_error OR wrong_object_type OR invalid_column_reference THEN
        PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
        RETURN NULL;
    END;
    PERFORM set_config('search_path', 'pg_catalog, pg_temp', true);
    printed := pg_get_function_sqlbody(probe::regprocedure);
    EXECUTE format('DROP FUNCTION %s', probe);
    printed := regexp_replace(printed, '^BEGIN ATOMIC\s*(.*?);?\s*END$', '\1');
    statements := stage4.sql_split(printed, ';');
    IF cardinality(statements) <> 1 THEN
        RETURN NULL;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p.proargnames), 0) LOOP
        CONTINUE WHEN coalesce(p.proargnames[i], '') = '';
        printed := replace(printed, format('%I.%I', p.proname, p.proargnames[i]), '$' || i);
    END LOOP;
    RETURN btrim(printed);
END $$;

-- The top-level clauses of the printed query (stage4.canonical_query) of p_function, which must read
-- p_table alone: {query, alias (of p_table, or its name), select, where, order_by, limit} as text
-- (each absent when the query has none), or {"reason": ...} for any other clause (GROUP BY, OFFSET,
-- a join, WITH...).
CREATE OR REPLACE FUNCTION stage4.query_clauses(p_function regprocedure, p_table regclass)
RETURNS jsonb LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q text := stage4.canonical_query(p_function);
    line text;
    clause text;
    clauses jsonb := '{}';
    m text[];
BEGIN
    IF q IS NULL THEN
        RETURN jsonb_build_object('reason', 'its body is not one SQL query that parses (or RETURN QUERY of one)');
    END IF;
    FOREACH line IN ARRAY stage4.sql_split(q, E'\n') LOOP
        line := btrim(line);
        m := regexp_match(line, '^(SELECT|FROM|WHERE|ORDER BY|LIMIT) (.*)$');
        IF m IS NOT NULL AND NOT clauses ? lower(replace(m[1], ' ', '_')) THEN
            clause := lower(replace(m[1], ' ', '_'));
            clauses := clauses || jsonb_build_object(clause, m[2]);
        ELSIF clause = 'select' THEN
            clauses := clauses || jsonb_build_object('select', (clauses ->> 'select') || ' ' || line);
        ELSE
            RETURN jsonb_build_object('reason', 'it is not one SELECT ... FROM ... WHERE ... ORDER BY ... [LIMIT ...]: ' || q);
        END IF;
    END LOOP;
    IF NOT clauses ? 'where' OR NOT clauses ? 'order_by' THEN
        RETURN jsonb_build_object('reason', 'it is not one SELECT ... FROM ... WHERE ... ORDER BY ... [LIMIT ...]: ' || q);
    END IF;
    m := regexp_split_to_array(clauses ->> 'from', ' ');
    IF m[1] <> p_table::text OR cardinality(m) > 2 THEN
        RETURN jsonb_build_object('reason', format('it reads %s, not %s alone', clauses ->> 'from', p_table));
    END IF;
    RETURN clauses || jsonb_build_object('query', q, 'alias', coalesce(m[2], (SELECT quote_ident(relname) FROM pg_class WHERE oid = p_table)));
END $$;

-- Recognises the text search RPC p_function of p_table:
--   SELECT t.* FROM p_table t
--   WHERE <tsvector of t's columns> @@ <tsquery of the arguments>
--     [AND t.<geometry> && <box of the arguments>  |  AND (<box> IS NULL OR t.<geometry> && <box>)]
--   ORDER BY [ts_rank|ts_rank_cd([weights,] <the tsvector>, <the tsquery>[, normalization]) DESC,] t.id
--   [LIMIT <count of the arguments>]
-- with any text search function and configuration, any spelling. Returns the pieces (alias,
-- tsvector, tsquery, box, box_column, box_optional, rank, limit: SQL text, arguments as $n), or
-- {"reason": ...} saying what does not fit.
CREATE OR REPLACE FUNCTION stage4.search_rpc_shape(p_function regprocedure, p_table regclass)
RETURNS jsonb LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    clauses jsonb := stage4.query_clauses(p_function, p_table);
    q text := clauses ->> 'query';
    alias text := clauses ->> 'alias';
    cond text;
    parts text[];
    shape jsonb := '{}';
    overlap text := format(' OPERATOR(%I.&&) ', stage4.postgis_schema());
    item text[];
    rank text;
    args text[];
    at int;
    rebuilt text;
BEGIN
    IF clauses ? 'reason' THEN
        RETURN clauses;
    END IF;
    shape := jsonb_build_object('alias', alias);

    FOREACH cond IN ARRAY stage4.sql_split(stage4.sql_unwrap(clauses ->> 'where'), ' AND ') LOOP
        cond := stage4.sql_unwrap(cond);
        parts := stage4.sql_split(cond, ' @@ ');
        IF cardinality(parts) = 2 AND NOT shape ? 'tsvector' THEN
            shape := shape || jsonb_build_object('tsvector', stage4.sql_unwrap(parts[1]), 'tsquery', stage4.sql_unwrap(parts[2]));
            CONTINUE;
        END IF;
        parts := stage4.sql_split(cond, ' OR ');
        IF cardinality(parts) = 2 AND stage4.sql_unwrap(parts[1]) ~ ' IS NULL$' THEN
            shape := shape || jsonb_build_object('box_optional', true);
            cond := stage4.sql_unwrap(parts[2]);
        END IF;
        parts := stage4.sql_split(cond, overlap);
        IF cardinality(parts) = 2 AND NOT shape ? 'box' AND parts[1] ~ ('^' || regexp_replace(alias, '\W', '\\\&', 'g') || '\.\S+$') THEN
            shape := shape || jsonb_build_object('box_column', substr(parts[1], length(alias) + 2), 'box', parts[2],
                                                 'box_optional', coalesce((shape ->> 'box_optional')::boolean, false));
            CONTINUE;
        END IF;
        RETURN jsonb_build_object('reason', 'a condition other than the text match and a bounding box: ' || cond);
    END LOOP;
    IF NOT shape ? 'tsvector' THEN
        RETURN jsonb_build_object('reason', 'no text match (<tsvector> @@ <tsquery>) in its WHERE');
    END IF;
    IF position(alias || '.' IN shape ->> 'tsvector') = 0 OR position('$' IN shape ->> 'tsvector') > 0 THEN
        RETURN jsonb_build_object('reason', 'its tsvector is not computed from the row alone: ' || (shape ->> 'tsvector'));
    END IF;
    -- A tsvector computed with the session's default_text_search_config could differ between the view's refresh and the call.
    IF (SELECT count(*) FROM regexp_matches(shape ->> 'tsvector', 'to_tsvector\(', 'g'))
       <> (SELECT count(*) FROM regexp_matches(shape ->> 'tsvector', 'to_tsvector\(''[^'']+''::regconfig, ', 'g')) THEN
        RETURN jsonb_build_object('reason', 'its to_tsvector() names no text search configuration: ' || (shape ->> 'tsvector'));
    END IF;
    IF position(alias || '.' IN shape ->> 'tsquery') > 0 OR position(alias || '.' IN coalesce(shape ->> 'box', '')) > 0 THEN
        RETURN jsonb_build_object('reason', 'its tsquery or box depends on the row');
    END IF;

    item := stage4.sql_split(clauses ->> 'order_by', ', ');
    IF item[cardinality(item)] <> alias || '.id' OR cardinality(item) > 2 THEN
        RETURN jsonb_build_object('reason', 'its order is not [a rank DESC,] ' || alias || '.id: ' || (clauses ->> 'order_by'));
    END IF;
    IF cardinality(item) = 2 THEN
        rank := stage4.sql_unwrap(regexp_replace(item[1], ' DESC$', ''));
        parts := regexp_match(rank, '^(ts_rank|ts_rank_cd)\((.*)\)$');
        IF item[1] !~ ' DESC$' OR parts IS NULL THEN
            RETURN jsonb_build_object('reason', 'it is not ordered by ts_rank() or ts_rank_cd() descending: ' || item[1]);
        END IF;
        args := ARRAY(SELECT stage4.sql_unwrap(a) FROM unnest(stage4.sql_split(parts[2], ', ')) a);
        at := CASE WHEN args[1] = shape ->> 'tsvector' THEN 1 WHEN args[2] = shape ->> 'tsvector' THEN 2 END;
        IF at IS NULL OR args[at + 1] IS DISTINCT FROM shape ->> 'tsquery' OR cardinality(args) > at + 2
           OR (at = 2 AND (position('$' IN args[1]) > 0 OR position(alias || '.' IN args[1]) > 0))
           OR (cardinality(args) = at + 2 AND (position('$' IN args[at + 2]) > 0 OR position(alias || '.' IN args[at + 2]) > 0)) THEN
            RETURN jsonb_build_object('reason', 'its rank is not of its own tsvector and tsquery with constant weights: ' || rank);
        END IF;
        -- A format() template: the tsvector and the tsquery go in its two %s.
        shape := shape || jsonb_build_object('rank', format('%s(%s%%s, %%s%s)', parts[1],
                                                            CASE WHEN at = 2 THEN replace(args[1], '%', '%%') || ', ' ELSE '' END,
                                                            CASE WHEN cardinality(args) = at + 2 THEN ', ' || replace(args[at + 2], '%', '%%') ELSE '' END));
    END IF;
    IF clauses ? 'limit' THEN
        IF position(alias || '.' IN clauses ->> 'limit') > 0 OR clauses ->> 'limit' = 'ALL' THEN
            RETURN jsonb_build_object('reason', 'its LIMIT is not a count: ' || (clauses ->> 'limit'));
        END IF;
        shape := shape || jsonb_build_object('limit', clauses ->> 'limit');
    END IF;

    -- The proof: the query rebuilt from these pieces is the same query.
    rebuilt := format('SELECT %1$s.* FROM %2$s %3$s WHERE (%4$s) @@ (%5$s) %6$s ORDER BY %7$s %1$s.id %8$s',
                      alias, clauses ->> 'from', '', shape ->> 'tsvector', shape ->> 'tsquery',
                      CASE WHEN shape ? 'box' THEN
                          format(CASE WHEN (shape ->> 'box_optional')::boolean THEN 'AND (%3$s IS NULL OR %1$s.%2$s%4$s%3$s)'
                                      ELSE 'AND %1$s.%2$s%4$s%3$s' END,
                                 alias, shape ->> 'box_column', shape ->> 'box', overlap)
                      ELSE '' END,
                      CASE WHEN shape ? 'rank' THEN format(shape ->> 'rank', shape ->> 'tsvector', shape ->> 'tsquery') || ' DESC,' ELSE '' END,
                      coalesce('LIMIT ' || (shape ->> 'limit'), ''));
    IF stage4.canonical_query(p_function, rebuilt) IS DISTINCT FROM q THEN
        RETURN jsonb_build_object('reason', 'it is not exactly a text search of the known shape: ' || q);
    END IF;
    RETURN shape;
END $$;

-- The condition `<column> && <box>` that finds, with the GiST index, every row of the radius shape
-- (stage4.radius_rpc_shape) within its radius: a box around the circle, as
-- files/fixture/reference_schema.sql computes it. A degree of latitude is at least 110,574 m; one of
-- longitude shrinks with cos(latitude), taken at the circle's latitude farthest from the equator;
-- 1% margin for the spheroid.
CREATE OR REPLACE FUNCTION stage4.radius_box(p_shape jsonb)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('%1$s.%2$s OPERATOR(%3$s.&&) %3$s.st_expand(%3$s.st_setsrid(%3$s.st_makepoint(%4$s, %5$s), 4326), '
                  '1.01 * %6$s / (111320 * cos(radians(least(abs(%5$s) + %6$s / 110574, 89.9)))), 1.01 * %6$s / 110574)',
                  p_shape ->> 'alias', p_shape ->> 'column', quote_ident(stage4.postgis_schema()),
                  p_shape ->> 'lon', p_shape ->> 'lat', p_shape ->> 'radius')
$$;

-- Recognises the radius RPC p_function of p_table:
--   SELECT t.* FROM p_table t
--   WHERE [t.<geometry> && <the circle's box, as files/fixture/reference_schema.sql computes it> AND]
--         ST_DWithin(t.<geometry>::geography, ST_SetSRID(ST_MakePoint(<lon>, <lat>), 4326)::geography, <metres>)
--   ORDER BY t.id
-- where <lon>, <lat> and <metres> are expressions of the arguments and the column is in SRID 4326.
-- Returns {alias, column, lon, lat, radius, box (whether the box prefilter is there)}, or
-- {"reason": ...}.
CREATE OR REPLACE FUNCTION stage4.radius_rpc_shape(p_function regprocedure, p_table regclass)
RETURNS jsonb LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    clauses jsonb := stage4.query_clauses(p_function, p_table);
    q text := clauses ->> 'query';
    alias text := clauses ->> 'alias';
    s text := quote_ident(stage4.postgis_schema());
    conds text[];
    m text[];
    args text[];
    point text[];
    shape jsonb;
    rebuilt text;
BEGIN
    IF clauses ? 'reason' THEN
        RETURN clauses;
    ELSIF clauses ? 'limit' THEN
        RETURN jsonb_build_object('reason', 'it has a LIMIT: ' || (clauses ->> 'limit'));
    END IF;
    conds := stage4.sql_split(stage4.sql_unwrap(clauses ->> 'where'), ' AND ');
    m := regexp_match(stage4.sql_unwrap(conds[cardinality(conds)]), '^' || s || '\.st_dwithin\((.*)\)$');
    IF m IS NULL OR cardinality(conds) > 2 THEN
        RETURN jsonb_build_object('reason', 'its WHERE is not [a box AND] one ST_DWithin(): ' || (clauses ->> 'where'));
    END IF;
    args := ARRAY(SELECT stage4.sql_unwrap(a) FROM unnest(stage4.sql_split(m[1], ', ')) a);
    m := regexp_match(args[1], '^\(?' || regexp_replace(alias, '\W', '\\\&', 'g') || '\.(\S+?)\)?::' || s || '\.geography$');
    point := regexp_match(args[2], '^\(' || s || '\.st_setsrid\(' || s || '\.st_makepoint\((.*)\), 4326\)\)::' || s || '\.geography$');
    IF cardinality(args) <> 3 OR m IS NULL OR point IS NULL THEN
        RETURN jsonb_build_object('reason', 'its ST_DWithin() is not of a column and a point as geography: ' || conds[cardinality(conds)]);
    END IF;
    point := stage4.sql_split(point[1], ', ');
    shape := jsonb_build_object('alias', alias, 'column', m[1], 'lon', point[1], 'lat', point[2], 'radius', args[3],
                                'box', cardinality(conds) = 2);
    IF cardinality(point) <> 2 OR position(alias || '.' IN point[1] || point[2] || args[3]) > 0 THEN
        RETURN jsonb_build_object('reason', 'its point or radius depends on the row');
    END IF;
    IF (SELECT format_type(a.atttypid, a.atttypmod) !~ ',4326\)$' FROM pg_attribute a
        WHERE a.attrelid = p_table AND quote_ident(a.attname) = m[1]) IS NOT FALSE THEN
        RETURN jsonb_build_object('reason', format('its column %s is not a geometry in SRID 4326', m[1]));
    END IF;
    IF clauses ->> 'order_by' <> alias || '.id' THEN
        RETURN jsonb_build_object('reason', 'its order is not ' || alias || '.id');
    END IF;
    -- The proof: the query rebuilt from these pieces is the same query.
    rebuilt := format('SELECT %1$s.* FROM %2$s %3$s WHERE %4$s %5$s.st_dwithin(%1$s.%6$s::%5$s.geography, '
                      '%5$s.st_setsrid(%5$s.st_makepoint(%7$s, %8$s), 4326)::%5$s.geography, %9$s) ORDER BY %1$s.id',
                      alias, clauses ->> 'from', '',
                      CASE WHEN (shape ->> 'box')::boolean THEN stage4.radius_box(shape) || ' AND' ELSE '' END,
                      s, m[1], point[1], point[2], args[3]);
    IF stage4.canonical_query(p_function, rebuilt) IS DISTINCT FROM q THEN
        RETURN jsonb_build_object('reason', 'it is not exactly a radius search of the known shape: ' || q);
    END IF;
    RETURN shape;
END $$;

-- The printed query p_query (stage4.canonical_query) without the names of its output columns: the
-- ` AS name` after each item of its SELECT list.
CREATE OR REPLACE FUNCTION stage4.unnamed_columns(p_query text)
RETURNS text LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT array_to_string(ARRAY(
               SELECT CASE WHEN i < coalesce((SELECT min(j) FROM unnest(lines) WITH ORDINALITY AS l(line, j)
                                              WHERE btrim(l.line) ~ '^FROM '), 0)
                           THEN regexp_replace(line, ' AS ("(?:[^"]|"")+"|[^\s",]+)(,?)$', '\2')
                           ELSE line END
               FROM unnest(lines) WITH ORDINALITY AS x(line, i) ORDER BY i), E'\n')
    FROM (SELECT stage4.sql_split(p_query, E'\n') AS lines) AS q
$$;

-- Whether the query of p_function is one of p_templates, as PostgreSQL reads them
-- (stage4.canonical_query): each template is format()ted with the alias of p_table in the query
-- (%1$s: the alias, else the table's name), PostGIS's schema (%2$s) and the FROM item's alias
-- clause (%3$s), its arguments written $n. Spelling, aliases, GROUP BY ordinals and casts that
-- PostgreSQL adds do not matter, nor do the output columns' names (the function's declaration names
-- them).
CREATE OR REPLACE FUNCTION stage4.query_is_one_of(p_function regprocedure, p_table regclass, p_templates text[])
RETURNS boolean LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    q text := stage4.unnamed_columns(stage4.canonical_query(p_function));
    alias text := (regexp_match(q, '\n\s*FROM ' || regexp_replace(p_table::text, '\W', '\\\&', 'g')
                                   || ' ("(?:[^"]|"")+"|[^\s"]+)\s*(\n|$)'))[1];
    template text;
BEGIN
    IF q IS NULL THEN
        RETURN false;
    END IF;
    FOREACH template IN ARRAY p_templates LOOP
        IF stage4.unnamed_columns(stage4.canonical_query(p_function, format(template,
               coalesce(alias, (SELECT quote_ident(relname) FROM pg_class WHERE oid = p_table)),
               quote_ident(stage4.postgis_schema()), coalesce(' ' || alias, '')))) = q THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END $$;

-- Why OPT5 cannot serve the dashboard RPC p_signature (area_por_categoria(integer),
-- extensao_por_categoria() or resumo_anual()) from its materialized aggregates, NULL when it can:
-- it must exist, be SECURITY INVOKER, be replaceable by the current user, return the reference
-- result types, and its query must be one of the shapes below, in any spelling (t: the table's
-- alias; $1: the year).
CREATE OR REPLACE FUNCTION stage4.dashboard_rpc_mismatch(p_signature text)
RETURNS text LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    f regprocedure := to_regprocedure(p_signature);
    p pg_proc%ROWTYPE;
    geometry regtype := to_regtype(format('%I.geometry', stage4.postgis_schema()));
    result regtype[];
    expected regtype[];
    templates text[];
BEGIN
    IF f IS NULL THEN
        RETURN 'it does not exist';
    END IF;
    SELECT * INTO p FROM pg_proc WHERE oid = f;
    IF p.prosecdef THEN
        RETURN 'it is SECURITY DEFINER (RLS would judge its owner, not the caller)';
    ELSIF NOT pg_has_role(p.proowner, 'USAGE') THEN
        RETURN format('%s does not own it (owner %s), so it cannot replace it', current_user, pg_get_userbyid(p.proowner));
    END IF;
    result := ARRAY(SELECT a.t::regtype FROM unnest(p.proallargtypes, p.proargmodes) WITH ORDINALITY AS a(t, m, i)
                    WHERE a.m = 't' ORDER BY a.i);
    CASE p_signature
    WHEN 'public.area_por_categoria(integer)' THEN
        expected := ARRAY['text', 'double precision', 'bigint']::regtype[];
        -- The year as a range of the bare column, or as extract()/date_part() of it.
        templates := ARRAY[
            'SELECT %1$s.categoria, sum(%1$s.area_m2), count(*) FROM public.geometrias%3$s
             WHERE %1$s.data_referencia >= make_date($1, 1, 1) AND %1$s.data_referencia < make_date($1 + 1, 1, 1)
             GROUP BY %1$s.categoria ORDER BY %1$s.categoria',
            'SELECT %1$s.categoria, sum(%1$s.area_m2), count(*) FROM public.geometrias%3$s
             WHERE extract(year FROM %1$s.data_referencia) = $1 GROUP BY %1$s.categoria ORDER BY %1$s.categoria',
            'SELECT %1$s.categoria, sum(%1$s.area_m2), count(*) FROM public.geometrias%3$s
             WHERE date_part(''year'', %1$s.data_referencia) = $1 GROUP BY %1$s.categoria ORDER BY %1$s.categoria'];
    WHEN 'public.extensao_por_categoria()' THEN
        expected := ARRAY['text', geometry, 'bigint']::regtype[];
        templates := ARRAY[
            'SELECT %1$s.categoria, %2$s.st_setsrid(%2$s.st_extent(%1$s.geom)::%2$s.geometry, 4326), count(*)
             FROM public.geometrias%3$s GROUP BY %1$s.categoria ORDER BY %1$s.categoria'];
    WHEN 'public.resumo_anual()' THEN
        expected := ARRAY['integer', 'text', 'bigint', 'double precision']::regtype[];
        templates := ARRAY[
            'SELECT extract(year FROM %1$s.data_referencia)::int, %1$s.categoria, count(*), sum(%1$s.area_m2)
             FROM public.geometrias%3$s GROUP BY 1, 2 ORDER BY 1, 2',
            'SELECT date_part(''year'', %1$s.data_referencia)::int, %1$s.categoria, count(*), sum(%1$s.area_m2)
             FROM public.geometrias%3$s GROUP BY 1, 2 ORDER BY 1, 2'];
    ELSE
        RAISE EXCEPTION 'stage4: % is not a dashboard RPC', p_signature;
    END CASE;
    IF result IS DISTINCT FROM expected THEN
        RETURN format('it returns (%s), not (%s)', array_to_string(result, ', '), array_to_string(expected, ', '));
    END IF;
    IF NOT stage4.query_is_one_of(f, 'public.geometrias', templates) THEN
        RETURN 'its query is not one of the aggregates OPT5 reproduces: '
               || coalesce(regexp_replace(stage4.canonical_query(f), '\s+', ' ', 'g'), 'not one SQL query that parses');
    END IF;
    RETURN NULL;
END $$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA stage4 FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA stage4 FROM PUBLIC;
