-- OPT3 verify: the view is complete and private, the helper is locked down, the public function
-- kept its contract, and it returns exactly what the original returned, row for row and in the same
-- order, for the deployer, anon, an authenticated owner and service_role.
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
DECLARE
    snap record;
    f pg_proc%ROWTYPE;
    helper pg_proc%ROWTYPE;
    view_owner oid := (SELECT relowner FROM pg_class WHERE oid = 'stage4_search.geometrias_busca'::regclass);
    missing text;
BEGIN
    SELECT * INTO snap FROM stage4.function_snapshots
    WHERE change = 'opt3_search_matview' AND function = 'public.search_geometrias(text,extensions.geometry,integer)';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'OPT3: no snapshot of public.search_geometrias()';
    END IF;

    -- The view: populated, every row of the table, the three indexes.
    IF NOT (SELECT relispopulated FROM pg_class WHERE oid = 'stage4_search.geometrias_busca'::regclass) THEN
        RAISE EXCEPTION 'OPT3: stage4_search.geometrias_busca is not populated';
    END IF;
    IF (SELECT count(*) FROM stage4_search.geometrias_busca) <> (SELECT count(*) FROM public.geometrias) THEN
        RAISE EXCEPTION 'OPT3: stage4_search.geometrias_busca has % rows, public.geometrias %',
            (SELECT count(*) FROM stage4_search.geometrias_busca), (SELECT count(*) FROM public.geometrias);
    END IF;
    SELECT string_agg(x.def, ', ') INTO missing
    FROM unnest(ARRAY['UNIQUE INDEX geometrias_busca_chave ON stage4_search.geometrias_busca USING btree (id, data_referencia)',
                      'INDEX geometrias_busca_tsv_gin ON stage4_search.geometrias_busca USING gin (tsv)',
                      'INDEX geometrias_busca_bbox_gist ON stage4_search.geometrias_busca USING gist (bbox)']) x(def)
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

    -- The helper: SECURITY DEFINER owned by the view's owner, pinned search_path, EXECUTE for the
    -- API roles only.
    SELECT * INTO helper FROM pg_proc WHERE oid = 'stage4_search_api.candidatos(text, extensions.geometry)'::regprocedure;
    IF NOT helper.prosecdef OR helper.proowner <> view_owner
       OR NOT EXISTS (SELECT 1 FROM unnest(helper.proconfig) c WHERE c LIKE 'search\_path=%') THEN
        RAISE EXCEPTION 'OPT3: stage4_search_api.candidatos() must be SECURITY DEFINER, owned by the view''s owner, with a pinned search_path';
    END IF;
    IF EXISTS (SELECT 1 FROM aclexplode(helper.proacl) a WHERE a.grantee = 0)
       OR NOT has_function_privilege('anon', helper.oid, 'EXECUTE')
       OR NOT has_function_privilege('authenticated', helper.oid, 'EXECUTE')
       OR NOT has_function_privilege('service_role', helper.oid, 'EXECUTE') THEN
        RAISE EXCEPTION 'OPT3: EXECUTE on stage4_search_api.candidatos() must go to anon, authenticated and service_role, not PUBLIC';
    END IF;

    -- The public function kept its contract.
    SELECT * INTO f FROM pg_proc WHERE oid = 'public.search_geometrias(text, extensions.geometry, integer)'::regprocedure;
    IF f.prosecdef OR f.provolatile <> 's' OR f.proconfig IS DISTINCT FROM ARRAY['search_path=public, extensions, pg_temp']
       OR pg_get_userbyid(f.proowner) <> snap.owner OR obj_description(f.oid, 'pg_proc') IS DISTINCT FROM snap.comment
       OR (SELECT coalesce(jsonb_agg(g.stmt ORDER BY g.n), '[]')
           FROM stage4.grant_statements(coalesce(f.proacl, acldefault('f', f.proowner)),
                                        format('FUNCTION %s', f.oid::regprocedure)) WITH ORDINALITY g(stmt, n)) <> snap.acl
       OR pg_get_function_arguments(f.oid) <> 'q text, bbox extensions.geometry DEFAULT NULL::extensions.geometry, max_results integer DEFAULT 50' THEN
        RAISE EXCEPTION 'OPT3: public.search_geometrias() lost part of its contract (security, volatility, search_path, owner, grants, comment or arguments)';
    END IF;

    PERFORM stage4.assert_api_answers();
END $$;

-- Same rows, same order, for each role, against the original definition (recreated from the
-- snapshot under another name for the comparison, then dropped).
DO $$
DECLARE
    original text := (SELECT definition FROM stage4.function_snapshots
                      WHERE change = 'opt3_search_matview'
                        AND function = 'public.search_geometrias(text,extensions.geometry,integer)');
    owner_uid uuid;
    who text;
    args text;
    got jsonb;
    expected jsonb;
BEGIN
    EXECUTE regexp_replace(original, '^CREATE OR REPLACE FUNCTION public\.search_geometrias\(',
                           'CREATE FUNCTION stage4_search_api.stage4_original_search_geometrias(');
    GRANT EXECUTE ON FUNCTION stage4_search_api.stage4_original_search_geometrias(text, extensions.geometry, integer)
        TO anon, authenticated, service_role;
    -- The owner with the most private rows plays the authenticated user.
    SELECT g.owner_id INTO owner_uid FROM public.geometrias g
    WHERE NOT g.publico AND g.owner_id IS NOT NULL
    GROUP BY g.owner_id ORDER BY count(*) DESC, g.owner_id LIMIT 1;

    FOREACH who IN ARRAY ARRAY['', 'anon', 'authenticated', 'service_role'] LOOP
        IF who <> '' THEN
            EXECUTE format('SET ROLE %I', who);
        END IF;
        PERFORM set_config('request.jwt.claims',
                           CASE WHEN who = 'authenticated' THEN json_build_object('sub', owner_uid)::text ELSE '' END, true);
        FOREACH args IN ARRAY ARRAY[
            $a$'parque'$a$,
            $a$'parque', extensions.st_makeenvelope(-46.9333, -23.8505, -46.3333, -23.2505, 4326), 50$a$,
            $a$'lote residencial', NULL, 10$a$,
            $a$'"área de preservação" or lago', NULL, 200$a$,
            $a$'rio -parque', extensions.st_makeenvelope(-43.3229, -23.0568, -43.0229, -22.7568, 4326), 20$a$,
            $a$'parque', extensions.st_makeenvelope(-46.7833, -23.7005, -46.4833, -23.4005, 4326), 3$a$,
            $a$'xyzzy inexistente'$a$]
        LOOP
            EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.ordinality), ''[]'') FROM %s(%s) WITH ORDINALITY s',
                           'public.search_geometrias', args) INTO got;
            EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.ordinality), ''[]'') FROM %s(%s) WITH ORDINALITY s',
                           'stage4_search_api.stage4_original_search_geometrias', args) INTO expected;
            IF got IS DISTINCT FROM expected THEN
                RAISE EXCEPTION 'OPT3: search_geometrias(%) as % returns % rows (ids %), the original % (ids %)',
                    args, coalesce(nullif(who, ''), current_user), jsonb_array_length(got),
                    (SELECT string_agg(e->>'id', ',') FROM jsonb_array_elements(got) e),
                    jsonb_array_length(expected),
                    (SELECT string_agg(e->>'id', ',') FROM jsonb_array_elements(expected) e);
            END IF;
        END LOOP;
        RESET ROLE;
    END LOOP;
    PERFORM set_config('request.jwt.claims', '', true);
    DROP FUNCTION stage4_search_api.stage4_original_search_geometrias(text, extensions.geometry, integer);
END $$;
