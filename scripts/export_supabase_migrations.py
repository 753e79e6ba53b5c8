#!/usr/bin/env python3
"""Export Stage 4's SQL changes as Supabase CLI migrations, for teams that deploy with `supabase db push`.

    .venv/bin/python scripts/export_supabase_migrations.py [--out supabase/migrations] [--timestamp 20261201120000]

Writes one migration per change, `<out>/<version>_stage4_<change>.sql`: the stage4_* tooling changes first, then the
optimizations in the order of the plan (files/sql/plan.yml). Each file does what the
stage4_change module does for state=applied, in one transaction: the change's `variables` as
set_config('stage4.<name>', value, true), precheck + deploy + verify, and the change recorded in the Stage 4
ledger (stage4.ledger, stage4.ledger_events) with the SHA-256 of each of its scripts. A later
`ansible-playbook stage4.yml` therefore sees these changes as applied, and playbooks/rollback.yml can revert them.

Supabase has no down migrations: the reverts (revert + verify_reverted, ledger row removed, as
stage4_change state=reverted does) go to `<out>/rollbacks/revert_<version>_stage4_<change>.sql`, with a
README saying how to run them, newest first.
"""
import argparse
import datetime
import hashlib
import json
import re
import sys
from pathlib import Path

import project_modules
import stage4_settings

project_modules.register()
from ansible_collections.biblioteca.stage4.plugins.module_utils import change_files, ledger  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SQL_ROOT = REPO / "files" / "sql"
LEDGER_SCHEMA = "stage4"
# The tooling changes the optimizations call are the stage4_* ones; benchmark_schema only serves the benchmark.
TOOLING_PREFIX = "stage4_"
TIMESTAMP_FORMAT = "%Y%m%d%H%M%S"

# Why one set_config per file is enough: `supabase db push` applies each migration file as one transaction
# together with its row in supabase_migrations.schema_migrations (the Go CLI sends the file's statements as
# one pgx batch, "ExecBatch is implicitly transactional" in pkg/migration/file.go, after a RESET ALL; the
# TypeScript CLI brackets the file in BEGIN ... COMMIT). So set_config(..., true), like SET LOCAL, lasts
# exactly the whole file, as it lasts the whole transaction in stage4_change, and any error (a failing
# verify included) rolls the whole file back. Some releases (2.115.0, 2.116.0, 2.117.0: supabase/cli#6347)
# send the file as a pipeline without BEGIN: one implicit transaction, in which a top-level LOCK TABLE is
# refused (25P01). So no change has a top-level statement that needs a transaction block (LOCK runs in a
# DO block), and the files work under any release; tests/integration/test_supabase_migrations.py pushes them with 2.117.0.
TRANSACTION_NOTE = """\
-- `supabase db push` runs this file as one transaction (with its schema_migrations row): the settings
-- below hold for the whole file, and any error, a failing verify included, rolls all of it back.
-- No statement here needs a transaction block: releases that send the file as a pipeline without
-- BEGIN (2.115.0 to 2.117.0, supabase/cli#6347) run it as one implicit transaction just the same.
"""


def stage4_change_constants():
    """SCRIPTS, RUN_ON, LEDGER_DDL and ISOLATION_PATTERN of the stage4_change module's code, so the export runs
    the same scripts in the same order and creates the same ledger."""
    return dict(SCRIPTS=change_files.SCRIPTS, RUN_ON=change_files.RUN_ON, ISOLATION_PATTERN=change_files.ISOLATION_PATTERN,
                LEDGER_DDL=ledger.LEDGER_DDL)


def load_changes():
    """[{"change", "id", "title", "variables", "repeatable", "server_role"}] in the order Stage 4 applies them."""
    settings = stage4_settings.load()
    changes = [{"change": item["change"], "id": item["change"], "title": "Stage 4 rollout tooling: " + item["change"],
                "variables": {}, "repeatable": item.get("repeatable", False), "server_role": None}
               for item in settings["stage4_tooling_changes"] if item["change"].startswith(TOOLING_PREFIX)]
    for item in settings["stage4_optimizations"]:
        variables = {key: str(value) for key, value in (item.get("variables") or {}).items()}
        templated = [key for key, value in variables.items() if "{{" in value or "{%" in value]
        if templated:
            raise SystemExit("{0}: variables {1} are Jinja templates, which only Ansible can evaluate".format(
                item["id"], ", ".join(templated)))
        changes.append({"change": item["change"], "id": item["id"], "title": item["title"], "variables": variables,
                        "repeatable": False, "server_role": item.get("server_role")})
    return changes


def read_scripts(change, script_names):
    """{script: {"path" (repository-relative), "sha256", "text"}} of the scripts the change has."""
    scripts = {}
    for name in script_names:
        path = SQL_ROOT / change / (name + ".sql")
        if path.is_file():
            data = path.read_bytes()
            scripts[name] = {"path": path.relative_to(REPO).as_posix(), "sha256": hashlib.sha256(data).hexdigest(),
                             "text": data.decode("utf-8")}
    return scripts


def literal(value):
    """A SQL string literal (standard_conforming_strings is on in PostgreSQL 15)."""
    return "'" + value.replace("'", "''") + "'"


def ledger_files(scripts):
    """What stage4_change records in the ledger's `files`: every script with its path and SHA-256."""
    return json.dumps({name: {"path": s["path"], "sha256": s["sha256"]} for name, s in scripts.items()})


def script_block(script):
    """One script, labelled; refused when its last statement lacks a ';' (it would merge with the next)."""
    code_lines = [line for line in script["text"].splitlines() if line.strip() and not line.lstrip().startswith("--")]
    if not code_lines or not code_lines[-1].rstrip().endswith(";"):
        raise SystemExit("{0}: the last statement must end with ';' to be concatenated".format(script["path"]))
    return "-- ---- {0} ----\n{1}\n".format(script["path"], script["text"].rstrip("\n"))


def header(kind, change, version, scripts):
    lines = ["-- {0} of Stage 4 {1}: {2}".format(kind, change["id"], change["title"]),
             "-- Exported by scripts/export_supabase_migrations.py as version {0}; regenerate, do not edit.".format(
                 version),
             "-- Source files (SHA-256):"]
    lines += ["--   {0}  {1}".format(s["sha256"], s["path"]) for s in scripts.values()]
    return "\n".join(lines) + "\n"


def migration_sql(change, version, scripts, constants):
    """precheck + deploy + verify and the ledger row, in the order stage4_change runs them."""
    name, schema = change["change"], '"{0}"'.format(LEDGER_SCHEMA)
    run_id = "supabase-" + version
    parts = [header("Migration", change, version, scripts) + """\
-- Runs what `stage4_change state=applied` runs and records the change in Stage 4's ledger (schema stage4)
-- as that module does (paths relative to the repository, run_id supabase-<version>), so a later Ansible
-- run sees it applied (and refuses a changed deploy.sql as drift) and playbooks/rollback.yml can revert it.
-- Not run here: Stage 4's backup, benchmark and gate; take a backup before `supabase db push`.
""" + TRANSACTION_NOTE]
    isolation = re.search(constants["ISOLATION_PATTERN"], scripts["deploy"]["text"], re.MULTILINE)
    if isolation:
        parts.append("-- deploy.sql declares its isolation level (stage4_change sets it the same way): first, before any query.\n"
                     "SET TRANSACTION ISOLATION LEVEL {0};\n".format(isolation.group(1).upper()))
    if change["variables"]:
        parts.append("-- The change's variables, read by its SQL as current_setting('stage4.<name>').\n" + "".join(
            "SELECT set_config({0}, {1}, true);\n".format(literal("stage4." + key), literal(value))
            for key, value in sorted(change["variables"].items())))
    parts.append("-- The ledger, as stage4_change creates it.\n" + constants["LEDGER_DDL"].format(schema=schema).strip()
                 + "\n")
    if not change["repeatable"]:
        parts.append("""\
DO $stage4_export$
BEGIN
    IF EXISTS (SELECT FROM {schema}.ledger WHERE change = {name}) THEN
        RAISE EXCEPTION 'Stage 4 already applied % (stage4.ledger): mark this migration applied instead: %',
            {name}, 'supabase migration repair --status applied {version}';
    END IF;
END $stage4_export$;
""".format(schema=schema, name=literal(name), version=version))
    if change["server_role"] == "stage4_pg_cron":
        parts.append("-- What the stage4_pg_cron role does on a managed server. Loading pg_cron and\n"
                     "-- cron.database_name are server settings (Supabase: Database > Extensions);\n"
                     "-- the precheck refuses when they are missing.\n"
                     "CREATE EXTENSION IF NOT EXISTS pg_cron;\n")
    parts += [script_block(scripts[n]) for n in constants["RUN_ON"]["deploy"] if n in scripts]
    files, variables = literal(ledger_files(scripts)), literal(json.dumps(change["variables"]))
    if change["repeatable"]:
        # A repeatable change is deployed again over itself; the ledger keeps one row, updated.
        parts.append("""\
-- Record the change, as stage4_change does (a repeatable change already there is redeployed).
INSERT INTO {schema}.ledger_events (change, action, run_id, files)
SELECT {name}, CASE WHEN EXISTS (SELECT FROM {schema}.ledger WHERE change = {name}) THEN 'redeploy' ELSE 'deploy' END,
       {run_id}, {files};
INSERT INTO {schema}.ledger (change, run_id, files, variables) VALUES ({name}, {run_id}, {files}, {variables})
ON CONFLICT (change) DO UPDATE SET files = EXCLUDED.files, variables = EXCLUDED.variables,
                                   run_id = EXCLUDED.run_id, applied_at = now();
""".format(schema=schema, name=literal(name), run_id=literal(run_id), files=files, variables=variables))
    else:
        parts.append("""\
-- Record the change, as stage4_change does.
INSERT INTO {schema}.ledger (change, run_id, files, variables) VALUES ({name}, {run_id}, {files}, {variables});
INSERT INTO {schema}.ledger_events (change, action, run_id, files) VALUES ({name}, 'deploy', {run_id}, {files});
""".format(schema=schema, name=literal(name), run_id=literal(run_id), files=files, variables=variables))
    return "\n".join(parts)


def revert_sql(change, version, scripts, constants):
    """revert + verify_reverted and the ledger row removed, refused as stage4_change refuses it."""
    name, schema = change["change"], '"{0}"'.format(LEDGER_SCHEMA)
    parts = [header("Revert", change, version, scripts) + """\
-- Runs what `stage4_change state=reverted` runs: refused unless the ledger holds the change and no change
-- applied after it; then revert + verify_reverted and the ledger row removed. Run it in one transaction:
--   psql "$SUPABASE_DB_URL" -v ON_ERROR_STOP=1 --single-transaction -f <this file>
""", """\
DO $stage4_export$
DECLARE
    applied_seq bigint;
    later text;
BEGIN
    IF to_regclass('{schema}.ledger') IS NULL THEN
        RAISE EXCEPTION 'Stage 4 ledger not found: % was never applied here', {name};
    END IF;
    SELECT seq INTO applied_seq FROM {schema}.ledger WHERE change = {name};
    IF applied_seq IS NULL THEN
        RAISE EXCEPTION 'Stage 4 ledger: % is not applied, nothing to revert', {name};
    END IF;
    SELECT string_agg(change, ', ' ORDER BY seq) INTO later FROM {schema}.ledger WHERE seq > applied_seq;
    IF later IS NOT NULL THEN
        RAISE EXCEPTION 'revert % first: applied after %', later, {name};
    END IF;
END $stage4_export$;
""".format(schema=schema, name=literal(name))]
    parts += [script_block(scripts[n]) for n in constants["RUN_ON"]["revert"] if n in scripts]
    parts.append("""\
-- Remove the change from the ledger, as stage4_change does.
DELETE FROM {schema}.ledger WHERE change = {name};
INSERT INTO {schema}.ledger_events (change, action, run_id, files) VALUES ({name}, 'revert', {run_id}, {files});
""".format(schema=schema, name=literal(name), run_id=literal("supabase-revert-" + version),
           files=literal(ledger_files(scripts))))
    return "\n".join(parts)


ROLLBACK_README = """\
# Reverting the Stage 4 migrations

Supabase has no down migrations. Each file here reverts one migration of the folder above, newest first
(a revert is refused while a change applied after it is still in stage4.ledger). From this folder:

    for f in $(ls -r revert_*_stage4_*.sql); do psql "$SUPABASE_DB_URL" -v ON_ERROR_STOP=1 --single-transaction -f "$f" || break; done

To revert only down to one optimization, stop the loop after its file. Then tell the CLI, for each
reverted version, and delete those migration files, or `supabase db push` applies them again:

    supabase migration repair --status reverted <version>

The migrations record themselves in Stage 4's ledger, so `ansible-playbook playbooks/rollback.yml -i prod`
can revert them too (with a backup and a report); the same repair is needed afterwards.
"""


def export(out, start, changes, constants):
    """Writes the migrations and their reverts; returns the paths written."""
    existing = sorted(p.name for p in out.glob("*_stage4_*.sql")) if out.is_dir() else []
    if existing:
        raise SystemExit("{0} already holds Stage 4 migrations ({1}); delete them first to export again".format(
            out, ", ".join(existing)))
    (out / "rollbacks").mkdir(parents=True, exist_ok=True)
    written = []
    for offset, change in enumerate(changes):
        version = (start + datetime.timedelta(seconds=offset)).strftime(TIMESTAMP_FORMAT)
        scripts = read_scripts(change["change"], constants["SCRIPTS"])
        # <version>_stage4_<change>.sql, without doubling the prefix of stage4_toolkit
        name = "{0}_{1}.sql".format(version, change["change"] if change["change"].startswith("stage4_")
                                    else "stage4_" + change["change"])
        targets = {out / name: migration_sql(change, version, scripts, constants),
                   out / "rollbacks" / ("revert_" + name): revert_sql(change, version, scripts, constants)}
        for path, text in targets.items():
            path.write_text(text, encoding="utf-8")
            written.append(path)
    readme = out / "rollbacks" / "README.md"
    readme.write_text(ROLLBACK_README, encoding="utf-8")
    return written + [readme]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("supabase/migrations"),
                        help="folder of the migrations (default: supabase/migrations)")
    parser.add_argument("--timestamp", help="version of the first migration, YYYYMMDDHHMMSS (default: now, UTC); "
                                            "the next ones follow one second apart")
    args = parser.parse_args(argv)
    try:
        args.start = (datetime.datetime.strptime(args.timestamp, TIMESTAMP_FORMAT) if args.timestamp
                      else datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None))
    except ValueError:
        parser.error("--timestamp must be YYYYMMDDHHMMSS, not " + args.timestamp)
    return args


def main(argv=None):
    args = parse_args(argv)
    for path in export(args.out, args.start, load_changes(), stage4_change_constants()):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
