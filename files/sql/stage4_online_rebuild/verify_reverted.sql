-- Raises if stage4_online_rebuild is still installed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4'::regnamespace AND proname = 'lock_online_rebuild') THEN
        RAISE EXCEPTION 'stage4_online_rebuild: still installed';
    END IF;
END $$;
