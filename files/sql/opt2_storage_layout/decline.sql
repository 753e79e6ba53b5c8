-- OPT2 decline (read by plugins/modules/stage4_change.py before a deploy): OPT2 lays out the yearly
-- partitions OPT1 made. On a table OPT1 left unpartitioned (it declined: too small for partitions
-- to pay) there is nothing to lay out; a later run, after OPT1, decides again.
SELECT CASE WHEN c.relkind <> 'p' THEN
           'public.geometrias is not partitioned (OPT1 declined or is not applied): OPT2 lays out the yearly partitions OPT1 makes'
       END
FROM pg_catalog.pg_class AS c
WHERE c.oid = pg_catalog.to_regclass('public.geometrias');
