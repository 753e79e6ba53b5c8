-- Revert stage4:benchmark_schema
--
-- Drops what deploy.sql created, the stored benchmark results included.
-- No CASCADE: an object that someone else put in the schema makes this fail
-- instead of vanishing with it.

SET lock_timeout = '5s';

DROP VIEW IF EXISTS stage4_benchmark.delta_vs_baseline;
DROP VIEW IF EXISTS stage4_benchmark.latest_per_stage;
DROP TABLE IF EXISTS stage4_benchmark.query_results;
DROP TABLE IF EXISTS stage4_benchmark.runs;
DROP TABLE IF EXISTS stage4_benchmark.queries;
DROP SCHEMA IF EXISTS stage4_benchmark;
