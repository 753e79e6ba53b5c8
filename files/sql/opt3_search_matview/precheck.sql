-- OPT3 precheck: refuses, before anything changes, a database where the rewritten
-- public.search_geometrias() could not return exactly what the current one returns, or where the
-- search helper could not tell which rows each caller may read (RLS policies other than the known
-- ones). Which RPCs OPT3 rewrites (and whether it declines) is decline.sql's and deploy.sql's.
--
-- OPT1 is not required: the materialized view is keyed by (id, data_referencia), which is unique
-- both on the plain table (primary key id) and on OPT1's partitioned one (id, data_referencia).
SET LOCAL search_path = pg_catalog, pg_temp;
-- PostGIS's names unqualified, wherever it is installed (extensions on Supabase, often public).
SELECT stage4.use_postgis_search_path();

DO $$
DECLARE
    fn regprocedure := to_regprocedure('public.search_geometrias(text, geometry, integer)');
    p pg_catalog.pg_proc%ROWTYPE;
    t regclass := to_regclass('public.geometrias');
    c pg_catalog.pg_class%ROWTYPE;
    missing text;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'OPT3: table public.geometrias does not exist';
    END IF;
    -- On a table too small for the search view to pay (stage4.small_table) OPT3 only rewrites the
    -- radius RPC, which reads nothing but the table, as the caller: nothing below concerns it.
    IF stage4.small_table(t) IS NOT NULL THEN
        RETURN;
    END IF;
    IF fn IS NULL THEN
        RAISE EXCEPTION 'OPT3: public.search_geometrias(text, geometry, integer) does not exist';
    END IF;
    SELECT * INTO p FROM pg_catalog.pg_proc WHERE oid = fn;
    SELECT * INTO c FROM pg_catalog.pg_class WHERE oid = t;

    -- The contract: RETURNS SETOF public.geometrias, SECURITY INVOKER. Its query was recognised by
    -- decline.sql (stage4.search_rpc_shape), which declines OPT3 otherwise.
    IF p.prorettype <> c.reltype OR NOT p.proretset THEN
        RAISE EXCEPTION 'OPT3: public.search_geometrias() must return SETOF public.geometrias, it returns %',
            CASE WHEN p.proretset THEN 'SETOF ' ELSE '' END || p.prorettype::regtype::text;
    END IF;
    IF p.prosecdef THEN
        RAISE EXCEPTION 'OPT3: public.search_geometrias() is SECURITY DEFINER; OPT3 expects SECURITY INVOKER (RLS decides what each caller sees)';
    END IF;
    IF NOT pg_catalog.pg_has_role(p.proowner, 'USAGE') THEN
        RAISE EXCEPTION 'OPT3: % does not own public.search_geometrias() (owner %), so it cannot replace it',
            current_user, pg_catalog.pg_get_userbyid(p.proowner);
    END IF;

    -- The columns the helper's visibility filter and the join back read.
    SELECT string_agg(col, ', ') INTO missing
    FROM unnest(ARRAY['id', 'data_referencia', 'publico', 'owner_id']) col
    WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                      WHERE a.attrelid = t AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'OPT3: public.geometrias lacks the columns %', missing;
    END IF;
    -- (id, data_referencia) must identify a row: the view's unique index (needed by REFRESH ...
    -- CONCURRENTLY) and the join back to the table rely on it.
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_index i
        WHERE i.indrelid = t AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
          AND NOT EXISTS (SELECT 1 FROM unnest(i.indkey) k
                          JOIN pg_catalog.pg_attribute a ON a.attrelid = t AND a.attnum = k
                          WHERE a.attname NOT IN ('id', 'data_referencia'))) THEN
        RAISE EXCEPTION 'OPT3: no unique index of public.geometrias lies within (id, data_referencia)';
    END IF;
    -- The helper evaluates the read policies itself (it must not return keys of rows the caller may
    -- not read): they must be exactly the ones the toolkit knows, as for OPT5.
    PERFORM stage4.assert_known_read_policies('OPT3');
    PERFORM stage4.assert_can_materialize('OPT3');
    IF to_regnamespace('stage4_search') IS NOT NULL OR to_regnamespace('stage4_search_api') IS NOT NULL THEN
        RAISE EXCEPTION 'OPT3: schema stage4_search or stage4_search_api already exists, but the ledger does not say OPT3 created it';
    END IF;
END $$;
