-- Raises if stage4_api_reading is still installed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4'::regnamespace AND proname = 'assert_can_materialize') THEN
        RAISE EXCEPTION 'stage4_api_reading: still installed';
    END IF;
END $$;
