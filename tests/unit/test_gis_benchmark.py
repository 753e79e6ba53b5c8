"""plugins/modules/gis_benchmark.py without a database: its statistics, schedules, plans and query files,
its argument checks and documentation, and the failures that come before connecting.
(tests/integration/test_gis_benchmark_runs.py measures a real cluster.)
"""
import hashlib
import json
import math
import os
import sys

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from hypothesis import given, settings
from hypothesis import strategies as st

# Importable however pytest is invoked (its rootdir decides which conftest.py it loads).
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path[:0] = [path for path in (TESTS, REPO) if path not in sys.path]

from ansible_collections.biblioteca.stage4.plugins.modules import gis_benchmark  # noqa: E402
from ansible_collections.biblioteca.stage4.plugins.module_utils import bench_queries, bench_session, plans, workers  # noqa: E402
from ansible_collections.biblioteca.stage4.plugins.module_utils import schedule as scheduling  # noqa: E402
from ansible_collections.biblioteca.stage4.plugins.doc_fragments import connection  # noqa: E402
from ansible_collections.biblioteca.stage4.plugins.module_utils import stats as sample_stats  # noqa: E402

QUERIES_DIR = os.path.join(REPO, "files", "benchmark", "queries")
DB = "BIBLIOTECA"
QUERY_IDS = [
    "q01_bbox_intersects", "q02_radius", "q03_knn", "q04_rpc_text_search", "q05_temporal_bbox",
    "q06_rpc_area_por_categoria", "q07_rpc_extensao_por_categoria", "q08_rpc_resumo_anual",
    "q09_point_in_polygon", "q10_geojson_export_bbox",
]


def valid_params(**overrides):
    params = {name: spec.get("default") for name, spec in gis_benchmark.ARGUMENT_SPEC.items()}
    params.update(login_user="postgres", login_db=DB, queries_dir=QUERIES_DIR, run_id="r",
                  stage="baseline")
    params.update(overrides)
    return params


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------

@pytest.mark.parametrize("samples, pct, expected", [
    ([1, 2, 3, 4], 50, 2.5),
    ([1, 2, 3, 4], 95, 3.85),
    ([1, 2, 3, 4], 99, 3.97),
    ([1, 2, 3, 4], 0, 1),
    ([1, 2, 3, 4], 100, 4),
    ([15, 20, 35, 40, 50], 40, 29),
    ([7.5], 99, 7.5),
])
def test_percentile_interpolates_like_numpy(samples, pct, expected):
    assert sample_stats.percentile(samples, pct) == pytest.approx(expected)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        sample_stats.percentile([], 50)


def test_summarize():
    samples = [9, 2, 4, 4, 4, 5, 5, 7]
    stats = sample_stats.summarize(samples)
    assert stats["calls"] == 8
    assert stats["mean_ms"] == 5
    assert stats["stddev_ms"] == 2  # population standard deviation
    assert (stats["min_ms"], stats["max_ms"]) == (2, 9)
    assert stats["p50_ms"] == 4.5
    assert stats["p95_ms"] == pytest.approx(8.3)
    assert stats["samples_ms"] == samples  # in measurement order, not sorted


def test_fingerprint_ignores_row_order():
    rows = [(1, "a", 2.5), (2, "b", None), (3, "c\nd", 1.0)]
    assert bench_queries.fingerprint(rows) == bench_queries.fingerprint(list(reversed(rows)))


@pytest.mark.parametrize("other", [
    [(1, "a", 2.5)],                                   # a row less
    [(1, "a", 2.5), (2, "b", None), (2, "b", None)],   # a duplicate row
    [(1, "a", 2.5000001), (2, "b", None)],             # a value
    [(1, "a", 2.5), ("2", "b", None)],                 # a type
])
def test_fingerprint_sees_changes(other):
    assert bench_queries.fingerprint([(1, "a", 2.5), (2, "b", None)]) \
        != bench_queries.fingerprint(other)


def test_fingerprint_of_no_rows():
    assert bench_queries.fingerprint([]) == hashlib.sha256(b"0\n").hexdigest()


def test_split_iterations():
    assert scheduling.split_iterations(7, 3) == [3, 2, 2]
    assert scheduling.split_iterations(2, 2) == [1, 1]


def test_hit_ratio():
    assert bench_session.hit_ratio(99, 1) == 0.99
    assert bench_session.hit_ratio(0, 0) is None


def test_load_queries_sorts_and_strips(tmp_path):
    (tmp_path / "b.sql").write_text("-- second\nSELECT 2;;  \n\n", encoding="utf-8")
    (tmp_path / "a.sql").write_text("SELECT 1", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("not a query", encoding="utf-8")
    (tmp_path / "dir.sql").mkdir()
    queries = bench_queries.load_queries(str(tmp_path))
    assert [q["query_id"] for q in queries] == ["a", "b"]
    assert queries[1]["sql"] == "-- second\nSELECT 2"
    assert queries[1]["sql_sha256"] == hashlib.sha256(b"-- second\nSELECT 2").hexdigest()
    assert queries[1]["file"] == str(tmp_path / "b.sql")


@pytest.mark.parametrize("setup, message", [
    (lambda path: None, "holds no .sql file"),
    (lambda path: (path / "q.sql").write_text("-- only a comment\n;\n"), "holds no SQL statement"),
    (lambda path: (path / "q.sql").write_bytes(b"SELECT '\xff'"), "cannot read query file"),
    (lambda path: (path / "q.sql").symlink_to(path / "missing"), "cannot read query file"),
])
def test_load_queries_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(bench_session.BenchmarkError, match=message):
        bench_queries.load_queries(str(tmp_path))


def test_load_queries_missing_folder(tmp_path):
    with pytest.raises(bench_session.BenchmarkError, match="is not a folder"):
        bench_queries.load_queries(str(tmp_path / "nope"))


def test_shipped_queries():
    queries = bench_queries.load_queries(QUERIES_DIR)
    assert [q["query_id"] for q in queries] == QUERY_IDS
    for query in queries:
        assert query["sql"].startswith("-- "), query["file"]
        code = [line for line in query["sql"].splitlines() if not line.startswith("--")]
        assert code[0].startswith("SELECT"), query["file"]
        assert not any(";" in line for line in code), query["file"]  # one statement


@pytest.mark.parametrize("probability, df, expected", [
    (0.975, 1, 12.706205),
    (0.975, 9, 2.262157),
    (0.975, 29, 2.045230),
    (0.995, 4, 4.604095),
    (0.95, 120, 1.657651),
    (0.975, 10**6, 1.959966),  # the normal quantile
])
def test_student_t_quantile_matches_tables(probability, df, expected):
    assert sample_stats.student_t_quantile(probability, df) == pytest.approx(expected, abs=1e-5)


def test_mean_interval():
    samples = [9, 2, 4, 4, 4, 5, 5, 7]  # mean 5, sample standard deviation sqrt(32/7)
    margin = 2.364624 * math.sqrt(32 / 7) / math.sqrt(8)
    assert sample_stats.mean_interval(samples, 0.95) == pytest.approx([5 - margin, 5 + margin], abs=1e-3)
    assert sample_stats.mean_interval([3.0], 0.95) is None


def exact_coverage(count, quantile, low, high):
    """P(low <= B < high) for B ~ binomial(count, quantile), with exact integer binomials."""
    return sum(math.comb(count, k) * quantile ** k * (1 - quantile) ** (count - k) for k in range(low, high))


def exact_tail_below(count, quantile, rank):
    return exact_coverage(count, quantile, 0, rank)


@pytest.mark.parametrize("count, quantile, level, expected", [
    (100, 0.5, 0.95, (40, 61)),   # the classical ranks of the median's 95% interval
    (6, 0.5, 0.95, (1, 6)),       # the smallest sample with one: min to max
    (5, 0.5, 0.95, None),         # min to max covers only 93.75%
    (100, 0.99, 0.95, None),      # p99 needs far more samples
])
def test_order_statistic_ranks(count, quantile, level, expected):
    assert sample_stats.order_statistic_ranks(count, quantile, level) == expected


@pytest.mark.parametrize("count, quantile, level", [
    (100, 0.5, 0.95), (100, 0.95, 0.95), (1000, 0.99, 0.95), (30, 0.5, 0.9), (400, 0.99, 0.9)])
def test_order_statistic_ranks_are_the_tightest_equal_tailed_pair(count, quantile, level):
    low, high = sample_stats.order_statistic_ranks(count, quantile, level)
    tail = (1 - level) / 2
    assert exact_coverage(count, quantile, low, high) >= level
    # Each tail is at most (1 - level) / 2, and one rank further in would exceed it.
    assert exact_tail_below(count, quantile, low) <= tail < exact_tail_below(count, quantile, low + 1)
    above = 1 - exact_tail_below(count, quantile, high)
    assert above <= tail
    assert high == 1 or 1 - exact_tail_below(count, quantile, high - 1) > tail


def test_confidence_intervals():
    samples = [float(value) for value in range(100, 0, -1)]  # 1..100, in any order
    intervals = sample_stats.confidence_intervals(samples, 0.95)
    assert intervals["p50_ci_ms"] == [40.0, 61.0]
    assert intervals["p95_ci_ms"][0] < 95 < intervals["p95_ci_ms"][1]
    assert intervals["p99_ci_ms"] is None
    low, high = intervals["mean_ci_ms"]
    assert low < 50.5 < high
    few = sample_stats.confidence_intervals([1.0, 2.0], 0.95)
    assert few["p50_ci_ms"] is None and few["mean_ci_ms"] is not None


def test_default_seed_is_stable_per_run_and_stage():
    seed = scheduling.default_seed("run", "baseline")
    assert seed == scheduling.default_seed("run", "baseline")
    assert seed != scheduling.default_seed("run", "opt1")
    assert 0 <= seed < 2 ** 32


def test_interleaved_schedules():
    shares = [[3, 2, 0]] * 4
    schedules = scheduling.interleaved_schedules(shares, seed=7)
    assert [len(schedule) for schedule in schedules] == [12, 8, 0]
    for schedule in schedules:
        for start in range(0, len(schedule), 4):
            assert sorted(schedule[start:start + 4]) == [0, 1, 2, 3]  # every query once per round
    assert schedules == scheduling.interleaved_schedules(shares, seed=7)
    assert schedules != scheduling.interleaved_schedules(shares, seed=8)


def test_interleaved_schedules_with_fewer_executions_of_some_queries():
    # query 1 costs more: it takes part in the first two rounds only
    schedules = scheduling.interleaved_schedules([[4], [2], [4]], seed=3)
    assert sorted(schedules[0][:3]) == [0, 1, 2] and sorted(schedules[0][3:6]) == [0, 1, 2]
    assert sorted(schedules[0][6:8]) == [0, 2] and sorted(schedules[0][8:]) == [0, 2]


@given(costs=st.lists(st.floats(min_value=1e-5, max_value=30.0), min_size=1, max_size=12),
       budget=st.floats(min_value=0.1, max_value=600.0), workers=st.integers(1, 4),
       least=st.integers(1, 10), extra=st.integers(0, 300))
@settings(max_examples=300, deadline=None)
def test_budgeted_iterations_fit_the_budget_between_the_bounds(costs, budget, workers, least, extra):
    most = least + extra
    counts = scheduling.budgeted_iterations(costs, budget, workers, least, most)
    assert all(least <= count <= most for count in counts)
    spent = sum(count * cost for count, cost in zip(counts, costs))
    # within the budget, but for the minimum of the queries too slow for more
    assert spent <= budget * workers + sum(least * cost for cost in costs) + 1e-9
    # a cheaper query never gets fewer executions than a costlier one
    ranked = sorted(zip(costs, counts))
    assert all(earlier[1] >= later[1] for earlier, later in zip(ranked, ranked[1:]) if earlier[0] < later[0])
    # a budget that covers every query's `most` gives every query `most`
    if sum(most * cost for cost in costs) <= budget * workers * (1 - 1e-9):
        assert counts == [most] * len(costs)


def test_a_slow_query_gets_few_samples_and_the_cheap_ones_all_of_theirs():
    # nine 2 ms queries and a 25 s RPC, 120 s on one client, 8 to 200 executions
    counts = scheduling.budgeted_iterations([0.002] * 9 + [25.0], 120, 1, 8, 200)
    assert counts == [200] * 9 + [8]
    counts = scheduling.budgeted_iterations([0.002] * 9 + [0.4], 60, 1, 8, 200)
    assert counts[:9] == [200] * 9 and counts[9] == 141  # (60 - 9 * 200 * 0.002) / 0.4


def test_latency_phases_follow_the_budgeted_counts():
    phases = scheduling.latency_phases(3, valid_params(iterations=100, warmup=10), 1, seed=1, counts=[100, 8, 30])
    assert sorted(phases[0]["warmup"]) == [0] * 10 + [1] + [2] * 3
    assert sorted(phases[0]["schedules"][0]) == [0] * 100 + [1] * 8 + [2] * 30


def test_latency_phases():
    interleaved = scheduling.latency_phases(3, valid_params(iterations=5, warmup=2), 2, seed=1)
    assert len(interleaved) == 1
    assert interleaved[0]["warmup"] == [0, 1, 2, 0, 1, 2]
    assert [len(schedule) for schedule in interleaved[0]["schedules"]] == [9, 6]
    sequential = scheduling.latency_phases(3, valid_params(iterations=5, warmup=1, order="sequential"),
                                              2, seed=1)
    assert sequential == [dict(warmup=[index], schedules=[[index] * 3, [index] * 2]) for index in range(3)]


def scan(node_type, relation, **extra):
    return dict({"Node Type": node_type, "Relation Name": relation, "Schema": "public"}, **extra)


def test_plan_summary():
    explain_output = [{
        "Plan": {"Node Type": "Sort", "Shared Hit Blocks": 12, "Plans": [
            {"Node Type": "Append", "Plans": [
                scan("Index Scan", "geometrias_2020"),
                {"Node Type": "Bitmap Heap Scan", "Relation Name": "geometrias_2021", "Schema": "public",
                 "Plans": [{"Node Type": "Bitmap Index Scan", "Index Name": "idx"}]},
                scan("Seq Scan", "geometrias_2020"),
            ]},
            {"Node Type": "Function Scan", "Function Name": "f", "Schema": "public"},
            scan("Seq Scan", "categorias"),
        ]},
        "Planning Time": 0.5, "Execution Time": 1.25, "Query Identifier": 42,
    }]
    summary = plans.plan_summary(explain_output)
    assert summary["shape"] == ("Sort(Append(Index Scan:public.geometrias_2020,"
                                " Bitmap Heap Scan:public.geometrias_2021(Bitmap Index Scan),"
                                " Seq Scan:public.geometrias_2020), Function Scan:public.f,"
                                " Seq Scan:public.categorias)")
    assert summary["shape_sha256"] == hashlib.sha256(summary["shape"].encode()).hexdigest()
    assert summary["node_types"] == ["Append", "Bitmap Heap Scan", "Bitmap Index Scan", "Function Scan",
                                     "Index Scan", "Seq Scan", "Sort"]
    assert summary["relations"] == ["public.categorias", "public.geometrias_2020", "public.geometrias_2021"]
    assert summary["partitions_scanned"] == 2
    assert (summary["planning_ms"], summary["execution_ms"]) == (0.5, 1.25)


def test_statement_counters_arithmetic():
    total = bench_session.counters_delta((10, 100, 5, 2.0), (14, 130, 5, 3.0))
    total = bench_session.counters_delta(None, (2, 10, 0, 0.5), total)  # a query id seen for the first time
    assert total == (6, 40, 0, 1.5)
    assert bench_session.statements_summary(total) == dict(
        calls=6, shared_blks_hit=40, shared_blks_read=0, cache_hit_ratio=1.0,
        total_exec_time_ms=1.5, mean_exec_time_ms=0.25)
    assert bench_session.statements_summary((0, 0, 0, 0.0))["mean_exec_time_ms"] is None


def test_throughput_of_workers():
    assert workers.throughput([(10.0, 11.0, 300, "libpq PQexecPrepared"),
                                     (10.5, 12.0, 500, "libpq PQexecPrepared")]) == dict(
        executions=800, seconds=2.0, qps=400.0, client="libpq PQexecPrepared")


def test_check_args_accepts_defaults():
    assert gis_benchmark.check_args(valid_params()) == []


@pytest.mark.parametrize("overrides, message", [
    (dict(roles=[dict(label="anon user", role="anon", claims={})]), "label 'anon user' must be empty or letters"),
    (dict(roles=[dict(label="a", role="anon", claims={}), dict(label="a", role="", claims={})]),
     "every label must be different"),
    (dict(time_budget_s=-1.0), "time_budget_s must be >= 0"),
    (dict(time_budget_s=10.0, iterations=5, min_iterations=6), "min_iterations must be between 1 and iterations (5)"),
    (dict(iterations=0), "iterations must be >= 1"),
    (dict(warmup=-1), "warmup must be >= 0"),
    (dict(concurrency=0), "concurrency must be >= 1"),
    (dict(statement_timeout_ms=-5), "statement_timeout_ms must be >= 0"),
    (dict(connect_timeout=0), "connect_timeout must be >= 1"),
    (dict(login_port=70000), "login_port must be <= 65535"),
    (dict(run_id=" "), "run_id must not be empty"),
    (dict(stage=""), "stage must not be empty"),
    (dict(as_role=""), "as_role must not be empty"),
    (dict(throughput_seconds=-1.0), "throughput_seconds must be >= 0"),
    (dict(ci_level=1.0), "ci_level must be between 0 and 1"),
    (dict(ci_level=0.0), "ci_level must be between 0 and 1"),
])
def test_check_args_rejects(overrides, message):
    assert message in "; ".join(gis_benchmark.check_args(valid_params(**overrides)))


def test_documentation_matches_argument_spec():
    """The module's options and the connection options of its doc fragment, against the argument spec."""
    options = dict(yaml.safe_load(connection.ModuleDocFragment.DOCUMENTATION)["options"],
                   **yaml.safe_load(gis_benchmark.DOCUMENTATION)["options"])
    assert set(options) == set(gis_benchmark.ARGUMENT_SPEC)
    for name, spec in gis_benchmark.ARGUMENT_SPEC.items():
        doc = options[name]
        assert doc["type"] == spec["type"], name
        assert doc.get("default") == spec.get("default"), name
        assert bool(doc.get("required")) == bool(spec.get("required")), name
        assert doc.get("choices") == spec.get("choices"), name
    yaml.safe_load(gis_benchmark.EXAMPLES)
    assert set(yaml.safe_load(gis_benchmark.RETURN)["benchmark"]["contains"]) == {
        "run_id", "stage", "started_at", "finished_at", "iterations", "warmup", "concurrency",
        "executions", "duration_s", "qps", "mean_ms", "cache_hit_ratio", "blks_hit",
        "blks_read", "server_version", "as_role", "stored", "queries", "prepared", "order", "seed",
        "throughput_seconds", "ci_level", "stats_source", "provenance", "time_budget_s", "min_iterations",
        "elapsed_s"}


# --------------------------------------------------------------------------
# The module against a real database
# --------------------------------------------------------------------------

def run_module(capsys, args):
    """main() with args; returns the JSON result the module printed."""
    capsys.readouterr()
    with patch_module_args(args), pytest.raises(SystemExit):
        gis_benchmark.main()
    return json.loads(capsys.readouterr().out)


def test_invalid_arguments_fail_before_connecting(capsys):
    result = run_module(capsys, dict(login_user="postgres", login_db=DB, login_port=1,
                                     queries_dir=QUERIES_DIR, run_id="r", stage="s",
                                     iterations=0, concurrency=0))
    assert result["failed"] is True
    assert result["msg"] == ("invalid arguments: iterations must be >= 1 (got 0); "
                             "concurrency must be >= 1 (got 0)")


def test_missing_psycopg_fails(monkeypatch, capsys):
    monkeypatch.setattr(gis_benchmark, "HAS_PSYCOPG", False)
    result = run_module(capsys, dict(login_user="postgres", login_db=DB,
                                     queries_dir=QUERIES_DIR, run_id="r", stage="s"))
    assert result["failed"] is True
    assert "psycopg" in result["msg"]


def test_empty_queries_dir_fails(tmp_path, capsys):
    result = run_module(capsys, dict(login_user="postgres", login_db=DB, login_port=1,
                                     queries_dir=str(tmp_path), run_id="r", stage="s"))
    assert result["failed"] is True
    assert "holds no .sql file" in result["msg"]


# --------------------------------------------------------------------------
# The schema files
# --------------------------------------------------------------------------


def plan_nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)




def test_only_queries_keeps_the_named_ones_in_their_order():
    queries = bench_session.with_callers(bench_queries.load_queries(QUERIES_DIR),
                                         dict(valid_params(), roles=[dict(label="", role="", claims={}),
                                                                     dict(label="anon", role="anon", claims={})]))
    picked = gis_benchmark.only_queries(queries, ["q07_rpc_extensao_por_categoria@anon", "q03_knn"])
    assert [q["query_id"] for q in picked] == ["q03_knn", "q07_rpc_extensao_por_categoria@anon"]
    assert [q["session"] for q in picked] == [0, 1]
    assert gis_benchmark.only_queries(queries, []) == queries


def test_only_queries_names_what_it_does_not_know():
    queries = bench_queries.load_queries(QUERIES_DIR)
    with pytest.raises(bench_session.BenchmarkError, match=r"only: no query is named q03_knn@anon, q99 \(the queries are q01"):
        gis_benchmark.only_queries(queries, ["q99", "q03_knn@anon", "q03_knn"])
