-- Raises unless every toolkit function is installed.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(f, ', ') INTO missing
    FROM unnest(ARRAY['table_checksum', 'rows_checksum', 'save_proven_snapshot', 'prove_shadow', 'dependent_objects', 'grant_statements', 'describe_table', 'save_snapshot',
                      'snapshot', 'reset_acl', 'create_secured_partition', 'rebuild_table', 'assert_table_preserved',
                      'assert_partitions_secured', 'assert_no_api_readable_matviews', 'yearly_partitions',
                      'assert_api_answers', 'save_function_snapshots', 'restore_function_snapshots', 'function_snapshot_mismatch',
                      'cache_function_plans', 'set_returning_query', 'set_plpgsql_body', 'callers_of', 'grant_to_callers', 'postgis_schema', 'use_postgis_search_path', 'restore_functions_before_revert', 'reinstate_applied_functions', 'forget_applied_functions', 'set_database_setting', 'restore_database_settings', 'database_setting',
                      'assert_partitioned_by_year', 'assert_can_materialize', 'storage_layout', 'create_shadow',
                      'complete_shadow', 'create_shadow_index', 'rewrite_stale_toast', 'leaf_partitions', 'gist_index_on',
                      'storage_choice', 'clustered_layout', 'swap_shadow', 'retire', 'drop_retired', 'settle_retired', 'drop_online_schema_if_empty', 'yearly_layout', 'layout_in_snapshot',
                      'lock_online_rebuild', 'lock_complete_shadow', 'lock_for_rebuild', 'key_row', 'start_online_rebuild', 'start_capture', 'copy_batch',
                      'index_shadow', 'replay_logged', 'apply_delta', 'replay_proven', 'analyze_shadow', 'prepare_online_rebuild',
                      'finish_online_rebuild', 'abort_online_rebuild', 'restore_table_settings', 'assert_carried',
                      'catalog_dependents', 'referable', 'policy_definition', 'copied_columns', 'notify_api_changed', 'is_rollout_trigger',
                      'create_key_registry', 'add_key_truncate_guard', 'register_original_key', 'drop_unused_key_registries', 'drop_capture_triggers', 'publications_of',
                      'assert_can_publish_via_root', 'publish_via_root', 'restore_publication_settings',
                      'read_policies', 'read_policy_rule', 'assert_known_read_policies', 'accept_read_policies', 'forget_read_policies',
                      'sql_split', 'sql_unwrap', 'function_query', 'canonical_query', 'query_clauses', 'search_rpc_shape', 'radius_box',
                      'radius_rpc_shape', 'unnamed_columns', 'use_api_search_path', 'small_table', 'query_is_one_of', 'dashboard_rpc_mismatch']) f
    WHERE NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = f AND pronamespace = 'stage4'::regnamespace);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4_toolkit: missing functions: %', missing;
    END IF;
    PERFORM 'stage4.table_snapshots'::regclass, 'stage4.function_snapshots'::regclass, 'stage4.database_settings'::regclass, 'stage4.publication_settings'::regclass, 'stage4.online_rebuilds'::regclass,
            'stage4.accepted_read_policies'::regclass, 'stage4.read_policies_fingerprint'::regclass,
            'stage4.visibilidade'::regclass;
END $$;
