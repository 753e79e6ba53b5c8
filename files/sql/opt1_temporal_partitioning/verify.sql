-- OPT1 verify: partitioned by year, nothing lost, no partition readable around RLS, API answers.
DO $$
DECLARE
    snap jsonb := stage4.snapshot('opt1_temporal_partitioning', 'public.geometrias');
    through_year int := coalesce(nullif(current_setting('stage4.partition_through_year', true), ''), '2028')::int;
    missing text;
BEGIN
    IF pg_get_partkeydef('public.geometrias'::regclass) IS DISTINCT FROM 'RANGE (data_referencia)' THEN
        RAISE EXCEPTION 'OPT1: public.geometrias is not partitioned by RANGE (data_referencia)';
    END IF;
    SELECT string_agg(p->>'name', ', ') INTO missing
    FROM jsonb_array_elements(stage4.yearly_partitions('geometrias', through_year, through_year)
                              || '[{"name": "geometrias_default"}]') p
    WHERE to_regclass('public.' || (p->>'name')) IS NULL;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'OPT1: missing partitions: %', missing;
    END IF;
    IF EXISTS (SELECT 1 FROM public.geometrias_default) AND (SELECT min(data_referencia) FROM public.geometrias_default)
           < make_date(through_year + 1, 1, 1) THEN
        RAISE EXCEPTION 'OPT1: rows of the yearly ranges ended up in the DEFAULT partition';
    END IF;
    PERFORM stage4.assert_table_preserved('public.geometrias', snap, true);
    PERFORM stage4.assert_partitions_secured('public.geometrias');
    -- id stays unique across partitions: every row's id is in the key registry (stage4.create_key_registry()).
    IF to_regclass('stage4_keys.geometrias') IS NULL
       OR (SELECT count(*) FROM stage4_keys.geometrias) <> (SELECT count(*) FROM public.geometrias) THEN
        RAISE EXCEPTION 'OPT1: the registry that keeps the original primary key unique is missing or incomplete';
    END IF;
    SELECT string_agg(s.function, ', ') INTO missing
    FROM stage4.function_snapshots s JOIN pg_proc p ON p.oid = s.function::regprocedure
    WHERE s.change = 'opt1_temporal_partitioning' AND p.prolang <> (SELECT oid FROM pg_language WHERE lanname = 'plpgsql');
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'OPT1: RPCs still planned at every call (not PL/pgSQL): %', missing;
    END IF;
    IF stage4.database_setting('jit') IS DISTINCT FROM 'off' THEN
        RAISE EXCEPTION 'OPT1: JIT is not off for this database';
    END IF;
    PERFORM stage4.assert_api_answers(p_under_lock => true);  -- planned only: nothing of the API runs under the lock
END $$;
