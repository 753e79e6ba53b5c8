"""Tests of scripts/reference_db.py and files/fixture/reference_schema.sql.

They build the BIBLIOTECA fixture in a throwaway PostgreSQL cluster started
with scripts/localdb.py, then check its content, its determinism, the API
functions and the row level security.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest

REPO = Path(__file__).resolve().parents[2]
LOCALDB = REPO / "scripts" / "localdb.py"
BUILDER = REPO / "scripts" / "reference_db.py"
FEATURES = 251
SEED = 20260207


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    def __init__(self, folder, port):
        self.port = port
        self.env = dict(os.environ, STAGE4_LOCALDB_DIR=folder, STAGE4_LOCALDB_PORT=str(port))

    def localdb(self, command, check=True):
        subprocess.run([sys.executable, str(LOCALDB), command], env=self.env, check=check,
                       capture_output=True, text=True)

    def start(self):
        self.localdb("start")
        password = Path(self.env["STAGE4_LOCALDB_DIR"], "password").read_text().strip()
        self.env["DB_PASSWORD"] = password

    def build(self, dbname, *options, seed=SEED):
        """Run the builder; return its JSON report and its stderr."""
        result = subprocess.run(
            [sys.executable, str(BUILDER), "--host", "127.0.0.1", "--port", str(self.port),
             "--user", "postgres", "--dbname", dbname, "--features", str(FEATURES),
             "--seed", str(seed), *options],
            env=self.env, capture_output=True, text=True, check=True)
        return json.loads(result.stdout), result.stderr

    def connect(self, dbname):
        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname=dbname, password=self.env["DB_PASSWORD"])


@pytest.fixture(scope="module")
def cluster():
    # The server runs as the postgres OS user, which must be able to enter the
    # folder: pytest's own temporary folders are private (0700).
    folder = tempfile.mkdtemp(prefix="stage4-test-", dir="/tmp")
    os.chmod(folder, 0o755)
    server = Cluster(folder, free_port())
    try:
        server.start()
        yield server
    finally:
        server.localdb("destroy", check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def report(cluster):
    """The first build of BIBLIOTECA."""
    return cluster.build("BIBLIOTECA")[0]


@pytest.fixture
def db(cluster, report):
    """A connection to BIBLIOTECA whose work is rolled back afterwards."""
    conn = cluster.connect("BIBLIOTECA")
    try:
        yield conn.cursor()
    finally:
        conn.rollback()
        conn.close()


def scalar(cur, query, params=None):
    cur.execute(query, params)
    return cur.fetchone()[0]


def test_loads_the_requested_features(report, db):
    assert report["database"] == "BIBLIOTECA"
    assert report["features"] == FEATURES
    assert report["changed"] is True
    assert scalar(db, "SELECT count(*) FROM public.geometrias") == FEATURES
    # Ids come from the identity, which must continue right after the last row.
    assert scalar(db, "SELECT max(id) FROM public.geometrias") == FEATURES
    assert scalar(db, "SELECT last_value FROM public.geometrias_id_seq") == FEATURES


def test_checksum_is_reproducible(cluster, report, db):
    assert cluster.build("BIBLIOTECA_B")[0]["checksum"] == report["checksum"]
    assert cluster.build("BIBLIOTECA_C", seed=SEED + 1)[0]["checksum"] != report["checksum"]
    # The streamed checksum is the documented SQL expression.
    db.execute("SET TimeZone = 'UTC'")
    assert scalar(db, "SELECT md5(string_agg(g::text, '|' ORDER BY id))"
                      " FROM public.geometrias AS g") == report["checksum"]


def test_geometries_are_valid_multipolygons_in_4326(db):
    db.execute("""
        SELECT count(*) FILTER (WHERE NOT ST_IsValid(geom)
                                   OR GeometryType(geom) <> 'MULTIPOLYGON'
                                   OR ST_SRID(geom) <> 4326),
               max(ST_NumGeometries(geom)),
               count(*) FILTER (WHERE area_m2 IS DISTINCT FROM ST_Area(geom::geography))
        FROM public.geometrias""")
    invalid, most_parts, wrong_area = db.fetchone()
    assert invalid == 0
    assert most_parts == 3
    assert wrong_area == 0


def test_reference_years_span_2019_to_2026(db):
    db.execute("SELECT DISTINCT extract(year FROM data_referencia)::int"
               " FROM public.geometrias ORDER BY 1")
    assert [year for (year,) in db.fetchall()] == list(range(2019, 2027))


@pytest.mark.parametrize("query", [
    "SELECT * FROM public.search_geometrias('parque')",
    "SELECT * FROM public.search_geometrias('escola OR praça',"
    " ST_MakeEnvelope(-75, -35, -30, 6, 4326), 10)",
    "SELECT * FROM public.geometrias_no_raio(%(lon)s, %(lat)s, 1000)",
    "SELECT * FROM public.area_por_categoria(2024)",
    "SELECT * FROM public.extensao_por_categoria()",
    "SELECT * FROM public.resumo_anual()",
])
def test_api_functions_return_rows_to_anon(db, query):
    db.execute("SELECT ST_X(ST_PointOnSurface(geom)), ST_Y(ST_PointOnSurface(geom))"
               " FROM public.geometrias WHERE publico ORDER BY id LIMIT 1")
    lon, lat = db.fetchone()
    db.execute("SET LOCAL ROLE anon")
    db.execute(query, {"lon": lon, "lat": lat})
    assert db.fetchall()


def test_anon_sees_only_public_rows(db):
    public = scalar(db, "SELECT count(*) FROM public.geometrias WHERE publico")
    assert 0 < public < FEATURES
    db.execute("SET LOCAL ROLE anon")
    assert scalar(db, "SELECT count(*) FROM public.geometrias") == public
    assert scalar(db, "SELECT bool_and(publico) FROM public.geometrias") is True
    assert scalar(db, "SELECT count(*) FROM public.geometrias_publicas") == public


def test_authenticated_sees_public_and_own_rows(db):
    owner = scalar(db, "SELECT owner_id FROM public.geometrias WHERE NOT publico"
                       " ORDER BY id LIMIT 1")
    db.execute("SELECT id FROM public.geometrias WHERE publico OR owner_id = %s", (owner,))
    expected = {row_id for (row_id,) in db.fetchall()}
    db.execute("SET LOCAL ROLE authenticated")
    db.execute("SELECT set_config('request.jwt.claims', %s, true)",
               (json.dumps({"sub": str(owner), "role": "authenticated"}),))
    db.execute("SELECT id FROM public.geometrias")
    assert {row_id for (row_id,) in db.fetchall()} == expected
    # The view only ever shows public rows, whoever asks.
    assert scalar(db, "SELECT bool_and(g.publico) FROM public.geometrias_publicas AS v"
                      " JOIN public.geometrias AS g USING (id)") is True


def test_second_run_without_recreate_is_a_noop(cluster, report):
    again, stderr = cluster.build("BIBLIOTECA")
    assert again["changed"] is False
    assert "already" in stderr
    assert (again["features"], again["checksum"]) == (FEATURES, report["checksum"])


def test_the_real_dataset_has_real_census_tract_outlines(cluster, report):
    """--dataset real: the same rows, drawn alike, but every outline is one of the 195 real census tracts
    of Albuquerque (163 vertices on average), valid, at its real size, moved to its Brazilian city."""
    real = cluster.build("BIBLIOTECA_REAL", "--dataset", "real")[0]
    assert (real["dataset"], real["features"]) == ("real", FEATURES)
    assert real["checksum"] != report["checksum"]
    assert cluster.build("BIBLIOTECA_REAL_B", "--dataset", "real")[0]["checksum"] == real["checksum"]
    conn = cluster.connect("BIBLIOTECA_REAL")
    try:
        cur = conn.cursor()
        cur.execute("""
            SELECT count(*) FILTER (WHERE NOT ST_IsValid(geom) OR GeometryType(geom) <> 'MULTIPOLYGON'
                                       OR ST_SRID(geom) <> 4326),
                   count(*) FILTER (WHERE area_m2 IS DISTINCT FROM ST_Area(geom::geography)),
                   avg(ST_NPoints(geom)) > 100,
                   count(DISTINCT ST_NPoints(geom)) > 50,
                   count(*) FILTER (WHERE NOT ST_Intersects(geom, ST_MakeEnvelope(-75, -35, -33, 6, 4326)))
            FROM public.geometrias""")
        assert cur.fetchone() == (0, 0, True, True, 0)
        # Public and private rows, searchable names: the rest of the generation is the synthetic one's.
        cur.execute("SELECT count(*) FILTER (WHERE publico) > 0, count(*) FILTER (WHERE NOT publico) > 0, "
                    "count(*) FILTER (WHERE nome ILIKE '%parque%') > 0 FROM public.geometrias")
        assert cur.fetchone() == (True, True, True)
    finally:
        conn.close()
