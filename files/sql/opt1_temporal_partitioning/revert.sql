-- OPT1 revert: public.geometrias back to a plain table with its original primary key and
-- storage parameters, keeping the rows it has now (including any written since OPT1).
-- The cutover: prepare_revert.sql has copied the rows into the plain table while the application
-- kept writing; here, under ACCESS EXCLUSIVE, only the writes logged since are replayed, the copy
-- is compared with the table on those keys (the prepare proved the rest) and takes its place.
-- Without a prepare (a Supabase migration runs this file alone) the whole copy happens here,
-- under the lock, and every row is checksummed.
SELECT set_config('lock_timeout', coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'), true),
       set_config('statement_timeout', coalesce(nullif(current_setting('stage4.statement_timeout', true), ''), '30min'), true);
-- The dependent views first, then the table (stage4.lock_for_rebuild() says why).
SELECT stage4.lock_for_rebuild('public.geometrias');

-- The rows as they are before the revert, proven or checksummed: verify_reverted.sql compares against them.
SELECT stage4.finish_online_rebuild('opt1_temporal_partitioning:before_revert', 'public.geometrias',
                                    stage4.layout_in_snapshot('opt1_temporal_partitioning', 'public.geometrias'));

-- The radius RPC as it was (a SQL function) and the database's JIT setting as it was.
SELECT stage4.restore_function_snapshots('opt1_temporal_partitioning');
SELECT stage4.restore_database_settings('opt1_temporal_partitioning');
SELECT stage4.restore_publication_settings('opt1_temporal_partitioning');
