# -*- coding: utf-8 -*-
"""Connection options and connection setup shared by the stage4 modules.

Errors name the host, port, database and user, never the password.
"""
from __future__ import annotations

try:
    import psycopg
    HAS_PSYCOPG = True
except ImportError:  # reported by require_psycopg()
    HAS_PSYCOPG = False

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


def require_psycopg(module):
    if not HAS_PSYCOPG:
        module.fail_json(msg="the psycopg (3) Python package is required on the host running this module "
                             "(pip install 'psycopg[binary]')")


def describe_target(params):
    return "{user}@{host}:{port}/{db}".format(user=params["login_user"], host=params["login_host"],
                                             port=params["login_port"], db=params["login_db"])


def first_line(error):
    """The server's message without its multi-line context."""
    text = str(error).strip()
    return text.splitlines()[0] if text else error.__class__.__name__


def open_connection(params, application_name=APPLICATION_NAME, autocommit=False):
    """A psycopg connection from the login_* options; ConnectionFailed names the target, never the password.

    The server's notices are kept, as "SEVERITY:  message" lines, in the connection's `stage4_notices` list.
    """
    password = params["login_password"]
    try:
        conn = psycopg.connect(
            host=params["login_host"], port=params["login_port"], user=params["login_user"],
            password=password or None, dbname=params["login_db"],
            connect_timeout=params["connect_timeout"], sslmode=params["ssl_mode"],
            application_name=application_name, autocommit=autocommit,
            # Nothing prepared behind the module's back: the benchmark prepares what it measures itself.
            prepare_threshold=None,
            options="-c client_connection_check_interval={0}".format(CLIENT_CONNECTION_CHECK_MS))
    except psycopg.Error as error:
        message = first_line(error)
        if password:
            message = message.replace(password, "********")
        raise ConnectionFailed("cannot connect to {0}: {1}".format(describe_target(params), message)) from error
    conn.stage4_notices = notices = []
    conn.add_notice_handler(lambda diag: notices.append("{0}:  {1}".format(diag.severity, diag.message_primary)))
    return conn


def to_last_result(cur):
    """Moves the cursor to the result of the last statement it executed (psycopg 3 starts at the first), as
    a script's answer is its last SELECT."""
    while cur.nextset():
        pass
    return cur


def connect(module, application_name=APPLICATION_NAME, autocommit=False):
    """open_connection() for a module: fails the module clearly instead of raising."""
    require_psycopg(module)
    try:
        return open_connection(module.params, application_name, autocommit)
    except ConnectionFailed as error:
        module.fail_json(msg=str(error))
