-- OPT1 temporal partitioning: public.geometrias becomes a table partitioned by RANGE on
-- data_referencia, one partition per year from the oldest row's year through
-- stage4.partition_through_year (default 2028), plus DEFAULT for anything outside.
--
-- Everything the table carries is carried over by stage4.rebuild_table(); the primary key
-- becomes (its columns + data_referencia), as PostgreSQL requires on a partitioned table.
-- One transaction under ACCESS EXCLUSIVE: readers and writers wait for the copy (about 30 s
-- per million rows on 2 cores), and lock_timeout keeps the wait for the lock itself short.
SET LOCAL lock_timeout = '2s';
SET LOCAL statement_timeout = '30min';
LOCK TABLE public.geometrias IN ACCESS EXCLUSIVE MODE;

DO $$
DECLARE
    snap jsonb := stage4.save_snapshot('opt1_temporal_partitioning', 'public.geometrias');
    through_year int := coalesce(nullif(current_setting('stage4.partition_through_year', true), ''), '2028')::int;
    first_year int;
BEGIN
    SELECT coalesce(extract(year FROM min(data_referencia))::int, extract(year FROM current_date)::int)
      INTO first_year FROM public.geometrias;
    PERFORM stage4.rebuild_table(
        'public.geometrias',
        'RANGE (data_referencia)',
        ARRAY(SELECT jsonb_array_elements_text(snap->'primary_key'->'columns')) || ARRAY['data_referencia'],
        stage4.yearly_partitions('geometrias', first_year, through_year)
          || '[{"name": "geometrias_default", "bound": "DEFAULT"}]');
END $$;
