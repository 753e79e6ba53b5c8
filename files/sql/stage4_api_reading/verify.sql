-- Raises unless every object of stage4_api_reading is installed.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(f, ', ') INTO missing
    FROM unnest(ARRAY['assert_can_materialize', 'read_policies', 'read_policy_rule',
                      'assert_known_read_policies', 'accept_read_policies', 'forget_read_policies',
                      'small_table', 'sql_split', 'sql_unwrap', 'function_query', 'canonical_query',
                      'query_clauses', 'search_rpc_shape', 'radius_box', 'radius_rpc_shape', 'unnamed_columns',
                      'query_is_one_of', 'dashboard_rpc_mismatch']) f
    WHERE NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = f AND pronamespace = 'stage4'::regnamespace);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4_api_reading: missing functions: %', missing;
    END IF;
    PERFORM 'stage4.accepted_read_policies'::regclass, 'stage4.read_policies_fingerprint'::regclass, 'stage4.visibilidade'::regclass;
END $$;
