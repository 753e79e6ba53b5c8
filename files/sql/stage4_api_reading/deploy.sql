-- stage4_api_reading: reading the user's read policies and RPCs as PostgreSQL parses them.
--
-- OPT3 and OPT5 serve what the API's roles may read (the read policies, recognised by their
-- meaning) and rewrite only the RPC shapes recognised here, proving each reading by rebuilding
-- the query. Repeatable.
SET LOCAL lock_timeout = '2s';

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
-- ALTER or DROP POLICY changes it, and computing it costs microseconds, deparsing ten times more),
-- without the positions in the statement that created each (:location): a swap recreates the
-- policies on the new table from their text, the same policies at other positions. With them, the
-- fingerprint changed at OPT1's cutover, and OPT3's and OPT5's functions, applied before it, fell
-- back to the original queries for every caller (run 20261208T012838Z, 1,000,000 features).
-- Fingerprints accepted under the earlier definition are carried over to this one.
DO $$
BEGIN
    IF to_regclass('stage4.read_policies_fingerprint') IS NOT NULL THEN
        PERFORM set_config('stage4.previous_read_policies_fingerprint',
                           (SELECT fingerprint FROM stage4.read_policies_fingerprint), true);
    END IF;
END $$;
CREATE OR REPLACE VIEW stage4.read_policies_fingerprint AS
    SELECT md5(string_agg(format('%s|%s|%s|%s|%s', p.polname, p.polpermissive, p.polcmd, p.polroles,
                                 regexp_replace(p.polqual::text, ' :location -?[0-9]+', '', 'g')),
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
UPDATE stage4.accepted_read_policies
SET fingerprint = (SELECT fingerprint FROM stage4.read_policies_fingerprint)
WHERE fingerprint = nullif(current_setting('stage4.previous_read_policies_fingerprint', true), '');

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

-- Nothing of schema stage4 is for the API: what this change created loses PUBLIC's default EXECUTE.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA stage4 FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA stage4 FROM PUBLIC;
