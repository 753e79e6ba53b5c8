-- Raises if any toolkit function is still installed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4'::regnamespace AND proname = 'rebuild_table') THEN
        RAISE EXCEPTION 'stage4_toolkit: still installed';
    END IF;
END $$;
