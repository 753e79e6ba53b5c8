-- OPT5 cleanup: a revert was prepared (prepare_revert.sql put the original dashboard functions
-- back) but did not commit, and OPT5 stays applied: its own definitions, saved by prepare_revert,
-- return, and the saved copy is removed. Nothing to do when no revert was prepared.
SET LOCAL search_path = pg_catalog, pg_temp;

SELECT stage4.restore_function_snapshots('opt5_dashboard_matviews:applied');
DELETE FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews:applied';
