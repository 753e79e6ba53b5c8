"""Tests of plugins/modules/gis_benchmark.py and of the benchmark schema.

The pure functions are tested directly. main() runs against a real throwaway
cluster (tests/pgcluster.py) holding the reference fixture at 251 features and
the benchmark schema, with few iterations to keep the file fast.
"""
import hashlib
import json
import math
import os
import re
import sys

import psycopg2
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
import pgcluster  # noqa: E402

QUERIES_DIR = os.path.join(REPO, "files", "benchmark", "queries")
SCHEMA_DIR = os.path.join(REPO, "files", "sql", "benchmark_schema")
PROVENANCE_DIR = os.path.join(REPO, "files", "sql", "benchmark_provenance")
DB = "BIBLIOTECA"
QUERY_IDS = [
    "q01_bbox_intersects", "q02_radius", "q03_knn", "q04_rpc_text_search", "q05_temporal_bbox",
    "q06_rpc_area_por_categoria", "q07_rpc_extensao_por_categoria", "q08_rpc_resumo_anual",
    "q09_point_in_polygon", "q10_geojson_export_bbox",
]
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def valid_params(**overrides):
    params = {name: spec.get("default") for name, spec in gis_benchmark.ARGUMENT_SPEC.items()}
    params.update(login_user="postgres", login_db=DB, queries_dir=QUERIES_DIR, run_id="r",
                  stage="baseline")
    params.update(overrides)
    return params


def test_a_time_budget_bounds_the_slow_query_and_keeps_every_sample_of_the_cheap_ones(cluster, capsys, tmp_path):
    (tmp_path / "q1_cheap.sql").write_text("SELECT count(*) FROM public.geometrias", encoding="utf-8")
    (tmp_path / "q2_slow.sql").write_text("SELECT pg_sleep(0.25)", encoding="utf-8")
    bench = run_module(capsys, bench_args(cluster, queries_dir=str(tmp_path), run_id="run-budget", iterations=60,
                                          warmup=5, concurrency=1, time_budget_s=1.5, min_iterations=3,
                                          throughput_seconds=0, store=False))["benchmark"]
    cheap, slow = bench["queries"]["q1_cheap"], bench["queries"]["q2_slow"]
    assert cheap["calls"] == 60 and cheap["pilot_ms"] < 250
    assert 3 <= slow["calls"] <= 6 and slow["pilot_ms"] >= 250  # (1.5 s - the cheap ones) / 0.25 s
    assert bench["duration_s"] < 2.5 and bench["time_budget_s"] == 1.5 and bench["min_iterations"] == 3


def test_each_caller_is_measured_in_sessions_of_its_own(cluster, db, capsys):
    """As the API's users: anon, an authenticated owner with its JWT claims, and the table's owner."""
    owner_uid = fetch(db, "SELECT owner_id::text FROM public.geometrias WHERE NOT publico AND owner_id IS NOT NULL"
                          " GROUP BY owner_id ORDER BY count(*) DESC, owner_id LIMIT 1")[0][0]
    roles = [dict(label="", role="", claims={}), dict(label="anon", role="anon", claims={}),
             dict(label="authenticated", role="authenticated", claims={"sub": owner_uid, "role": "authenticated"})]
    bench = run_module(capsys, bench_args(cluster, run_id="run-callers", iterations=4, roles=roles,
                                          store=False))["benchmark"]
    plain = sorted(query_id for query_id in bench["queries"] if "@" not in query_id)
    assert sorted(bench["queries"]) == sorted(plain + [q + "@anon" for q in plain] + [q + "@authenticated" for q in plain])
    counted = "q08_rpc_resumo_anual"  # counts every row the caller may read
    rows = {caller: bench["queries"][counted + suffix]["fingerprint"] for caller, suffix in
            (("owner", ""), ("anon", "@anon"), ("authenticated", "@authenticated"))}
    assert len(set(rows.values())) == 3  # RLS: each caller reads other rows
    for query_id, stats in bench["queries"].items():
        assert stats["calls"] == 4 and stats["caller"] == (query_id.split("@")[1] if "@" in query_id else None)
        # pg_stat_statements counts each caller's executions apart, by its role
        assert stats["statements"]["calls"] == 4, query_id


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


@pytest.fixture(scope="module")
def cluster():
    with pgcluster.running_cluster() as running:
        running.build_reference_db(DB, features=251)
        running.run_sql_file(DB, os.path.join(SCHEMA_DIR, "deploy.sql"))
        running.run_sql_file(DB, os.path.join(PROVENANCE_DIR, "deploy.sql"))
        yield running


@pytest.fixture
def db(cluster):
    conn = cluster.connect(DB)
    yield conn
    conn.close()


def bench_args(cluster, **overrides):
    args = dict(cluster.login_args(DB), queries_dir=QUERIES_DIR, run_id="test-run",
                stage="baseline", iterations=4, warmup=1, concurrency=2, throughput_seconds=0.05)
    args.update(overrides)
    return args


def fetch(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def execute(conn, statement):
    with conn.cursor() as cur:
        cur.execute(statement)


def test_run_measures_and_stores(cluster, db, capsys):
    given = dict(git_commit="abc123", features=251)
    result = run_module(capsys, bench_args(cluster, run_id="run-store", provenance=given))
    assert not result.get("failed"), result
    assert result["changed"] is True
    bench = result["benchmark"]
    assert bench["stored"] is True
    assert (bench["run_id"], bench["stage"], bench["as_role"]) == ("run-store", "baseline", None)
    assert bench["executions"] == 40
    assert bench["duration_s"] > 0
    assert bench["qps"] == pytest.approx(40 / bench["duration_s"], rel=1e-3)
    assert bench["server_version"].startswith("15.")
    assert bench["blks_hit"] + bench["blks_read"] > 0
    assert 0 < bench["cache_hit_ratio"] <= 1
    assert list(bench["queries"]) == QUERY_IDS
    for query_id, stats in bench["queries"].items():
        assert stats["calls"] == 4 and len(stats["samples_ms"]) == 4, query_id
        assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"] \
            <= stats["max_ms"], query_id
        assert stats["min_ms"] <= stats["mean_ms"] <= stats["max_ms"], query_id
        assert SHA256.match(stats["fingerprint"]) and SHA256.match(stats["sql_sha256"])
        assert stats["shared_hit"] + stats["shared_read"] > 0, query_id
    rows = {query_id: stats["result_rows"] for query_id, stats in bench["queries"].items()}
    assert rows["q03_knn"] == 10
    assert rows["q10_geojson_export_bbox"] == 1
    assert min(rows[q] for q in QUERY_IDS if q != "q09_point_in_polygon") >= 1

    assert fetch(db, "SELECT executions, concurrency, cache_hit_ratio FROM stage4_benchmark.runs"
                     " WHERE run_id = 'run-store'") == [(40, 2, bench["cache_hit_ratio"])]
    stored = fetch(db, "SELECT query_id, calls, fingerprint, cardinality(samples_ms)"
                       " FROM stage4_benchmark.query_results WHERE run_id = 'run-store'"
                       " ORDER BY query_id")
    assert stored == [(q, 4, bench["queries"][q]["fingerprint"], 4) for q in QUERY_IDS]
    catalog = dict(fetch(db, "SELECT query_id, sql_sha256 FROM stage4_benchmark.queries"))
    assert catalog == {q: bench["queries"][q]["sql_sha256"] for q in QUERY_IDS}

    # What the benchmark_provenance change stores.
    assert (bench["prepared"], bench["order"], bench["seed"]) \
        == (True, "interleaved", scheduling.default_seed("run-store", "baseline"))
    assert bench["stats_source"] == "pg_stat_statements"
    provenance = bench["provenance"]
    assert {key: provenance[key] for key in given} == given
    assert provenance["server"]["version"] == bench["server_version"]
    assert set(provenance["server"]["settings"]) == set(bench_session.PROVENANCE_SETTINGS)
    assert provenance["client"]["cpu_count"] >= 1 and len(provenance["client"]["load_average"]) == 3
    assert provenance["measurement"]["concurrency"] == 2 and provenance["measurement"]["order"] == "interleaved"
    stored_run = fetch(db, "SELECT prepared, execution_order, seed, stats_source, provenance"
                           " FROM stage4_benchmark.runs WHERE run_id = 'run-store'")
    assert stored_run == [(True, "interleaved", bench["seed"], "pg_stat_statements", provenance)]
    stored_queries = dict(fetch(db, "SELECT query_id, jsonb_build_object('qps', qps, 'ci', ci,"
                                    " 'statements', statements, 'plan', plan, 'queryid', queryid)"
                                    " FROM stage4_benchmark.query_results WHERE run_id = 'run-store'"))
    for query_id, stats in bench["queries"].items():
        assert stored_queries[query_id] == dict(
            qps=stats["qps"], statements=stats["statements"], plan=stats["plan"], queryid=stats["queryid"],
            ci=dict(level=0.95, mean_ci_ms=stats["mean_ci_ms"], p50_ci_ms=None, p95_ci_ms=None,
                    p99_ci_ms=None)), query_id


def test_run_returns_server_counters_plans_and_throughput(cluster, capsys):
    bench = run_module(capsys, bench_args(cluster, run_id="run-details", iterations=6,
                                          store=False))["benchmark"]
    for query_id, stats in bench["queries"].items():
        # The prepared EXECUTEs count on the query id of the plain statement, the timed ones only
        # (neither the warm-up, nor the fingerprint, EXPLAIN or throughput executions).
        assert isinstance(stats["queryid"], int), query_id
        assert stats["statements"]["calls"] == 6, query_id
        assert stats["statements"]["shared_blks_hit"] + stats["statements"]["shared_blks_read"] > 0, query_id
        assert stats["statements"]["mean_exec_time_ms"] > 0, query_id
        assert stats["throughput_executions"] >= 2 and stats["qps"] > 0, query_id
        assert len(stats["samples_ms"]) == 6 and stats["mean_ci_ms"][0] <= stats["mean_ms"] <= stats["mean_ci_ms"][1]
        plan = stats["plan"]
        assert SHA256.match(plan["shape_sha256"]) and plan["node_types"] and plan["execution_ms"] > 0, query_id
        assert plan["shape"].split("(")[0] in plan["node_types"], query_id
    assert "public.geometrias" in bench["queries"]["q01_bbox_intersects"]["plan"]["relations"]
    assert bench["queries"]["q03_knn"]["plan"]["shape"].startswith("Limit(")
    assert bench["queries"]["q01_bbox_intersects"]["plan"]["partitions_scanned"] == 0  # not partitioned here
    # As pgbench -M prepared: the prepared statements through libpq, no row turned into Python objects.
    assert bench["provenance"]["measurement"]["executor"] == "libpq PQexecPrepared"


def test_without_pg_stat_statements_falls_back(cluster, db, capsys):
    execute(db, "DROP EXTENSION pg_stat_statements")
    try:
        bench = run_module(capsys, bench_args(cluster, run_id="run-nopgss", iterations=2,
                                              store=False))["benchmark"]
    finally:
        execute(db, "CREATE EXTENSION pg_stat_statements SCHEMA extensions")
    assert bench["stats_source"] == "pg_stat_database"
    assert all(stats["statements"] is None for stats in bench["queries"].values())
    assert bench["blks_hit"] + bench["blks_read"] > 0


def test_sequential_unprepared_run_gives_the_same_answers(cluster, capsys):
    interleaved = run_module(capsys, bench_args(cluster, run_id="run-orders", iterations=3,
                                                store=False))["benchmark"]
    sequential = run_module(capsys, bench_args(cluster, run_id="run-orders", iterations=3, order="sequential",
                                               prepared=False, throughput_seconds=0, concurrency=3,
                                               seed=11, store=False))["benchmark"]
    assert (sequential["order"], sequential["prepared"], sequential["seed"]) == ("sequential", False, 11)
    assert sequential["executions"] == 30 and sequential["concurrency"] == 3
    for query_id, stats in sequential["queries"].items():
        assert stats["fingerprint"] == interleaved["queries"][query_id]["fingerprint"], query_id
        assert stats["calls"] == 3 and stats["statements"]["calls"] == 3, query_id
        assert stats["qps"] is None and stats["throughput_executions"] is None, query_id


def test_more_clients_than_iterations(cluster, capsys):
    bench = run_module(capsys, bench_args(cluster, run_id="run-few", iterations=1, concurrency=3,
                                          store=False))["benchmark"]
    assert bench["concurrency"] == 1 and bench["executions"] == 10
    assert all(stats["throughput_executions"] >= 3 for stats in bench["queries"].values())


def pool_throughput(params, statement, clients, seconds):
    """One throughput phase of `statement` on `clients` worker processes, as run_benchmark() runs each query's."""
    params = dict(gis_benchmark.with_defaults(params), prepared=True)
    queries = [dict(query_id="statement", sql=bench_queries.strip_statement(statement))]
    with workers.WorkerPool(params, queries, [dict(query=0, seconds=seconds)], clients) as pool:
        payloads = pool.run_phase(0)
        pool.wait_all("exit")
    return workers.throughput(payloads)


def test_a_throughput_phase_counts_every_client_s_executions(cluster):
    params = dict(cluster.login_args(DB), as_role="anon")
    with open(os.path.join(QUERIES_DIR, "q09_point_in_polygon.sql"), encoding="utf-8") as handle:
        measured = pool_throughput(params, handle.read(), clients=2, seconds=0.2)
    assert measured["executions"] >= 2
    assert measured["seconds"] >= 0.2
    assert measured["qps"] == pytest.approx(measured["executions"] / measured["seconds"], rel=1e-3)
    assert measured["client"] == "libpq PQexecPrepared"


def test_a_throughput_phase_reports_an_error_raised_while_executing(cluster):
    """Planned at its first execution, through libpq: the error is the server's, as for a cursor's call."""
    with pytest.raises(bench_session.BenchmarkError, match="query statement failed: .*division by zero"):
        pool_throughput(cluster.login_args(DB), "SELECT 1 / (random() * 0)::int;", 2, 0.1)


def test_an_unprepared_throughput_phase_fetches_with_a_cursor(cluster):
    conn = bench_session.connect(gis_benchmark.with_defaults(cluster.login_args(DB)))
    try:
        start, end, count, client = workers.run_for((conn, "SELECT 1"), 0.05)
    finally:
        conn.close()
    assert count >= 1 and end - start >= 0.05 and client == "psycopg execute + fetchall"


def test_latency_samples_run_through_the_throughput_executor_and_report_the_query_that_failed(cluster):
    """Prepared: through libpq, as the throughput loop; plain SQL: a cursor per execution."""
    conn = bench_session.connect(gis_benchmark.with_defaults(cluster.login_args(DB)))
    try:
        texts = workers.prepare_statements([conn], [dict(sql="SELECT 1"), dict(sql="SELECT 2")], True)
        start, end, samples, executor = workers.run_schedule(texts, [0, 1, 0])
        assert executor == "libpq PQexecPrepared"
        assert [len(values) for values in samples] == [2, 1] and end >= start
        _, _, samples, executor = workers.run_schedule([(conn, "SELECT 1"), (conn, "SELECT 2")], [1, 1])
        assert executor == "psycopg execute + fetchall" and [len(values) for values in samples] == [0, 2]
        with conn.cursor() as cur:
            cur.execute("DEALLOCATE ALL")
        texts = workers.prepare_statements([conn], [dict(sql="SELECT 1"), dict(sql="SELECT 1 / 0")], True)
        with pytest.raises(bench_session.QueryFailed, match="division by zero") as failure:
            workers.run_schedule(texts, [0, 1])
        assert failure.value.index == 1
    finally:
        conn.close()


def test_a_throughput_phase_reports_a_failing_statement(cluster):
    with pytest.raises(bench_session.BenchmarkError, match='query statement failed: .*"no_such_table"'):
        pool_throughput(cluster.login_args(DB), "SELECT * FROM no_such_table;", 2, 0.1)


def test_fingerprints_are_stable_and_reruns_replace(cluster, db, capsys):
    first = run_module(capsys, bench_args(cluster, run_id="run-pair"))["benchmark"]
    # Another stage, other settings: same answers.
    second = run_module(capsys, bench_args(cluster, run_id="run-pair", stage="candidate",
                                           concurrency=1, warmup=0, iterations=3))["benchmark"]
    assert {q: s["fingerprint"] for q, s in first["queries"].items()} \
        == {q: s["fingerprint"] for q, s in second["queries"].items()}
    assert fetch(db, "SELECT count(*), count(*) FILTER (WHERE fingerprint_changed)"
                     " FROM stage4_benchmark.delta_vs_baseline"
                     " WHERE run_id = 'run-pair' AND stage = 'candidate'") == [(10, 0)]
    # Storing the same (run_id, stage) again replaces the run.
    run_module(capsys, bench_args(cluster, run_id="run-pair", stage="candidate", iterations=2))
    assert fetch(db, "SELECT count(*), min(calls), max(calls)"
                     " FROM stage4_benchmark.query_results"
                     " WHERE run_id = 'run-pair' AND stage = 'candidate'") == [(10, 2, 2)]
    assert fetch(db, "SELECT count(*) FROM stage4_benchmark.runs WHERE run_id = 'run-pair'") \
        == [(2,)]
    latest = fetch(db, "SELECT DISTINCT stage, run_id FROM stage4_benchmark.latest_per_stage"
                       " WHERE stage = 'candidate'")
    assert latest == [("candidate", "run-pair")]


def test_check_mode_stores_nothing(cluster, db, capsys):
    count = "SELECT count(*) FROM stage4_benchmark.runs WHERE run_id = 'run-check'"
    result = run_module(capsys, bench_args(cluster, run_id="run-check", iterations=1,
                                           _ansible_check_mode=True))
    assert result["changed"] is False
    assert result["benchmark"]["stored"] is False
    assert len(result["benchmark"]["queries"]) == 10
    assert fetch(db, count) == [(0,)]


def test_store_false_stores_nothing(cluster, db, capsys):
    result = run_module(capsys, bench_args(cluster, run_id="run-nostore", iterations=1,
                                           store=False))
    assert (result["changed"], result["benchmark"]["stored"]) == (False, False)
    assert fetch(db, "SELECT count(*) FROM stage4_benchmark.runs"
                     " WHERE run_id = 'run-nostore'") == [(0,)]


def test_as_role_applies_row_level_security(cluster, db, capsys):
    bench = run_module(capsys, bench_args(cluster, run_id="run-anon", iterations=1,
                                          as_role="anon", store=False))["benchmark"]
    assert bench["as_role"] == "anon"
    # anon sees the public features only (policy geometrias_leitura_publica).
    visible = fetch(db, "SELECT count(*) FILTER (WHERE publico), count(*) FROM public.geometrias"
                        " WHERE ST_Intersects(geom, ST_MakeEnvelope(-46.7833, -23.7005,"
                        " -46.4833, -23.4005, 4326))")[0]
    assert visible[0] < visible[1]
    assert bench["queries"]["q01_bbox_intersects"]["result_rows"] == visible[0]


def test_a_read_only_login_measures_as_the_api_does(cluster, db, capsys):
    """A login that may only read (a member of anon, nothing else) can run the benchmark when
    nothing is stored; it sees what anon sees."""
    with db.cursor() as cur:
        cur.execute("DROP ROLE IF EXISTS leitor_benchmark")
        cur.execute("CREATE ROLE leitor_benchmark LOGIN NOINHERIT PASSWORD %s IN ROLE anon", (cluster.password,))
    try:
        args = dict(bench_args(cluster, run_id="run-reader", iterations=2, as_role="anon", store=False),
                    login_user="leitor_benchmark")
        reader = run_module(capsys, args)["benchmark"]
        anon = run_module(capsys, bench_args(cluster, run_id="run-anon-2", iterations=2, as_role="anon",
                                             store=False))["benchmark"]
        assert sorted(reader["queries"]) == sorted(anon["queries"]) and len(reader["queries"]) == 10
        assert {q: r["fingerprint"] for q, r in reader["queries"].items()} == \
            {q: r["fingerprint"] for q, r in anon["queries"].items()}
        # Storing needs the benchmark schema, which a read-only login cannot write: said before measuring.
        refused = run_module(capsys, dict(args, store=True))
        assert refused["failed"] is True and "stage4_benchmark" in refused["msg"]
    finally:
        with db.cursor() as cur:
            cur.execute("DROP ROLE leitor_benchmark")


def test_unknown_role_fails_clearly(cluster, capsys):
    result = run_module(capsys, bench_args(cluster, as_role="no_such_role", store=False))
    assert result["failed"] is True
    assert result["msg"].startswith("cannot prepare a benchmark session on postgres@127.0.0.1:")
    assert 'role "no_such_role" does not exist' in result["msg"]


def test_sessions_are_read_only(cluster, db, tmp_path, capsys):
    (tmp_path / "q_write.sql").write_text("DELETE FROM public.geometrias RETURNING id;\n")
    result = run_module(capsys, bench_args(cluster, queries_dir=str(tmp_path), store=False))
    assert result["failed"] is True
    assert "query q_write" in result["msg"] and "read-only transaction" in result["msg"]
    assert fetch(db, "SELECT count(*) FROM public.geometrias") == [(251,)]


def test_missing_benchmark_schema_fails_before_measuring(cluster, capsys):
    result = run_module(capsys, bench_args(cluster, login_db="postgres"))
    assert result["failed"] is True
    assert "stage4_benchmark" in result["msg"] and "store=false" in result["msg"]


def test_missing_provenance_columns_fail_before_measuring(cluster, capsys):
    cluster.create_database("no_provenance")
    cluster.run_sql_file("no_provenance", os.path.join(SCHEMA_DIR, "deploy.sql"))
    result = run_module(capsys, bench_args(cluster, login_db="no_provenance"))
    assert result["failed"] is True
    assert "change benchmark_provenance" in result["msg"] and "runs.provenance" in result["msg"]


def test_wrong_password_fails_without_leaking_it(cluster, capsys):
    password = "Wrong-Secret-" + "x7Q2"
    result = run_module(capsys, bench_args(cluster, login_password=password))
    assert result["failed"] is True
    assert password not in json.dumps(result)
    assert cluster.password not in json.dumps(result)
    assert "127.0.0.1:%d" % cluster.port in result["msg"] and DB in result["msg"]
    assert "password authentication failed" in result["msg"]


def test_unreachable_port_fails_clearly(cluster, capsys):
    port = pgcluster.free_port()
    result = run_module(capsys, bench_args(cluster, login_port=port, connect_timeout=2))
    assert result["failed"] is True
    assert result["msg"].startswith("cannot connect to postgres@127.0.0.1:%d/%s" % (port, DB))


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

def test_schema_deploy_verify_revert(cluster):
    cluster.create_database("schema_check")
    deploy, verify, revert = (os.path.join(SCHEMA_DIR, name)
                              for name in ("deploy.sql", "verify.sql", "revert.sql"))
    cluster.run_sql_file("schema_check", deploy)
    cluster.run_sql_file("schema_check", verify)

    conn = cluster.connect("schema_check")
    try:
        # Not reachable by the API roles (created cluster-wide by the fixture).
        privileges = fetch(conn, "SELECT has_schema_privilege(r, 'stage4_benchmark', 'USAGE')"
                                 " FROM unnest(ARRAY['anon', 'authenticated']) AS r")
        assert privileges == [(False,), (False,)]
        execute(conn, "GRANT USAGE ON SCHEMA stage4_benchmark TO anon")
        with pytest.raises(psycopg2.Error, match="anon can use schema stage4_benchmark"):
            cluster.run_sql_file("schema_check", verify)
        execute(conn, "REVOKE USAGE ON SCHEMA stage4_benchmark FROM anon")

        cluster.run_sql_file("schema_check", revert)
        assert fetch(conn, "SELECT to_regnamespace('stage4_benchmark')") == [(None,)]
        with pytest.raises(psycopg2.errors.UndefinedTable):
            cluster.run_sql_file("schema_check", verify)
        cluster.run_sql_file("schema_check", deploy)  # deployable again after a revert
        cluster.run_sql_file("schema_check", verify)
    finally:
        conn.close()


def test_provenance_change_deploy_verify_revert(cluster):
    cluster.create_database("provenance_check")
    cluster.run_sql_file("provenance_check", os.path.join(SCHEMA_DIR, "deploy.sql"))
    conn = cluster.connect("provenance_check")
    try:
        with pytest.raises(psycopg2.errors.UndefinedColumn):
            cluster.run_sql_file("provenance_check", os.path.join(PROVENANCE_DIR, "verify.sql"))
        cluster.run_sql_file("provenance_check", os.path.join(PROVENANCE_DIR, "verify_reverted.sql"))
        pgcluster.run_change(conn, "benchmark_provenance")  # deploy + verify
        pgcluster.run_change(conn, "benchmark_provenance")  # deployable again (IF NOT EXISTS)
        with pytest.raises(psycopg2.Error, match="still deployed"):
            cluster.run_sql_file("provenance_check", os.path.join(PROVENANCE_DIR, "verify_reverted.sql"))
        execute(conn, "ALTER TABLE stage4_benchmark.query_results ALTER COLUMN plan TYPE text")
        with pytest.raises(psycopg2.Error, match="query_results.plan is text, not jsonb"):
            cluster.run_sql_file("provenance_check", os.path.join(PROVENANCE_DIR, "verify.sql"))
        pgcluster.run_change(conn, "benchmark_provenance", state="reverted")  # revert + verify_reverted
        assert fetch(conn, "SELECT count(*) FROM information_schema.columns"
                           " WHERE table_schema = 'stage4_benchmark' AND column_name IN ('provenance', 'plan')") \
            == [(0,)]
        cluster.run_sql_file("provenance_check", os.path.join(SCHEMA_DIR, "verify.sql"))  # the rest stays
    finally:
        conn.close()


KNN_BY_DISTANCE_AND_ID = """
    SELECT g.id, g.nome, g.categoria,
           round(ST_Distance(g.geom::geography, ST_SetSRID(ST_MakePoint(-43.1822, -22.9711), 4326)::geography)::numeric, 2)
    FROM public.geometrias AS g
    ORDER BY g.geom <-> ST_SetSRID(ST_MakePoint(-43.1822, -22.9711), 4326), g.id
    LIMIT 10"""


def plan_nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def test_q03_walks_the_gist_index_and_answers_as_order_by_distance_and_id(db):
    """q03 returns the rows, in order, of ORDER BY distance, id LIMIT 10, and its plan can take them
    from the GiST index in distance order, which that ORDER BY cannot on PostgreSQL 15 (seen without
    sequential scans, so that the index is chosen at 251 features too)."""
    q03 = next(q["sql"] for q in bench_queries.load_queries(QUERIES_DIR) if q["query_id"] == "q03_knn")
    assert fetch(db, q03) == fetch(db, KNN_BY_DISTANCE_AND_ID)
    execute(db, "SET enable_seqscan = off")
    try:
        for query, walks_the_index in ((q03, True), (KNN_BY_DISTANCE_AND_ID, False)):
            plan = fetch(db, "EXPLAIN (FORMAT JSON) " + query)[0][0][0]["Plan"]
            ordered = [n for n in plan_nodes(plan) if n.get("Order By") and n.get("Index Name") == "geometrias_geom_gist"]
            assert bool(ordered) is walks_the_index, query
    finally:
        execute(db, "RESET enable_seqscan")
