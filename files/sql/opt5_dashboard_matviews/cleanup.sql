-- OPT5 cleanup: a revert was prepared (prepare_revert.sql put the original dashboard functions
-- back) but did not commit, and OPT5 stays applied: its own definitions return. Nothing to do when
-- no revert was prepared.
SET LOCAL search_path = pg_catalog, pg_temp;
SELECT stage4.reinstate_applied_functions('opt5_dashboard_matviews');
