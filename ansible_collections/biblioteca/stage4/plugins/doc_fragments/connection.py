# -*- coding: utf-8 -*-
"""The connection options of every biblioteca.stage4 module (module_utils/postgres.py's CONNECTION_ARGUMENT_SPEC)."""
from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_host:
    description: Host of the PostgreSQL server.
    type: str
    default: localhost
  login_port:
    description: TCP port of the PostgreSQL server.
    type: int
    default: 5432
  login_user:
    description: Role to log in as.
    type: str
    required: true
  login_password:
    description: Password of O(login_user). Never logged, never on a command line.
    type: str
    default: ""
  login_db:
    description: Database to connect to.
    type: str
    required: true
  connect_timeout:
    description: Seconds to wait for each connection to be established.
    type: int
    default: 10
  ssl_mode:
    description: libpq C(sslmode) of every connection.
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
requirements:
  - psycopg (3.2 or later)
"""
