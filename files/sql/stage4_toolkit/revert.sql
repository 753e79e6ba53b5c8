-- Removes the toolkit. The ledger (owned by the stage4_change module) stays in schema stage4.
SET LOCAL lock_timeout = '2s';
-- What a swap retired (stage4.retire()), never with CASCADE: what still depends on it stays, named.
SELECT stage4.drop_retired(0) WHERE to_regprocedure('stage4.drop_retired(double precision)') IS NOT NULL;
DROP FUNCTION IF EXISTS stage4.small_table(regclass), stage4.dashboard_rpc_mismatch(text), stage4.query_is_one_of(regprocedure, regclass, text[]), stage4.unnamed_columns(text),
    stage4.radius_rpc_shape(regprocedure, regclass), stage4.radius_box(jsonb),
    stage4.search_rpc_shape(regprocedure, regclass), stage4.query_clauses(regprocedure, regclass), stage4.canonical_query(regprocedure, text),
    stage4.function_query(regprocedure), stage4.sql_unwrap(text), stage4.sql_split(text, text);
DROP VIEW IF EXISTS stage4.visibilidade;
DROP VIEW IF EXISTS stage4.read_policies_fingerprint;
DROP FUNCTION IF EXISTS stage4.forget_read_policies(text), stage4.accept_read_policies(text, text),
    stage4.assert_known_read_policies(text), stage4.read_policy_rule(jsonb), stage4.read_policies();
DROP FUNCTION IF EXISTS stage4.storage_layout(regclass, name), stage4.assert_can_materialize(text), stage4.assert_partitioned_by_year(text),
    stage4.restore_function_snapshots(text), stage4.save_function_snapshots(text, regprocedure[]),
    stage4.function_snapshot_mismatch(stage4.function_snapshots, boolean),
    stage4.cache_function_plans(text, regprocedure[]), stage4.set_returning_query(regprocedure, text), stage4.set_plpgsql_body(regprocedure, text),
    stage4.grant_to_callers(text, text, regprocedure[]), stage4.callers_of(regprocedure[]),
    stage4.use_postgis_search_path(), stage4.use_api_search_path(), stage4.postgis_schema(),
    stage4.restore_functions_before_revert(text), stage4.reinstate_applied_functions(text), stage4.forget_applied_functions(text), stage4.set_database_setting(text, text, text),
    stage4.restore_database_settings(text), stage4.database_setting(text),
    stage4.assert_api_answers(boolean), stage4.yearly_partitions(text, int, int),
    stage4.assert_no_api_readable_matviews(), stage4.assert_partitions_secured(regclass),
    stage4.assert_table_preserved(regclass, jsonb, boolean, jsonb, boolean), stage4.restore_table_settings(regclass, jsonb),
    stage4.assert_carried(regclass, text), stage4.catalog_dependents(regclass), stage4.referable(regclass, oid),
    stage4.policy_definition(oid), stage4.copied_columns(regclass, text), stage4.notify_api_changed(), stage4.is_rollout_trigger(oid),
    stage4.create_key_registry(regclass, text, text[], text), stage4.add_key_truncate_guard(regclass),
    stage4.register_original_key(regclass, regclass, text[]), stage4.drop_unused_key_registries(), stage4.drop_capture_triggers(regclass), stage4.publications_of(regclass),
    stage4.assert_can_publish_via_root(regclass, text), stage4.publish_via_root(text, regclass), stage4.restore_publication_settings(text),
    stage4.abort_online_rebuild(regclass), stage4.finish_online_rebuild(text, regclass, jsonb),
    stage4.prove_shadow(regclass), stage4.analyze_shadow(regclass), stage4.apply_delta(regclass, int), stage4.replay_proven(regclass, int), stage4.replay_logged(regclass, int), stage4.index_shadow(regclass),
    stage4.copy_batch(regclass, int), stage4.start_capture(regclass), stage4.start_online_rebuild(regclass, jsonb),
    stage4.key_row(regclass, text[], text, jsonb), stage4.lock_online_rebuild(regclass), stage4.lock_complete_shadow(regclass), stage4.lock_for_rebuild(regclass), stage4.yearly_layout(regclass, name, int), stage4.layout_in_snapshot(text, text),
    stage4.rebuild_table(regclass, text, text[], jsonb, text[]), stage4.drop_online_schema_if_empty(),
    stage4.swap_shadow(regclass, regclass, jsonb, text[]), stage4.retire(text), stage4.drop_retired(double precision), stage4.settle_retired(), stage4.complete_shadow(regclass, jsonb, text[]),
    stage4.create_shadow(regclass, text, jsonb), stage4.create_shadow_index(regclass, jsonb, text),
    stage4.rewrite_stale_toast(regclass, jsonb, text), stage4.leaf_partitions(regclass, date), stage4.gist_index_on(regclass, name),
    stage4.storage_choice(text, text), stage4.clustered_layout(regclass, name, text),
    stage4.create_secured_partition(regclass, text, text, text), stage4.reset_acl(text, jsonb),
    stage4.snapshot(text, text), stage4.save_proven_snapshot(text, regclass, jsonb), stage4.save_snapshot(text, regclass), stage4.describe_table(regclass, boolean),
    stage4.grant_statements(aclitem[], text, text), stage4.dependent_objects(regclass), stage4.rows_checksum(regclass, text),
    stage4.table_checksum(regclass);
DROP PROCEDURE IF EXISTS stage4.prepare_online_rebuild(regclass, jsonb, int, text);
DROP TABLE IF EXISTS stage4.publication_settings, stage4.table_snapshots, stage4.function_snapshots, stage4.database_settings, stage4.online_rebuilds, stage4.accepted_read_policies;
