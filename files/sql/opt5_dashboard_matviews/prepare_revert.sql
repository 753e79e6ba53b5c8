-- OPT5 prepare_revert: run by stage4_change in autocommit before the revert transaction. The
-- three dashboard functions go back to their captured definitions here, committed, so that no new
-- call plans on the views; revert.sql then drops the views once the calls already in flight are
-- done (its lock_timeout waits for them). Without this step a call that had planned on a view and
-- queued for its lock behind the revert failed with "relation ... does not exist" once the revert
-- dropped it (3 dashboard reads in each rollback under load at 1,000,000 features).
--
-- OPT5's own definitions are saved first, under 'opt5_dashboard_matviews:applied', so that
-- cleanup.sql can put them back when the revert does not happen (it failed, or the next run keeps
-- OPT5 applied). Resumable: a second run saves nothing again (the saved ones are OPT5's, whereas
-- the functions may already be the originals) and restores the same originals.
DO $$
DECLARE
    restored int;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM stage4.function_snapshots WHERE change = 'opt5_dashboard_matviews:applied') THEN
        PERFORM stage4.save_function_snapshots('opt5_dashboard_matviews:applied', ARRAY(
            SELECT to_regprocedure(s.function) FROM stage4.function_snapshots s WHERE s.change = 'opt5_dashboard_matviews'));
    END IF;
    restored := stage4.restore_function_snapshots('opt5_dashboard_matviews');
    IF restored <> 3 THEN
        RAISE EXCEPTION 'OPT5 prepare_revert: expected snapshots of three functions, found %', restored;
    END IF;
END $$;
