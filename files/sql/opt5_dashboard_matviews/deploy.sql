-- OPT5 dashboard materialized views: area_por_categoria(ano), extensao_por_categoria() and
-- resumo_anual() read small pre-aggregated materialized views instead of aggregating
-- public.geometrias at every call; pg_cron refreshes the views (REFRESH ... CONCURRENTLY: readers
-- are never blocked) every stage4.refresh_schedule (default '*/15 * * * *'). Only the functions
-- whose query OPT5 recognises (stage4.dashboard_rpc_mismatch: the reference aggregates in any
-- spelling, the year filtered by a date range, extract() or date_part()) are rewritten, and only the
-- materialized views they read are built; the others stay exactly as they are.
--
-- stage4:isolation repeatable read
-- (read by library/stage4_change.py) The deploy transaction sees one snapshot: the dashboard views are
-- filled from it and verify.sql compares them, and the functions, with the table as of it, so the
-- application's writes meanwhile cannot make them differ. Nothing here copies rows under a lock.
--
-- What is created
--   stage4_dashboard.resumo_categoria_ano  count and sum(area_m2) per (year, categoria, publico,
--                                          owner_id); serves area_por_categoria() and resumo_anual(),
--                                          which aggregate the same groups (a third, identical view
--                                          would double the refresh work for nothing).
--   stage4_dashboard.extensao_categoria    count and ST_Extent() corners per (categoria, publico,
--                                          owner_id); serves extensao_por_categoria().
--   stage4_dashboard_api.<same names>      security_barrier views: the groups the caller may see
--                                          (stage4.visibilidade, the toolkit's rules, shared with OPT3).
--   stage4_dashboard_api.papel_exato()     the role the views answer exactly for, NULL when they cannot
--                                          (policies changed since this deploy, row_security off, no
--                                          SELECT on the table): unless it is current_user, the
--                                          functions run their original query instead.
--   pg_cron jobs stage4_refresh_<view>      one per view (OPT3's stage4_search.geometrias_busca too when
--                                          it exists), each a minute after the previous one.
--
-- Row level security. The functions are SECURITY INVOKER and RLS filters the rows they aggregate:
-- anon sees publico rows; authenticated also its own rows (owner_id = auth.uid()); the table's
-- owner, superusers and BYPASSRLS roles (service_role) see every row. The views keep the groups
-- apart by publico and owner_id (owner_id only for private rows: public rows are visible to every
-- API caller whoever owns them), so a caller's totals are the sum of the groups it may see. A
-- materialized view has no RLS and none may be readable by anon/authenticated
-- (stage4.assert_no_api_readable_matviews()); stage4_dashboard has no USAGE for them. The functions
-- read the API views instead: owned by the materialized views' owner, so they read the views with
-- its rights, but keep only the groups the toolkit's stage4.visibilidade lets the session's role
-- (SET ROLE's role, else the session user) read, by the rules PostgreSQL applies: RLS off,
-- superuser, BYPASSRLS, or owner without FORCE -> every group; member of anon/authenticated ->
-- public groups; member of authenticated -> groups whose owner_id is auth.uid(). So even read
-- directly, they show a caller only aggregates of rows it may read. That holds for the known
-- policies only: precheck.sql refuses others, and when they change later (or row_security is off,
-- or the role may not SELECT the table) the views show nothing and papel_exato() sends the
-- functions back to the table (exactly the original query); so it does when current_user is not
-- the session's role (inside another SECURITY DEFINER function), since RLS judges current_user.
--
-- Same results right after a refresh: counts are exact; extents are min/max of the same
-- per-geometry boxes, rebuilt with the same box2d -> geometry cast; area sums are float sums in
-- another order (last bits may differ; the benchmark rounds them to the square metre).
--
-- Staleness (honest): between refreshes the functions do not see rows inserted, updated or deleted
-- since the last one: up to the schedule's interval plus the refresh's own duration (by default
-- 15 minutes plus the refresh). A change of publico/owner_id is stale too: a row made private still
-- counts in the public totals until the refresh (its aggregate, never its content). Privileges, role
-- memberships and the policies themselves are evaluated at call time.
--
-- pg_cron 1.4: 5-field schedules only; jobs due in the same minute start together and compete, so
-- job k runs k minutes after job 0 ('*/15' -> '1-59/15' -> '2-59/15'). Supabase advises at most 8
-- concurrent jobs, each under 10 minutes: OPT5 adds at most 3, each with statement_timeout 10min.
-- The jobs run as the deployer (the views' owner, who alone may refresh them) in this database.
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '30min';
SET LOCAL search_path = pg_catalog, pg_temp;
-- PostGIS's names unqualified, wherever it is installed (extensions on Supabase, often public).
SELECT stage4.use_postgis_search_path();

-- The functions this change replaces, as they were: revert.sql and verify*.sql read them back.
-- Only those OPT5 recognises (stage4.dashboard_rpc_mismatch: the reference aggregates in any
-- spelling, SECURITY INVOKER, ours to replace); the others stay exactly as they are, and the
-- materialized view only they would read is not built. decline.sql declined when none is.
SELECT stage4.save_function_snapshots('opt5_dashboard_matviews', ARRAY(
    SELECT f::regprocedure
    FROM unnest(ARRAY['public.area_por_categoria(integer)', 'public.extensao_por_categoria()', 'public.resumo_anual()']) AS f
    WHERE stage4.dashboard_rpc_mismatch(f) IS NULL));
CREATE TEMPORARY TABLE opt5_served ON COMMIT DROP AS
    SELECT s.function::regprocedure AS f, split_part(s.function, '(', 1) AS name
    FROM stage4.function_snapshots AS s WHERE s.change = 'opt5_dashboard_matviews';

-- Private schema of the materialized views.
CREATE SCHEMA stage4_dashboard;
COMMENT ON SCHEMA stage4_dashboard IS
    'OPT5: pre-aggregated materialized views of public.geometrias for the dashboard functions. Private: no USAGE for PUBLIC or the API roles.';
REVOKE ALL ON SCHEMA stage4_dashboard FROM PUBLIC, anon, authenticated, service_role;

-- For area_por_categoria() and resumo_anual(). Year as its first day (not extract(year)::int):
-- area_por_categoria() then filters with its own condition on the date, and an 'infinity' date
-- cannot make the refresh fail.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM opt5_served WHERE name IN ('public.area_por_categoria', 'public.resumo_anual')) THEN
        CREATE MATERIALIZED VIEW stage4_dashboard.resumo_categoria_ano AS
            SELECT date_trunc('year', g.data_referencia::timestamp)::date AS ano_inicio,
                   g.categoria,
                   g.publico,
                   CASE WHEN g.publico THEN NULL ELSE g.owner_id END AS owner_id,
                   count(*) AS n,
                   sum(g.area_m2) AS total_area_m2
            FROM public.geometrias AS g
            GROUP BY 1, 2, 3, 4
            WITH DATA;
        COMMENT ON MATERIALIZED VIEW stage4_dashboard.resumo_categoria_ano IS
            'OPT5: features and area per year, categoria and visibility group (publico; owner_id of private rows). '
            'Refreshed CONCURRENTLY by the pg_cron job stage4_refresh_resumo_categoria_ano. No RLS: never grant it to the API roles.';
        REVOKE ALL ON stage4_dashboard.resumo_categoria_ano FROM PUBLIC, anon, authenticated, service_role;
        CREATE UNIQUE INDEX resumo_categoria_ano_chave ON stage4_dashboard.resumo_categoria_ano
            (ano_inicio, categoria, publico, owner_id) NULLS NOT DISTINCT;
    END IF;
END $$;

-- For extensao_por_categoria(). The extent as its corners: min/max are exact in any order, and the
-- function rebuilds the box2d with the same cast as ST_Extent(...)::geometry.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM opt5_served WHERE name = 'public.extensao_por_categoria') THEN
        CREATE MATERIALIZED VIEW stage4_dashboard.extensao_categoria AS
            SELECT e.categoria, e.publico, e.owner_id, e.n,
                   st_xmin(e.extent) AS x_min, st_ymin(e.extent) AS y_min,
                   st_xmax(e.extent) AS x_max, st_ymax(e.extent) AS y_max
            FROM (SELECT g.categoria,
                         g.publico,
                         CASE WHEN g.publico THEN NULL ELSE g.owner_id END AS owner_id,
                         count(*) AS n,
                         st_extent(g.geom) AS extent
                  FROM public.geometrias AS g
                  GROUP BY 1, 2, 3) AS e
            WITH DATA;
        COMMENT ON MATERIALIZED VIEW stage4_dashboard.extensao_categoria IS
            'OPT5: features and bounding box per categoria and visibility group (publico; owner_id of private rows). '
            'Refreshed CONCURRENTLY by the pg_cron job stage4_refresh_extensao_categoria. No RLS: never grant it to the API roles.';
        REVOKE ALL ON stage4_dashboard.extensao_categoria FROM PUBLIC, anon, authenticated, service_role;
        CREATE UNIQUE INDEX extensao_categoria_chave ON stage4_dashboard.extensao_categoria
            (categoria, publico, owner_id) NULLS NOT DISTINCT;
    END IF;
END $$;

DO $$
BEGIN
    IF to_regclass('stage4_dashboard.resumo_categoria_ano') IS NOT NULL THEN
        ANALYZE stage4_dashboard.resumo_categoria_ano;
    END IF;
    IF to_regclass('stage4_dashboard.extensao_categoria') IS NOT NULL THEN
        ANALYZE stage4_dashboard.extensao_categoria;
    END IF;
END $$;

-- The read policies are the known ones (precheck.sql refused others): stage4.visibilidade may apply
-- them while they stay so.
SELECT stage4.accept_read_policies('opt5_dashboard_matviews', 'OPT5');

-- The API side: usable by the roles that may call the functions, never exposed by PostgREST.
CREATE SCHEMA stage4_dashboard_api;
COMMENT ON SCHEMA stage4_dashboard_api IS
    'OPT5: row-filtered views of the dashboard materialized views for the dashboard functions. USAGE for their callers; '
    'never list it in PostgREST''s exposed schemas (db-schemas).';
REVOKE ALL ON SCHEMA stage4_dashboard_api FROM PUBLIC;
SELECT stage4.grant_to_callers('USAGE', 'SCHEMA stage4_dashboard_api',
    ARRAY(SELECT f FROM opt5_served));

-- One view per materialized view built above.
DO $$
BEGIN
    IF to_regclass('stage4_dashboard.resumo_categoria_ano') IS NOT NULL THEN
        CREATE VIEW stage4_dashboard_api.resumo_categoria_ano WITH (security_barrier = true) AS
            SELECT m.ano_inicio, m.categoria, m.n, m.total_area_m2
            FROM stage4_dashboard.resumo_categoria_ano AS m
            CROSS JOIN stage4.visibilidade AS v
            WHERE v.exata AND (v.todas OR (m.publico AND v.publicas) OR m.owner_id = v.uid);
        COMMENT ON VIEW stage4_dashboard_api.resumo_categoria_ano IS
            'OPT5: the groups of stage4_dashboard.resumo_categoria_ano whose rows the session''s role may read (stage4.visibilidade: known policies of public.geometrias).';
        REVOKE ALL ON stage4_dashboard_api.resumo_categoria_ano FROM PUBLIC, anon, authenticated, service_role;
        PERFORM stage4.grant_to_callers('SELECT', 'TABLE stage4_dashboard_api.resumo_categoria_ano', ARRAY(SELECT f FROM opt5_served));
    END IF;
    IF to_regclass('stage4_dashboard.extensao_categoria') IS NOT NULL THEN
        CREATE VIEW stage4_dashboard_api.extensao_categoria WITH (security_barrier = true) AS
            SELECT m.categoria, m.n, m.x_min, m.y_min, m.x_max, m.y_max
            FROM stage4_dashboard.extensao_categoria AS m
            CROSS JOIN stage4.visibilidade AS v
            WHERE v.exata AND (v.todas OR (m.publico AND v.publicas) OR m.owner_id = v.uid);
        COMMENT ON VIEW stage4_dashboard_api.extensao_categoria IS
            'OPT5: the groups of stage4_dashboard.extensao_categoria whose rows the session''s role may read (stage4.visibilidade: known policies of public.geometrias).';
        REVOKE ALL ON stage4_dashboard_api.extensao_categoria FROM PUBLIC, anon, authenticated, service_role;
        PERFORM stage4.grant_to_callers('SELECT', 'TABLE stage4_dashboard_api.extensao_categoria', ARRAY(SELECT f FROM opt5_served));
    END IF;
END $$;

-- The role the views answer exactly for (stage4.visibilidade: the session's role, when row_security
-- is on, it may SELECT the table and the read policies are the accepted ones), NULL otherwise. The
-- functions use the views only when it is current_user, the role RLS would judge. SECURITY DEFINER
-- to read the toolkit's view; it reveals only the caller's own role name. plpgsql: its plan is kept
-- for the session.
CREATE FUNCTION stage4_dashboard_api.papel_exato()
RETURNS name
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT v.papel FROM stage4.visibilidade AS v WHERE v.exata);
END
$$;
COMMENT ON FUNCTION stage4_dashboard_api.papel_exato() IS
    'OPT5: the role (SET ROLE, else session user) whose visible groups the dashboard views reproduce exactly, NULL when they cannot '
    '(read policies changed since OPT5, row_security off, no SELECT on public.geometrias); unless it is current_user, the '
    'dashboard functions aggregate the table as before.';
REVOKE ALL ON FUNCTION stage4_dashboard_api.papel_exato() FROM PUBLIC;
SELECT stage4.grant_to_callers('EXECUTE', 'FUNCTION stage4_dashboard_api.papel_exato()',
    ARRAY(SELECT f FROM opt5_served));

-- The refresh jobs, one source of truth for deploy.sql, verify.sql and revert.sql: job k starts k
-- minutes after the configured schedule (a '*/N' or fixed minute field; any other minute field is
-- kept as is, and the jobs then start together).
CREATE FUNCTION stage4_dashboard.refresh_jobs()
RETURNS TABLE (jobname text, schedule text, command text)
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    configured text := btrim(coalesce(nullif(current_setting('stage4.refresh_schedule', true), ''), '*/15 * * * *'));
    fields text[] := regexp_split_to_array(configured, '\s+');
    mv text;
    k int := 0;
    step int;
BEGIN
    IF array_length(fields, 1) <> 5 THEN
        RAISE EXCEPTION 'OPT5: stage4.refresh_schedule "%" is not a 5-field cron schedule', configured;
    END IF;
    FOREACH mv IN ARRAY ARRAY['stage4_dashboard.resumo_categoria_ano', 'stage4_dashboard.extensao_categoria',
                              'stage4_search.geometrias_busca'] LOOP
        CONTINUE WHEN to_regclass(mv) IS NULL;
        jobname := 'stage4_refresh_' || split_part(mv, '.', 2);
        command := format('SET LOCAL statement_timeout = %L; REFRESH MATERIALIZED VIEW CONCURRENTLY %s', '10min', mv);
        schedule := array_to_string(fields, ' ');
        IF fields[1] ~ '^\*/[0-9]+$' THEN
            step := substr(fields[1], 3)::int;
            IF k % step > 0 THEN
                schedule := format('%s-59/%s ', k % step, step) || array_to_string(fields[2:5], ' ');
            END IF;
        ELSIF fields[1] ~ '^[0-9]+$' THEN
            schedule := format('%s ', (fields[1]::int + k) % 60) || array_to_string(fields[2:5], ' ');
        END IF;
        RETURN NEXT;
        k := k + 1;
    END LOOP;
END $$;
COMMENT ON FUNCTION stage4_dashboard.refresh_jobs() IS
    'OPT5: the pg_cron refresh jobs (name, staggered schedule, command) for the configured stage4.refresh_schedule.';
REVOKE ALL ON FUNCTION stage4_dashboard.refresh_jobs() FROM PUBLIC;

-- The dashboard functions OPT5 serves: same signatures, volatility, SECURITY INVOKER and
-- search_path; CREATE OR REPLACE keeps their owner, grants and comments. LANGUAGE plpgsql instead
-- of sql: a SQL function that cannot be inlined (these cannot: SET search_path) is planned again at
-- every call, plpgsql keeps its plans for the session, and evaluates papel_exato() once. The ELSE
-- branch is the function's own query, verbatim; `#variable_conflict use_column` keeps the
-- SQL-function rule that a column name wins over an output column or parameter of the same name.
-- In the first branch every column is qualified and the year is $1.
SELECT stage4.set_plpgsql_body(f, format($body$#variable_conflict use_column
BEGIN
    -- OPT5: from the materialized groups the caller may see (stage4_dashboard_api), refreshed by
    -- the pg_cron job stage4_refresh_resumo_categoria_ano; the function's own condition on the
    -- date, asked of the year's first day (the same year, so the same answer).
    IF stage4_dashboard_api.papel_exato() = current_user THEN
        RETURN QUERY
            SELECT m.categoria, sum(m.total_area_m2), sum(m.n)::bigint
            FROM stage4_dashboard_api.resumo_categoria_ano AS m
            WHERE %s
            GROUP BY m.categoria
            ORDER BY m.categoria;
    ELSE
        RETURN QUERY
%s
;
    END IF;
END$body$,
    regexp_replace((SELECT btrim(substr(btrim(l), 7)) FROM unnest(stage4.sql_split(stage4.canonical_query(f), E'\n')) AS l
                    WHERE btrim(l) LIKE 'WHERE %'),
                   '("(?:[^"]|"")+"|\w+)\.data_referencia\M', 'm.ano_inicio', 'g'),
    regexp_replace(stage4.function_query(f), '[\s;]+$', '')))
FROM opt5_served WHERE name = 'public.area_por_categoria';

SELECT stage4.set_plpgsql_body(f, format($body$#variable_conflict use_column
BEGIN
    -- OPT5: from the materialized groups the caller may see (stage4_dashboard_api), refreshed by
    -- the pg_cron job stage4_refresh_extensao_categoria.
    IF stage4_dashboard_api.papel_exato() = current_user THEN
        RETURN QUERY
            SELECT m.categoria,
                   ST_SetSRID(ST_MakeBox2D(ST_MakePoint(min(m.x_min), min(m.y_min)),
                                           ST_MakePoint(max(m.x_max), max(m.y_max)))::geometry, 4326),
                   sum(m.n)::bigint
            FROM stage4_dashboard_api.extensao_categoria AS m
            GROUP BY m.categoria
            ORDER BY m.categoria;
    ELSE
        RETURN QUERY
%s
;
    END IF;
END$body$, regexp_replace(stage4.function_query(f), '[\s;]+$', '')))
FROM opt5_served WHERE name = 'public.extensao_por_categoria';

SELECT stage4.set_plpgsql_body(f, format($body$#variable_conflict use_column
BEGIN
    -- OPT5: from the materialized groups the caller may see (stage4_dashboard_api), refreshed by
    -- the pg_cron job stage4_refresh_resumo_categoria_ano.
    IF stage4_dashboard_api.papel_exato() = current_user THEN
        RETURN QUERY
            -- grouped by the year's first day, then extract(): once per group, not per row
            SELECT extract(year FROM s.ano_inicio)::int, s.categoria, s.n, s.total_area_m2
            FROM (SELECT m.ano_inicio, m.categoria, sum(m.n)::bigint AS n, sum(m.total_area_m2) AS total_area_m2
                  FROM stage4_dashboard_api.resumo_categoria_ano AS m
                  GROUP BY m.ano_inicio, m.categoria) AS s
            ORDER BY s.ano_inicio, s.categoria;
    ELSE
        RETURN QUERY
%s
;
    END IF;
END$body$, regexp_replace(stage4.function_query(f), '[\s;]+$', '')))
FROM opt5_served WHERE name = 'public.resumo_anual';

-- The refresh jobs (cron.schedule() replaces a job of the same name and user).
SELECT cron.schedule(j.jobname, j.schedule, j.command) FROM stage4_dashboard.refresh_jobs() AS j;

-- PostgREST reloads its schema cache at the commit (stage4.notify_api_changed()).
SELECT stage4.notify_api_changed();
