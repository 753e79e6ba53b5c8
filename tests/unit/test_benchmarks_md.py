"""scripts/benchmarks_md.py writes BENCHMARKS.md from a real run's report and a pgbench ratio file."""
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPORT = os.path.join(REPO, "tests", "fixtures", "report_sample.json")


def test_run_and_ratio_sections(tmp_path):
    ratio = dict(clients=1, seconds=3, rounds=2, dbname="BIBLIOTECA", pgbench="pgbench (PostgreSQL) 15.18",
                 module_client="libpq PQexecPrepared", lowest_ratio=0.8,
                 queries=[dict(query="q01_bbox_intersects", module_qps=900.0, pgbench_tps=1000.0, ratio=0.9,
                               round_ratios=[0.88, 0.92]),
                          dict(query="q02_radius", module_qps=800.0, pgbench_tps=1000.0, ratio=0.8,
                               round_ratios=[0.8, 0.8])])
    ratio_file = tmp_path / "ratio.json"
    ratio_file.write_text(json.dumps(ratio))
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "benchmarks_md.py"), "--run", REPORT,
                           "--ratio", str(ratio_file)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    report = json.load(open(REPORT, encoding="utf-8"))
    assert report["run_id"] in done.stdout
    # Each gated stage's median carries its gate's verdict; one more column judges the last stage against the baseline.
    assert "| q03_knn (10 rows) | 0.640 | 0.879 unchanged | 1.06 unchanged | 0.748 better |" in done.stdout
    assert "| **gate** |  | **pass** vs baseline | **pass** vs opt1 |" in done.stdout
    assert "| q01_bbox_intersects | 900.0 | 1,000.0 | 0.90 | 0.88, 0.92 |" in done.stdout
    # geometric mean of 0.9 and 0.8
    assert "Lowest ratio 0.80, geometric mean 0.85." in done.stdout


def test_a_run_says_what_it_declined_and_how_it_measured(tmp_path):
    report = json.load(open(REPORT, encoding="utf-8"))
    report["optimizations"][0].update(status="declined", gate=None, declined="too small to partition")
    measurement = report.setdefault("provenance", {}).setdefault("measurement", {})
    measurement.update(time_budget_s=60.0, min_iterations=10,
                       roles=[{"label": "", "role": ""}, {"label": "anon", "role": "anon"}])
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "benchmarks_md.py"), "--run", str(path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "- %s declined: too small to partition" % report["optimizations"][0]["id"] in done.stdout
    assert "(as many as fit in 60 s per stage, at least 10), measured as the owner, anon," in done.stdout
