-- Raises unless every object of stage4_layouts is installed.
DO $$
DECLARE
    missing text;
BEGIN
    SELECT string_agg(f, ', ') INTO missing
    FROM unnest(ARRAY['yearly_partitions', 'layout_in_snapshot', 'yearly_layout', 'storage_layout',
                      'leaf_partitions', 'gist_index_on', 'storage_choice', 'clustered_layout',
                      'assert_partitioned_by_year']) f
    WHERE NOT EXISTS (SELECT 1 FROM pg_proc WHERE proname = f AND pronamespace = 'stage4'::regnamespace);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'stage4_layouts: missing functions: %', missing;
    END IF;
END $$;
