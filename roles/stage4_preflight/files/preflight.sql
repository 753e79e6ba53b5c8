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
       to_regclass('stage4.ledger') IS NOT NULL AS ledger_exists,
       (SELECT coalesce(json_agg(json_build_object('pid', pid, 'user', usename, 'state', state,
                                                   'age_s', round(extract(epoch FROM now() - xact_start)))), '[]')
        FROM pg_stat_activity
        WHERE xact_start < now() - make_interval(secs => %(max_transaction_age_s)s)
          AND pid <> pg_backend_pid() AND datname = current_database()) AS long_transactions
