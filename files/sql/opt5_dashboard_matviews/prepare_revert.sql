-- OPT5 prepare_revert: run by stage4_change in autocommit before the revert transaction. The
-- dashboard functions it served go back to their captured definitions here, committed, so that no new call
-- plans on the views; revert.sql drops them once the calls in flight are done (3 dashboard reads
-- failed with "relation ... does not exist" in each rollback under load at 1,000,000 features
-- before). OPT5's own definitions are kept for cleanup.sql (stage4.restore_functions_before_revert).
DO $$
DECLARE
    restored int := stage4.restore_functions_before_revert('opt5_dashboard_matviews');
BEGIN
    IF restored < 1 THEN
        RAISE EXCEPTION 'OPT5 prepare_revert: no snapshot of the functions it served';
    END IF;
END $$;
