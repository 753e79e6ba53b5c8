-- Raises if stage4_toolkit is still installed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4'::regnamespace AND proname = 'table_checksum') THEN
        RAISE EXCEPTION 'stage4_toolkit: still installed';
    END IF;
END $$;
