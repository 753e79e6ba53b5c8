-- Removes stage4_shadow's functions.
SET LOCAL lock_timeout = '2s';
-- What a swap retired (stage4.retire()), never with CASCADE: what still depends on it stays, named.
SELECT stage4.drop_retired(0) WHERE to_regprocedure('stage4.drop_retired(double precision)') IS NOT NULL;
DROP FUNCTION IF EXISTS stage4.restore_table_settings(regclass, jsonb), stage4.notify_api_changed(),
    stage4.settle_retired(), stage4.drop_retired(double precision), stage4.retire(text),
    stage4.create_shadow_index(regclass, jsonb, text), stage4.complete_shadow(regclass, jsonb, text[]),
    stage4.create_shadow(regclass, text, jsonb), stage4.drop_unused_key_registries(),
    stage4.register_original_key(regclass, regclass, text[]), stage4.add_key_truncate_guard(regclass),
    stage4.create_key_registry(regclass, text, text[], text), stage4.is_rollout_trigger(oid),
    stage4.copied_columns(regclass, text), stage4.create_secured_partition(regclass, text, text, text);
