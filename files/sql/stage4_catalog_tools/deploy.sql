-- stage4_catalog_tools: what a change keeps of the functions and settings it rewrites.
--
-- Snapshots of the functions a change replaces (restored, and proven, by its revert), the
-- helpers that rewrite an RPC's body or query keeping its header, grants and search_path,
-- database settings and publication settings a change alters, and ACLs reset from a
-- snapshot. Repeatable: deployed again whenever this file changes.
SET LOCAL lock_timeout = '2s';

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

-- Nothing of schema stage4 is for the API: what this change created loses PUBLIC's default EXECUTE.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA stage4 FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA stage4 FROM PUBLIC;
