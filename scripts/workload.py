#!/usr/bin/env python3
"""Application workload for BIBLIOTECA: concurrent API reads and writes, lost-write check.

    DB_HOST=... DB_USER=... DB_PASSWORD=... scripts/workload.py --readers 2 --writers 2 \\
        --until-file /tmp/playbook.done --duration 1800 --report reports/workload.json

Run it while the playbook runs (start it, run stage4.yml or rollback.yml, then create the
--until-file) to see what the application lives through. It acts as the application does
through PostgREST: every API call is one transaction that does SET LOCAL ROLE authenticated
(some readers: anon) and sets request.jwt.claims, so auth.uid() works and RLS applies.

  readers  call the RPCs (search_geometrias, geometrias_no_raio, area_por_categoria,
           extensao_por_categoria, resumo_anual) and select from public.geometrias_publicas
           and from public.geometrias with a bounding-box filter;
  writers  insert features through the parent table public.geometrias (the identity assigns
           the ids; a partitioned table routes the row) and update features they inserted.

Each worker is a thread with its own connection: psycopg2 releases the GIL while it waits for
the server, so threads give real concurrency for a load made of database round trips.

Connection: DB_HOST, DB_PORT (5432), DB_NAME (BIBLIOTECA), DB_USER and DB_PASSWORD (else
PGPASSWORD or ~/.pgpass), as the playbooks use them; the password is never printed. The user
must be a member of anon and authenticated and bypass RLS (superuser or BYPASSRLS, as postgres
is, on Supabase too), so that the final check sees the workload's rows whatever the policies.

Which rows the workload writes, and why. Every row it creates or updates is marked and kept
apart from real data: nome starts with "stage4-workload:<tag>:", owner_id is the workload user
(a fixed uuid, not one of the reference owners), publico is false, categoria is
"stage4_workload", data_referencia is today (the current year: the open partition an
application writes to, which OPT2 never rewrites), and each geometry is a ~50 m square in the
South Atlantic around (-30.0, -35.0), about 1,800 km from the nearest city of the data.
--cleanup (the default) deletes these rows at the end, after the check.

The Stage 4 gate compares the result fingerprints of files/benchmark/queries/*.sql between
stages, so the workload must not change what they return. Query by query:
  q01, q09 (São Paulo box, point), q02 (5 km of Praça da Sé), q10 (Rio box): far outside them;
  q03 (10 nearest to Copacabana): 1,800 km away, behind any feature of Rio's data;
  q04 ('parque' in a São Paulo box): neither the word nor the box;
  q05 (2023-2024 in a São Paulo box), q06 (year 2024): another year and place;
  q07 extensao_por_categoria(), q08 resumo_anual(): every row of the table, no filter.
No choice of data escapes q07 and q08: only row level security can hide the rows from them.
The workload's rows are private, so anon (and any other user) never sees them; but
gis_benchmark runs as the login user unless stage4_benchmark_as_role is set, and postgres
bypasses RLS. While writers run during a gated rollout, set stage4_benchmark_as_role: anon
(or run --writers 0), otherwise q07 and q08 change and the gate fails for a reason unrelated
to the optimization; the dedicated category then names the cause in the results. Preflight's
feature count also counts the workload's rows: start writers after preflight.

Lost writes. The harness keeps, for every committed insert and update, the feature's id and a
SHA-256 of the columns it wrote; at the end it reads those features back (as the connecting
user) and hashes them the same way. lost counts committed writes: all of a feature's when it
is missing or holds content the harness never wrote, those after the content it holds when it
holds an older one. A commit whose outcome is unknown (the connection
broke during COMMIT) is "in doubt": either outcome is accepted, and it is counted apart.

Waiting. Every API call (one transaction: role, claims, statement, commit) is timed. The
report gives per kind (read, write) the count, p50, p99 and max, the longest call with the
second it started (relative to the harness start) and, per second, the calls started and their
longest time, which shows when the application was blocked. statement_timeout (default 30 s)
bounds a blocked call, so it is measured rather than hung. A connection lost (a server restart)
is re-opened and counted.

Lock waits. A call's time is its own cost plus any wait: at 1,000,000 features a dashboard read
takes seconds by itself. So a watcher (its own connection) samples pg_stat_activity every 100 ms
for the harness's calls waiting for a lock, and reports per call the longest wait it saw and who
held the lock or queued ahead for it (the application_name of pg_blocking_pids(): stage4_change
for a change's transaction). The report gives the longest waits and how many exceeded 2 s, the
target of a change's cutover. A wait shorter than the interval can go unseen.

Exit status: 0 when no committed write was lost, 1 when one was (or the check could not be
completed), 2 on bad input (a setting missing, no connection, no table, roles missing).
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import random
import re
import signal
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
import psycopg2.extras
import psycopg2.sql

import project_modules

project_modules.register()
from ansible_collections.biblioteca.stage4.plugins.module_utils.stats import percentile  # noqa: E402  (the benchmark's)

MARKER = "stage4-workload:{tag}:"
WORKLOAD_USER = str(uuid.uuid5(uuid.NAMESPACE_URL, "stage4-workload-user"))
WORKLOAD_CATEGORY = "stage4_workload"
WORKLOAD_CENTRE = (-30.0, -35.0)  # lon, lat: open ocean, far from every benchmark query
WORKLOAD_SPREAD = 0.2  # degrees around the centre
SQUARE_HALF_SIDE = 0.00025  # degrees: a ~50 m square
INSERT_SHARE = 0.5  # a writer inserts this share of its calls and updates its own features otherwise
ERROR_KINDS = ("lock_timeout", "deadlock", "serialization", "statement_timeout", "connection", "other")
LOCK_SAMPLE_S = 0.1  # how often the lock watcher looks
BLOCK_TARGET_S = 2.0  # the longest a change may make the application wait (the reliability target)

# Where the readers look: centres of cities of the reference data (lon, lat).
CITY_CENTRES = ((-46.6333, -23.5505), (-43.1729, -22.9068), (-47.8828, -15.7939),
                (-49.2733, -25.4284), (-34.8770, -8.0476), (-38.5014, -12.9714))
SEARCH_TERMS = ("parque", "escola", "lago OR lagoa", "avenida", "reserva florestal")

ENVELOPE = "ST_MakeEnvelope(%(west)s, %(south)s, %(east)s, %(north)s, 4326)"
READS = {
    "search_geometrias":
        "SELECT s.id, s.nome FROM public.search_geometrias(%(term)s, " + ENVELOPE + ", 50) AS s",
    "geometrias_no_raio":
        "SELECT r.id, r.nome FROM public.geometrias_no_raio(%(lon)s, %(lat)s, %(radius)s) AS r",
    "area_por_categoria": "SELECT * FROM public.area_por_categoria(%(year)s)",
    "extensao_por_categoria":
        "SELECT e.categoria, ST_AsText(e.extensao), e.n FROM public.extensao_por_categoria() AS e",
    "resumo_anual": "SELECT * FROM public.resumo_anual()",
    "geometrias_publicas":
        "SELECT v.id, v.nome, v.categoria, v.data_referencia FROM public.geometrias_publicas AS v"
        " WHERE v.geom && " + ENVELOPE + " ORDER BY v.id LIMIT 200",
    "geometrias_bbox":
        "SELECT g.id, g.nome, g.categoria, g.area_m2, ST_AsGeoJSON(g.geom, 6) FROM public.geometrias AS g"
        " WHERE g.geom && " + ENVELOPE + " ORDER BY g.id LIMIT 200",
}
READ_OPERATIONS = tuple(sorted(READS))

WRITTEN_COLUMNS = ("nome", "categoria", "descricao", "geom", "area_m2", "propriedades",
                   "data_referencia", "owner_id", "publico")
INSERT_SQL = (
    "INSERT INTO public.geometrias (nome, categoria, descricao, geom, area_m2, propriedades,"
    " data_referencia, owner_id, publico)"
    " VALUES (%(nome)s, %(categoria)s, %(descricao)s, ST_GeomFromEWKB(decode(%(geom)s, 'hex')),"
    " %(area_m2)s, %(propriedades)s, %(data_referencia)s, %(owner_id)s, %(publico)s) RETURNING id")
UPDATE_SQL = ("UPDATE public.geometrias SET descricao = %(descricao)s, propriedades = %(propriedades)s"
              " WHERE id = %(id)s RETURNING id")
READ_BACK_SQL = (
    "SELECT id, nome, categoria, descricao, ST_AsEWKB(geom, 'NDR'), area_m2, propriedades,"
    " data_referencia, owner_id, publico FROM public.geometrias WHERE id = ANY(%s)")
CLEANUP_SQL = "DELETE FROM public.geometrias WHERE owner_id = %s AND left(nome, %s) = %s"


class BadInput(Exception):
    """A setting, the connection or the database is not usable: exit status 2."""


class MissingRow(Exception):
    """An update found no feature to update: one the writer had committed is gone."""


@dataclass
class Settings:
    host: str
    port: int
    dbname: str
    user: str
    password: str | None
    tag: str
    readers: int = 2
    writers: int = 2
    duration_s: float | None = None
    until_file: str | None = None
    statement_timeout_s: float = 30.0
    think_ms: int = 20
    seed: int = 0
    cleanup: bool = True
    report: str | None = None

    @property
    def marker(self):
        return MARKER.format(tag=self.tag)


# ---------------------------------------------------------------- connections and API calls

def connect(settings, role="stage4-workload"):
    """A session as the application's: statement_timeout bounds a blocked call. Its application_name
    is `role`:tag (the lock watcher finds the harness's calls by it)."""
    options = "-c statement_timeout=%d -c extra_float_digits=1" % round(settings.statement_timeout_s * 1000)
    try:
        return psycopg2.connect(host=settings.host, port=settings.port, dbname=settings.dbname,
                                user=settings.user, password=settings.password or None,
                                connect_timeout=10, options=options,
                                application_name=role + ":" + settings.tag)
    except psycopg2.Error as error:
        message = str(error).strip().splitlines()[0]
        if settings.password:
            message = message.replace(settings.password, "********")
        raise BadInput("cannot connect to %s@%s:%s/%s: %s"
                       % (settings.user, settings.host, settings.port, settings.dbname, message)) from error


def claims(role):
    """The JWT claims PostgREST would set: the workload user when authenticated."""
    if role == "authenticated":
        return json.dumps({"sub": WORKLOAD_USER, "role": "authenticated"})
    return json.dumps({"role": "anon"})


def api_execute(conn, role, statement, params):
    """Runs statement as PostgREST does, in an open transaction the caller commits."""
    with conn.cursor() as cur:
        cur.execute(psycopg2.sql.SQL("SET LOCAL ROLE {}").format(psycopg2.sql.Identifier(role)))
        cur.execute("SELECT set_config('request.jwt.claims', %s, true)", (claims(role),))
        cur.execute(statement, params)
        return cur.fetchall()


def error_kind(error):
    """A short kind for an error, from its SQLSTATE where the server sent one."""
    code = getattr(error, "pgcode", None) or ""
    kinds = {"55P03": "lock_timeout", "40P01": "deadlock", "40001": "serialization",
             "57014": "statement_timeout"}
    if code in kinds:
        return kinds[code]
    # Class 08 and the shutdown codes of class 57: the server went away (a restart).
    if code.startswith("08") or code in ("57P01", "57P02", "57P03"):
        return "connection"
    if not code and isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return "connection"
    return "other"


def sqlstate_class(error):
    code = getattr(error, "pgcode", None)
    return code[:2] if code else "none"


# ---------------------------------------------------------------- what the workers record

@dataclass
class Sample:
    kind: str  # read | write
    operation: str
    started_s: float  # since the harness started
    ms: float
    error: str | None  # error kind, None when the call succeeded


@dataclass
class Recorder:
    """Every call's duration and outcome, from every worker thread."""
    started: float = field(default_factory=time.monotonic)
    samples: list = field(default_factory=list)
    by_class: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)
    reconnects: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def timed(self, kind, operation, call):
        """Runs call() and records it; returns (True, result) or (False, the exception)."""
        begin = time.monotonic()
        try:
            result = call()
        except (psycopg2.Error, MissingRow) as error:
            self.add(Sample(kind, operation, begin - self.started, (time.monotonic() - begin) * 1000,
                            error_kind(error)), error)
            return False, error
        self.add(Sample(kind, operation, begin - self.started, (time.monotonic() - begin) * 1000, None))
        return True, result

    def add(self, sample, error=None):
        with self.lock:
            self.samples.append(sample)
            if error is not None:
                self.by_class[sqlstate_class(error)] += 1
                self.examples.setdefault(sample.error, str(error).strip().splitlines()[0])


class Ledger:
    """Every write the harness made, per feature: (content hash, certain) in commit order."""

    def __init__(self):
        self.history = {}
        self.lock = threading.Lock()

    def record(self, feature_id, content, certain=True):
        with self.lock:
            self.history.setdefault(feature_id, []).append((content_hash(content), certain))


def content_hash(content):
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- writes

def square_ewkb(lon, lat, half_side=SQUARE_HALF_SIDE):
    """A one-square MultiPolygon in SRID 4326 as little-endian EWKB, the form ST_AsEWKB(g, 'NDR') returns."""
    ring = [(lon - half_side, lat - half_side), (lon + half_side, lat - half_side),
            (lon + half_side, lat + half_side), (lon - half_side, lat + half_side),
            (lon - half_side, lat - half_side)]
    head = struct.pack("<BIIIBIII", 1, 6 | 0x20000000, 4326, 1, 1, 3, 1, len(ring))
    return head + struct.pack("<%dd" % (2 * len(ring)), *(c for point in ring for c in point))


def new_feature(settings, name, rng, today):
    """The content of a new workload feature (see the module's docstring for why these values)."""
    lon = WORKLOAD_CENTRE[0] + rng.uniform(-WORKLOAD_SPREAD, WORKLOAD_SPREAD)
    lat = WORKLOAD_CENTRE[1] + rng.uniform(-WORKLOAD_SPREAD, WORKLOAD_SPREAD)
    side_m = 2 * SQUARE_HALF_SIDE * 110574
    return {
        "nome": settings.marker + name,
        "categoria": WORKLOAD_CATEGORY,
        "descricao": "Feição sintética do teste de carga, revisão 0",
        "geom": square_ewkb(lon, lat).hex(),
        "area_m2": side_m * side_m * math.cos(math.radians(lat)),
        "propriedades": {"workload": settings.tag, "revisao": 0},
        "data_referencia": today.isoformat(),
        "owner_id": WORKLOAD_USER,
        "publico": False,
    }


def as_params(content):
    return dict(content, propriedades=psycopg2.extras.Json(content["propriedades"]))


def commit_write(conn, ledger, feature_id, content):
    """Commits, then records the write; a connection lost during COMMIT leaves it in doubt."""
    try:
        conn.commit()
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        ledger.record(feature_id, content, certain=False)
        raise
    ledger.record(feature_id, content)


def insert_feature(conn, ledger, content):
    """Inserts a feature as the workload user; returns its id once committed."""
    feature_id = api_execute(conn, "authenticated", INSERT_SQL, as_params(content))[0][0]
    commit_write(conn, ledger, feature_id, content)
    return feature_id


def next_revision(content):
    """The content after an update: new description and properties, the other columns kept."""
    revision = content["propriedades"]["revisao"] + 1
    return dict(content, descricao="Feição sintética do teste de carga, revisão %d" % revision,
                propriedades=dict(content["propriedades"], revisao=revision))


def update_feature(conn, ledger, feature_id, content):
    """Writes content's description and properties into a workload feature, as its owner."""
    if not api_execute(conn, "authenticated", UPDATE_SQL, dict(as_params(content), id=feature_id)):
        raise MissingRow("feature %d, committed by the harness, was not found for update" % feature_id)
    commit_write(conn, ledger, feature_id, content)


# ---------------------------------------------------------------- verification and cleanup

def stored_content(row):
    """A read-back row in the form new_feature() writes, so that the hashes compare."""
    values = dict(zip(WRITTEN_COLUMNS, row[1:]))
    return dict(values, geom=bytes(values["geom"]).hex(),
                data_referencia=values["data_referencia"].isoformat(), owner_id=str(values["owner_id"]))


def lost_writes(history, stored_hashes):
    """(committed writes lost, reason) for one feature's history and the hashes stored under its id."""
    certain = [is_certain for _, is_certain in history]
    if not stored_hashes:
        return sum(certain), "missing"
    for position in range(len(history) - 1, -1, -1):
        if history[position][0] == stored_hashes[0]:
            return sum(certain[position + 1:]), "older content"
    return sum(certain), "changed"


def verify_writes(conn, ledger):
    """Reads back every feature the harness wrote and counts the committed writes not there."""
    with conn.cursor() as cur:
        cur.execute(READ_BACK_SQL, (list(ledger.history),))
        stored = {}
        for row in cur.fetchall():
            stored.setdefault(row[0], []).append(content_hash(stored_content(row)))
    conn.rollback()
    result = {"features_checked": len(ledger.history), "found": len(stored), "missing": 0, "changed": 0,
              "duplicated": sum(1 for hashes in stored.values() if len(hashes) > 1),
              "in_doubt": sum(1 for history in ledger.history.values() for _, certain in history if not certain),
              "lost": 0, "lost_features": []}
    for feature_id, history in sorted(ledger.history.items()):
        lost, reason = lost_writes(history, stored.get(feature_id))
        if lost:
            result["lost"] += lost
            result["missing" if reason == "missing" else "changed"] += 1
            if len(result["lost_features"]) < 50:
                result["lost_features"].append({"id": feature_id, "reason": reason, "lost_writes": lost})
    return result


def cleanup(conn, settings):
    """Deletes the rows of this run (its marker and the workload user, nothing else)."""
    with conn, conn.cursor() as cur:
        cur.execute(CLEANUP_SQL, (WORKLOAD_USER, len(settings.marker), settings.marker))
        return cur.rowcount


# ---------------------------------------------------------------- workers

class Session:
    """A worker's connection, re-opened after the server went away."""

    def __init__(self, settings, recorder, stop):
        self.settings, self.recorder, self.stop = settings, recorder, stop
        self.conn = None
        self.opened = False

    def ready(self):
        """True with an open connection, False when asked to stop before one could be opened."""
        while self.conn is None or self.conn.closed:
            if self.stop.is_set():
                return False
            try:
                self.conn = connect(self.settings)
            except BadInput:
                self.stop.wait(0.5)  # the server is restarting, say; try again
                continue
            if self.opened:
                with self.recorder.lock:
                    self.recorder.reconnects += 1
            self.opened = True
        return True

    def after_failure(self):
        """Ends the failed transaction; a broken connection is dropped, to be re-opened."""
        try:
            self.conn.rollback()
        except psycopg2.Error:
            self.conn.close()

    def close(self):
        if self.conn is not None:
            self.conn.close()


def read_call(rng):
    """One API read: (operation, SQL, parameters)."""
    operation = rng.choice(READ_OPERATIONS)
    lon, lat = rng.choice(CITY_CENTRES)
    lon, lat = lon + rng.uniform(-0.1, 0.1), lat + rng.uniform(-0.1, 0.1)
    half = rng.uniform(0.02, 0.15)
    params = {"lon": lon, "lat": lat, "radius": rng.uniform(500, 5000), "year": rng.randint(2019, 2026),
              "term": rng.choice(SEARCH_TERMS), "west": lon - half, "east": lon + half,
              "south": lat - half, "north": lat + half}
    return operation, READS[operation], params


def reader_step(session, rng, role):
    operation, statement, params = read_call(rng)

    def call():
        rows = api_execute(session.conn, role, statement, params)
        session.conn.commit()
        return rows

    ok, _ = session.recorder.timed("read", operation, call)
    if not ok:
        session.after_failure()


@dataclass
class WriterState:
    index: int
    rng: random.Random
    today: datetime.date
    rows: dict = field(default_factory=dict)  # id -> content, the features this writer inserted
    inserted: int = 0


def writer_step(session, state, ledger):
    conn, settings = session.conn, session.settings
    if not state.rows or state.rng.random() < INSERT_SHARE:
        content = new_feature(settings, "w%d-%d" % (state.index, state.inserted + 1), state.rng, state.today)
        ok, result = session.recorder.timed("write", "insert", lambda: insert_feature(conn, ledger, content))
        state.inserted += 1
        if ok:
            state.rows[result] = content
    else:
        feature_id = state.rng.choice(sorted(state.rows))
        updated = next_revision(state.rows[feature_id])
        ok, result = session.recorder.timed("write", "update",
                                            lambda: update_feature(conn, ledger, feature_id, updated))
        # The next update rewrites the same two columns whatever this one's outcome, so it
        # may build on this content even when this one failed or is in doubt.
        state.rows[feature_id] = updated
        if isinstance(result, MissingRow):
            del state.rows[feature_id]  # the check at the end reports it; do not hit it again
    if not ok:
        session.after_failure()


def run_worker(settings, recorder, stop, step):
    session = Session(settings, recorder, stop)
    try:
        while session.ready():
            step(session)
            if stop.wait(settings.think_ms / 1000):
                break
    finally:
        session.close()


def start_workers(settings, recorder, ledger, stop):
    today = datetime.date.today()
    threads = []
    for index in range(settings.readers):
        rng = random.Random("%d:reader:%d" % (settings.seed, index))
        role = "anon" if index % 2 else "authenticated"  # every other reader is not logged in
        threads.append(threading.Thread(target=run_worker, daemon=True, name="reader-%d" % index,
                                        args=(settings, recorder, stop,
                                              lambda session, rng=rng, role=role: reader_step(session, rng, role))))
    for index in range(settings.writers):
        state = WriterState(index, random.Random("%d:writer:%d" % (settings.seed, index)), today)
        threads.append(threading.Thread(target=run_worker, daemon=True, name="writer-%d" % index,
                                        args=(settings, recorder, stop,
                                              lambda session, state=state: writer_step(session, state, ledger))))
    for thread in threads:
        thread.start()
    return threads


LOCK_WAITS_SQL = """
    SELECT w.pid, w.query_start, extract(epoch FROM clock_timestamp() - w.query_start) * 1000,
           ARRAY(SELECT DISTINCT coalesce(nullif(b.application_name, ''), b.usename::text)
                 FROM pg_stat_activity b WHERE b.pid = ANY (pg_blocking_pids(w.pid)))
    FROM pg_stat_activity w
    WHERE w.application_name = %s AND w.wait_event_type = 'Lock'"""


class LockWatcher(threading.Thread):
    """Samples the harness's calls waiting for a lock (see the module's docstring); keeps, per call
    (backend and statement start), the longest wait seen and who blocked it."""

    def __init__(self, settings, recorder, stop):
        super().__init__(daemon=True, name="lock-watcher")
        self.settings, self.recorder, self.stop = settings, recorder, stop
        self.waits = {}  # (pid, query_start) -> {"ms", "started_at_s", "blocked_by"}
        self.samples = 0
        self.missed = 0  # samples not taken: the connection failed (a server restart)

    def run(self):
        conn = None
        while not self.stop.wait(LOCK_SAMPLE_S):
            try:
                if conn is None or conn.closed:
                    conn = connect(self.settings, "stage4-workload-watcher")
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(LOCK_WAITS_SQL, ("stage4-workload:" + self.settings.tag,))
                    rows = cur.fetchall()
            except (BadInput, psycopg2.Error):
                self.missed += 1
                if conn is not None:
                    conn.close()
                continue
            self.samples += 1
            now_s = time.monotonic() - self.recorder.started
            for pid, query_start, waited_ms, blocked_by in rows:
                ms = float(waited_ms)  # numeric
                wait = self.waits.setdefault((pid, query_start), {"ms": 0.0, "started_at_s": round(now_s - ms / 1000, 3),
                                                                  "blocked_by": set()})
                wait["ms"] = max(wait["ms"], ms)
                wait["blocked_by"].update(blocked_by)
        if conn is not None:
            conn.close()

    def report(self):
        waits = sorted(self.waits.values(), key=lambda w: w["ms"], reverse=True)
        return {"sample_interval_ms": round(LOCK_SAMPLE_S * 1000), "samples": self.samples, "samples_missed": self.missed,
                "calls_seen_waiting": len(waits), "target_ms": round(BLOCK_TARGET_S * 1000),
                "over_target": sum(w["ms"] > BLOCK_TARGET_S * 1000 for w in waits),
                "longest": [{"ms": round(w["ms"], 1), "started_at_s": w["started_at_s"], "blocked_by": sorted(w["blocked_by"])}
                            for w in waits[:5]]}


def wait_for_end(settings, recorder, stop):
    while not stop.wait(0.2):
        if settings.until_file and os.path.exists(settings.until_file):
            break
        if settings.duration_s is not None and time.monotonic() - recorder.started >= settings.duration_s:
            break
    stop.set()


# ---------------------------------------------------------------- report

def latency(samples):
    ordered = sorted(sample.ms for sample in samples)
    if not ordered:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"count": len(ordered), "p50_ms": round(percentile(ordered, 50), 3),
            "p99_ms": round(percentile(ordered, 99), 3), "max_ms": round(ordered[-1], 3)}


def timeline(samples, elapsed_s):
    """Per second of the run: calls started, errors among them and the longest of them."""
    seconds = [{"second": second, "calls": 0, "errors": 0, "max_ms": 0.0} for second in range(max(1, math.ceil(elapsed_s)))]
    for sample in samples:
        bucket = seconds[min(int(sample.started_s), len(seconds) - 1)]
        bucket["calls"] += 1
        bucket["errors"] += sample.error is not None
        bucket["max_ms"] = max(bucket["max_ms"], round(sample.ms, 3))
    return seconds


def build_report(settings, recorder, started_at, elapsed_s, verification, cleaned, lock_waits):
    samples = list(recorder.samples)
    reads = [s for s in samples if s.kind == "read"]
    writes = [s for s in samples if s.kind == "write"]
    longest = max(samples, key=lambda s: s.ms, default=None)
    committed = [s for s in writes if s.error is None]
    return {
        "tag": settings.tag,
        "marker": settings.marker,
        "workload_user": WORKLOAD_USER,
        "started_at": started_at,
        "duration_s": round(elapsed_s, 3),
        "settings": {"readers": settings.readers, "writers": settings.writers, "duration_s": settings.duration_s,
                     "until_file": settings.until_file, "statement_timeout_s": settings.statement_timeout_s,
                     "think_ms": settings.think_ms, "seed": settings.seed, "cleanup": settings.cleanup},
        "database": {"host": settings.host, "port": settings.port, "dbname": settings.dbname, "user": settings.user},
        "writes": {"attempted": len(writes), "committed": len(committed), "failed": len(writes) - len(committed),
                   "inserts_committed": sum(s.operation == "insert" for s in committed),
                   "updates_committed": sum(s.operation == "update" for s in committed),
                   "in_doubt": verification["in_doubt"], "lost": verification["lost"]},
        "reads": {"attempted": len(reads), "succeeded": sum(s.error is None for s in reads),
                  "failed": sum(s.error is not None for s in reads)},
        "errors": {"by_kind": {kind: sum(s.error == kind for s in samples) for kind in ERROR_KINDS},
                   "by_sqlstate_class": dict(sorted(recorder.by_class.items())),
                   "examples": dict(sorted(recorder.examples.items()))},
        "reconnects": recorder.reconnects,
        "latency_ms": {"read": latency(reads), "write": latency(writes)},
        "longest": None if longest is None else {
            "kind": longest.kind, "operation": longest.operation, "ms": round(longest.ms, 3),
            "started_at_s": round(longest.started_s, 3), "error": longest.error},
        "timeline": timeline(samples, elapsed_s),
        "lock_waits": lock_waits,
        "verification": verification,
        "cleanup": cleaned,
    }


def summary(report):
    writes, reads, longest = report["writes"], report["reads"], report["longest"]
    errors = ", ".join("%s %d" % item for item in report["errors"]["by_kind"].items() if item[1]) or "none"
    lines = [
        "workload %s: %.1f s, %d readers, %d writers" % (report["tag"], report["duration_s"],
                                                         report["settings"]["readers"], report["settings"]["writers"]),
        "writes: %(attempted)d attempted, %(committed)d committed, %(failed)d failed, "
        "%(in_doubt)d in doubt, %(lost)d lost" % writes,
        "reads: %(attempted)d attempted, %(succeeded)d succeeded, %(failed)d failed" % reads,
        "errors: " + errors,
    ]
    for kind, stats in report["latency_ms"].items():
        if stats["count"]:
            lines.append("%s latency: p50 %.1f ms, p99 %.1f ms, max %.1f ms" % (
                kind, stats["p50_ms"], stats["p99_ms"], stats["max_ms"]))
    if longest:
        lines.append("longest call: %s %s, %.1f ms, started at +%.1f s%s" % (
            longest["kind"], longest["operation"], longest["ms"], longest["started_at_s"],
            " (%s)" % longest["error"] if longest["error"] else ""))
    waits = report["lock_waits"]
    lines.append("lock waits: %d calls seen waiting, %d over %.0f s%s" % (
        waits["calls_seen_waiting"], waits["over_target"], waits["target_ms"] / 1000,
        ", longest %.1f ms (blocked by %s)" % (waits["longest"][0]["ms"], ", ".join(waits["longest"][0]["blocked_by"]) or "?")
        if waits["longest"] else ""))
    if report["cleanup"]["enabled"]:
        lines.append("cleanup: %(deleted)s rows deleted" % report["cleanup"])
    return "\n".join(lines)


# ---------------------------------------------------------------- command line

def check_database(settings):
    """Refuses, before any load, a database the application's calls cannot work on."""
    conn = connect(settings)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('public.geometrias') IS NOT NULL,"
                        " to_regprocedure('auth.uid()') IS NOT NULL,"
                        " (SELECT count(*) FROM pg_roles WHERE rolname IN ('anon', 'authenticated')"
                        "  AND pg_has_role(current_user, oid, 'MEMBER')),"
                        " (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user)")
            table, uid, roles, bypasses_rls = cur.fetchone()
    finally:
        conn.close()
    if not table:
        raise BadInput("table public.geometrias does not exist in %s" % settings.dbname)
    if not uid:
        raise BadInput("function auth.uid() does not exist in %s: not a Supabase-like database" % settings.dbname)
    if roles != 2:
        raise BadInput("%s must be a member of the roles anon and authenticated" % settings.user)
    if not bypasses_rls:
        raise BadInput("%s must bypass RLS (superuser or BYPASSRLS): the final check reads the workload's "
                       "private rows" % settings.user)


def settings_from(args, environ):
    missing = [name for name in ("DB_HOST", "DB_USER") if not environ.get(name)]
    if missing:
        raise BadInput("%s not set (the connection comes from DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD)"
                       % " and ".join(missing))
    try:
        port = int(environ.get("DB_PORT") or 5432)
    except ValueError as error:
        raise BadInput("DB_PORT is not a port number: %r" % environ["DB_PORT"]) from error
    duration = args.duration if args.duration is not None or args.until_file else 10.0
    return Settings(host=environ["DB_HOST"], port=port, dbname=environ.get("DB_NAME") or "BIBLIOTECA",
                    user=environ["DB_USER"], password=environ.get("DB_PASSWORD"), tag=args.tag,
                    readers=args.readers, writers=args.writers, duration_s=duration, until_file=args.until_file,
                    statement_timeout_s=args.statement_timeout, think_ms=args.think_ms, seed=args.seed,
                    cleanup=args.cleanup, report=args.report)


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def tag_value(text):
    # The tag goes into nome and the cleanup's filter: plain characters only.
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,40}", text):
        raise argparse.ArgumentTypeError("1 to 40 letters, digits, '.', '_' or '-'")
    return text


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readers", type=non_negative_int, default=2, help="reader threads (default 2)")
    parser.add_argument("--writers", type=non_negative_int, default=2, help="writer threads (default 2)")
    parser.add_argument("--duration", type=positive_float,
                        help="seconds to run; with --until-file, the longest to wait for it (default 10 without it)")
    parser.add_argument("--until-file", help="run until this file exists (create it when the playbook is done)")
    parser.add_argument("--report", help="write the JSON report to this file")
    parser.add_argument("--tag", type=tag_value,
                        default=time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-%d" % os.getpid(),
                        help="label of this run, part of every row's marker (default: UTC time and pid)")
    parser.add_argument("--statement-timeout", type=positive_float, default=30.0,
                        help="seconds after which a call is cancelled (statement_timeout, default 30)")
    parser.add_argument("--think-ms", type=non_negative_int, default=20,
                        help="pause of each thread between two calls, in ms (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calls' random choices (default 0)")
    parser.add_argument("--cleanup", action=argparse.BooleanOptionalAction, default=True,
                        help="delete the harness's rows at the end, after the check (default on)")
    return parser.parse_args(argv)


def finish(settings, ledger):
    """Checks every committed write, then removes the run's rows; the server may still be restarting."""
    deadline = time.monotonic() + settings.statement_timeout_s
    while True:
        try:
            conn = connect(settings)
            break
        except BadInput:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    try:
        verification = verify_writes(conn, ledger)
        cleaned = {"enabled": settings.cleanup, "deleted": cleanup(conn, settings) if settings.cleanup else 0}
    finally:
        conn.close()
    return verification, cleaned


def main(argv, environ):
    try:
        settings = settings_from(parse_args(argv), environ)
        check_database(settings)
    except BadInput as error:
        print("workload: %s" % error, file=sys.stderr)
        return 2
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    recorder, ledger, stop = Recorder(), Ledger(), threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    threads = start_workers(settings, recorder, ledger, stop)
    watcher = LockWatcher(settings, recorder, stop)
    watcher.start()
    wait_for_end(settings, recorder, stop)
    for thread in threads + [watcher]:
        thread.join(settings.statement_timeout_s + 15)  # a call in flight ends within statement_timeout
    elapsed = time.monotonic() - recorder.started
    try:
        verification, cleaned = finish(settings, ledger)
    except (BadInput, psycopg2.Error) as error:
        print("workload: cannot check the writes, the outcome is unknown: %s" % str(error).strip(), file=sys.stderr)
        return 1
    report = build_report(settings, recorder, started_at, elapsed, verification, cleaned, watcher.report())
    if settings.report:
        Path(settings.report).parent.mkdir(parents=True, exist_ok=True)
        Path(settings.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(summary(report))
    return 1 if verification["lost"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
