# -*- coding: utf-8 -*-
"""Executes a prepared statement through libpq itself on psycopg2's connection: pgbench's way
(extended protocol, every row received, none turned into a Python object).
"""
from __future__ import annotations

import ctypes
import os

from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_session import QueryFailed


# How every timed execution (latency sample or throughput loop) runs a statement: libpq's
# PQexecPrepared on psycopg2's own connection (as pgbench -M prepared: extended protocol, every row
# received, none turned into a Python object), or psycopg2's EXECUTE and fetchall where that libpq
# cannot be found. Either way the result is freed inside the execution that produced it.
EXECUTORS = ("libpq PQexecPrepared", "psycopg2 EXECUTE + fetchall")

PGRES_COMMAND_OK = 1  # libpq's ExecStatusType

PGRES_TUPLES_OK = 2


def loaded_libpq():
    """The libpq psycopg2 runs on (psycopg2-binary loads its own copy), as a ctypes library with the
    four functions the throughput loop calls; None unless exactly one libpq is mapped in this
    process (Linux's /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {fields[-1] for fields in (line.split() for line in maps)
                     if len(fields) >= 6 and os.path.basename(fields[-1]).startswith(("libpq.", "libpq-"))}
    except OSError:
        return None
    if len(paths) != 1:
        return None
    libpq = ctypes.CDLL(paths.pop())
    libpq.PQexecPrepared.restype = ctypes.c_void_p
    libpq.PQexecPrepared.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                                     ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    libpq.PQresultStatus.restype = ctypes.c_int
    libpq.PQresultStatus.argtypes = [ctypes.c_void_p]
    libpq.PQresultErrorMessage.restype = ctypes.c_char_p
    libpq.PQresultErrorMessage.argtypes = [ctypes.c_void_p]
    libpq.PQclear.restype = None
    libpq.PQclear.argtypes = [ctypes.c_void_p]
    return libpq


def prepared_executor(conn, text):
    """For "EXECUTE <name>" on an autocommit connection: a function that executes that prepared
    statement through libpq on conn's own PGconn and discards the rows it received, raising
    QueryFailed on an error. None where that is not possible (then psycopg2 executes)."""
    if not text.startswith("EXECUTE ") or not conn.autocommit or not hasattr(conn, "pgconn_ptr"):
        return None
    libpq = loaded_libpq()
    if libpq is None:
        return None
    pgconn = ctypes.c_void_p(conn.pgconn_ptr)
    name = text[len("EXECUTE "):].encode()
    exec_prepared, result_status, clear = libpq.PQexecPrepared, libpq.PQresultStatus, libpq.PQclear

    def execute():
        result = exec_prepared(pgconn, name, 0, None, None, None, 0)
        if result_status(result) not in (PGRES_COMMAND_OK, PGRES_TUPLES_OK):
            message = (libpq.PQresultErrorMessage(result) or b"no result").decode(errors="replace")
            clear(result)
            raise QueryFailed(None, message)
        clear(result)
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
