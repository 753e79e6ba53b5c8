#!/usr/bin/env python3
"""Build the reference database (the BIBLIOTECA fixture) with synthetic features.

    scripts/reference_db.py --host 127.0.0.1 --port 55432 --user postgres \\
        --dbname BIBLIOTECA --features 251 [--seed 20260207] [--recreate] \\
        [--postgis-schema extensions] [--dataset synthetic|real]

Creates the database when it is missing, loads files/fixture/reference_schema.sql
and fills public.geometrias with --features polygons around Brazilian cities.
The content depends only on --seed and --features, so two builds with the same
arguments have the same checksum. If the database already holds
public.geometrias the script changes nothing (unless --recreate, which drops
the database, disconnecting its sessions, and builds it again).

--postgis-schema installs PostGIS in another schema than Supabase's `extensions`
(for example `public`, where older Supabase projects and most self-hosted
servers have it); the schema `extensions` is created all the same, and the
functions keep their `SET search_path = public, extensions`, as users write it.

--dataset real gives every feature the outline of a real census tract instead of a
generated star: one of the 195 tracts of Albuquerque, NM (US Census 2000, 163
vertices on average, from libpysal's bundled example 10740; `make setup` downloads
that wheel to tools/real-polygons), at its real size, moved to the feature's place
around its Brazilian city. Everything else is drawn as for the synthetic dataset.

The password comes from DB_PASSWORD, else PGPASSWORD; it is never printed.
Prints one JSON line: database, features, checksum, seconds and changed
(false when the database was already built). The checksum is
md5(string_agg(g::text, '|' ORDER BY id)) over public.geometrias g, computed
with TimeZone=UTC and DateStyle=ISO.
"""
import argparse
import datetime
import hashlib
import io
import json
import os
import re
import sys
import time
import uuid
import zipfile
from pathlib import Path
from typing import NamedTuple

import psycopg2
from psycopg2 import sql

SCHEMA_FILE = Path(__file__).resolve().parent.parent / "files" / "fixture" / "reference_schema.sql"
REAL_POLYGONS_WHEEL = (Path(__file__).resolve().parent.parent / "tools" / "real-polygons"
                       / "libpysal-4.14.1-py3-none-any.whl")
REAL_POLYGONS_SHAPEFILE = "libpysal/examples/10740/10740"

# Fixed output settings, so that g::text (hence the checksum) does not depend on
# the server's or the client's defaults.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=1"

FIRST_DAY = datetime.date(2019, 1, 1)
LAST_DAY = datetime.date(2026, 12, 31)
OWNERS = 20
PUBLIC_SHARE = 0.8
MULTIPART_SHARE = 0.25


class City(NamedTuple):
    name: str
    uf: str
    ibge: int
    lon: float
    lat: float
    spread: float  # standard deviation of the features around the centre, degrees
    weight: int  # population / 100 000 (Censo 2022)


class Category(NamedTuple):
    name: str
    weight: int  # percent of the features
    min_radius: float  # metres; the size is log-uniform between the two
    max_radius: float
    prefixes: tuple  # as many in every category: together they form one 2-D SQL array
    opening: str  # first words of the description


CITIES = (
    City("São Paulo", "SP", 3550308, -46.6333, -23.5505, 0.30, 115),
    City("Rio de Janeiro", "RJ", 3304557, -43.1729, -22.9068, 0.25, 62),
    City("Brasília", "DF", 5300108, -47.8828, -15.7939, 0.25, 28),
    City("Fortaleza", "CE", 2304400, -38.5267, -3.7319, 0.15, 24),
    City("Salvador", "BA", 2927408, -38.5014, -12.9714, 0.15, 24),
    City("Belo Horizonte", "MG", 3106200, -43.9345, -19.9167, 0.20, 23),
    City("Manaus", "AM", 1302603, -60.0217, -3.1190, 0.15, 21),
    City("Curitiba", "PR", 4106902, -49.2733, -25.4284, 0.15, 18),
    City("Recife", "PE", 2611606, -34.8770, -8.0476, 0.15, 15),
    City("Goiânia", "GO", 5208707, -49.2648, -16.6869, 0.15, 14),
    City("Belém", "PA", 1501402, -48.4902, -1.4558, 0.15, 13),
    City("Porto Alegre", "RS", 4314902, -51.2177, -30.0346, 0.15, 13),
    City("Campinas", "SP", 3509502, -47.0626, -22.9099, 0.10, 11),
    City("Natal", "RN", 2408102, -35.2110, -5.7945, 0.10, 8),
    City("Florianópolis", "SC", 4205407, -48.5480, -27.5954, 0.10, 5),
)

CATEGORIES = (
    Category("lote", 30, 25, 120, ("Lote", "Terreno", "Gleba", "Chácara"),
             "Lote urbano de uso residencial"),
    Category("edificacao", 22, 25, 100,
             ("Escola Estadual", "Hospital Municipal", "Edifício", "Centro Cultural"),
             "Edificação de uso institucional"),
    Category("quadra", 12, 60, 250,
             ("Quadra", "Quarteirão", "Conjunto Habitacional", "Loteamento"),
             "Quadra urbana consolidada"),
    Category("via", 10, 40, 300, ("Avenida", "Rua", "Estrada", "Travessa"),
             "Trecho de via pública"),
    Category("parque", 10, 100, 800, ("Parque Ecológico", "Parque Municipal", "Praça", "Bosque"),
             "Parque público de lazer"),
    Category("area_preservacao", 6, 300, 1000,
             ("Área de Preservação", "Reserva Florestal", "Mata", "Refúgio de Vida Silvestre"),
             "Área de preservação permanente com mata nativa"),
    Category("zona_industrial", 5, 250, 1000,
             ("Distrito Industrial", "Polo Industrial", "Parque Tecnológico", "Zona Industrial"),
             "Zona de uso industrial e logístico"),
    Category("lago", 5, 80, 700, ("Lago", "Lagoa", "Represa", "Açude"), "Espelho d'água"),
)

TOPONYMS = (
    "do Tietê", "do Ipiranga", "dos Ipês", "das Palmeiras", "da Mata Atlântica", "do Rio Verde",
    "da Serra Azul", "de Santa Luzia", "dos Bandeirantes", "da Boa Esperança", "do Sabiá",
    "das Araucárias", "do Jequitibá", "da Liberdade", "de São Francisco", "do Cerrado",
)
TRAITS = (
    "com trilhas e ciclovia", "com vegetação densa", "com calçadas arborizadas",
    "em área de expansão urbana", "sujeita a alagamentos na época de chuvas",
    "com iluminação pública recente", "em processo de regularização fundiária",
    "com quadra poliesportiva e playground",
)
LANDMARKS = (
    "a poucos metros do rio", "nas proximidades da escola estadual", "ao lado da praça central",
    "junto à mata ciliar", "perto do terminal de ônibus", "em frente à igreja matriz",
    "na vizinhança do parque municipal", "às margens do córrego", "perto da estação de metrô",
    "ao lado do mercado municipal",
)
DISTRICTS = (
    "Centro", "Jardim América", "Vila Nova", "Boa Vista", "Santa Cecília", "São José",
    "Bela Vista", "Liberdade", "Aeroporto", "Jardim das Flores", "Santo Antônio", "Vila Esperança",
)
SOURCES = {"IBGE": 6, "Prefeitura Municipal": 3, "OpenStreetMap": 1}
ZONES = {"urbana": 7, "expansão urbana": 2, "rural": 1}

# Session helpers for the load; being in pg_temp they vanish with the session.
# All randomness comes from random(), seeded once by setseed(): with a single
# session and a fixed plan, the draws and therefore the data are reproducible.
HELPERS_SQL = """
CREATE FUNCTION pg_temp.qualquer(itens anyarray) RETURNS anyelement
LANGUAGE sql VOLATILE AS $$
    SELECT itens[1 + floor(random() * cardinality(itens))::int]
$$;

-- Standard normal draw (Box-Muller).
CREATE FUNCTION pg_temp.gauss() RETURNS double precision
LANGUAGE sql VOLATILE AS $$
    SELECT sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random())
$$;

-- Irregular star-shaped ring of 8 to 16 vertices around (cx, cy). Each vertex
-- lies in its own angular sector, so the ring never crosses itself.
CREATE FUNCTION pg_temp.estrela(cx double precision, cy double precision,
                                raio_m double precision, m_por_grau_lon double precision)
RETURNS extensions.geometry
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lados int := 8 + floor(random() * 9);
    pontos extensions.geometry[];
    angulo double precision;
    raio double precision;
BEGIN
    FOR i IN 0 .. lados - 1 LOOP
        angulo := 2 * pi() * (i + 0.8 * random()) / lados;
        raio := raio_m * (0.55 + 0.45 * random());
        pontos := pontos || extensions.ST_MakePoint(cx + raio * cos(angulo) / m_por_grau_lon,
                                                    cy + raio * sin(angulo) / 110574);
    END LOOP;
    RETURN extensions.ST_MakePolygon(extensions.ST_MakeLine(pontos || pontos[1]));
END
$$;

-- MultiPolygon of 1 to 3 parts. Extra parts sit on opposite sides of the
-- first, farther from it than the sum of the radii, so the parts are disjoint;
-- ST_MakeValid only guards against floating-point surprises.
CREATE FUNCTION pg_temp.feicao(lon double precision, lat double precision,
                               raio_m double precision, partes int)
RETURNS extensions.geometry
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    m_por_grau_lon double precision := 111320 * cos(radians(lat));
    direcao double precision := 2 * pi() * random();
    poligonos extensions.geometry[] := ARRAY[pg_temp.estrela(lon, lat, raio_m, m_por_grau_lon)];
    raio_parte double precision;
    distancia double precision;
BEGIN
    FOR j IN 2 .. partes LOOP
        raio_parte := raio_m * (0.3 + 0.4 * random());
        distancia := 1.2 * (raio_m + raio_parte);
        poligonos := poligonos || pg_temp.estrela(lon + distancia * cos(direcao) / m_por_grau_lon,
                                                  lat + distancia * sin(direcao) / 110574,
                                                  raio_parte, m_por_grau_lon);
        direcao := direcao + pi();
    END LOOP;
    RETURN extensions.ST_Multi(extensions.ST_CollectionExtract(extensions.ST_MakeValid(
        extensions.ST_SetSRID(extensions.ST_Collect(poligonos), 4326)), 3));
END
$$;
"""

# The real dataset: the outline of one of the real polygons (pg_temp.formas, loaded first), at its
# real size, its centroid moved to (lon, lat). Same arguments as pg_temp.feicao, so the generation
# query is the same; the size and parts drawn for the synthetic outline are not used.
REAL_HELPERS_SQL = """
CREATE TEMPORARY TABLE formas (i int PRIMARY KEY, geom extensions.geometry NOT NULL);

CREATE FUNCTION pg_temp.feicao_real(lon double precision, lat double precision,
                                    raio_m double precision, partes int)
RETURNS extensions.geometry
LANGUAGE sql VOLATILE AS $$
    SELECT extensions.ST_Multi(extensions.ST_SetSRID(extensions.ST_Translate(
               f.geom, lon - extensions.ST_X(extensions.ST_Centroid(f.geom)),
               lat - extensions.ST_Y(extensions.ST_Centroid(f.geom))), 4326))
    FROM pg_temp.formas AS f
    WHERE f.i = (SELECT 1 + floor(random() * count(*))::int FROM pg_temp.formas)  -- drawn once per call
$$;
"""


def real_polygons():
    """The real polygons as WKT, in the shapefile's order (pyshp reads them from the wheel)."""
    import shapefile  # pylint: disable=import-outside-toplevel  # only the real dataset needs pyshp
    if not REAL_POLYGONS_WHEEL.exists():
        raise FileNotFoundError(f"{REAL_POLYGONS_WHEEL} is missing: run make setup (it downloads it)")
    with zipfile.ZipFile(REAL_POLYGONS_WHEEL) as wheel:
        files = {part: io.BytesIO(wheel.read(f"{REAL_POLYGONS_SHAPEFILE}.{part}")) for part in ("shp", "shx", "dbf")}
    reader = shapefile.Reader(**files)
    polygons = []
    for shape in reader.shapes():
        starts = list(shape.parts) + [len(shape.points)]
        rings = [", ".join(f"{x!r} {y!r}" for x, y in shape.points[a:b]) for a, b in zip(starts, starts[1:])]
        polygons.append("POLYGON(%s)" % ", ".join(f"({ring})" for ring in rings))
    return polygons


# One INSERT ... SELECT so the rows get the ids 1..N of the identity in
# generate_series order. OFFSET 0 keeps each subquery from being merged into
# its parent: every random() and pg_temp.feicao() call then runs exactly once
# per row, and geom and area_m2 describe the same geometry.
INSERT_SQL = """
INSERT INTO public.geometrias (nome, categoria, descricao, geom, area_m2, propriedades,
                               data_referencia, owner_id, publico, created_at)
SELECT f.prefixo || ' ' || f.toponimo || ' ' || f.numero || ', ' || f.cidade,
       f.categoria,
       f.abertura || ' ' || f.caracteristica || ', ' || f.marco || ', no bairro ' || f.bairro
           || ', em ' || f.cidade || ' (' || f.uf || ').',
       f.geom,
       ST_Area(f.geom::geography),
       jsonb_build_object('municipio', f.cidade, 'uf', f.uf, 'codigo_ibge', f.codigo_ibge,
                          'fonte', f.fonte, 'zona', f.zona),
       f.data_referencia,
       f.dono,
       f.publico,
       -- Recorded some days after the survey: reproducible, unlike now().
       ((f.data_referencia + f.atraso_dias)::timestamp + make_interval(secs => f.segundo))
           AT TIME ZONE 'UTC'
FROM (
    SELECT s.*,
           (%(cidade)s::text[])[s.c] AS cidade,
           (%(uf)s::text[])[s.c] AS uf,
           (%(codigo_ibge)s::int[])[s.c] AS codigo_ibge,
           (%(categoria)s::text[])[s.t] AS categoria,
           (%(prefixos)s::text[])[s.t][s.p] AS prefixo,
           (%(abertura)s::text[])[s.t] AS abertura,
           pg_temp.feicao(
               (%(lon)s::float8[])[s.c] + (%(dispersao)s::float8[])[s.c] * s.desvio_x,
               (%(lat)s::float8[])[s.c] + (%(dispersao)s::float8[])[s.c] * s.desvio_y,
               (%(raio_min)s::float8[])[s.t]
                   * ((%(raio_max)s::float8[])[s.t] / (%(raio_min)s::float8[])[s.t]) ^ s.tamanho,
               s.partes) AS geom
    FROM (
        -- Every random draw of one feature.
        SELECT pg_temp.qualquer(%(sorteio_cidade)s::int[]) AS c,
               pg_temp.qualquer(%(sorteio_categoria)s::int[]) AS t,
               1 + floor(random() * array_length(%(prefixos)s::text[], 2))::int AS p,
               pg_temp.gauss() AS desvio_x,
               pg_temp.gauss() AS desvio_y,
               random() AS tamanho,
               CASE WHEN random() < %(fracao_multi)s THEN 2 + floor(random() * 2)::int
                    ELSE 1 END AS partes,
               pg_temp.qualquer(%(toponimos)s::text[]) AS toponimo,
               1 + floor(random() * 999)::int AS numero,
               pg_temp.qualquer(%(caracteristicas)s::text[]) AS caracteristica,
               pg_temp.qualquer(%(marcos)s::text[]) AS marco,
               pg_temp.qualquer(%(bairros)s::text[]) AS bairro,
               pg_temp.qualquer(%(fontes)s::text[]) AS fonte,
               pg_temp.qualquer(%(zonas)s::text[]) AS zona,
               %(primeiro_dia)s::date + floor(random() * %(dias)s)::int AS data_referencia,
               1 + floor(random() * 60)::int AS atraso_dias,
               floor(random() * 86400)::int AS segundo,
               pg_temp.qualquer(%(donos)s::uuid[]) AS dono,
               random() < %(fracao_publica)s AS publico
        FROM generate_series(1, %(features)s)
        OFFSET 0
    ) AS s
    OFFSET 0
) AS f
"""


def weighted(weights):
    """Expand {item: weight} into a list where each item appears weight times."""
    return [item for item, weight in weights.items() for _ in range(weight)]


def owners():
    """The owners' uuids: md5 of a fixed label, so they are the same on every build."""
    return [str(uuid.UUID(hashlib.md5(f"biblioteca-dono-{i}".encode()).hexdigest()))
            for i in range(1, OWNERS + 1)]


def generation_parameters(features):
    return {
        "features": features,
        "cidade": [c.name for c in CITIES],
        "uf": [c.uf for c in CITIES],
        "codigo_ibge": [c.ibge for c in CITIES],
        "lon": [c.lon for c in CITIES],
        "lat": [c.lat for c in CITIES],
        "dispersao": [c.spread for c in CITIES],
        "sorteio_cidade": weighted({i: c.weight for i, c in enumerate(CITIES, 1)}),
        "categoria": [c.name for c in CATEGORIES],
        "prefixos": [list(c.prefixes) for c in CATEGORIES],
        "abertura": [c.opening for c in CATEGORIES],
        "raio_min": [c.min_radius for c in CATEGORIES],
        "raio_max": [c.max_radius for c in CATEGORIES],
        "sorteio_categoria": weighted({i: c.weight for i, c in enumerate(CATEGORIES, 1)}),
        "fracao_multi": MULTIPART_SHARE,
        "toponimos": list(TOPONYMS),
        "caracteristicas": list(TRAITS),
        "marcos": list(LANDMARKS),
        "bairros": list(DISTRICTS),
        "fontes": weighted(SOURCES),
        "zonas": weighted(ZONES),
        "primeiro_dia": FIRST_DAY,
        "dias": (LAST_DAY - FIRST_DAY).days + 1,
        "donos": owners(),
        "fracao_publica": PUBLIC_SHARE,
    }


# pg_stat_statements as on Supabase (installed in schema extensions), where the server preloads it
# and this role may create it; elsewhere the database is built without it.
STATEMENTS_EXTENSION_SQL = """
DO $$
BEGIN
    IF 'pg_stat_statements' = ANY (string_to_array(replace(current_setting('shared_preload_libraries'), ' ', ''), ','))
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements')
       AND (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        CREATE EXTENSION IF NOT EXISTS pg_stat_statements SCHEMA extensions;
    END IF;
END
$$;
"""


def connect(args, dbname):
    return psycopg2.connect(host=args.host, port=args.port, user=args.user, dbname=dbname,
                            password=os.environ.get("DB_PASSWORD") or os.environ.get("PGPASSWORD"),
                            options=SESSION_OPTIONS, client_encoding="UTF8",
                            application_name="reference_db")


def ensure_database(args):
    """Create the database if missing (after dropping it, with --recreate)."""
    conn = connect(args, args.maintenance_db)
    conn.autocommit = True
    name = sql.Identifier(args.dbname)
    try:
        with conn.cursor() as cur:
            if args.recreate:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (args.dbname,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(name))
    finally:
        conn.close()


def is_built(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('public.geometrias') IS NOT NULL")
        built = cur.fetchone()[0]
    conn.rollback()
    return built


def with_postgis_in(text, schema):
    """The fixture's SQL with PostGIS created in, and its names qualified by, another schema."""
    if schema == "extensions":
        return text
    target = '"%s"' % schema.replace('"', '""')
    text = text.replace("CREATE EXTENSION IF NOT EXISTS postgis SCHEMA extensions;",
                        "CREATE EXTENSION IF NOT EXISTS postgis SCHEMA %s;" % target)
    # Qualified PostGIS names: extensions.geometry, extensions.ST_MakePoint(...), ...
    return re.sub(r"\bextensions\.(?=(geometry|geography|ST_|st_))", target + ".", text)


def build(conn, features, seed, postgis_schema="extensions", dataset="synthetic"):
    """Schema and data in one transaction: a failed build leaves nothing behind."""
    with conn, conn.cursor() as cur:
        if postgis_schema != "extensions":
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(postgis_schema)))
        cur.execute(with_postgis_in(SCHEMA_FILE.read_text(encoding="utf-8"), postgis_schema))
        cur.execute(STATEMENTS_EXTENSION_SQL)
        # Filling the table without its secondary indexes, then building them
        # from the schema's own definitions, is much cheaper than maintaining
        # them row by row (above all the GIN and GiST ones).
        cur.execute("SELECT format('DROP INDEX %s', indexrelid::regclass), pg_get_indexdef(indexrelid)"
                    " FROM pg_index WHERE indrelid = 'public.geometrias'::regclass"
                    " AND NOT indisprimary ORDER BY indexrelid")
        indexes = cur.fetchall()
        for drop, _ in indexes:
            cur.execute(drop)
        cur.execute(with_postgis_in(HELPERS_SQL, postgis_schema))
        insert = INSERT_SQL
        if dataset == "real":
            cur.execute(with_postgis_in(REAL_HELPERS_SQL, postgis_schema))
            # Rings as the shapefile has them; ST_MakeValid only mends what the source may hold.
            cur.execute(with_postgis_in("INSERT INTO pg_temp.formas SELECT i, extensions.ST_CollectionExtract("
                                        "extensions.ST_MakeValid(extensions.ST_GeomFromText(w)), 3) "
                                        "FROM unnest(%s::text[]) WITH ORDINALITY AS x(w, i)", postgis_schema),
                        (real_polygons(),))
            insert = INSERT_SQL.replace("pg_temp.feicao(", "pg_temp.feicao_real(")
        cur.execute("SELECT setseed(%s)", (seed / 2**31,))
        cur.execute(insert, generation_parameters(features))
        cur.execute("SET LOCAL maintenance_work_mem = '512MB'")
        for _, create in indexes:
            cur.execute(create)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM (ANALYZE) public.geometrias")
    conn.autocommit = False


def fingerprint(conn):
    """Row count and md5(string_agg(g::text, '|' ORDER BY id)).

    The digest is computed client-side over a server-side cursor: a large table
    would exceed the 1 GB limit of a text value if aggregated in SQL.
    """
    digest = hashlib.md5()
    count = 0
    with conn, conn.cursor(name="fingerprint") as cur:
        cur.itersize = 5000
        cur.execute("SELECT g::text FROM public.geometrias AS g ORDER BY g.id")
        for (row,) in cur:
            digest.update(("|" if count else "").encode() + row.encode("utf-8"))
            count += 1
    return count, digest.hexdigest()


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def seed_value(text):
    value = int(text)
    if not 0 <= value < 2**31:
        raise argparse.ArgumentTypeError("must be between 0 and 2147483647")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--dbname", default="BIBLIOTECA", help="database to build (case kept)")
    parser.add_argument("--maintenance-db", default="postgres",
                        help="database to connect to for CREATE/DROP DATABASE")
    parser.add_argument("--features", type=positive_int, required=True,
                        help="number of features to generate")
    parser.add_argument("--seed", type=seed_value, default=20260207,
                        help="random seed; same seed and features give the same data")
    parser.add_argument("--recreate", action="store_true",
                        help="drop the database (disconnecting its sessions) and build it again")
    parser.add_argument("--postgis-schema", default="extensions",
                        help="schema PostGIS is installed in (default extensions, as on Supabase)")
    parser.add_argument("--dataset", choices=("synthetic", "real"), default="synthetic",
                        help="outlines generated (default) or of real census tracts")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    started = time.monotonic()
    try:
        ensure_database(args)
        conn = connect(args, args.dbname)
        try:
            changed = not is_built(conn)
            if changed:
                build(conn, args.features, args.seed, args.postgis_schema, args.dataset)
            else:
                print(f"reference_db: {args.dbname} already holds public.geometrias; "
                      "nothing to do (use --recreate to rebuild)", file=sys.stderr)
            features, checksum = fingerprint(conn)
        finally:
            conn.close()
    except (psycopg2.Error, FileNotFoundError) as error:
        print(f"reference_db: {str(error).strip()}", file=sys.stderr)
        return 1
    print(json.dumps({"database": args.dbname, "dataset": args.dataset, "features": features, "checksum": checksum,
                      "seconds": round(time.monotonic() - started, 2), "changed": changed}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
