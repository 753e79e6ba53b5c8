-- Raises if stage4_shadow is still installed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4'::regnamespace AND proname = 'create_secured_partition') THEN
        RAISE EXCEPTION 'stage4_shadow: still installed';
    END IF;
END $$;
