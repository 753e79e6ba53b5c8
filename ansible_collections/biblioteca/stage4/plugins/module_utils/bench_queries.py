# -*- coding: utf-8 -*-
"""The benchmark's queries: read from a folder of .sql files, and their results' fingerprint.
"""
from __future__ import annotations

import hashlib
import os

from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_session import BenchmarkError


def strip_statement(text):
    """The statement of a query file, without surrounding blanks and trailing semicolons."""
    statement = text.strip()
    while statement.endswith(";"):
        statement = statement[:-1].rstrip()
    return statement


def has_code(statement):
    """Whether the text has anything besides blank lines and -- comments."""
    return any(line.strip() and not line.strip().startswith("--") for line in statement.splitlines())


def load_queries(queries_dir):
    """Read every *.sql file of queries_dir, sorted by name.

    Returns a list of dicts with query_id (the file stem), file, sql and sql_sha256 (of the
    statement as executed). Raises BenchmarkError on a missing or empty folder and on a file
    that cannot be read or holds no statement.
    """
    queries_dir = os.path.abspath(queries_dir)
    if not os.path.isdir(queries_dir):
        raise BenchmarkError("queries_dir %s is not a folder" % queries_dir)
    names = sorted(name for name in os.listdir(queries_dir)
                   if name.endswith(".sql") and not name.startswith(".")
                   and not os.path.isdir(os.path.join(queries_dir, name)))
    if not names:
        raise BenchmarkError("queries_dir %s holds no .sql file" % queries_dir)
    queries = []
    for name in names:
        path = os.path.join(queries_dir, name)
        try:
            with open(path, encoding="utf-8") as handle:
                statement = strip_statement(handle.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchmarkError("cannot read query file %s: %s" % (path, exc)) from exc
        if not has_code(statement):
            raise BenchmarkError("query file %s holds no SQL statement" % path)
        queries.append(dict(query_id=name[:-len(".sql")], file=path, sql=statement,
                            sql_sha256=hashlib.sha256(statement.encode("utf-8")).hexdigest()))
    return queries


def fingerprint(rows):
    """sha256 of the row count and the sorted text of the rows: independent of row order."""
    digest = hashlib.sha256(("%d\n" % len(rows)).encode("utf-8"))
    # str() of a tuple escapes newlines inside values, so one row is one line.
    for line in sorted(str(tuple(row)) for row in rows):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
