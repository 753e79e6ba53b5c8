-- OPT1 temporal partitioning: public.geometrias becomes a table partitioned by RANGE on
-- data_referencia, one partition per year from the oldest row's year through
-- stage4.partition_through_year (default 2028), plus DEFAULT for anything outside.
--
-- Everything the table carries is carried over (stage4.swap_shadow()); the primary key becomes
-- (its columns + data_referencia), as PostgreSQL requires on a partitioned table.
-- The cutover: prepare.sql has copied the rows into the new table while the application kept
-- writing; here, under ACCESS EXCLUSIVE, only the writes logged since are replayed and the new
-- table takes the old one's place. Without a prepare (a Supabase migration runs this file alone)
-- the whole copy happens here, under the lock. lock_timeout keeps the wait for the lock short
-- (the transaction is retried); statement_timeout bounds the time the lock is held.
SELECT set_config('lock_timeout', coalesce(nullif(current_setting('stage4.lock_timeout', true), ''), '2s'), true),
       set_config('statement_timeout', coalesce(nullif(current_setting('stage4.statement_timeout', true), ''), '5min'), true);
-- The dependent views first, then the table (stage4.lock_for_rebuild() says why).
SELECT stage4.lock_for_rebuild('public.geometrias');

SELECT stage4.finish_online_rebuild(
    'opt1_temporal_partitioning',
    'public.geometrias',
    stage4.yearly_layout('public.geometrias', 'data_referencia',
                         coalesce(nullif(current_setting('stage4.partition_through_year', true), ''), '2028')::int));

-- What partitioning costs the API, and what pays it back (measured by the benchmark, BENCHMARKS.md):
-- * The radius RPC is a SQL function with a SET clause: planned again at every call, now over
--   every partition. As PL/pgSQL it keeps its plan for the session (same query, same answers).
--   The search and dashboard RPCs are rewritten by OPT3 and OPT5, which check their SQL bodies.
-- * JIT compiles every partition's scan separately: on the bbox, k-nearest and GeoJSON queries it
--   took most of the time at 1,000,000 features. Off for this database (new sessions); the
--   revert restores the previous value.
SELECT stage4.cache_function_plans('opt1_temporal_partitioning', ARRAY(
    SELECT to_regprocedure(f)
    FROM unnest(ARRAY['public.geometrias_no_raio(double precision, double precision, double precision)']) f
    WHERE to_regprocedure(f) IS NOT NULL));
SELECT stage4.set_database_setting('opt1_temporal_partitioning', 'jit', 'off');
-- Subscribers and Supabase Realtime keep seeing changes as public.geometrias', not its partitions'.
SELECT stage4.publish_via_root('opt1_temporal_partitioning', 'public.geometrias');
