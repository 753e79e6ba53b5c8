-- OPT3 revert: public.search_geometrias() back to its captured definition, owner, grants and
-- comment (stage4.function_snapshots), then the helper, the materialized view and both schemas
-- dropped. No CASCADE: anything else that came to depend on them makes the revert fail and roll
-- back instead of vanishing silently (OPT5's refresh job of the view is removed by OPT5's revert,
-- which the ledger runs first).
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '5min';
SET LOCAL search_path = pg_catalog, pg_temp;

DO $$
DECLARE
    snap record;
BEGIN
    SELECT * INTO snap FROM stage4.function_snapshots
    WHERE change = 'opt3_search_matview' AND function = 'public.search_geometrias(text,extensions.geometry,integer)';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'OPT3 revert: no snapshot of public.search_geometrias()';
    END IF;
    EXECUTE snap.definition;
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', snap.function, snap.owner);
    PERFORM stage4.reset_acl('FUNCTION ' || snap.function, snap.acl);
    EXECUTE format('COMMENT ON FUNCTION %s IS %L', snap.function, snap.comment);
END $$;

DROP FUNCTION stage4_search_api.candidatos(text, extensions.geometry);
DROP SCHEMA stage4_search_api;
DROP MATERIALIZED VIEW stage4_search.geometrias_busca;
DROP SCHEMA stage4_search;
