"""State of BIBLIOTECA after Stage 4 converged (twice: converge + idempotence)."""
import datetime
import glob
import hashlib
import json
import os
import subprocess
import sys

import psycopg2
import pytest

from stage4_testlib import CLUSTER_DIR, PORT, connect, load_report, password, query, run_dirs, scalar

PROJECT = os.environ["MOLECULE_PROJECT_DIRECTORY"]
ROW_CHECKSUM = "SELECT count(*), md5(string_agg(g::text, '|' ORDER BY id)) FROM public.geometrias g"


@pytest.fixture(scope="module")
def reference_db():
    """A fresh, untouched reference database built with the same seed, to compare against."""
    subprocess.run([sys.executable, os.path.join(PROJECT, "scripts", "reference_db.py"), "--host=127.0.0.1",
                    f"--port={PORT}", "--user=postgres", "--dbname=BIBLIOTECA_REF", "--features=251", "--recreate"],
                   check=True, env=dict(os.environ, DB_PASSWORD=password()), capture_output=True)
    return "BIBLIOTECA_REF"


def test_geometrias_is_partitioned_by_year():
    assert scalar("SELECT pg_get_partkeydef('public.geometrias'::regclass)") == "RANGE (data_referencia)"
    partitions = [r[0] for r in query(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'public.geometrias'::regclass ORDER BY 1")]
    last_year = max(2029, datetime.date.today().year + 2)  # OPT4 keeps two years ahead, 2029 at least
    assert partitions == sorted([f"geometrias_p{year}" for year in range(2019, last_year + 1)] + ["geometrias_default"])
    assert scalar("SELECT count(*) FROM public.geometrias_default") == 0


def test_opt2_recorded_which_storage_path_ran():
    assert scalar("SELECT path FROM stage4.opt2_layout WHERE relation = 'public.geometrias'") == "portable"


def test_opt4_time_travel_creates_future_partitions():
    created = query("SELECT stage4.ensure_future_partitions('2033-06-01')")[0][0]  # rolled back after the query
    assert any(name.endswith("geometrias_p2035") for name in created)


def test_every_row_kept(reference_db):
    assert query(ROW_CHECKSUM) == query(ROW_CHECKSUM, dbname=reference_db)
    assert scalar("SELECT count(*) FROM public.geometrias") == 251


def test_identity_continues_where_it_was():
    with psycopg2.connect(host="127.0.0.1", port=PORT, user="postgres", password=password(),
                          dbname="BIBLIOTECA") as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO public.geometrias (nome, categoria, geom, data_referencia) "
                    "SELECT 'teste', 'lote', geom, DATE '2027-05-01' FROM public.geometrias LIMIT 1 RETURNING id")
        assert cur.fetchone()[0] == 252
        conn.rollback()


@pytest.mark.parametrize("catalog_query", [
    "SELECT policyname, permissive, roles::text, cmd, qual, with_check FROM pg_policies "
    "WHERE tablename = 'geometrias' ORDER BY 1",
    "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
    "WHERE table_schema = 'public' AND table_name IN ('geometrias', 'geometrias_publicas') ORDER BY 1, 2",
    "SELECT obj_description('public.geometrias'::regclass, 'pg_class')",
    "SELECT attname, col_description(attrelid, attnum) FROM pg_attribute "
    "WHERE attrelid = 'public.geometrias'::regclass AND attnum > 0 ORDER BY attnum",
    # The application's triggers (the key registry's own are checked below).
    "SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'public.geometrias'::regclass "
    "AND NOT tgisinternal AND tgname NOT LIKE 'stage4_unique_key%' ORDER BY 1",
    "SELECT replace(indexdef, ' ONLY ', ' ') FROM pg_indexes WHERE tablename = 'geometrias' "
    "AND indexname <> 'geometrias_pkey' ORDER BY 1",
    # Bodies change (OPT3, OPT5 read materialized views); the contract does not.
    "SELECT p.oid::regprocedure::text, pg_get_function_result(p.oid), p.prosecdef, p.provolatile, "
    "p.proacl::text, obj_description(p.oid, 'pg_proc'), pg_get_userbyid(p.proowner) FROM pg_proc p "
    "WHERE pronamespace = 'public'::regnamespace AND proname IN ('search_geometrias', 'geometrias_no_raio', "
    "'area_por_categoria', 'extensao_por_categoria', 'resumo_anual') ORDER BY 1",
    "SELECT pg_get_viewdef('public.geometrias_publicas'::regclass), "
    "(SELECT reloptions FROM pg_class WHERE oid = 'public.geometrias_publicas'::regclass)",
], ids=["policies", "grants", "table comment", "columns", "triggers", "indexes", "api functions", "view"])
def test_catalog_kept(reference_db, catalog_query):
    assert query(catalog_query) == query(catalog_query, dbname=reference_db)


def test_id_is_kept_unique_by_the_key_registry():
    """Partitioned, the primary key is (id, data_referencia): the registry holds every id under a primary key."""
    rows = scalar("SELECT count(*) FROM public.geometrias")
    assert scalar("SELECT count(*) FROM stage4_keys.geometrias") == rows
    assert scalar("SELECT count(*) FROM pg_partition_tree('public.geometrias') t WHERE NOT EXISTS "
                  "(SELECT 1 FROM pg_trigger g WHERE g.tgrelid = t.relid AND g.tgname = 'stage4_unique_key')") == 0


def test_rls_enabled_on_parent_and_every_partition():
    assert query("SELECT bool_and(c.relrowsecurity) FROM pg_partition_tree('public.geometrias') t "
                 "JOIN pg_class c ON c.oid = t.relid") == [(True,)]


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_see_what_they_saw(reference_db, role):
    sql = "SELECT id FROM public.geometrias ORDER BY id"
    assert query(sql, role=role) == query(sql, role=role, dbname=reference_db)
    assert scalar("SELECT count(*) FROM public.geometrias", role=role) == scalar(
        "SELECT count(*) FROM public.geometrias WHERE publico")


def test_owner_sees_own_private_rows(reference_db):
    owner = scalar("SELECT owner_id::text FROM public.geometrias WHERE NOT publico AND owner_id IS NOT NULL LIMIT 1")
    sql = "SELECT id FROM public.search_geometrias('parque') ORDER BY id"
    visible = "SELECT count(*) FROM public.geometrias"
    assert scalar(visible, role="authenticated", jwt_sub=owner) > scalar(visible, role="anon")
    assert query(sql, role="authenticated", jwt_sub=owner) == query(
        sql, role="authenticated", jwt_sub=owner, dbname=reference_db)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_partitions_not_readable_directly(role):
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        query("SELECT count(*) FROM public.geometrias_p2024", role=role)


def test_ledger_records_every_change_with_checksums():
    rows = dict(query("SELECT change, files->'deploy'->>'sha256' FROM stage4.ledger"))
    assert {"stage4_toolkit", "benchmark_schema", "opt1_temporal_partitioning", "opt2_storage_layout",
            "opt4_future_partitions"} <= set(rows)
    with open(os.path.join(PROJECT, "files/sql/opt1_temporal_partitioning/deploy.sql"), "rb") as handle:
        assert rows["opt1_temporal_partitioning"] == hashlib.sha256(handle.read()).hexdigest()


def test_benchmark_stored_for_baseline_and_opt1():
    stages = {r[0]: r[1] for r in query(
        "SELECT stage, count(*) FROM stage4_benchmark.query_results GROUP BY stage")}
    assert stages["baseline"] == 20 and stages["opt1"] == 10  # two runs measured baseline, one applied opt1


def test_first_run_applied_opt1_and_second_changed_nothing():
    first, second = [load_report(d) for d in run_dirs()[-2:]]
    ids = [o["id"] for o in first["optimizations"]]
    assert [o["status"] for o in first["optimizations"]] == ["applied: gate passed"] * len(ids)
    assert all(o["gate"]["passed"] for o in first["optimizations"])
    stages = [s["stage"] for s in first["stages"]]
    # The A/A control, then the baseline: the unchanged database measured twice before any change.
    assert [s for s in stages if not s.endswith("_after_restart")] == ["baseline_control", "baseline"] + ids
    assert "opt3_after_restart" in stages  # loading pg_cron for OPT4 restarted the server: opt3 measured again
    assert first["backup"]["sha256"] and os.path.exists(first["backup"]["file"])
    assert [o["status"] for o in second["optimizations"]] == ["already applied (ledger)"] * len(ids)
    assert second["backup"] is None


def test_reports_and_audit_trail_written(host):
    run_dir = run_dirs()[-2]
    for name in ("report.md", "report.json", "metrics_baseline.json", "metrics_opt1.json", "audit.jsonl"):
        report_file = host.file(os.path.join(run_dir, name))
        assert report_file.is_file and report_file.size > 0
    backup = load_report(run_dir)["backup"]
    assert host.file(backup["file"]).sha256sum == backup["sha256"]
    assert host.file(backup["file"] + ".sha256").contains(backup["sha256"])
    assert host.run("pg_restore --list %s", backup["file"]).rc == 0
    with open(os.path.join(run_dir, "audit.jsonl"), encoding="utf-8") as handle:
        entries = [json.loads(line) for line in handle]
    steps = [e["step"] for e in entries]
    for step in ("preflight", "backup", "stage4_toolkit", "benchmark_baseline", "opt1_temporal_partitioning",
                 "benchmark_opt1", "gate_opt1", "report"):
        assert step in steps
    opt1 = next(e for e in entries if e["step"] == "opt1_temporal_partitioning")
    assert opt1["outcome"] == "deployed" and len(opt1["sql_files"]["deploy"]["sha256"]) == 64


def test_html_report_written(host):
    run_dir = run_dirs()[-2]
    page = host.file(os.path.join(run_dir, "report.html"))
    assert page.is_file and page.size > 0
    assert load_report(run_dir)["backup"]["sha256"] in page.content_string


def test_no_secret_in_any_report():
    secret = password()
    for path in glob.glob(os.path.join(CLUSTER_DIR, "reports", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                assert secret not in handle.read(), path


def test_opt5_refresh_jobs_exist_and_a_refresh_succeeds():
    jobs = dict(query("SELECT jobname, command FROM cron.job WHERE jobname LIKE 'stage4_%'"))
    assert {"stage4_refresh_geometrias_busca", "stage4_refresh_resumo_categoria_ano",
            "stage4_refresh_extensao_categoria", "stage4_ensure_future_partitions"} <= set(jobs)
    with connect() as conn, conn.cursor() as cur:
        for name, command in jobs.items():
            if name.startswith("stage4_refresh_"):
                assert "REFRESH MATERIALIZED VIEW CONCURRENTLY" in command
                cur.execute(command)  # what the job runs, in a transaction rolled back afterwards
    assert query("SELECT count(*) FROM public.area_por_categoria(2024)")[0][0] > 0


def test_no_materialized_view_readable_by_the_api_roles():
    assert query("SELECT count(*) FROM pg_class c, unnest(ARRAY['anon', 'authenticated']) r "
                 "WHERE c.relkind = 'm' AND has_table_privilege(r, c.oid, 'SELECT')")[0][0] == 0
