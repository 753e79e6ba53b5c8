-- Raises unless every object of stage4_shadow is installed.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(f, ', ') INTO missing
    FROM unnest(ARRAY['create_secured_partition', 'copied_columns', 'is_rollout_trigger', 'create_key_registry',
                      'add_key_truncate_guard', 'register_original_key', 'drop_unused_key_registries',
                      'create_shadow', 'complete_shadow', 'create_shadow_index', 'retire', 'drop_retired',
                      'settle_retired', 'notify_api_changed', 'restore_table_settings']) f
    WHERE NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = f AND pronamespace = 'stage4'::regnamespace);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4_shadow: missing functions: %', missing;
    END IF;
END $$;
