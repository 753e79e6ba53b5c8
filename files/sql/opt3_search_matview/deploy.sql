-- OPT3 search materialized view: public.search_geometrias() finds its candidates in an indexed
-- materialized view instead of computing to_tsvector() over the table's rows for every call; and
-- public.geometrias_no_raio() decides most of its candidates without geodesy (at the end).
--
-- stage4:isolation repeatable read
-- (read by library/stage4_change.py) The deploy transaction sees one snapshot: the search view is
-- filled from it and verify.sql compares them, and the functions, with the table as of it, so the
-- application's writes meanwhile cannot make them differ. Nothing here copies rows under a lock.
--
-- What is created
--   stage4_search.formas               what OPT3 read in the RPCs it rewrites (stage4.search_rpc_shape,
--                                      stage4.radius_rpc_shape): the search's tsvector, tsquery, box,
--                                      rank and limit, in the user's own expressions.
--   stage4_search.geometrias_busca     materialized view, one row per feature: id, data_referencia,
--                                      tsv (the search's own tsvector expression) and, when the
--                                      search has a box, bbox (ST_Envelope of its column), stored in
--                                      bbox order; UNIQUE (id, data_referencia) so it can be
--                                      refreshed CONCURRENTLY, GIN on tsv, GiST on bbox.
--   stage4_search_api.candidatos(query, bbox, n)
--                                      SECURITY DEFINER helper returning only (id, data_referencia,
--                                      rank) of the best n rows matching the tsquery whose bbox
--                                      overlaps, among those the caller may read (stage4.visibilidade).
--   stage4_search_api.papel_exato()    the role the helper answers exactly for, NULL when it cannot.
--   public.search_geometrias()         same signature, owner, grants, comment, volatility, SECURITY
--                                      INVOKER and pinned search_path; new body (plpgsql): candidates
--                                      from the helper, JOINED BACK to public.geometrias as the
--                                      caller; the original query when papel_exato() is not
--                                      current_user.
--
-- Why this split. Materialized views have no row level security, so none may be readable by anon or
-- authenticated (stage4.assert_no_api_readable_matviews()), and stage4_search has no USAGE for them
-- or PUBLIC. A SECURITY INVOKER function cannot read the view for them, so the helper reads it as
-- the view's owner, but hands back only keys and ranks; the public function stays SECURITY INVOKER
-- and fetches the rows from public.geometrias as the caller, so the table's RLS policies still
-- decide, row by row, what each role receives. The helper needs a schema the caller can USE, hence
-- the second schema stage4_search_api (USAGE and EXECUTE for whoever may call
-- search_geometrias(), PUBLIC included when its grants say so: the helper returns only what each
-- caller may read, see below), which must never be listed in PostgREST's exposed schemas
-- (db-schemas; verify.sql refuses a pgrst.db_schemas role setting that lists it).
--
-- The helper filters too. Anyone who may execute it can call it directly (psql, another function),
-- so it must not return keys of rows the caller may not read: which private rows exist, their
-- dates, the words they contain and where they lie. It keeps a match only when the toolkit's
-- stage4.visibilidade (the same rules OPT5's dashboard views apply) lets the session's role (SET
-- ROLE's role, else the session user: current_user inside the helper is its owner) read that row,
-- judged on publico/owner_id read from public.geometrias now (never stale; the helper reads the
-- table with its owner's rights, the filter standing in for RLS). That holds for the known read
-- policies only: precheck.sql refuses others (stage4.assert_known_read_policies, as OPT5's does),
-- and when they change later, row_security is off or the role may not SELECT the table, the helper
-- returns nothing and papel_exato() is NULL, so search_geometrias() runs its original query;
-- so it does when current_user is not the session's role (called inside another SECURITY DEFINER
-- function): RLS judges current_user, which the helper cannot see. Either way every answer is the
-- original one. The helper returns every visible match, without LIMIT; the public function takes
-- the first max_results of them and fetches only those rows.
--
-- Same results. The search's own query is recognised first (decline.sql declines any other): its
-- tsvector is stored as the function computes it, its tsquery, box and limit are computed from the
-- arguments by the function's own expressions, ts_rank()/ts_rank_cd() of the stored tsvector equals
-- that of the recomputed one, and ST_Envelope(geom) && box equals geom && box (both compare the same
-- float bounding box), so the rows, their order (rank DESC, id) and the LIMIT are those of the
-- original function, for every role, as long as the view is fresh: verify.sql compares them, and
-- the benchmark fingerprints them right after this deploy.
--
-- Staleness (honest): until the next REFRESH (OPT5 schedules one every stage4.refresh_schedule,
-- default 15 minutes, plus the refresh's own duration; without OPT5 nothing refreshes the view, so
-- apply OPT5 after OPT3, or schedule REFRESH MATERIALIZED VIEW CONCURRENTLY
-- stage4_search.geometrias_busca yourself) rows inserted since are not found, rows whose
-- text or geometry changed are matched and ranked by their old text/bbox, deleted rows disappear at
-- once (the helper's lookup finds nothing). Visibility is never stale: publico/owner_id are read from the table
-- (by the helper's lookup and by the join), so a row made private disappears immediately for the
-- callers who lost it.
--
-- Revert restores the function from the definition, owner, ACL and comment captured here into
-- stage4.function_snapshots. ACCESS SHARE on public.geometrias only (reads and writes go on while
-- the view is built, about 1 min per million rows); one transaction.
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '30min';
-- Nothing below may resolve through the caller's search_path; PostGIS's names resolve wherever
-- it is installed, and the helpers pin that path (SET search_path FROM CURRENT).
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT stage4.use_postgis_search_path();

-- The materialized view, private: nobody but its owner may use the schema.
CREATE SCHEMA stage4_search;
COMMENT ON SCHEMA stage4_search IS
    'OPT3: search index of public.geometrias (materialized view). Private: no USAGE for PUBLIC or the API roles.';
REVOKE ALL ON SCHEMA stage4_search FROM PUBLIC, anon, authenticated, service_role;

-- What OPT3 reads in the RPCs it rewrites: the search when it is recognised and the table is not
-- too small for its view to pay (stage4.small_table); the radius RPC when it is recognised,
-- SECURITY INVOKER and ours to replace. Any other is left exactly as it is; decline.sql declined
-- when neither is rewritten. Everything the search needs below is built only when it has a row here.
CREATE TABLE stage4_search.formas (
    funcao text PRIMARY KEY,
    forma jsonb NOT NULL
);
COMMENT ON TABLE stage4_search.formas IS
    'OPT3: the pieces of each RPC it rewrote (stage4.search_rpc_shape, stage4.radius_rpc_shape), read by verify.sql.';
INSERT INTO stage4_search.formas
SELECT 'public.search_geometrias(text,geometry,integer)', shape
FROM (SELECT stage4.search_rpc_shape('public.search_geometrias(text, geometry, integer)', 'public.geometrias') AS shape) AS s
WHERE stage4.small_table('public.geometrias') IS NULL AND NOT shape ? 'reason';
INSERT INTO stage4_search.formas
SELECT 'public.geometrias_no_raio(double precision,double precision,double precision)', shape
FROM (SELECT stage4.radius_rpc_shape(p.oid::regprocedure, 'public.geometrias') AS shape, p.prosecdef, p.proowner
      FROM pg_proc AS p
      WHERE p.oid = to_regprocedure('public.geometrias_no_raio(double precision, double precision, double precision)')) AS r
WHERE NOT shape ? 'reason' AND NOT prosecdef AND pg_has_role(proowner, 'USAGE');
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stage4_search.formas) THEN
        RAISE EXCEPTION 'OPT3: neither public.search_geometrias() nor public.geometrias_no_raio() is one OPT3 rewrites (decline.sql says why)';
    END IF;
END $$;

-- The functions this change replaces, as they were: revert.sql and verify*.sql read them back.
SELECT stage4.save_function_snapshots('opt3_search_matview', ARRAY(
    SELECT funcao::regprocedure FROM stage4_search.formas ORDER BY funcao));

-- Only what the ranking reads: every match of a word in the searched box is read from the heap to be
-- ranked (about 28,000 rows for 'parque' around Sao Paulo at 1,000,000 features). Stored in bbox
-- order (PostGIS sorts geometries along a space-filling curve), the matches of one area share pages:
-- 7,000 heap pages read instead of 11,600 for that search, 280 -> 185 ms to rank them (measured on
-- the 1,000,000-feature database). A CONCURRENTLY refresh rewrites only the changed rows, so the
-- order mostly survives. The tsvector is the search's own expression, read from its query.
DO $$
DECLARE
    s jsonb := (SELECT forma FROM stage4_search.formas WHERE funcao LIKE 'public.search_geometrias(%');
BEGIN
    IF s IS NULL THEN
        RETURN;  -- no search to serve: see the formas insert
    END IF;
    -- The read policies are the known ones (precheck.sql refused others): stage4.visibilidade may
    -- apply them while they stay so.
    PERFORM stage4.accept_read_policies('opt3_search_matview', 'OPT3');
    EXECUTE format('CREATE MATERIALIZED VIEW stage4_search.geometrias_busca AS '
                   'SELECT %1$s.id, %1$s.data_referencia, %2$s AS tsv%3$s FROM public.geometrias AS %1$s ORDER BY %4$s WITH DATA',
                   s ->> 'alias', s ->> 'tsvector',
                   CASE WHEN s ? 'box' THEN format(', st_envelope(%s.%s) AS bbox', s ->> 'alias', s ->> 'box_column') ELSE '' END,
                   CASE WHEN s ? 'box' THEN 'bbox' ELSE '1' END);
    IF s ? 'box' THEN
        CREATE INDEX geometrias_busca_bbox_gist ON stage4_search.geometrias_busca USING gist (bbox);
    END IF;
    COMMENT ON MATERIALIZED VIEW stage4_search.geometrias_busca IS
        'OPT3: one row per feature of public.geometrias with the tsvector public.search_geometrias() searches and its bounding box, in bbox order. '
        'Refreshed CONCURRENTLY by the pg_cron job stage4_refresh_geometrias_busca (OPT5). No RLS: never grant it to the API roles.';
    REVOKE ALL ON stage4_search.geometrias_busca FROM PUBLIC, anon, authenticated, service_role;
    CREATE UNIQUE INDEX geometrias_busca_chave ON stage4_search.geometrias_busca (id, data_referencia);
    CREATE INDEX geometrias_busca_tsv_gin ON stage4_search.geometrias_busca USING gin (tsv);
    ANALYZE stage4_search.geometrias_busca;

    -- The helper, in a schema the function's callers may use (but PostgREST must not expose).
    CREATE SCHEMA stage4_search_api;
    COMMENT ON SCHEMA stage4_search_api IS
        'OPT3: accessor of the search materialized view for public.search_geometrias(). USAGE for its callers; '
        'never list it in PostgREST''s exposed schemas (db-schemas).';
    REVOKE ALL ON SCHEMA stage4_search_api FROM PUBLIC;
    PERFORM stage4.grant_to_callers('USAGE', 'SCHEMA stage4_search_api', ARRAY['public.search_geometrias(text, geometry, integer)'::regprocedure]);
END $$;

-- The best p_limit matches of p_query (rank, then id) whose bbox overlaps p_bbox (NULL: anywhere),
-- whose row still exists and which the caller may read (stage4.visibilidade), NULL: all of them.
-- The lookup runs for every role, also those that read every row: a row deleted since the last
-- refresh must not take a place in search_geometrias()' LIMIT. The matches are ranked first (from
-- the view alone, with the search's own rank function), then looked up one by one in that order
-- until p_limit are kept: a broad word matches tens of thousands of rows at 1,000,000 features, and
-- joining them all to the table cost a second where about p_limit lookups suffice. The ranking
-- query is EXECUTEd so that it is planned with the actual words and box (the GIN and GiST indexes
-- combined); the lookup keeps its plan for the session. Parameters are p_-prefixed and every
-- column qualified: parameters and output columns are plpgsql variables.
DO $$
DECLARE
    s jsonb := (SELECT forma FROM stage4_search.formas WHERE funcao LIKE 'public.search_geometrias(%');
    ranking text := format('SELECT b.id, b.data_referencia, %s AS rank FROM stage4_search.geometrias_busca AS b '
                           'WHERE b.tsv @@ $1%s ORDER BY rank DESC, b.id',
                           CASE WHEN s ? 'rank' THEN format(s ->> 'rank', 'b.tsv', '$1') ELSE '0::real' END,
                           CASE WHEN s ? 'box' THEN ' AND ($2::geometry IS NULL OR b.bbox && $2)' ELSE '' END);
BEGIN
    IF s IS NULL THEN
        RETURN;  -- no search to serve: see the formas insert
    END IF;
    EXECUTE format($create$
CREATE FUNCTION stage4_search_api.candidatos(p_query tsquery, p_bbox geometry DEFAULT NULL, p_limit bigint DEFAULT NULL)
RETURNS TABLE (id bigint, data_referencia date, rank real)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path FROM CURRENT
AS %L$create$, format($body$
DECLARE
    v stage4.visibilidade%%ROWTYPE;
    match record;
    kept bigint := 0;
BEGIN
    IF p_limit < 0 THEN
        RAISE EXCEPTION 'LIMIT must not be negative' USING ERRCODE = 'invalid_row_count_in_limit_clause';
    END IF;
    SELECT * INTO v FROM stage4.visibilidade AS w WHERE w.exata;
    IF NOT FOUND OR p_limit = 0 OR p_query IS NULL THEN
        RETURN;
    END IF;
    FOR match IN EXECUTE %L USING p_query, p_bbox
    LOOP
        IF EXISTS (SELECT 1 FROM public.geometrias AS g
                   WHERE g.id = match.id AND g.data_referencia = match.data_referencia
                     AND (v.todas OR (g.publico AND v.publicas) OR g.owner_id = v.uid)) THEN
            id := match.id;
            data_referencia := match.data_referencia;
            rank := match.rank;
            RETURN NEXT;
            kept := kept + 1;
            EXIT WHEN kept = p_limit;
        END IF;
    END LOOP;
END
$body$, ranking));
    COMMENT ON FUNCTION stage4_search_api.candidatos(tsquery, geometry, bigint) IS
        'OPT3: keys and rank of the best p_limit (NULL: all) features, by rank then id, matching p_query (the tsquery '
        'public.search_geometrias() computes) whose bounding box overlaps p_bbox (NULL: anywhere) that the session''s role may read '
        '(stage4.visibilidade; nothing when its rules are not the ones in force). '
        'Reads the materialized view and the table as its owner; returns no row content: public.search_geometrias() '
        'joins the keys back to public.geometrias as the caller, so RLS decides too.';
    REVOKE ALL ON FUNCTION stage4_search_api.candidatos(tsquery, geometry, bigint) FROM PUBLIC;
    PERFORM stage4.grant_to_callers('EXECUTE', 'FUNCTION stage4_search_api.candidatos(tsquery, geometry, bigint)', ARRAY['public.search_geometrias(text, geometry, integer)'::regprocedure]);
END $$;

-- The role candidatos() answers exactly for, NULL when it cannot (the same accessor as OPT5's, over
-- the toolkit's view): search_geometrias() uses the helper only when it is current_user, the role
-- RLS would judge. It reveals only the caller's own role name. plpgsql: its plan is kept for the
-- session.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stage4_search.formas WHERE funcao LIKE 'public.search_geometrias(%') THEN
        RETURN;
    END IF;
    CREATE FUNCTION stage4_search_api.papel_exato()
    RETURNS name
    LANGUAGE plpgsql
    STABLE
    SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $f$
    BEGIN
        RETURN (SELECT v.papel FROM stage4.visibilidade AS v WHERE v.exata);
    END
    $f$;
    COMMENT ON FUNCTION stage4_search_api.papel_exato() IS
        'OPT3: the role (SET ROLE, else session user) for which candidatos() returns exactly the matches it may read, NULL when '
        'it cannot (read policies changed since OPT3, row_security off, no SELECT on public.geometrias); unless it is '
        'current_user, public.search_geometrias() runs its original query.';
    REVOKE ALL ON FUNCTION stage4_search_api.papel_exato() FROM PUBLIC;
    PERFORM stage4.grant_to_callers('EXECUTE', 'FUNCTION stage4_search_api.papel_exato()', ARRAY['public.search_geometrias(text, geometry, integer)'::regprocedure]);
END $$;

-- Same signature, defaults, volatility, SECURITY INVOKER and search_path, read back from the
-- catalog (stage4.set_plpgsql_body); CREATE OR REPLACE keeps the owner, the grants and the
-- comment. LANGUAGE plpgsql, as OPT5's functions: it chooses between two queries, keeps its plans
-- for the session and evaluates papel_exato() once. The tsquery, the box and the limit are the
-- function's own expressions of its arguments ($1, $2, $3); a required box that is NULL matches
-- nothing, as `geom && NULL` does. The ELSE branch is the original query, verbatim. In the first
-- branch the helper returns exactly the best existing rows the caller may read, so it applies the
-- LIMIT itself (same order: rank, then id) and only those rows are fetched; the join back, as the
-- caller under RLS, could only drop a row, never add one. `#variable_conflict use_column` keeps the
-- SQL-function rule that a column name wins over a parameter of the same name.
DO $$
DECLARE
    s jsonb := (SELECT forma FROM stage4_search.formas WHERE funcao LIKE 'public.search_geometrias(%');
BEGIN
    IF s IS NULL THEN
        RETURN;  -- no search to serve: see the formas insert
    END IF;
    PERFORM stage4.set_plpgsql_body('public.search_geometrias(text, geometry, integer)', format($body$#variable_conflict use_column
BEGIN
    -- OPT3: candidates from the search materialized view (stage4_search_api.candidatos), joined
    -- back to the table as the caller, so RLS decides which rows come back. The view is as fresh
    -- as its last refresh (pg_cron job stage4_refresh_geometrias_busca).
    IF stage4_search_api.papel_exato() = current_user THEN%5$s
        RETURN QUERY
            SELECT %1$s.*
            FROM stage4_search_api.candidatos(%2$s, %3$s, (%4$s)::bigint) AS c
            JOIN public.geometrias AS %1$s ON %1$s.id = c.id AND %1$s.data_referencia = c.data_referencia
            ORDER BY c.rank DESC, %1$s.id;
    ELSE
        RETURN QUERY
%6$s
;
    END IF;
END$body$,
        s ->> 'alias', s ->> 'tsquery', coalesce(s ->> 'box', 'NULL'), coalesce(s ->> 'limit', 'NULL'),
        CASE WHEN s ? 'box' AND NOT (s ->> 'box_optional')::boolean
             THEN format(E'\n        IF (%s) IS NULL THEN\n            RETURN;\n        END IF;', s ->> 'box') ELSE '' END,
        regexp_replace(stage4.function_query('public.search_geometrias(text, geometry, integer)'), '[\s;]+$', '')));
END $$;

-- The radius RPC, when recognised: the same query with the box prefilter (added when the function
-- had none: the GiST index then finds the candidates) and a shortcut before the exact test. The
-- geodesic ST_DWithin of a polygon costs about 20 us; at 1,000,000 features the search of q02 (5 km)
-- runs it on ~5,500 candidates of the box, 3,834 of them inside. A candidate whose planar distance
-- to the point, in degrees, is at most d = 0.99 * radius / 111700 is inside without it: along the
-- straight line in (lon, lat) from the point to the geometry, a degree of latitude is at most
-- 111,694 m (WGS 84, at the poles) and one of longitude at most 111,320 m (at the equator), so the
-- line, and the geodesic no longer than it, measures at most 111,700 m per degree, i.e. at most
-- 0.99 * radius; the 1% margin covers how far PostGIS's geodesic distance may be from the
-- ellipsoid's. So the OR adds no row, and every row it keeps the geodesic test keeps. The point
-- and its geography are computed once per call, into variables: in a plan kept for the session
-- they would otherwise be built again for every candidate. verify.sql compares the answers with
-- the original's. Measured at 1,000,000 features: BENCHMARKS.md (q02).
DO $$
DECLARE
    r jsonb := (SELECT forma FROM stage4_search.formas WHERE funcao LIKE 'public.geometrias_no_raio(%');
BEGIN
    IF r IS NULL THEN
        RETURN;
    END IF;
    PERFORM stage4.set_plpgsql_body('public.geometrias_no_raio(double precision, double precision, double precision)', format($body$#variable_conflict use_column
DECLARE
    stage4_ponto geometry := st_setsrid(st_makepoint(%3$s, %4$s), 4326);
    stage4_ponto_geografico geography := stage4_ponto::geography;
    stage4_raio double precision := %5$s;
BEGIN
    -- OPT3: the GiST index finds the candidates in the circle's box; those nearer than the radius
    -- in degrees are inside without the geodesic test.
    RETURN QUERY
        SELECT %1$s.*
        FROM public.geometrias AS %1$s
        WHERE %6$s
          AND (st_dwithin(%1$s.%2$s, stage4_ponto, 0.99 * stage4_raio / 111700)
               OR st_dwithin(%1$s.%2$s::geography, stage4_ponto_geografico, stage4_raio))
        ORDER BY %1$s.id;
END$body$,
        r ->> 'alias', r ->> 'column', r ->> 'lon', r ->> 'lat', r ->> 'radius', stage4.radius_box(r)));
END $$;

-- PostgREST reloads its schema cache at the commit (stage4.notify_api_changed()).
SELECT stage4.notify_api_changed();
