-- Raises if stage4_layouts is still installed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4'::regnamespace AND proname = 'yearly_partitions') THEN
        RAISE EXCEPTION 'stage4_layouts: still installed';
    END IF;
END $$;
