-- Raises unless every object of stage4_swap is installed.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(f, ', ') INTO missing
    FROM unnest(ARRAY['swap_shadow', 'prebuilt_matviews', 'drop_prebuilt_matviews', 'place_prebuilt_matview',
                      'drop_online_schema_if_empty', 'lock_for_rebuild', 'rebuild_table',
                      'assert_table_preserved', 'assert_partitions_secured', 'assert_no_api_readable_matviews']) f
    WHERE NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = f AND pronamespace = 'stage4'::regnamespace);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4_swap: missing functions: %', missing;
    END IF;
END $$;
