-- OPT5 verify: the views are populated and refresh CONCURRENTLY, the jobs are scheduled as
-- configured, nothing materialized is readable by the API roles, the functions kept their contract,
-- and they return what the original functions return, for the deployer, anon, an authenticated
-- owner and service_role (and through the fallback branch).
SET LOCAL search_path = pg_catalog, pg_temp;
-- PostGIS's names unqualified, wherever it is installed (extensions on Supabase, often public).
SELECT stage4.use_postgis_search_path();

-- REFRESH ... CONCURRENTLY runs in a transaction block (unlike CREATE INDEX CONCURRENTLY): proves
-- that the unique indexes qualify and that the cron jobs' command works.
DO $$
DECLARE
    mv text;
BEGIN
    FOREACH mv IN ARRAY ARRAY['stage4_dashboard.resumo_categoria_ano', 'stage4_dashboard.extensao_categoria',
                              'stage4_search.geometrias_busca'] LOOP
        IF to_regclass(mv) IS NOT NULL THEN
            EXECUTE 'REFRESH MATERIALIZED VIEW CONCURRENTLY ' || mv;
        END IF;
    END LOOP;
END $$;

DO $$
DECLARE
    snap stage4.function_snapshots%ROWTYPE;
    job record;
    mismatch text;
    missing text;
BEGIN
    -- Each materialized view built (only those the served functions read) counts every row.
    IF to_regclass('stage4_dashboard.resumo_categoria_ano') IS NULL AND to_regclass('stage4_dashboard.extensao_categoria') IS NULL THEN
        RAISE EXCEPTION 'OPT5: no materialized view was built';
    END IF;
    FOREACH missing IN ARRAY ARRAY['stage4_dashboard.resumo_categoria_ano', 'stage4_dashboard.extensao_categoria'] LOOP
        CONTINUE WHEN to_regclass(missing) IS NULL;
        EXECUTE format('SELECT (SELECT sum(n) FROM %s) IS DISTINCT FROM (SELECT count(*) FROM public.geometrias)', missing) INTO mismatch;
        IF mismatch::boolean THEN
            RAISE EXCEPTION 'OPT5: % does not count every row of public.geometrias', missing;
        END IF;
    END LOOP;
    IF stage4_dashboard_api.papel_exato() IS DISTINCT FROM current_user THEN
        RAISE EXCEPTION 'OPT5: stage4_dashboard_api.papel_exato() is %, not % right after deploy',
            stage4_dashboard_api.papel_exato(), current_user;
    END IF;

    -- The jobs, as configured, in this database, as the views' owner.
    FOR job IN SELECT * FROM stage4_dashboard.refresh_jobs() LOOP
        IF NOT EXISTS (SELECT 1 FROM cron.job c
                       WHERE c.jobname = job.jobname AND c.schedule = job.schedule AND c.command = job.command
                         AND c.database = current_database() AND c.username = current_user AND c.active) THEN
            RAISE EXCEPTION 'OPT5: pg_cron job % (%: %) is missing or differs', job.jobname, job.schedule, job.command;
        END IF;
    END LOOP;
    IF (SELECT count(*) FROM stage4_dashboard.refresh_jobs()) < 1 THEN
        RAISE EXCEPTION 'OPT5: no refresh job';
    END IF;

    -- Private.
    PERFORM stage4.assert_no_api_readable_matviews();
    IF has_schema_privilege('anon', 'stage4_dashboard', 'USAGE') OR has_schema_privilege('authenticated', 'stage4_dashboard', 'USAGE')
       OR EXISTS (SELECT 1 FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = 'stage4_dashboard' AND a.grantee = 0) THEN
        RAISE EXCEPTION 'OPT5: schema stage4_dashboard is usable by PUBLIC, anon or authenticated';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) c
               WHERE c LIKE 'pgrst.db\_schemas=%' AND c ~ '(=|,)\s*"?stage4_dashboard(_api)?"?\s*(,|$)') THEN
        RAISE EXCEPTION 'OPT5: a pgrst.db_schemas role setting exposes stage4_dashboard or stage4_dashboard_api through PostgREST';
    END IF;

    -- The functions kept their contract: signatures, settings (only the language and the body
    -- changed), owners, grants and comments.
    FOR snap IN SELECT * FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews' LOOP
        mismatch := stage4.function_snapshot_mismatch(snap, p_body_may_change => true);
        IF mismatch IS NOT NULL THEN
            RAISE EXCEPTION 'OPT5: % lost part of its contract (%)', snap.function, mismatch;
        END IF;
    END LOOP;
    IF (SELECT count(*) FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews') < 1 THEN
        RAISE EXCEPTION 'OPT5: no snapshot of the functions it serves';
    END IF;

    PERFORM stage4.assert_api_answers();
END $$;

-- Same results as the original definitions (recreated from the snapshots under other names for the
-- comparison, then dropped): same rows in the same order, area sums equal to 1e-9 relative.
DO $$
DECLARE
    snap record;
    owner_uid uuid;
    who text;
    call text;
    served text[] := ARRAY(SELECT split_part(function, '(', 1) FROM stage4.function_snapshots
                           WHERE change = 'opt5_dashboard_matviews');
    calls text[] := ARRAY(SELECT c FROM unnest(ARRAY['extensao_por_categoria()', 'resumo_anual()', 'area_por_categoria(NULL)']) AS c
                          WHERE 'public.' || split_part(c, '(', 1) = ANY (served));
    got jsonb;
    expected jsonb;
    fallback boolean;
BEGIN
    -- Called as the API calls them: a user's function without SET search_path resolves through it.
    PERFORM stage4.use_api_search_path();
    FOR snap IN SELECT * FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews' LOOP
        EXECUTE regexp_replace(snap.definition, '^CREATE OR REPLACE FUNCTION public\.',
                               'CREATE FUNCTION stage4_dashboard_api.stage4_original_');
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO anon, authenticated, service_role',
                       replace(snap.function, 'public.', 'stage4_dashboard_api.stage4_original_'));
    END LOOP;
    -- Every year with data, the year before and after.
    SELECT calls || coalesce(array_agg(format('area_por_categoria(%s)', y) ORDER BY y), '{}') INTO calls
    FROM (SELECT DISTINCT extract(year FROM data_referencia)::int AS y FROM public.geometrias
          WHERE data_referencia > '-infinity' AND data_referencia < 'infinity'
          UNION SELECT extract(year FROM min(data_referencia))::int - 1 FROM public.geometrias WHERE data_referencia > '-infinity'
          UNION SELECT extract(year FROM max(data_referencia))::int + 1 FROM public.geometrias WHERE data_referencia < 'infinity') years
    WHERE y IS NOT NULL AND 'public.area_por_categoria' = ANY (served);
    SELECT g.owner_id INTO owner_uid FROM public.geometrias g
    WHERE NOT g.publico AND g.owner_id IS NOT NULL
    GROUP BY g.owner_id ORDER BY count(*) DESC, g.owner_id LIMIT 1;

    FOREACH fallback IN ARRAY ARRAY[false, true] LOOP
        -- row_security off makes papel_exato() NULL: the deployer (who bypasses RLS)
        -- then exercises the original query of each function.
        PERFORM set_config('row_security', CASE WHEN fallback THEN 'off' ELSE 'on' END, true);
        FOREACH who IN ARRAY CASE WHEN fallback THEN ARRAY[''] ELSE ARRAY['', 'anon', 'authenticated', 'service_role'] END LOOP
            IF who <> '' THEN
                EXECUTE format('SET ROLE %I', who);
            END IF;
            PERFORM set_config('request.jwt.claims',
                               CASE WHEN who = 'authenticated' THEN json_build_object('sub', owner_uid)::text ELSE '' END, true);
            FOREACH call IN ARRAY calls LOOP
                EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.ordinality), ''[]'') FROM public.%s WITH ORDINALITY s',
                               call) INTO got;
                EXECUTE format('SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.ordinality), ''[]'') FROM stage4_dashboard_api.stage4_original_%s WITH ORDINALITY s',
                               call) INTO expected;
                IF jsonb_array_length(got) <> jsonb_array_length(expected)
                   OR EXISTS (SELECT 1
                              FROM jsonb_array_elements(got) WITH ORDINALITY a(r, i)
                              JOIN jsonb_array_elements(expected) WITH ORDINALITY b(r, i) USING (i)
                              WHERE (a.r - 'total_area_m2') <> (b.r - 'total_area_m2')
                                 OR (a.r->>'total_area_m2' IS NULL) <> (b.r->>'total_area_m2' IS NULL)
                                 OR abs((a.r->>'total_area_m2')::float8 - (b.r->>'total_area_m2')::float8)
                                    > 1e-9 * greatest(abs((b.r->>'total_area_m2')::float8), 1)) THEN
                    RAISE EXCEPTION 'OPT5: % as % returns %, the original %', call,
                        coalesce(nullif(who, ''), current_user) || CASE WHEN fallback THEN ' (fallback branch)' ELSE '' END,
                        left(got::text, 400), left(expected::text, 400);
                END IF;
            END LOOP;
            RESET ROLE;
        END LOOP;
    END LOOP;
    PERFORM set_config('row_security', 'on', true);
    PERFORM set_config('request.jwt.claims', '', true);
    FOR snap IN SELECT * FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews' LOOP
        EXECUTE format('DROP FUNCTION %s', replace(snap.function, 'public.', 'stage4_dashboard_api.stage4_original_'));
    END LOOP;
END $$;
