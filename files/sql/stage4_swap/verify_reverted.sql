-- Raises if stage4_swap is still installed.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_proc WHERE pronamespace = 'stage4'::regnamespace AND proname = 'swap_shadow') THEN
        RAISE EXCEPTION 'stage4_swap: still installed';
    END IF;
END $$;
