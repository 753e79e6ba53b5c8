-- OPT1 decline: whether partitioning pays on this table as it is now (plugins/modules/stage4_change.py runs
-- this read-only before a deploy; a reason leaves the table as it is, and a later run decides again).
--
-- Below min_parallel_table_scan_size (8 MB by default) PostgreSQL judges a table too small to be
-- worth splitting one scan over several processes. Yearly partitions of such a table hold a few
-- pages each: pruning saves reading a few pages, while every query is planned over every
-- partition, and PostgreSQL exempts partitions from that size rule, so under RLS (where the GiST
-- index cannot serve PostGIS's non-leakproof operators) it may choose a parallel plan whose
-- workers cost more to start than the whole query did. Measured at 251 features (232 kB):
-- the map query as anon went from 0.37 to 55.8 ms after OPT1 (run 20261207T133108Z).
--
-- stage4.min_table_bytes: the threshold (stage4.small_table).
SELECT stage4.small_table('public.geometrias')
       || ': yearly partitions of a table this small save reading a few pages, and cost every query planning '
          'over each partition and, under RLS, parallel plans. Left unpartitioned; OPT1 applies once the table '
          'reaches that size'
WHERE pg_catalog.to_regclass('public.geometrias') IS NOT NULL
  AND (SELECT c.relkind FROM pg_catalog.pg_class c WHERE c.oid = 'public.geometrias'::pg_catalog.regclass) = 'r';
