-- Removes stage4_layouts's functions.
SET LOCAL lock_timeout = '2s';
DROP FUNCTION IF EXISTS stage4.assert_partitioned_by_year(text), stage4.clustered_layout(regclass, name, text),
    stage4.storage_choice(text, text), stage4.gist_index_on(regclass, name), stage4.leaf_partitions(regclass, date),
    stage4.storage_layout(regclass, name), stage4.yearly_layout(regclass, name, int),
    stage4.layout_in_snapshot(text, text), stage4.yearly_partitions(text, int, int);
