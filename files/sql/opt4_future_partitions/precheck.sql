-- OPT4 precheck: refuses, before anything changes, a database where future partitions cannot be
-- kept automatically: OPT1 must have partitioned public.geometrias by RANGE on one date column,
-- and stage4.partition_years_ahead, when given, must be a sensible number of years.
DO $$
DECLARE
    t regclass := to_regclass('public.geometrias');
    years_ahead text := nullif(current_setting('stage4.partition_years_ahead', true), '');
BEGIN
    PERFORM stage4.assert_partitioned_by_year('OPT4');
    IF (SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = t AND attname = 'data_referencia') <> 'date' THEN
        RAISE EXCEPTION 'OPT4: public.geometrias.data_referencia is not a date';
    END IF;
    IF to_regclass('stage4.partition_policy') IS NOT NULL OR to_regclass('stage4.opt4_created_partitions') IS NOT NULL THEN
        RAISE EXCEPTION 'OPT4: stage4.partition_policy or stage4.opt4_created_partitions already exists: OPT4 is applied (or a revert was interrupted); revert it first';
    END IF;
    IF years_ahead IS NOT NULL AND (years_ahead !~ '^[0-9]{1,2}$') THEN
        RAISE EXCEPTION 'OPT4: stage4.partition_years_ahead must be a whole number of years from 0 to 99, not %', years_ahead;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                   WHERE i.inhparent = t AND pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT') THEN
        RAISE NOTICE 'OPT4: public.geometrias has no DEFAULT partition: rows of a year without partition are refused, and a revert cannot put back rows of the partitions it drops';
    END IF;
END $$;
