-- OPT2 verify: the recorded path really ran on every closed partition, nothing else changed
-- (rows, indexes, policies, grants, RLS), no partition is readable around RLS, the API answers.
DO $$
DECLARE
    parent regclass := 'public.geometrias';
    info record;
    chosen_path text;
    toast text;
    closed_now int;
    bad text;
BEGIN
    IF to_regclass('stage4.opt2_layout') IS NULL THEN
        RAISE EXCEPTION 'OPT2: stage4.opt2_layout is missing: the path that ran is not recorded';
    END IF;
    SELECT path, details INTO info FROM stage4.opt2_layout WHERE relation = 'public.geometrias';
    IF NOT FOUND OR (SELECT count(DISTINCT path) FROM stage4.opt2_layout) <> 1 THEN
        RAISE EXCEPTION 'OPT2: stage4.opt2_layout does not name exactly one path';
    END IF;
    chosen_path := info.path;
    toast := info.details->>'toast';

    -- Every closed leaf partition is recorded (the same "now" as deploy: same transaction).
    SELECT count(*) INTO closed_now
    FROM stage4.leaf_partitions(parent, (info.details->>'closed_before')::date) WHERE closed;
    IF closed_now <> (SELECT count(*) FROM stage4.opt2_layout WHERE closed) THEN
        RAISE EXCEPTION 'OPT2: % closed partitions, % recorded', closed_now, (SELECT count(*) FROM stage4.opt2_layout WHERE closed);
    END IF;

    IF chosen_path = 'columnar' THEN
        SELECT string_agg(l.relation, ', ') INTO bad
        FROM stage4.opt2_layout l JOIN pg_class c ON c.oid = l.relation::regclass
        LEFT JOIN pg_am am ON am.oid = c.relam
        WHERE l.closed AND am.amname IS DISTINCT FROM 'columnar';
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'OPT2: closed partitions not on the columnar access method: %', bad;
        END IF;
    ELSE
        IF toast NOT IN ('lz4', 'external') THEN
            RAISE EXCEPTION 'OPT2: unknown TOAST mode recorded: %', toast;
        END IF;
        SELECT string_agg(l.relation, ', ') INTO bad
        FROM stage4.opt2_layout l
        JOIN pg_attribute a ON a.attrelid = l.relation::regclass AND a.attname = 'geom'
        WHERE (toast = 'lz4' AND a.attcompression <> 'l') OR (toast = 'external' AND a.attstorage <> 'e');
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'OPT2: geom of % does not have the % setting', bad, toast;
        END IF;
        SELECT string_agg(l.relation, ', ') INTO bad
        FROM stage4.opt2_layout l
        WHERE l.closed AND l.details->>'clustered_on' IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
                          WHERE i.indrelid = l.relation::regclass AND i.indisclustered
                            AND ic.relname = l.details->>'clustered_on');
        IF bad IS NOT NULL THEN
            RAISE EXCEPTION 'OPT2: closed partitions not clustered on their GiST index: %', bad;
        END IF;
        FOR info IN SELECT relation FROM stage4.opt2_layout WHERE closed LOOP
            EXECUTE format('SELECT string_agg(DISTINCT pg_column_compression(geom), '', '') FROM %s WHERE %s',
                           info.relation,
                           CASE toast WHEN 'lz4' THEN 'pg_column_compression(geom) <> ''lz4'''
                                      ELSE 'pg_column_compression(geom) IS NOT NULL' END)
                INTO bad;
            IF bad IS NOT NULL THEN
                RAISE EXCEPTION 'OPT2: % still holds geom values compressed with %', info.relation, bad;
            END IF;
        END LOOP;
    END IF;

    PERFORM stage4.assert_table_preserved(parent, stage4.snapshot('opt2_storage_layout', 'public.geometrias'), false,
                                          p_storage_changed => true);  -- geom's compression or storage, on purpose
    PERFORM stage4.assert_partitions_secured(parent);
    PERFORM stage4.assert_api_answers(p_under_lock => true);  -- planned only: nothing of the API runs under the lock
END $$;
