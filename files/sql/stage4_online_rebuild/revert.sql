-- Removes stage4_online_rebuild's functions and tables.
SET LOCAL lock_timeout = '2s';
DROP FUNCTION IF EXISTS stage4.assert_api_answers(boolean), stage4.abort_online_rebuild(regclass),
    stage4.finish_online_rebuild(text, regclass, jsonb), stage4.prebuild_matviews(regclass), stage4.prove_shadow(regclass),
    stage4.analyze_shadow(regclass), stage4.replay_proven(regclass, int), stage4.apply_delta(regclass, int),
    stage4.replay_logged(regclass, int), stage4.rewrite_stale_toast(regclass, jsonb, text),
    stage4.index_shadow(regclass), stage4.copy_batch(regclass, int), stage4.drop_capture_triggers(regclass),
    stage4.start_capture(regclass), stage4.start_online_rebuild(regclass, jsonb),
    stage4.set_autovacuum(regclass, boolean), stage4.key_row(regclass, text[], text, jsonb),
    stage4.lock_complete_shadow(regclass), stage4.lock_online_rebuild(regclass);
DROP PROCEDURE IF EXISTS stage4.prepare_online_rebuild(regclass, jsonb, int, text);
DROP TABLE IF EXISTS stage4.online_rebuilds;
