-- Removes stage4_catalog_tools's functions and tables.
SET LOCAL lock_timeout = '2s';
DROP FUNCTION IF EXISTS stage4.reset_acl(text, jsonb), stage4.restore_publication_settings(text),
    stage4.publish_via_root(text, regclass), stage4.assert_can_publish_via_root(regclass, text),
    stage4.publications_of(regclass), stage4.restore_database_settings(text),
    stage4.set_database_setting(text, text, text), stage4.database_setting(text),
    stage4.cache_function_plans(text, regprocedure[]), stage4.use_api_search_path(), stage4.use_postgis_search_path(),
    stage4.postgis_schema(), stage4.grant_to_callers(text, text, regprocedure[]), stage4.callers_of(regprocedure[]),
    stage4.set_returning_query(regprocedure, text), stage4.set_plpgsql_body(regprocedure, text),
    stage4.reinstate_applied_functions(text), stage4.forget_applied_functions(text),
    stage4.restore_functions_before_revert(text), stage4.restore_function_snapshots(text),
    stage4.function_snapshot_mismatch(stage4.function_snapshots, boolean),
    stage4.save_function_snapshots(text, regprocedure[]);
DROP TABLE IF EXISTS stage4.function_snapshots, stage4.database_settings, stage4.publication_settings;
