-- stage4_toolkit: the schema stage4 and what a table carries, read from the catalog.
--
-- describe_table() captures everything a table carries (indexes, constraints, triggers, RLS
-- policies, grants, comments, identity, dependent views and functions, publications, rows) and
-- snapshots keep it for the revert; stage4_swap's rebuild_table() puts all of that back under a
-- new layout and assert_table_preserved() proves nothing was lost. Optimizations call these
-- instead of repeating a fixed list of objects, so a production table with more objects than
-- the fixture keeps them too. The other tooling changes (stage4_tooling_changes in
-- playbooks/group_vars/all.yml) build on this one. Repeatable: deployed again whenever it changes.
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

-- The statement that recreates a view or materialized view as it is, in p_view's own words (as
-- describe_table() records a dependent, and the cutover compares a prebuilt one with it).
CREATE OR REPLACE FUNCTION stage4.view_definition(p_view oid)
RETURNS text LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT format('CREATE %s %s%s AS %s', CASE v.relkind WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'VIEW' END, v.oid::regclass,
                  CASE WHEN v.reloptions IS NULL THEN '' ELSE format(' WITH (%s)', array_to_string(v.reloptions, ', ')) END,
                  rtrim(pg_get_viewdef(v.oid), ';'))
           || CASE WHEN v.relkind = 'm' AND NOT v.relispopulated THEN ' WITH NO DATA' ELSE '' END
    FROM pg_class v WHERE v.oid = p_view
$$;

-- The CREATE INDEX statements of p_relation's indexes, in the order they were created.
CREATE OR REPLACE FUNCTION stage4.index_definitions(p_relation oid)
RETURNS jsonb LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(pg_get_indexdef(i.indexrelid) ORDER BY i.indexrelid), '[]')
    FROM pg_index i WHERE i.indrelid = p_relation
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
                    'definition', stage4.view_definition(v.oid),
                    'indexes', stage4.index_definitions(v.oid),
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

-- Nothing of schema stage4 is for the API: what this change created loses PUBLIC's default EXECUTE.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA stage4 FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA stage4 FROM PUBLIC;
