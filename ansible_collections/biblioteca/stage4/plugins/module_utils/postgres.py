# -*- coding: utf-8 -*-
"""Connection options and connection setup shared by the stage4 modules.

Errors name the host, port, database and user, never the password.
"""
from __future__ import annotations

try:
    import psycopg2
    import psycopg2.extensions
    HAS_PSYCOPG2 = True
except ImportError:  # reported by require_psycopg2()
    HAS_PSYCOPG2 = False

CONNECTION_ARGUMENT_SPEC = dict(
    login_host=dict(type="str", default="localhost"),
    login_port=dict(type="int", default=5432),
    login_user=dict(type="str", required=True),
    login_password=dict(type="str", no_log=True, default=""),
    login_db=dict(type="str", required=True),
    connect_timeout=dict(type="int", default=10),
    ssl_mode=dict(type="str", default="prefer",
                  choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]),
)

APPLICATION_NAME = "stage4"
# How often the server checks, while a statement runs, that the client is still there. When the control
# node dies (kill -9, a lost network) the statement stops within this time and its transaction rolls
# back, releasing its locks, instead of running on alone: a cutover would hold ACCESS EXCLUSIVE, a
# prepare would copy on beside the next run. Milliseconds; PostgreSQL 14 and later, Linux servers.
CLIENT_CONNECTION_CHECK_MS = 2000


class ConnectionFailed(Exception):
    """A connection could not be opened; the message never holds the password."""


def require_psycopg2(module):
    if not HAS_PSYCOPG2:
        module.fail_json(msg="the psycopg2 Python package is required on the host running this module "
                             "(pip install psycopg2-binary)")


def describe_target(params):
    return "{user}@{host}:{port}/{db}".format(user=params["login_user"], host=params["login_host"],
                                             port=params["login_port"], db=params["login_db"])


def first_line(error):
    """The server's message without psycopg2's multi-line context."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def open_connection(params, application_name=APPLICATION_NAME, autocommit=False):
    """A connection from the login_* options; ConnectionFailed names the target, never the password."""
    password = params["login_password"]
    try:
        conn = psycopg2.connect(
            host=params["login_host"], port=params["login_port"], user=params["login_user"],
            password=password or None, dbname=params["login_db"],
            connect_timeout=params["connect_timeout"], sslmode=params["ssl_mode"],
            application_name=application_name,
            options="-c client_connection_check_interval={0}".format(CLIENT_CONNECTION_CHECK_MS))
    except psycopg2.Error as error:
        message = first_line(error)
        if password:
            message = message.replace(password, "********")
        raise ConnectionFailed("cannot connect to {0}: {1}".format(describe_target(params), message)) from error
    conn.autocommit = autocommit
    return conn


def connect(module, application_name=APPLICATION_NAME, autocommit=False):
    """open_connection() for a module: fails the module clearly instead of raising."""
    require_psycopg2(module)
    try:
        return open_connection(module.params, application_name, autocommit)
    except ConnectionFailed as error:
        module.fail_json(msg=str(error))
