-- OPT2 precheck: refuses, before anything changes, a database where the storage layout change
-- cannot run: OPT1 must have partitioned public.geometrias by year, and a path or TOAST mode
-- asked for explicitly (stage4.storage_path, stage4.toast_mode) must be available.
DO $$
DECLARE
    t regclass := to_regclass('public.geometrias');
    requested_path text := lower(coalesce(nullif(current_setting('stage4.storage_path', true), ''), 'auto'));
    requested_toast text := lower(coalesce(nullif(current_setting('stage4.toast_mode', true), ''), 'auto'));
BEGIN
    PERFORM stage4.assert_partitioned_by_year('OPT2');
    IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = t AND attname = 'geom' AND NOT attisdropped) THEN
        RAISE EXCEPTION 'OPT2: public.geometrias has no column geom';
    END IF;
    IF to_regclass('stage4.opt2_layout') IS NOT NULL THEN
        RAISE EXCEPTION 'OPT2: stage4.opt2_layout already exists: OPT2 is applied (or a revert was interrupted); revert it first';
    END IF;
    IF requested_path NOT IN ('auto', 'columnar', 'portable') THEN
        RAISE EXCEPTION 'OPT2: stage4.storage_path must be auto, columnar or portable, not %', requested_path;
    END IF;
    IF requested_toast NOT IN ('auto', 'lz4', 'external') THEN
        RAISE EXCEPTION 'OPT2: stage4.toast_mode must be auto, lz4 or external, not %', requested_toast;
    END IF;
    IF requested_path = 'columnar' AND NOT EXISTS (SELECT 1 FROM pg_am WHERE amname = 'columnar' AND amtype = 't') THEN
        RAISE EXCEPTION 'OPT2: stage4.storage_path = columnar, but no table access method named columnar exists (PostgreSQL and Supabase have none built in)';
    END IF;
    IF requested_toast = 'lz4' AND NOT EXISTS (SELECT 1 FROM pg_settings
                                               WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        RAISE EXCEPTION 'OPT2: stage4.toast_mode = lz4, but this server was built without lz4';
    END IF;
END $$;
