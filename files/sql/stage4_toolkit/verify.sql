-- Raises unless every object of stage4_toolkit is installed.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(f, ', ') INTO missing
    FROM unnest(ARRAY['table_checksum', 'rows_checksum', 'referable', 'dependent_objects', 'catalog_dependents',
                      'assert_carried', 'grant_statements', 'policy_definition', 'view_definition',
                      'index_definitions', 'describe_table',
                      'save_snapshot', 'save_proven_snapshot', 'snapshot']) f
    WHERE NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = f AND pronamespace = 'stage4'::regnamespace);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4_toolkit: missing functions: %', missing;
    END IF;
    PERFORM 'stage4.table_snapshots'::regclass;
END $$;
