-- Removes stage4_swap's functions.
SET LOCAL lock_timeout = '2s';
DROP FUNCTION IF EXISTS stage4.assert_no_api_readable_matviews(), stage4.assert_partitions_secured(regclass),
    stage4.assert_table_preserved(regclass, jsonb, boolean, jsonb, boolean),
    stage4.rebuild_table(regclass, text, text[], jsonb, text[]), stage4.lock_for_rebuild(regclass),
    stage4.drop_online_schema_if_empty(), stage4.swap_shadow(regclass, regclass, jsonb, text[]),
    stage4.place_prebuilt_matview(jsonb, regclass), stage4.drop_prebuilt_matviews(regclass),
    stage4.prebuilt_matviews(regclass);
