-- Raises unless every object of stage4_online_rebuild is installed.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(f, ', ') INTO missing
    FROM unnest(ARRAY['lock_online_rebuild', 'lock_complete_shadow', 'key_row', 'set_autovacuum',
                      'start_online_rebuild', 'start_capture', 'drop_capture_triggers', 'copy_batch',
                      'index_shadow', 'rewrite_stale_toast', 'replay_logged', 'apply_delta', 'replay_proven',
                      'analyze_shadow', 'prove_shadow', 'prebuild_matviews', 'prepare_online_rebuild', 'finish_online_rebuild',
                      'abort_online_rebuild', 'assert_api_answers']) f
    WHERE NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = f AND pronamespace = 'stage4'::regnamespace);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4_online_rebuild: missing functions: %', missing;
    END IF;
    PERFORM 'stage4.online_rebuilds'::regclass;
END $$;
