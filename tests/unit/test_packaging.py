"""Tests of the packaging without a database: docs/variables.md is current, the execution environment's
build context is complete, and the Supabase migrations exported from files/sql are named and written as
`supabase db push` needs them (tests/integration/test_supabase_migrations.py applies them).
"""
import re
import sys
from pathlib import Path

import pytest

from ansible_collections.biblioteca.stage4.plugins.module_utils import change_files
from exported_migrations import REPO, export_migrations, run
import pgcluster

BIN = Path(sys.executable).parent
OPTIMIZATIONS = ["opt1_temporal_partitioning", "opt2_storage_layout", "opt3_search_matview",
                 "opt4_future_partitions", "opt5_dashboard_matviews"]
CHANGES = pgcluster.TOOLKIT + OPTIMIZATIONS
OPT1, OPT3 = CHANGES.index("opt1_temporal_partitioning"), CHANGES.index("opt3_search_matview")


def pins(path):
    return {line.split("==")[0].lower(): line for line in path.read_text().splitlines() if "==" in line}


# --------------------------------------------------------------------------
# docs/variables.md
# --------------------------------------------------------------------------

def test_variables_doc_is_current():
    done = run([sys.executable, "scripts/gen_variables_doc.py", "--check"])
    assert done.returncode == 0, done.stderr


def test_variables_doc_check_notices_a_stale_file(tmp_path):
    stale = tmp_path / "variables.md"
    stale.write_text("# Variables\n")
    done = run([sys.executable, "scripts/gen_variables_doc.py", "--check", "--output", stale])
    assert done.returncode == 1
    assert "out of date" in done.stderr
    assert run([sys.executable, "scripts/gen_variables_doc.py", "--output", stale]).returncode == 0
    text = stale.read_text()
    for name in ("stage4_optimizations", "stage4_managed_server", "stage4_benchmark_iterations",
                 "stage4_common_change_state", "stage4_pg_cron_restart_allowed"):
        assert "`%s`" % name in text, name


# --------------------------------------------------------------------------
# execution-environment.yml
# --------------------------------------------------------------------------

def test_execution_environment_context_holds_the_requirements(tmp_path):
    done = run([BIN / "ansible-builder", "create", "--file", "execution-environment.yml", "--context", tmp_path])
    assert done.returncode == 0, done.stdout + done.stderr
    build = tmp_path / "_build"
    assert (build / "requirements.txt").read_text() == (REPO / "requirements-ee.txt").read_text()
    assert (build / "requirements.yml").read_text() == (REPO / "requirements.yml").read_text()
    assert (build / "bindep.txt").read_text() == (REPO / "bindep.txt").read_text()
    containerfile = next(p for p in (tmp_path / "Containerfile", tmp_path / "Dockerfile") if p.is_file()).read_text()
    assert "ansible-core==2.19.14" in containerfile
    assert "postgresql:15" in containerfile


def test_execution_environment_pins_agree_with_requirements():
    project, ee = pins(REPO / "requirements.txt"), pins(REPO / "requirements-ee.txt")
    assert set(ee) == {"ansible-core", "psycopg[binary]", "jinja2"}
    assert all(ee[name] == project[name] for name in ee)
    assert "ansible-builder" in project
    definition = (REPO / "execution-environment.yml").read_text()
    assert "package_pip: " + project["ansible-core"] in definition


# --------------------------------------------------------------------------
# Supabase migrations
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return export_migrations(tmp_path_factory.mktemp("migrations"))


def test_export_names_files_and_records_sources(exported):
    migrations = sorted(p.name for p in exported.glob("*.sql"))
    assert migrations == ["202612011200%02d_%s.sql" % (i, c if c.startswith("stage4_") else "stage4_" + c)
                          for i, c in enumerate(CHANGES)]
    reverts = sorted(p.name for p in (exported / "rollbacks").glob("*.sql"))
    assert reverts == ["revert_" + name for name in migrations]
    assert "ls -r" in (exported / "rollbacks" / "README.md").read_text()
    opt1 = (exported / migrations[OPT1]).read_text()
    deploy = REPO / "files/sql/opt1_temporal_partitioning/deploy.sql"
    assert change_files.read_change(str(REPO / "files/sql"), "opt1_temporal_partitioning")["deploy"]["sha256"] in opt1
    assert deploy.read_text() in opt1
    assert "SELECT set_config('stage4.partition_through_year', '2028', true);" in opt1
    # OPT3 declares repeatable read: set by the file's first statement; OPT1 (copies under a lock) does not.
    opt3 = (exported / migrations[OPT3]).read_text()
    statements = [line for line in opt3.splitlines() if line.strip() and not line.startswith("--")]
    assert statements[0] == "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;"
    assert "SET TRANSACTION" not in opt1
    # every Supabase migration file name must match the CLI's pattern
    assert all(re.fullmatch(r"[0-9]+_.*\.sql", name) for name in migrations)


def test_no_migration_has_a_top_level_statement_that_needs_a_transaction_block(exported):
    """A CLI that sends a file as a pipeline without BEGIN refuses those (LOCK TABLE: 25P01)."""
    for path in sorted(exported.glob("*.sql")) + sorted((exported / "rollbacks").glob("*.sql")):
        assert not re.search(r"^\s*LOCK\b", path.read_text(), re.MULTILINE | re.IGNORECASE), path.name


