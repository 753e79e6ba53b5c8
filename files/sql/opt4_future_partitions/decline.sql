-- OPT4 decline (read by plugins/modules/stage4_change.py before a deploy): OPT4 keeps creating the yearly
-- partitions OPT1 made. On a table OPT1 left unpartitioned (it declined: too small for partitions
-- to pay) there is nothing to keep; a later run, after OPT1, decides again.
SELECT CASE WHEN c.relkind <> 'p' THEN
           'public.geometrias is not partitioned (OPT1 declined or is not applied): OPT4 keeps creating the yearly partitions OPT1 makes'
       END
FROM pg_catalog.pg_class AS c
WHERE c.oid = pg_catalog.to_regclass('public.geometrias');
