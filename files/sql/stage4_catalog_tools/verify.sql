-- Raises unless every object of stage4_catalog_tools is installed.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(f, ', ') INTO missing
    FROM unnest(ARRAY['save_function_snapshots', 'function_snapshot_mismatch', 'restore_function_snapshots',
                      'restore_functions_before_revert', 'forget_applied_functions',
                      'reinstate_applied_functions', 'set_plpgsql_body', 'set_returning_query', 'callers_of',
                      'grant_to_callers', 'postgis_schema', 'use_postgis_search_path', 'use_api_search_path',
                      'cache_function_plans', 'database_setting', 'set_database_setting',
                      'restore_database_settings', 'publications_of', 'assert_can_publish_via_root',
                      'publish_via_root', 'restore_publication_settings', 'reset_acl']) f
    WHERE NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = f AND pronamespace = 'stage4'::regnamespace);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4_catalog_tools: missing functions: %', missing;
    END IF;
    PERFORM 'stage4.function_snapshots'::regclass, 'stage4.database_settings'::regclass, 'stage4.publication_settings'::regclass;
END $$;
