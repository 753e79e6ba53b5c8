"""Runs a repository script as the tests do, and exports the Supabase migrations the packaging tests read."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(argv, **kwargs):
    """argv from the repository's root, output captured, never raising on a non-zero exit."""
    kwargs.setdefault("cwd", REPO)
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs)


def export_migrations(out):
    """scripts/export_supabase_migrations.py into `out`, at a fixed timestamp; returns `out`."""
    done = run([sys.executable, "scripts/export_supabase_migrations.py", "--out", out, "--timestamp", "20261201120000"])
    assert done.returncode == 0, done.stderr
    return out
