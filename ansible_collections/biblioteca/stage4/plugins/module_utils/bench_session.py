# -*- coding: utf-8 -*-
"""The benchmark's database sessions: opened as each caller (role and JWT claims, as PostgREST
sets them), the server's statistics read around the measurement, and the run's provenance.
"""
from __future__ import annotations

import json
import os
import platform
import time

from ansible_collections.biblioteca.stage4.plugins.module_utils.postgres import ConnectionFailed, describe_target, open_connection

try:
    import psycopg
    from psycopg import sql
    from psycopg.types.string import TextLoader
except ImportError:  # gis_benchmark reports it
    pass


APPLICATION_NAME = "stage4_gis_benchmark"

# How long to wait for pg_stat_database to show the run's blocks.
STATS_POLL_TIMEOUT_S = 2.0

STATS_POLL_INTERVAL_S = 0.05

CLIENT_KIND = "psycopg, one process and connection per client"

PROVENANCE_SETTINGS = (
    "shared_buffers", "work_mem", "effective_cache_size", "random_page_cost", "jit",
    "max_parallel_workers_per_gather", "enable_partitionwise_aggregate", "enable_partitionwise_join",
    "plan_cache_mode",
)

MEASUREMENT_PARAMETERS = ("concurrency", "prepared", "order", "seed", "iterations", "warmup",
                          "throughput_seconds", "ci_level", "statement_timeout_ms", "as_role", "time_budget_s",
                          "min_iterations", "roles")

STATS_SOURCES = ("pg_stat_statements", "pg_stat_database")


class BenchmarkError(Exception):
    """A failure to report to the user as is."""


class QueryFailed(Exception):
    """A query failed in a worker; index is its position in the query list."""

    def __init__(self, index, error):
        super().__init__(str(error).strip())
        self.index = index


def connect(params):
    """An autocommit connection; BenchmarkError naming the target (never the password)."""
    try:
        return open_connection(params, APPLICATION_NAME, autocommit=True)
    except ConnectionFailed as exc:
        raise BenchmarkError(str(exc)) from exc


def callers(params):
    """The callers measured: O(roles), or the login session alone."""
    return params["roles"] or [dict(label="", role="", claims={})]


def with_callers(queries, params):
    """Every query once per caller: its id gets '@<label>' for a labelled caller, and 'session'
    is the caller's index (the session of that caller runs it)."""
    return [dict(query, query_id=query["query_id"] + ("@" + caller["label"] if caller["label"] else ""),
                 session=number)
            for number, caller in enumerate(callers(params)) for query in queries]


def open_session(params, caller=None):
    """A benchmark connection: read-only, with the statement timeout, the caller's role (else
    O(as_role)) and the caller's JWT claims, as PostgREST sets them."""
    caller = caller or {}
    role = caller.get("role") or params["as_role"]
    conn = connect(params)
    try:
        # Fetch JSON as text: parsing it in Python would add client time to the latency.
        conn.adapters.register_loader("json", TextLoader)
        conn.adapters.register_loader("jsonb", TextLoader)
        with conn.cursor() as cur:
            cur.execute("SET default_transaction_read_only = on")
            cur.execute("SELECT set_config('statement_timeout', %s, false)",
                        (str(params["statement_timeout_ms"]),))
            if caller.get("claims"):
                cur.execute("SELECT set_config('request.jwt.claims', %s, false)", (json.dumps(caller["claims"]),))
            if role:
                cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
    except psycopg.Error as exc:
        conn.close()
        raise BenchmarkError("cannot prepare a benchmark session on %s: %s"
                             % (describe_target(params), str(exc).strip())) from exc
    return conn


def database_blocks(conn):
    """Current (blks_hit, blks_read) of the connected database, from a fresh stats snapshot."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT blks_hit, blks_read FROM pg_stat_database "
                    "WHERE datname = current_database()")
        return tuple(cur.fetchone())


def flush_stats(conn):
    """Make the backend publish its pending statistics now instead of within a second or so."""
    if conn.info.server_version >= 150000:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_stat_force_next_flush()")


def blocks_after(conn, before):
    """pg_stat_database blocks once the run's counts show up there (or after a short wait)."""
    deadline = time.monotonic() + STATS_POLL_TIMEOUT_S
    current = database_blocks(conn)
    while current == before and time.monotonic() < deadline:
        time.sleep(STATS_POLL_INTERVAL_S)
        current = database_blocks(conn)
    return current


def execute(conn, statement, arguments=None):
    with conn.cursor() as cur:
        cur.execute(statement, arguments)
        return cur.fetchall()


def explain(conn, options, statement):
    return json.loads(execute(conn, "EXPLAIN (%s, FORMAT JSON)\n%s" % (options, statement))[0][0])


def statements_relation(conn):
    """pg_stat_statements, schema-qualified, when installed and readable by this login, else None.

    Readable means: loaded by the server (the view fails otherwise) and the login may see the
    query ids of every role (pg_read_all_stats), as the benchmark may run as another role.
    """
    rows = execute(conn, "SELECT quote_ident(n.nspname) || '.pg_stat_statements'"
                         " FROM pg_extension AS e JOIN pg_namespace AS n ON n.oid = e.extnamespace"
                         " WHERE e.extname = 'pg_stat_statements'"
                         " AND pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')")
    if not rows:
        return None
    try:
        execute(conn, "SELECT 1 FROM %s LIMIT 1" % rows[0][0])
    except psycopg.Error:
        return None
    return rows[0][0]


def statement_counters(conn, relation, keys):
    """{(userid, queryid): (calls, shared_blks_hit, shared_blks_read, total_exec_time)} in this
    database, summed over the nesting levels: one entry per caller's role and query."""
    rows = execute(conn, "SELECT userid, queryid, sum(calls)::bigint, sum(shared_blks_hit)::bigint,"
                         " sum(shared_blks_read)::bigint, sum(total_exec_time)"
                         " FROM %s WHERE queryid = ANY(%%s::bigint[])"
                         " AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                         " GROUP BY userid, queryid" % relation, (sorted({key[1] for key in keys}),))
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def server_settings(conn):
    rows = execute(conn, "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name",
                   (list(PROVENANCE_SETTINGS),))
    return dict(rows)


def cpu_model():
    """The client's CPU model from /proc/cpuinfo (Linux), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def gather_provenance(params, conn, seed):
    """What the run's figures depend on besides the queries: server, client and measurement."""
    provenance = dict(params["provenance"])
    provenance.update(
        server=dict(version=execute(conn, "SHOW server_version")[0][0], settings=server_settings(conn)),
        client=dict(cpu_count=os.cpu_count(), cpu_model=cpu_model(),
                    load_average=[round(value, 2) for value in os.getloadavg()],
                    python_version=platform.python_version(),
                    psycopg_version=psycopg.__version__),
        measurement=dict({name: params[name] for name in MEASUREMENT_PARAMETERS},
                         client=CLIENT_KIND, seed=seed),
    )
    return provenance


def hit_ratio(blks_hit, blks_read):
    """Cache-hit ratio of a block delta, None when no block was touched."""
    total = blks_hit + blks_read
    return round(blks_hit / total, 6) if total else None


NO_COUNTERS = (0, 0, 0, 0.0)


def counters_delta(before, after, total=NO_COUNTERS):
    """total plus the increase from before to after of pg_stat_statements counters.

    Counters are (calls, shared_blks_hit, shared_blks_read, total_exec_time) tuples, None for a
    query id without an entry (yet).
    """
    return tuple(base + now - then
                 for base, now, then in zip(total, after or NO_COUNTERS, before or NO_COUNTERS))


def statements_summary(counters):
    """The statements dict of a query from its counters over the timed phase."""
    calls, hit, read, total = counters
    return dict(calls=calls, shared_blks_hit=hit, shared_blks_read=read,
                cache_hit_ratio=hit_ratio(hit, read), total_exec_time_ms=round(total, 3),
                mean_exec_time_ms=round(total / calls, 3) if calls else None)
