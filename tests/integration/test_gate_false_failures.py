"""The gate on real measurements of one unchanged database: no false failure over repeated runs.

The benchmark module measures the reference database (251 features) several times in a row, as
the rollout measures its stages; the gate, judging latency as in production, compares each
measurement with the one before. Nothing changed in between, so every comparison must pass with
no query worse or inconclusive. The counterpart, an injected slowdown found and reverted, is
tests/faults/test_gate_decisions.py.
"""
import os

import pytest

from ansible_collections.biblioteca.stage4.plugins.modules import gis_benchmark
from ansible_collections.biblioteca.stage4.plugins.module_utils import bench_queries, benchmark  # noqa: E402
import pgcluster
from ansible_collections.biblioteca.stage4.plugins.filter.stage4_gate import stage4_gate

MEASUREMENTS = 6
DB = "BIBLIOTECA"
QUERIES_DIR = os.path.join(pgcluster.REPO, "files", "benchmark", "queries")


@pytest.fixture(scope="module")
def measurements():
    with pgcluster.running_cluster() as cluster:
        cluster.build_reference_db(DB)
        params = gis_benchmark.with_defaults(dict(
            cluster.login_args(DB), queries_dir=QUERIES_DIR, run_id="false-failures", stage="same",
            iterations=100, warmup=5, concurrency=1, throughput_seconds=0, store=False))
        yield [benchmark.run_benchmark(dict(params, stage="same%d" % number),
                                           bench_queries.load_queries(QUERIES_DIR))
               for number in range(MEASUREMENTS)]


def test_unchanged_database_never_fails_the_gate(measurements):
    verdicts = [stage4_gate(current, reference) for reference, current in zip(measurements, measurements[1:])]
    decisions = [v["decision"] for v in verdicts]
    lines = [q["explanation"] for v in verdicts for q in v["queries"] if q["verdict"] in ("worse", "inconclusive")]
    assert decisions == ["pass"] * (MEASUREMENTS - 1), lines
    assert all(v["summary"]["worse"] == v["summary"]["inconclusive"] == v["summary"]["result_changed"] == 0
               for v in verdicts)
