"""plugins/modules/gis_benchmark.py and the benchmark schema against a real throwaway cluster
(tests/pgcluster.py) holding the reference fixture at 251 features and the benchmark schema, with few
iterations to keep the file fast.
"""
import json
import os
import re
import sys

import psycopg2
import pytest
from ansible.module_utils.testing import patch_module_args

# Importable however pytest is invoked (its rootdir decides which conftest.py it loads).
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path[:0] = [path for path in (TESTS, REPO) if path not in sys.path]

from ansible_collections.biblioteca.stage4.plugins.modules import gis_benchmark  # noqa: E402
from ansible_collections.biblioteca.stage4.plugins.module_utils import bench_queries, bench_session, workers  # noqa: E402
from ansible_collections.biblioteca.stage4.plugins.module_utils import schedule as scheduling  # noqa: E402
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


def test_only_measures_the_named_queries_of_their_callers(cluster, capsys):
    """The gate's "measure again" for the verdicts still open: one caller's query, another's."""
    roles = [dict(label="", role="", claims={}), dict(label="anon", role="anon", claims={})]
    bench = run_module(capsys, bench_args(cluster, run_id="run-only", iterations=3, roles=roles, store=False,
                                          only=["q03_knn@anon", "q09_point_in_polygon"]))["benchmark"]
    assert sorted(bench["queries"]) == ["q03_knn@anon", "q09_point_in_polygon"]
    assert bench["queries"]["q03_knn@anon"]["caller"] == "anon" and bench["executions"] == 6
    failed = run_module(capsys, bench_args(cluster, run_id="run-only", store=False, only=["q03_knn@nobody"]))
    assert failed["failed"] and "only: no query is named q03_knn@nobody" in failed["msg"]


# --------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------


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
