"""files/sql/plan.yml and each change's change.yml, read by module_utils/plan.py and the stage4_plan lookup."""
import os

import pytest
import yaml

from ansible_collections.biblioteca.stage4.plugins.lookup.stage4_plan import with_overrides
from ansible_collections.biblioteca.stage4.plugins.module_utils.plan import PlanError, load_plan

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SQL_ROOT = os.path.join(REPO, "files", "sql")


def test_the_shipped_plan():
    plan = load_plan(SQL_ROOT)
    assert [o["id"] for o in plan["optimizations"]] == ["opt1", "opt2", "opt3", "opt4", "opt5"]
    assert plan["optimizations"][1]["requires"] == ["opt1"] and plan["optimizations"][1]["change"] == "opt2_storage_layout"
    assert plan["tooling"][0] == {"change": "stage4_toolkit", "repeatable": True}
    assert {"change": "benchmark_schema", "repeatable": False} in plan["tooling"]
    # Every change folder is in the plan, and every folder in the plan has its SQL.
    folders = {name for name in os.listdir(SQL_ROOT) if os.path.isdir(os.path.join(SQL_ROOT, name))}
    listed = [item["change"] for item in plan["tooling"] + plan["optimizations"]]
    assert sorted(listed) == sorted(folders)
    assert all(os.path.isfile(os.path.join(SQL_ROOT, change, "deploy.sql")) for change in listed)


def write_plan(root, tooling=(), optimizations=()):
    (root / "plan.yml").write_text(yaml.safe_dump({"tooling": [c for c, _ in tooling],
                                                   "optimizations": [c for c, _ in optimizations]}))
    for change, manifest in list(tooling) + list(optimizations):
        (root / change).mkdir()
        (root / change / "change.yml").write_text(yaml.safe_dump(manifest))


@pytest.mark.parametrize("tooling, optimizations, message", [
    ([], [("a", {"id": "a", "title": "A", "requires": ["b"]}), ("b", {"id": "b", "title": "B"})],
     "requires b, which is not listed before it"),
    ([], [("a", {"id": "x", "title": "A"}), ("b", {"id": "x", "title": "B"})], "id x is already the id of another change"),
    ([], [("a", {"title": "A"})], "missing id"),
    ([], [("a", {"id": "a", "title": "A", "vaccum": []})], "unknown keys vaccum"),
    ([("t", {"repeatable": True, "id": "t"})], [], r"unknown keys id \(allowed: repeatable\)"),
])
def test_a_plan_that_cannot_run_is_refused(tmp_path, tooling, optimizations, message):
    write_plan(tmp_path, tooling, optimizations)
    with pytest.raises(PlanError, match=message):
        load_plan(str(tmp_path))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(PlanError, match="cannot read .*plan.yml"):
        load_plan(str(tmp_path))
    (tmp_path / "plan.yml").write_text("tooling: [t]\noptimizations: []\n")
    with pytest.raises(PlanError, match="cannot read .*t/change.yml"):
        load_plan(str(tmp_path))
    (tmp_path / "plan.yml").write_text("- t\n")
    with pytest.raises(PlanError, match="must hold two lists, tooling and optimizations"):
        load_plan(str(tmp_path))


def test_overrides_replace_only_variables_an_optimization_has():
    optimizations = load_plan(SQL_ROOT)["optimizations"]
    replaced = with_overrides(optimizations, {"opt5": {"refresh_schedule": "*/5 * * * *"}})
    assert replaced[4]["variables"]["refresh_schedule"] == "*/5 * * * *"
    assert replaced[4]["variables"]["min_table_bytes"] == optimizations[4]["variables"]["min_table_bytes"]
    assert optimizations[4]["variables"]["refresh_schedule"] == "*/15 * * * *"  # not changed in place
    with pytest.raises(PlanError, match="names no optimization opt9"):
        with_overrides(optimizations, {"opt9": {}})
    with pytest.raises(PlanError, match=r"opt5: opt5_dashboard_matviews has no variable refresh \(it has refresh_schedule"):
        with_overrides(optimizations, {"opt5": {"refresh": "x"}})
