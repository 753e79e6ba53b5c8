-- OPT1 precheck: refuses, before anything changes, a table that cannot be partitioned safely.
DO $$
DECLARE
    t regclass := to_regclass('public.geometrias');
    d jsonb;
    blocking text;
BEGIN
    IF t IS NULL THEN
        RAISE EXCEPTION 'OPT1: table public.geometrias does not exist';
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = t) = 'p' THEN
        RAISE EXCEPTION 'OPT1: public.geometrias is already partitioned, but the ledger does not say OPT1 did it';
    END IF;
    d := stage4.describe_table(t, false);
    IF d->'primary_key' IS NULL THEN
        RAISE EXCEPTION 'OPT1: public.geometrias has no primary key';
    END IF;
    IF jsonb_array_length(d->'referenced_by') > 0 THEN
        RAISE EXCEPTION 'OPT1: foreign keys reference public.geometrias (%); a partitioned table cannot keep a unique key without data_referencia', d->'referenced_by';
    END IF;
    -- Unique indexes and constraints of a partitioned table must include the partition key.
    SELECT string_agg(i->>'name', ', ') INTO blocking
    FROM jsonb_array_elements(d->'indexes' || d->'constraints') i
    WHERE ((i ? 'unique' AND (i->>'unique')::boolean) OR i->>'type' IN ('u', 'x'))
      AND i->>'definition' NOT LIKE '%data_referencia%';
    IF blocking IS NOT NULL THEN
        RAISE EXCEPTION 'OPT1: unique indexes/constraints without data_referencia cannot exist on the partitioned table: %', blocking;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = t OR inhrelid = t) THEN
        RAISE EXCEPTION 'OPT1: public.geometrias takes part in table inheritance';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_rewrite WHERE ev_class = t AND rulename <> '_RETURN') THEN
        RAISE EXCEPTION 'OPT1: public.geometrias has rules';
    END IF;
    -- Whatever depends on the table, found from the catalog, must be something a rebuild carries.
    PERFORM stage4.assert_carried(t, 'OPT1');
    PERFORM stage4.assert_can_publish_via_root(t, 'OPT1');
END $$;
