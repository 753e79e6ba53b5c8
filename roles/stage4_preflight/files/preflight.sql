-- Everything preflight needs, in one read-only round trip.
SELECT current_setting('server_version') AS server_version,
       current_setting('server_version_num')::int AS server_version_num,
       (SELECT extversion FROM pg_extension WHERE extname = 'postgis') AS postgis_version,
       to_regclass('public.geometrias') IS NOT NULL AS table_exists,
       CASE WHEN to_regclass('public.geometrias') IS NULL THEN 0
            ELSE (xpath('/row/n/text()',
                        query_to_xml('SELECT count(*) AS n FROM public.geometrias', false, true, '')))[1]::text::bigint
       END AS feature_count,
       pg_database_size(current_database()) AS database_bytes,
       -- Not to_regclass('stage4.ledger'): it errors for a role without USAGE on stage4.
       EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'stage4' AND c.relname = 'ledger') AS ledger_exists,
       (SELECT coalesce(json_agg(json_build_object('pid', pid, 'user', usename, 'state', state,
                                                   'age_s', round(extract(epoch FROM now() - xact_start)))), '[]')
        FROM pg_stat_activity
        WHERE xact_start < now() - make_interval(secs => %(max_transaction_age_s)s)
          AND pid <> pg_backend_pid() AND datname = current_database()) AS long_transactions,
       -- The columns the optimizations rely on, each with the type they expect (format_type's spelling,
       -- without the schema it adds when the type's schema is not on the search_path).
       (SELECT coalesce(json_agg(format('%%s: expected %%s, found %%s', e.key, e.value, coalesce(a.type, 'no such column'))
                                 ORDER BY e.key), '[]')
        FROM json_each_text(%(expected_columns)s::json) e
        LEFT JOIN LATERAL (
            SELECT regexp_replace(format_type(atttypid, atttypmod), '^[a-z_][a-z0-9_]*\.', '') AS type
            FROM pg_attribute
            WHERE attrelid = to_regclass('public.geometrias') AND attname = e.key AND attnum > 0 AND NOT attisdropped
        ) a ON true
        WHERE a.type IS DISTINCT FROM e.value) AS shape_problems,
       -- A foreign key into the table cannot survive partitioning (its target must be unique on id alone).
       (SELECT coalesce(json_agg(format('%%s (%%s)', conrelid::regclass, conname) ORDER BY conname), '[]')
        FROM pg_constraint
        WHERE contype = 'f' AND confrelid = to_regclass('public.geometrias')) AS referencing_foreign_keys,
       -- What the changes do: rebuild the table (its owner), create schemas, functions and jobs.
       (SELECT coalesce(json_agg(problem), '[]') FROM (VALUES
            (CASE WHEN to_regclass('public.geometrias') IS NOT NULL
                   AND NOT pg_has_role((SELECT relowner FROM pg_class WHERE oid = to_regclass('public.geometrias')), 'USAGE')
                  THEN format('%%s does not own public.geometrias (its owner is %%s)', current_user,
                              (SELECT relowner::regrole FROM pg_class WHERE oid = to_regclass('public.geometrias'))) END),
            -- OPT1 turns JIT off for the database (ALTER DATABASE ... SET jit): its owner's right.
            (CASE WHEN NOT pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
                  THEN format('%%s does not own database %%s (its owner is %%s), which OPT1 needs to turn JIT off for it',
                              current_user, current_database(),
                              (SELECT datdba::regrole FROM pg_database WHERE datname = current_database())) END),
            (CASE WHEN NOT has_database_privilege(current_database(), 'CREATE')
                  THEN format('%%s may not create schemas in %%s (CREATE on the database)', current_user, current_database()) END),
            (CASE WHEN NOT has_schema_privilege('public', 'CREATE')
                  THEN format('%%s may not create objects in schema public (CREATE on the schema)', current_user) END)
        ) AS checks (problem) WHERE problem IS NOT NULL) AS privilege_problems
