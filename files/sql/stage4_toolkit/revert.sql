-- Removes stage4_toolkit's functions and tables. The ledger (owned by the stage4_change module) stays in schema stage4.
SET LOCAL lock_timeout = '2s';
DROP FUNCTION IF EXISTS stage4.snapshot(text, text), stage4.save_proven_snapshot(text, regclass, jsonb),
    stage4.save_snapshot(text, regclass), stage4.describe_table(regclass, boolean), stage4.index_definitions(oid),
    stage4.view_definition(oid), stage4.policy_definition(oid),
    stage4.grant_statements(aclitem[], text, text), stage4.assert_carried(regclass, text),
    stage4.catalog_dependents(regclass), stage4.dependent_objects(regclass), stage4.referable(regclass, oid),
    stage4.rows_checksum(regclass, text), stage4.table_checksum(regclass);
DROP TABLE IF EXISTS stage4.table_snapshots;
