-- OPT3 verify: the view is complete and private, the helpers are locked down, the helper returns
-- no key its caller may not read (and every one it may), the public function kept its contract, and
-- it returns exactly what the original returned, row for row and in the same order, for the
-- deployer, anon, an authenticated owner and service_role, and through its fallback branch. The
-- radius RPC kept its contract and returns what its original returns (at the end).
SET LOCAL search_path = pg_catalog, pg_temp;
-- PostGIS's names unqualified, wherever it is installed (extensions on Supabase, often public).
SELECT stage4.use_postgis_search_path();

DO $$
DECLARE
    snap stage4.function_snapshots%ROWTYPE;
    mismatch text;
    helper pg_proc%ROWTYPE;
    view_owner oid := (SELECT relowner FROM pg_class WHERE oid = to_regclass('stage4_search.geometrias_busca'));
    missing text;
BEGIN
    -- No search served (a table too small for the view to pay, or a search OPT3 does not recognise):
    -- only the radius RPC was rewritten, and the API still answers.
    IF NOT EXISTS (SELECT 1 FROM stage4_search.formas WHERE funcao LIKE 'public.search_geometrias(%') THEN
        PERFORM stage4.assert_api_answers();
        RETURN;
    END IF;
    SELECT * INTO snap FROM stage4.function_snapshots
    WHERE change = 'opt3_search_matview' AND to_regprocedure(function) = 'public.search_geometrias(text, geometry, integer)'::regprocedure;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'OPT3: no snapshot of public.search_geometrias()';
    END IF;

    -- The view: populated, every row of the table, its indexes (the GiST one when the search has a box).
    IF NOT (SELECT relispopulated FROM pg_class WHERE oid = 'stage4_search.geometrias_busca'::regclass) THEN
        RAISE EXCEPTION 'OPT3: stage4_search.geometrias_busca is not populated';
    END IF;
    IF (SELECT count(*) FROM stage4_search.geometrias_busca) <> (SELECT count(*) FROM public.geometrias) THEN
        RAISE EXCEPTION 'OPT3: stage4_search.geometrias_busca has % rows, public.geometrias %',
            (SELECT count(*) FROM stage4_search.geometrias_busca), (SELECT count(*) FROM public.geometrias);
    END IF;
    SELECT string_agg(x.def, ', ') INTO missing
    FROM unnest(ARRAY['UNIQUE INDEX geometrias_busca_chave ON stage4_search.geometrias_busca USING btree (id, data_referencia)',
                      'INDEX geometrias_busca_tsv_gin ON stage4_search.geometrias_busca USING gin (tsv)']
                || CASE WHEN (SELECT forma ? 'box' FROM stage4_search.formas WHERE funcao LIKE 'public.search_geometrias(%')
                        THEN ARRAY['INDEX geometrias_busca_bbox_gist ON stage4_search.geometrias_busca USING gist (bbox)'] ELSE '{}' END) x(def)
    WHERE NOT EXISTS (SELECT 1 FROM pg_index i
                      WHERE i.indrelid = 'stage4_search.geometrias_busca'::regclass AND i.indisvalid
                        AND pg_get_indexdef(i.indexrelid) = 'CREATE ' || x.def);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'OPT3: missing indexes: %', missing;
    END IF;

    -- Private: no materialized view readable by the API roles, no USAGE on its schema.
    PERFORM stage4.assert_no_api_readable_matviews();
    IF has_schema_privilege('anon', 'stage4_search', 'USAGE') OR has_schema_privilege('authenticated', 'stage4_search', 'USAGE')
       OR EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a
                  WHERE n.nspname = 'stage4_search' AND a.grantee = 0) THEN
        RAISE EXCEPTION 'OPT3: schema stage4_search is usable by PUBLIC, anon or authenticated';
    END IF;
    -- PostgREST must not expose the helper's schema (on Supabase db-schemas is a role setting).
    IF EXISTS (SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) c
               WHERE c LIKE 'pgrst.db\_schemas=%' AND c ~ '(=|,)\s*"?stage4_search(_api)?"?\s*(,|$)') THEN
        RAISE EXCEPTION 'OPT3: a pgrst.db_schemas role setting exposes stage4_search or stage4_search_api through PostgREST';
    END IF;

    -- The helpers: SECURITY DEFINER owned by the view's owner, pinned search_path, EXECUTE for
    -- exactly the callers of public.search_geometrias(); they answer for the deployer right after
    -- deploy.
    FOR helper IN SELECT * FROM pg_proc
                  WHERE oid IN ('stage4_search_api.candidatos(tsquery, geometry, bigint)'::regprocedure,
                                'stage4_search_api.papel_exato()'::regprocedure) LOOP
        IF NOT helper.prosecdef OR helper.proowner <> view_owner
           OR NOT EXISTS (SELECT 1 FROM unnest(helper.proconfig) c WHERE c LIKE 'search\_path=%') THEN
            RAISE EXCEPTION 'OPT3: %() must be SECURITY DEFINER, owned by the view''s owner, with a pinned search_path',
                helper.oid::regproc;
        END IF;
        IF (SELECT array_agg(DISTINCT a.grantee ORDER BY a.grantee) FROM aclexplode(helper.proacl) a
            WHERE a.grantee <> helper.proowner)
           IS DISTINCT FROM
           (SELECT array_agg(DISTINCT a.grantee ORDER BY a.grantee)
            FROM pg_proc p, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
            WHERE p.oid = 'public.search_geometrias(text, geometry, integer)'::regprocedure
              AND a.grantee <> helper.proowner) THEN
            RAISE EXCEPTION 'OPT3: EXECUTE on %() must go to exactly the roles that may call public.search_geometrias()',
                helper.oid::regproc;
        END IF;
    END LOOP;
    IF stage4_search_api.papel_exato() IS DISTINCT FROM current_user THEN
        RAISE EXCEPTION 'OPT3: stage4_search_api.papel_exato() is %, not % right after deploy',
            stage4_search_api.papel_exato(), current_user;
    END IF;

    -- The public function kept its contract: signature, defaults, settings (only the language and
    -- the body changed), owner, grants and comment.
    mismatch := stage4.function_snapshot_mismatch(snap, p_body_may_change => true);
    IF mismatch IS NOT NULL THEN
        RAISE EXCEPTION 'OPT3: public.search_geometrias() lost part of its contract (%)', mismatch;
    END IF;

    PERFORM stage4.assert_api_answers();
END $$;

-- The helper called directly returns exactly the keys of the matching rows the caller reads from
-- public.geometrias under RLS: none more (a leak: which private rows exist, their dates, words and
-- place), none fewer. The matches are those of the search's own text match and box (read by
-- deploy.sql into stage4_search.formas); a search its tsquery function rejects (to_tsquery of free
-- text) is skipped. The searches come from the data, so that private rows of someone else match:
-- the whole name of the first private row of three owners, and 'parque' inside a box around the
-- first private row. They are selective and the matches are found as the deployer (for RLS-bound
-- roles no index serves a text search: @@ is not leakproof), then looked up by key as each caller,
-- so the check stays cheap on a large table. Callers: the deployer, anon, the owner with the most
-- private rows, a subject owning no row, service_role. (Without private rows there is nothing to
-- leak; the public ones are still compared.)
DO $$
DECLARE
    owner_uid uuid;
    searches text[];
    box geometry;
    q text;
    query tsquery;
    s jsonb := (SELECT forma FROM stage4_search.formas WHERE funcao LIKE 'public.search_geometrias(%');
    who text;
    match_ids bigint[];
    match_dates date[];
    got bigint;
    leaked bigint;
    expected bigint;
BEGIN
    IF s IS NULL THEN
        RETURN;  -- no search served
    END IF;
    SELECT g.owner_id INTO owner_uid FROM public.geometrias g
    WHERE NOT g.publico AND g.owner_id IS NOT NULL
    GROUP BY g.owner_id ORDER BY count(*) DESC, g.owner_id LIMIT 1;
    SELECT array_agg(f.nome ORDER BY f.owner_id) INTO searches
    FROM (SELECT DISTINCT ON (g.owner_id) g.owner_id, g.nome FROM public.geometrias g
          WHERE NOT g.publico ORDER BY g.owner_id, g.id LIMIT 3) f;
    SELECT st_expand(st_envelope(g.geom), 0.05) INTO box
    FROM public.geometrias g WHERE NOT g.publico ORDER BY g.id LIMIT 1;

    FOREACH q IN ARRAY coalesce(searches, '{}') || ARRAY['parque'] LOOP
        IF q <> 'parque' THEN
            box := NULL;
        END IF;
        IF NOT s ? 'box' THEN
            box := NULL;
        END IF;
        BEGIN
            EXECUTE format('SELECT %s', s ->> 'tsquery') INTO query USING q, box, NULL::integer;
        EXCEPTION WHEN syntax_error THEN
            CONTINUE;
        END;
        EXECUTE format('SELECT coalesce(array_agg(%1$s.id), ''{}''), coalesce(array_agg(%1$s.data_referencia), ''{}'') '
                       'FROM public.geometrias AS %1$s WHERE (%2$s) @@ $4 %3$s',
                       s ->> 'alias', s ->> 'tsvector',
                       CASE WHEN s ? 'box' THEN format('AND ($5::geometry IS NULL OR %s.%s && $5)', s ->> 'alias', s ->> 'box_column') ELSE '' END)
            INTO match_ids, match_dates USING q, box, NULL::integer, query, box;
        FOREACH who IN ARRAY ARRAY['', 'anon', 'authenticated', 'nobody', 'service_role'] LOOP
            IF who <> '' THEN
                EXECUTE format('SET ROLE %I', CASE who WHEN 'nobody' THEN 'authenticated' ELSE who END);
            END IF;
            PERFORM set_config('request.jwt.claims',
                               CASE who WHEN 'authenticated' THEN json_build_object('sub', owner_uid)::text
                                        WHEN 'nobody' THEN json_build_object('sub', '00000000-0000-0000-0000-000000000000')::text
                                        ELSE '' END, true);
            SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM public.geometrias g
                                                                WHERE g.id = c.id AND g.data_referencia = c.data_referencia))
              INTO got, leaked
            FROM stage4_search_api.candidatos(query, box) c;
            SELECT count(*) INTO expected
            FROM unnest(match_ids, match_dates) m(id, data_referencia)
            WHERE EXISTS (SELECT 1 FROM public.geometrias g WHERE g.id = m.id AND g.data_referencia = m.data_referencia);
            IF leaked > 0 OR got <> expected THEN
                RAISE EXCEPTION 'OPT3: stage4_search_api.candidatos(%, %) called by % returns % keys, % of them of rows it may not read; it may read % of the % matching rows',
                    quote_literal(q), CASE WHEN box IS NULL THEN 'NULL' ELSE 'a box' END,
                    coalesce(nullif(who, ''), current_user::text), got, leaked, expected, cardinality(match_ids);
            END IF;
            RESET ROLE;
        END LOOP;
    END LOOP;
    PERFORM set_config('request.jwt.claims', '', true);
END $$;

-- Same rows, same order, for each role, against the original definition (recreated from the
-- snapshot under another name for the comparison, then dropped). Also through the fallback branch:
-- called by anon inside a SECURITY DEFINER function owned by the deployer (RLS judges the owner, as
-- the original did; the helper could only answer for anon), and with row_security off.
-- The original's answer depends only on its arguments and on the rows its body may read (precheck
-- pinned that body: one query of public.geometrias, its search_path set): it is computed once per
-- set of readable rows (count and hash of their keys) and reused by the callers that read the same
-- rows, as the deployer, service_role and row_security off all do. The original costs seconds per
-- broad search at 1,000,000 features; the rewritten function is still called by every caller.
-- Under RLS the original cannot use the text index (@@ is not leakproof) and reads every row the
-- caller may see, about 20 s a search at 1,000,000 features: above 100,000 readable rows anon and
-- authenticated are compared on the searches bounded by a box only (the GiST index serves them);
-- the unbounded ones still are for every other caller, and candidatos() for every caller above.
DO $$
DECLARE
    original text := (SELECT definition FROM stage4.function_snapshots
                      WHERE change = 'opt3_search_matview'
                        AND to_regprocedure(function) = 'public.search_geometrias(text, geometry, integer)'::regprocedure);
    owner_uid uuid;
    who text;
    args text;
    got jsonb;
    expected jsonb;
    new_fn text;
    original_fn text;
    readable text;
    deployer_readable text;
    expected_by_readable jsonb := '{}';
BEGIN
    IF original IS NULL THEN
        RETURN;  -- no search served
    END IF;
    -- Called as the API calls them: a user's function without SET search_path resolves through it.
    PERFORM stage4.use_api_search_path();
    -- A call's answer: its rows in order, or the error it raised (to_tsquery of free text raises in
    -- both versions alike).
    CREATE FUNCTION stage4_search_api.stage4_answer(p_function text, p_args text) RETURNS jsonb
    LANGUAGE plpgsql AS $answer$
    DECLARE
        answer jsonb;
    BEGIN
        EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.ordinality), ''[]'') FROM %s(%s) WITH ORDINALITY s',
                       p_function, p_args) INTO answer;
        RETURN answer;
    EXCEPTION WHEN syntax_error OR invalid_row_count_in_limit_clause THEN
        RETURN jsonb_build_object('error', SQLERRM);
    END $answer$;
    GRANT EXECUTE ON FUNCTION stage4_search_api.stage4_answer(text, text) TO anon, authenticated, service_role;
    EXECUTE regexp_replace(original, '^CREATE OR REPLACE FUNCTION public\.search_geometrias\(',
                           'CREATE FUNCTION stage4_search_api.stage4_original_search_geometrias(');
    GRANT EXECUTE ON FUNCTION stage4_search_api.stage4_original_search_geometrias(text, geometry, integer)
        TO anon, authenticated, service_role;
    FOREACH new_fn IN ARRAY ARRAY['public.search_geometrias', 'stage4_search_api.stage4_original_search_geometrias'] LOOP
        EXECUTE format('CREATE FUNCTION %s(q text, bbox geometry DEFAULT NULL, max_results int DEFAULT 50) '
                       'RETURNS SETOF public.geometrias LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp '
                       'AS %L',
                       CASE WHEN new_fn LIKE 'public.%' THEN 'stage4_search_api.stage4_definer_search_geometrias'
                            ELSE 'stage4_search_api.stage4_definer_original_search_geometrias' END,
                       format('SELECT * FROM %s(q, bbox, max_results)', new_fn));
    END LOOP;
    GRANT EXECUTE ON FUNCTION stage4_search_api.stage4_definer_search_geometrias(text, geometry, integer),
                              stage4_search_api.stage4_definer_original_search_geometrias(text, geometry, integer)
        TO anon;
    -- The owner with the most private rows plays the authenticated user.
    SELECT g.owner_id INTO owner_uid FROM public.geometrias g
    WHERE NOT g.publico AND g.owner_id IS NOT NULL
    GROUP BY g.owner_id ORDER BY count(*) DESC, g.owner_id LIMIT 1;

    FOREACH who IN ARRAY ARRAY['', 'anon', 'authenticated', 'service_role', 'anon in a SECURITY DEFINER function', 'row_security off'] LOOP
        new_fn := 'public.search_geometrias';
        original_fn := 'stage4_search_api.stage4_original_search_geometrias';
        IF who IN ('anon', 'authenticated', 'service_role') THEN
            EXECUTE format('SET ROLE %I', who);
        ELSIF who = 'anon in a SECURITY DEFINER function' THEN
            SET ROLE anon;
            new_fn := 'stage4_search_api.stage4_definer_search_geometrias';
            original_fn := 'stage4_search_api.stage4_definer_original_search_geometrias';
        ELSIF who = 'row_security off' THEN
            PERFORM set_config('row_security', 'off', true);
        END IF;
        PERFORM set_config('request.jwt.claims',
                           CASE WHEN who = 'authenticated' THEN json_build_object('sub', owner_uid)::text ELSE '' END, true);
        -- The rows the original's body reads here: the deployer's inside the deployer's function.
        IF who = 'anon in a SECURITY DEFINER function' THEN
            readable := deployer_readable;
        ELSE
            SELECT count(*) || ':' || coalesce(sum(hashtextextended(g.id || '/' || g.data_referencia, 0)), 0)
              INTO readable
            FROM public.geometrias AS g;
            deployer_readable := coalesce(deployer_readable, readable);
        END IF;
        FOREACH args IN ARRAY ARRAY[
            $a$'parque', NULL, 50$a$,
            $a$'parque', st_makeenvelope(-46.9333, -23.8505, -46.3333, -23.2505, 4326), 50$a$,
            $a$'lote residencial', NULL, 10$a$,
            $a$'"área de preservação" or lago', NULL, 200$a$,
            $a$'rio -parque', st_makeenvelope(-43.3229, -23.0568, -43.0229, -22.7568, 4326), 20$a$,
            $a$'parque', st_makeenvelope(-46.7833, -23.7005, -46.4833, -23.4005, 4326), 3$a$,
            $a$'xyzzy inexistente', NULL, 50$a$]
        LOOP
            got := stage4_search_api.stage4_answer(new_fn, args);
            CONTINUE WHEN who IN ('anon', 'authenticated') AND split_part(readable, ':', 1)::bigint > 100000
                          AND args NOT LIKE '%st_makeenvelope%';
            expected := expected_by_readable -> readable -> args;
            IF expected IS NULL THEN
                expected := stage4_search_api.stage4_answer(original_fn, args);
                expected_by_readable := jsonb_set(expected_by_readable, ARRAY[readable],
                                                  coalesce(expected_by_readable -> readable, '{}') || jsonb_build_object(args, expected));
            END IF;
            IF got IS DISTINCT FROM expected THEN
                RAISE EXCEPTION 'OPT3: search_geometrias(%) as % returns %, the original %',
                    args, coalesce(nullif(who, ''), current_user::text),
                    CASE WHEN jsonb_typeof(got) = 'object' THEN got ->> 'error' ELSE format('%s rows (ids %s)', jsonb_array_length(got),
                         (SELECT string_agg(e->>'id', ',') FROM jsonb_array_elements(got) e)) END,
                    CASE WHEN jsonb_typeof(expected) = 'object' THEN expected ->> 'error' ELSE format('%s rows (ids %s)', jsonb_array_length(expected),
                         (SELECT string_agg(e->>'id', ',') FROM jsonb_array_elements(expected) e)) END;
            END IF;
        END LOOP;
        RESET ROLE;
        PERFORM set_config('row_security', 'on', true);
    END LOOP;
    PERFORM set_config('request.jwt.claims', '', true);
    DROP FUNCTION stage4_search_api.stage4_answer(text, text),
                  stage4_search_api.stage4_definer_search_geometrias(text, geometry, integer),
                  stage4_search_api.stage4_definer_original_search_geometrias(text, geometry, integer),
                  stage4_search_api.stage4_original_search_geometrias(text, geometry, integer);
END $$;

-- The radius RPC: the same contract as captured (only the language and the body changed) and the
-- same rows in the same order as the original, recreated from the snapshot under another name, for
-- radii from 0 to 12 km around both cities and far from any feature. Its added test does not depend
-- on the caller (RLS filters both versions alike); tests/unit/test_api_visibility.py checks it per
-- role after every change.
DO $$
DECLARE
    snap stage4.function_snapshots%ROWTYPE;
    mismatch text;
    args text;
    got jsonb;
    expected jsonb;
BEGIN
    SELECT * INTO snap FROM stage4.function_snapshots
    WHERE change = 'opt3_search_matview' AND function = 'public.geometrias_no_raio(double precision,double precision,double precision)';
    IF NOT FOUND THEN
        RETURN;  -- not recognised by deploy.sql, left as it was
    END IF;
    PERFORM stage4.use_api_search_path();
    mismatch := stage4.function_snapshot_mismatch(snap, p_body_may_change => true);
    IF mismatch IS NOT NULL THEN
        RAISE EXCEPTION 'OPT3: public.geometrias_no_raio() lost part of its contract (%)', mismatch;
    END IF;
    EXECUTE regexp_replace(snap.definition, '^CREATE OR REPLACE FUNCTION public\.geometrias_no_raio\(',
                           'CREATE FUNCTION stage4_search.stage4_original_geometrias_no_raio(');
    FOREACH args IN ARRAY ARRAY['-46.6339, -23.5505, 5000', '-43.1822, -22.9711, 1000', '-46.6549, -23.5929, 0',
                                '-43.3, -22.9, 12000', '-46.63, -23.55, 250', '0, 0, 5000'] LOOP
        EXECUTE format('SELECT coalesce(jsonb_agg(s.id ORDER BY s.ordinality), ''[]'') FROM %s(%s) WITH ORDINALITY s',
                       'public.geometrias_no_raio', args) INTO got;
        EXECUTE format('SELECT coalesce(jsonb_agg(s.id ORDER BY s.ordinality), ''[]'') FROM %s(%s) WITH ORDINALITY s',
                       'stage4_search.stage4_original_geometrias_no_raio', args) INTO expected;
        IF got IS DISTINCT FROM expected THEN
            RAISE EXCEPTION 'OPT3: geometrias_no_raio(%) returns % rows, the original %',
                args, jsonb_array_length(got), jsonb_array_length(expected);
        END IF;
    END LOOP;
    DROP FUNCTION stage4_search.stage4_original_geometrias_no_raio(double precision, double precision, double precision);
END $$;
