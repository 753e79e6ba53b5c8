-- Raises if stage4_catalog_tools is still installed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4'::regnamespace AND proname = 'save_function_snapshots') THEN
        RAISE EXCEPTION 'stage4_catalog_tools: still installed';
    END IF;
END $$;
