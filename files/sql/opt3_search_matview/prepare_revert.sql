-- OPT3 prepare_revert: run by stage4_change in autocommit before the revert transaction.
-- search_geometrias() (and geometrias_no_raio() when rewritten) go back to their captured definitions here,
-- committed, so that no new search calls the helper that reads the view; revert.sql drops them
-- once the calls in flight are done (a search failed with "relation
-- stage4_search.geometrias_busca does not exist" in a rollback under load at 1,000,000 features
-- before). OPT3's own definitions are kept for cleanup.sql (stage4.restore_functions_before_revert).
DO $$
DECLARE
    restored int := stage4.restore_functions_before_revert('opt3_search_matview');
BEGIN
    IF restored < 1 THEN
        RAISE EXCEPTION 'OPT3 prepare_revert: expected snapshots of search_geometrias() (and geometrias_no_raio() when OPT3 rewrote it), found %', restored;
    END IF;
END $$;
