# -*- coding: utf-8 -*-
"""The change ledger: which change is applied with which scripts, what is prepared, and every event.
"""
from __future__ import annotations

import json

from ansible_collections.biblioteca.stage4.plugins.module_utils.change_files import PREPARE, PREPARED_FOR

try:
    from psycopg import sql
except ImportError:  # connect() reports it
    pass


LEDGER_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.ledger (
    change      text PRIMARY KEY,
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  text NOT NULL DEFAULT current_user,
    run_id      text NOT NULL,
    files       jsonb NOT NULL,
    variables   jsonb NOT NULL
);
-- Changes whose prepare.sql (or prepare_revert.sql) ran or is running, and whose deploy (revert) has not
-- committed yet.
CREATE TABLE IF NOT EXISTS {schema}.prepared (
    change      text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    run_id      text NOT NULL,
    files       jsonb NOT NULL
);
-- What the prepare was for. A ledger made before this column existed held only deploys' prepares.
ALTER TABLE {schema}.prepared ADD COLUMN IF NOT EXISTS action text NOT NULL DEFAULT 'deploy'
    CHECK (action IN ('deploy', 'revert'));
CREATE TABLE IF NOT EXISTS {schema}.ledger_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    by_role     text NOT NULL DEFAULT current_user,
    change      text NOT NULL,
    action      text NOT NULL,
    run_id      text NOT NULL,
    files       jsonb NOT NULL
);
-- When the change was accepted: at deploy, or, for a gated change, when its gate passed. A ledger
-- made before this column existed held only accepted changes, hence the default.
ALTER TABLE {schema}.ledger ADD COLUMN IF NOT EXISTS accepted_at timestamptz DEFAULT now();
REVOKE ALL ON SCHEMA {schema} FROM PUBLIC;
"""


class Ledger:
    def __init__(self, conn, schema):
        self.conn = conn
        self.schema_name = schema
        self.schema = sql.Identifier(schema)

    def exists(self):
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(format('%%I.ledger', %s::text)) IS NOT NULL", (self.schema_name,))
            return cur.fetchone()[0]

    def ensure(self):
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL(LEDGER_DDL).format(schema=self.schema))

    def row(self, change):
        if not self.exists():
            return None
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT change, seq, files FROM {0}.ledger WHERE change = %s").format(self.schema),
                        (change,))
            found = cur.fetchone()
        return None if found is None else {"change": found[0], "seq": found[1], "files": found[2]}

    def prepared_for(self, change):
        """The action the change was prepared for ("deploy" or "revert"), or None."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(format('%%I.prepared', %s::text)) IS NOT NULL", (self.schema_name,))
            if not cur.fetchone()[0]:
                return None
            # to_jsonb(p): a ledger made before the action column (check mode does not add it) still reads.
            cur.execute(sql.SQL("SELECT coalesce(to_jsonb(p)->>'action', 'deploy') FROM {0}.prepared p WHERE change = %s")
                        .format(self.schema), (change,))
            found = cur.fetchone()
        return found[0] if found else None

    def mark_prepared(self, cur, action, change, run_id, files):
        """Recorded (and committed) before prepare.sql (prepare_revert.sql) runs, so a later run knows what to
        resume or clean up."""
        cur.execute(sql.SQL("INSERT INTO {0}.prepared (change, run_id, files, action) VALUES (%s, %s, %s, %s) "
                            "ON CONFLICT (change) DO NOTHING").format(self.schema),
                    (change, run_id, json.dumps(files), PREPARED_FOR[action]))
        cur.execute(sql.SQL("INSERT INTO {0}.ledger_events (change, action, run_id, files) VALUES (%s, %s, %s, %s)")
                    .format(self.schema), (change, PREPARE[action], run_id, json.dumps(files)))

    def applied_after(self, seq):
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT change FROM {0}.ledger WHERE seq > %s ORDER BY seq").format(self.schema),
                        (seq,))
            return [r[0] for r in cur.fetchall()]

    def record(self, cur, action, change, run_id, files, variables, gated=False):
        accepted = None if gated else "now"
        if action == "deploy":
            cur.execute(sql.SQL("INSERT INTO {0}.ledger (change, run_id, files, variables, accepted_at) "
                                "VALUES (%s, %s, %s, %s, %s::timestamptz)").format(self.schema),
                        (change, run_id, json.dumps(files), json.dumps(variables), accepted))
        elif action == "redeploy":
            cur.execute(sql.SQL("UPDATE {0}.ledger SET files = %s, variables = %s, run_id = %s, applied_at = now(), "
                                "accepted_at = %s::timestamptz WHERE change = %s").format(self.schema),
                        (json.dumps(files), json.dumps(variables), run_id, accepted, change))
        elif action == "revert":
            cur.execute(sql.SQL("DELETE FROM {0}.ledger WHERE change = %s").format(self.schema), (change,))
        cur.execute(sql.SQL("DELETE FROM {0}.prepared WHERE change = %s").format(self.schema), (change,))
        cur.execute(sql.SQL("INSERT INTO {0}.ledger_events (change, action, run_id, files) VALUES (%s, %s, %s, %s)")
                    .format(self.schema), (change, action, run_id, json.dumps(files)))
