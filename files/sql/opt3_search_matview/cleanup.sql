-- OPT3 cleanup: a revert was prepared (prepare_revert.sql put the original search and radius
-- functions back) but did not commit, and OPT3 stays applied: its own definitions return. Nothing
-- to do when no revert was prepared.
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT stage4.reinstate_applied_functions('opt3_search_matview');
