# -*- coding: utf-8 -*-
"""How every timed execution (a latency sample or the throughput loop) runs a statement.

A prepared statement runs through psycopg's libpq wrapper, PQexecPrepared on the session's own
connection: as pgbench -M prepared (extended protocol, every row received, none turned into a Python
object). Anything else runs on a cursor that fetches its rows. Either way the result is freed inside
the execution that produced it.
"""
from __future__ import annotations

from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_session import QueryFailed

try:
    from psycopg import pq
except ImportError:  # gis_benchmark reports it
    pass

EXECUTORS = ("libpq PQexecPrepared", "psycopg execute + fetchall")


def prepared_executor(conn, text):
    """For "EXECUTE <name>" on an autocommit connection: a function that executes that prepared
    statement with PQexecPrepared on conn and frees the rows it received, raising QueryFailed on an
    error. None for any other statement (a cursor runs it)."""
    if not text.startswith("EXECUTE ") or not conn.autocommit:
        return None
    pgconn = conn.pgconn
    name = text[len("EXECUTE "):].encode()
    succeeded = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)

    def execute():
        result = pgconn.exec_prepared(name, None)
        try:
            if result.status not in succeeded:
                raise QueryFailed(None, (result.error_message or b"no result").decode(errors="replace"))
        finally:
            result.clear()
    return execute


def fetching_executor(conn, text):
    """Executes text on a cursor of its own, closed (its rows freed) before returning."""
    def execute():
        with conn.cursor() as cur:
            cur.execute(text)
            cur.fetchall()
    return execute


def statement_executor(conn, text):
    """(execute, name): the function that runs text once, and which of EXECUTORS it is."""
    execute = prepared_executor(conn, text)
    if execute is not None:
        return execute, EXECUTORS[0]
    return fetching_executor(conn, text), EXECUTORS[1]
