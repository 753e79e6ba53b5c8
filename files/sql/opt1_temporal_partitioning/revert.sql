-- OPT1 revert: public.geometrias back to a plain table with its original primary key and
-- storage parameters, keeping the rows it has now (including any written since OPT1).
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '30min';
-- The dependent views first, then the table (stage4.lock_for_rebuild() says why).
SELECT stage4.lock_for_rebuild('public.geometrias');

DO $$
DECLARE
    snap jsonb := stage4.snapshot('opt1_temporal_partitioning', 'public.geometrias');
BEGIN
    -- The rows as they are before the revert: verify_reverted.sql compares against them.
    PERFORM stage4.save_snapshot('opt1_temporal_partitioning:before_revert', 'public.geometrias');
    PERFORM stage4.rebuild_table(
        'public.geometrias',
        NULL,
        ARRAY(SELECT jsonb_array_elements_text(snap->'primary_key'->'columns')),
        '[]',
        ARRAY(SELECT jsonb_array_elements_text(snap->'reloptions')));
END $$;

-- The radius RPC as it was (a SQL function) and the database's JIT setting as it was.
SELECT stage4.restore_function_snapshots('opt1_temporal_partitioning');
SELECT stage4.restore_database_settings('opt1_temporal_partitioning');
