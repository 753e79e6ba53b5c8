-- Removes stage4_api_reading's functions and tables.
SET LOCAL lock_timeout = '2s';
DROP VIEW IF EXISTS stage4.visibilidade;
DROP VIEW IF EXISTS stage4.read_policies_fingerprint;
DROP FUNCTION IF EXISTS stage4.dashboard_rpc_mismatch(text), stage4.query_is_one_of(regprocedure, regclass, text[]),
    stage4.unnamed_columns(text), stage4.radius_rpc_shape(regprocedure, regclass), stage4.radius_box(jsonb),
    stage4.search_rpc_shape(regprocedure, regclass), stage4.query_clauses(regprocedure, regclass),
    stage4.canonical_query(regprocedure, text), stage4.function_query(regprocedure), stage4.sql_unwrap(text),
    stage4.sql_split(text, text), stage4.small_table(regclass), stage4.forget_read_policies(text),
    stage4.accept_read_policies(text, text), stage4.assert_known_read_policies(text), stage4.read_policy_rule(jsonb),
    stage4.read_policies(), stage4.assert_can_materialize(text);
DROP TABLE IF EXISTS stage4.accepted_read_policies;
