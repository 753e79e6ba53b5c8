"""Online rebuilds: prepare.sql copies live data in batches while the application writes, the deploy
transaction only replays the logged writes and swaps the tables in. OPT1 rebuilds the whole table
as a partitioned one, and its revert (prepare_revert.sql) as a plain one again; OPT2 rebuilds each
closed partition, clustered, and attaches it in place.
Through plugins/modules/stage4_change.py against a real cluster holding the reference fixture at 20,000
features; every test gets its own copy of that database (with the toolkit installed).
"""
import datetime
import json
import os
import random
import threading
import time

import pytest

import pgcluster
from ansible_collections.biblioteca.stage4.plugins.modules import stage4_change
from ansible_collections.biblioteca.stage4.plugins.module_utils import change_files, ledger

FEATURES = 20000
TEMPLATE = "opt1_online_template"
OPT1 = "opt1_temporal_partitioning"
OPT2 = "opt2_storage_layout"
# Small batches: many short transactions, so that the writer and the kills meet the copy mid-way.
VARIABLES = {"partition_through_year": "2028", "batch_rows": "2000", "lock_timeout": "2s"}
CHECKSUM = "SELECT count(*), stage4.table_checksum('public.geometrias') FROM public.geometrias"


def run(capsys, args, check_mode=False, diff=False):
    return pgcluster.run_module(capsys, stage4_change.main, args, check_mode, diff)


@pytest.fixture(scope="module")
def cluster():
    with pgcluster.running_cluster() as running:
        running.build_reference_db(TEMPLATE, features=FEATURES)
        conn = running.connect(TEMPLATE)
        pgcluster.install_toolkit(conn)
        conn.close()
        yield running


@pytest.fixture
def db(cluster, request):
    return cluster.clone_database("t_" + request.node.name[:50], TEMPLATE)


def opt1_args(cluster, db, **extra):
    return dict(dict(cluster.login_args(db), sql_root=pgcluster.SQL_ROOT, change=OPT1, variables=VARIABLES,
                     lock_retry_delay=0.5), **extra)


def fetch(cluster, db, sql, params=None):
    conn = cluster.connect(db)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def schema_dump(cluster, db):
    return pgcluster.schema_dump(cluster, db)


def leftovers(cluster, db):
    """What a prepare leaves behind: the capture triggers, the stage4_online schema, rebuild state, prepared mark."""
    return fetch(cluster, db, """
        SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.geometrias'::regclass AND tgname LIKE 'stage4_online%%'),
               to_regnamespace('stage4_online') IS NOT NULL,
               (SELECT count(*) FROM stage4.online_rebuilds),
               (SELECT count(*) FROM pg_class WHERE relname ~ '^geometrias_(p[0-9]{4}|default)$')""")[0]


class Writer(threading.Thread):
    """The application: inserts, updates (some moving a row to another year) and deletes through
    public.geometrias, one autocommit statement at a time, remembering every committed write and
    how long each statement took."""

    def __init__(self, cluster, db):
        super().__init__(daemon=True)
        self.conn = cluster.connect(db)
        self.stop = threading.Event()
        self.expected = {}  # id -> (nome, data_referencia), None once deleted
        self.longest = 0.0
        self.statements = 0
        self.errors = []

    def run(self):
        rnd = random.Random(4)
        with self.conn.cursor() as cur:
            while not self.stop.is_set():
                n = self.statements
                day = datetime.date(2019, 1, 1) + datetime.timedelta(days=rnd.randrange(8 * 365))
                name = "writer %d" % n
                target = rnd.randrange(1, FEATURES + 1)
                op = rnd.random()
                started = time.monotonic()
                try:
                    if op < 0.4:
                        cur.execute("INSERT INTO public.geometrias (nome, categoria, geom, data_referencia) "
                                    "SELECT %s, categoria, geom, %s FROM public.geometrias WHERE id = 1 RETURNING id",
                                    (name, day))
                        self.expected[cur.fetchone()[0]] = (name, day)
                    elif op < 0.8:
                        cur.execute("UPDATE public.geometrias SET nome = %s, data_referencia = %s WHERE id = %s "
                                    "RETURNING id", (name, day, target))
                        if cur.fetchone():
                            self.expected[target] = (name, day)
                    else:
                        cur.execute("DELETE FROM public.geometrias WHERE id = %s AND id <> 1", (target,))
                        if target != 1:
                            self.expected[target] = None
                except Exception as error:  # noqa: BLE001  (any failed write is a finding)
                    self.errors.append(repr(error))
                self.longest = max(self.longest, time.monotonic() - started)
                self.statements += 1
        self.conn.close()


def deploy_while_writing(cluster, db, capsys, args, label, settles=False):
    """Deploys a change with a prepare through the module while the Writer runs; asserts it deployed
    with its prepare (and its settle.sql) and that every committed write is there with its content
    (deleted rows gone). Returns the module's result and the writer."""
    return change_while_writing(cluster, db, capsys, args, label, "deployed",
                                ["precheck", "prepare", "precheck", "deploy", "verify"] + ["settle"] * settles)


def change_while_writing(cluster, db, capsys, args, label, action, executed):
    """Runs the module while the Writer runs; asserts it did `action` with the scripts `executed` and
    that every committed write is there with its content. Returns the module's result and the writer."""
    writer = Writer(cluster, db)
    writer.start()
    time.sleep(0.5)
    applied = run(capsys, args)
    time.sleep(0.5)
    writer.stop.set()
    writer.join(30)
    assert applied["action"] == action, applied.get("msg")
    assert applied["executed"] == executed
    print("\n%s online at %d features: prepare %.2f s, cutover transaction %.2f s, writer: %d statements, "
          "longest %.3f s" % (label, FEATURES, applied["prepare_s"], applied["duration_s"], writer.statements,
                              writer.longest))
    assert not writer.errors
    rows = dict((r[0], (r[1], r[2])) for r in fetch(
        cluster, db, "SELECT id, nome, data_referencia FROM public.geometrias WHERE id = ANY (%s)",
        (list(writer.expected),)))
    assert {i: want for i, want in writer.expected.items() if rows.get(i) != want} == {}
    return applied, writer


def test_writes_during_prepare_and_cutover_are_kept(cluster, db, capsys):
    applied, writer = deploy_while_writing(cluster, db, capsys, opt1_args(cluster, db), "OPT1", settles=True)
    assert applied["prepared"] == "started"
    assert writer.statements > 100
    assert fetch(cluster, db, "SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass")[0][0] == "p"
    assert leftovers(cluster, db) == (0, False, 0, 11)
    # The cutover compared only the keys written since the prepare's proof, not every row.
    proof = fetch(cluster, db, "SELECT snapshot->'rows_proof' FROM stage4.table_snapshots WHERE change = %s", (OPT1,))[0][0]
    assert proof["writes_replayed_at_cutover"] > 0 and int(proof["row_count"]) > 0
    # How long the writer waited is a measurement (printed above), not a pass/fail criterion.


LAYOUT = "stage4.yearly_layout('public.geometrias', 'data_referencia', 2028)"


def test_the_proof_catches_a_differing_shadow_and_the_cutover_compares_the_replayed_keys(cluster, db):
    """prove_shadow() compares the shadow with the table outside the lock, but for the logged keys;
    the cutover then compares only those. A replay after the proof voids it: the cutover then
    checksums every row."""
    conn = cluster.connect(db)
    with conn.cursor() as cur:
        cur.execute("CALL stage4.prepare_online_rebuild('public.geometrias', %s, 2000, '2s')" % LAYOUT)
        cur.execute("SELECT proof FROM stage4.online_rebuilds")
        assert cur.fetchone()[0]["row_count"] == FEATURES
        # A shadow row that differs on a key nobody wrote: the proof refuses it.
        cur.execute("UPDATE stage4_online.geometrias SET nome = nome || ' (stale)' WHERE id = 5")
        with pytest.raises(Exception, match="differs from it on keys not written since the copy"):
            cur.execute("SELECT stage4.prove_shadow('public.geometrias')")
        # Written by the application since: logged, so left to the cutover, which replays and compares it.
        cur.execute("UPDATE public.geometrias SET nome = 'written after the copy' WHERE id = 5")
        cur.execute("SELECT stage4.prove_shadow('public.geometrias')")
        conn.autocommit = False
        cur.execute("SELECT stage4.finish_online_rebuild('opt1_temporal_partitioning', 'public.geometrias', %s)" % LAYOUT)
        cur.execute("SELECT snapshot FROM stage4.table_snapshots WHERE change = 'opt1_temporal_partitioning'")
        snapshot = cur.fetchone()[0]
        assert snapshot["rows_proof"]["writes_replayed_at_cutover"] == 1 and "checksum" not in snapshot
        cur.execute("SELECT nome FROM public.geometrias WHERE id = 5")
        assert cur.fetchone()[0] == "written after the copy"
        cur.execute("SELECT stage4.assert_table_preserved('public.geometrias', %s, true)", (json.dumps(snapshot),))
        conn.rollback()
        # A replay after the proof voids it; the cutover then checksums both tables whole.
        cur.execute("UPDATE public.geometrias SET nome = 'replayed after the proof' WHERE id = 6")
        cur.execute("SELECT stage4.apply_delta('public.geometrias', NULL)")
        cur.execute("SELECT proof FROM stage4.online_rebuilds")
        assert cur.fetchone()[0] is None
        cur.execute("SELECT stage4.finish_online_rebuild('opt1_temporal_partitioning', 'public.geometrias', %s)" % LAYOUT)
        cur.execute("SELECT snapshot FROM stage4.table_snapshots WHERE change = 'opt1_temporal_partitioning'")
        snapshot = cur.fetchone()[0]
        assert "rows_proof" not in snapshot and snapshot["row_count"] == FEATURES
        cur.execute("SELECT stage4.assert_table_preserved('public.geometrias', %s, true)", (json.dumps(snapshot),))
        conn.rollback()
    conn.close()


def test_writes_replayed_after_the_proof_are_proven_as_they_are_replayed(cluster, db):
    """replay_proven() replays what was written since the proof and compares both tables on those keys
    in the same transaction, so the proof still holds and the cutover has only later writes to do. A
    replay that does not reproduce the table's rows is refused, and nothing it took is lost."""
    conn = cluster.connect(db)
    with conn.cursor() as cur:
        cur.execute("CALL stage4.prepare_online_rebuild('public.geometrias', %s, 2000, '2s')" % LAYOUT)
        cur.execute("UPDATE public.geometrias SET nome = 'written after the proof' WHERE id IN (7, 8)")
        cur.execute("SELECT stage4.replay_proven('public.geometrias', NULL)")
        assert cur.fetchone()[0] == 2
        cur.execute("SELECT proof->>'writes_replayed_after_proof', (SELECT count(*) FROM stage4_online.geometrias_delta) "
                    "FROM stage4.online_rebuilds")
        assert cur.fetchone() == ("2", 0)
        cur.execute("SELECT count(*) FROM stage4_online.geometrias WHERE nome = 'written after the proof'")
        assert cur.fetchone()[0] == 2
        # A replay that alters what it copies (here a trigger on the shadow) is caught.
        cur.execute("CREATE FUNCTION pg_temp.alter_copy() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN NEW.nome := NEW.nome || ' (altered)'; RETURN NEW; END $$")
        cur.execute("CREATE TRIGGER alter_copy BEFORE INSERT ON stage4_online.geometrias "
                    "FOR EACH ROW EXECUTE FUNCTION pg_temp.alter_copy()")
        cur.execute("UPDATE public.geometrias SET nome = 'written again' WHERE id = 9")
        with pytest.raises(Exception, match="differs from it on their keys"):
            cur.execute("SELECT stage4.replay_proven('public.geometrias', NULL)")
        cur.execute("SELECT proof->>'writes_replayed_after_proof', (SELECT count(*) FROM stage4_online.geometrias_delta) "
                    "FROM stage4.online_rebuilds")
        assert cur.fetchone() == ("2", 1)
    conn.close()


MATVIEWS = """
    DO $$ BEGIN CREATE ROLE stage4_reporting NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
    CREATE MATERIALIZED VIEW public.por_categoria WITH (fillfactor = 90) AS
        SELECT categoria, count(*) AS n, min(id) AS primeiro FROM public.geometrias GROUP BY categoria;
    CREATE UNIQUE INDEX por_categoria_key ON public.por_categoria (categoria);
    CREATE INDEX por_categoria_n ON public.por_categoria (n) WHERE n > 0;
    COMMENT ON MATERIALIZED VIEW public.por_categoria IS 'features per category';
    COMMENT ON COLUMN public.por_categoria.n IS 'features';
    GRANT SELECT ON public.por_categoria TO stage4_reporting;
    -- over another dependent, and unpopulated: both left to the cutover
    CREATE MATERIALIZED VIEW public.maior_categoria AS SELECT categoria FROM public.por_categoria ORDER BY n DESC LIMIT 1;
    CREATE MATERIALIZED VIEW public.anos AS SELECT DISTINCT extract(year FROM data_referencia) AS ano
        FROM public.geometrias WITH NO DATA;
"""
MATVIEW_STATE = """
    SELECT c.relname, c.relispopulated, stage4.view_definition(c.oid), stage4.index_definitions(c.oid)::text,
           obj_description(c.oid, 'pg_class'), c.relacl::text
    FROM pg_class c WHERE c.relkind = 'm' AND c.relnamespace = 'public'::regnamespace ORDER BY c.relname"""


def test_materialized_views_are_built_over_the_shadow_and_moved_in_at_the_cutover(cluster, db):
    """The cutover recreated dependent materialized views WITH DATA under its lock: at 1,000,000
    features that ran OPT1 past its transaction_timeout. The prepare builds those that read the
    table alone over the shadow; the cutover moves them into place (the same relation, no scan),
    with the original's definition, indexes, comments and grants."""
    conn = cluster.connect(db)
    with conn.cursor() as cur:
        cur.execute(MATVIEWS)
        cur.execute(MATVIEW_STATE)
        before = cur.fetchall()
        cur.execute("SELECT * FROM public.por_categoria ORDER BY categoria")
        counts = cur.fetchall()
        cur.execute("CALL stage4.prepare_online_rebuild('public.geometrias', %s, 2000, '2s')" % LAYOUT)
        cur.execute("SELECT relname, oid FROM pg_class WHERE relnamespace = 'stage4_online'::regnamespace AND relkind = 'm'")
        prebuilt = dict(cur.fetchall())
        assert list(prebuilt) == ["por_categoria"]
        cur.execute("SELECT count(*) FROM pg_class c, aclexplode(c.relacl) a "
                    "WHERE c.oid = %s AND a.grantee <> c.relowner", (prebuilt["por_categoria"],))
        assert cur.fetchone()[0] == 0  # nobody else reads it before the cutover
        conn.autocommit = False
        cur.execute("SET LOCAL statement_timeout = '5s'")
        cur.execute("SELECT stage4.finish_online_rebuild('opt1_temporal_partitioning', 'public.geometrias', %s)" % LAYOUT)
        conn.commit()
        cur.execute("SELECT 'public.por_categoria'::regclass::oid")
        assert cur.fetchone()[0] == prebuilt["por_categoria"]
        cur.execute(MATVIEW_STATE)
        assert cur.fetchall() == before
        cur.execute("SELECT * FROM public.por_categoria ORDER BY categoria")
        assert cur.fetchall() == counts
        # analyzed: the planner knows its rows from the start
        cur.execute("SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND tablename = 'por_categoria'")
        assert cur.fetchone()[0] == 3
        cur.execute("SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass")
        assert cur.fetchone()[0] == "p"
    conn.close()
    assert leftovers(cluster, db)[:3] == (0, False, 0)


def test_a_materialized_view_changed_or_dropped_since_the_prepare_is_not_taken_prebuilt(cluster, db):
    """What the prepare built is only used when it is still what the original is; otherwise the
    cutover recreates the original as before, and drops what nothing uses. An aborted rebuild
    removes the prebuilt views with the shadow."""
    conn = cluster.connect(db)
    with conn.cursor() as cur:
        cur.execute(MATVIEWS + """
            CREATE MATERIALIZED VIEW public.sem_uso AS SELECT count(*) AS n FROM public.geometrias;""")
        cur.execute("CALL stage4.prepare_online_rebuild('public.geometrias', %s, 2000, '2s')" % LAYOUT)
        cur.execute("SELECT stage4.abort_online_rebuild('public.geometrias')")
        assert leftovers(cluster, db)[:3] == (0, False, 0)
        cur.execute("CALL stage4.prepare_online_rebuild('public.geometrias', %s, 2000, '2s')" % LAYOUT)
        cur.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'stage4_online'::regnamespace AND relkind = 'm'")
        assert cur.fetchone()[0] == 2
        cur.execute("""
            DROP MATERIALIZED VIEW public.sem_uso;
            DROP MATERIALIZED VIEW public.maior_categoria;
            DROP MATERIALIZED VIEW public.por_categoria;
            CREATE MATERIALIZED VIEW public.por_categoria AS
                SELECT categoria, count(*) AS n, max(id) AS ultimo FROM public.geometrias GROUP BY categoria;""")
        cur.execute(MATVIEW_STATE)
        before = cur.fetchall()
        conn.autocommit = False
        cur.execute("SELECT stage4.finish_online_rebuild('opt1_temporal_partitioning', 'public.geometrias', %s)" % LAYOUT)
        conn.commit()
        cur.execute(MATVIEW_STATE)
        assert cur.fetchall() == before
        cur.execute("SELECT count(*) FROM public.por_categoria WHERE ultimo IS NOT NULL")
        assert cur.fetchone()[0] > 0
        cur.execute("SELECT count(*) FROM pg_stats WHERE schemaname = 'public' AND tablename = 'por_categoria'")
        assert cur.fetchone()[0] == 3  # recreated in the cutover, analyzed there
    conn.close()
    assert leftovers(cluster, db)[:3] == (0, False, 0)


OLD_FINGERPRINT = """
    SELECT md5(string_agg(format('%s|%s|%s|%s|%s', p.polname, p.polpermissive, p.polcmd, p.polroles, p.polqual),
                          ';' ORDER BY p.polname)) AS fingerprint
    FROM pg_policy p WHERE p.polrelid = 'public.geometrias'::regclass AND p.polcmd IN ('r', '*')"""


def test_the_read_policies_keep_their_fingerprint_through_a_swap(cluster, db):
    """OPT3 and OPT5 serve from their views only while the read policies are the ones they accepted
    (stage4.visibilidade.exata). A swap recreates the policies on the new table: the same policies,
    so the same fingerprint, or OPT1 applied after them turns both off. A fingerprint accepted under
    the earlier definition (which counted where in the statement each policy was written) is
    carried over when stage4_api_reading is deployed again."""
    conn = cluster.connect(db)
    with conn.cursor() as cur:
        cur.execute("SELECT fingerprint FROM stage4.read_policies_fingerprint")
        before = cur.fetchone()[0]
        cur.execute(OLD_FINGERPRINT)
        old_style = cur.fetchone()[0]
        # A database where the earlier definition accepted the policies.
        cur.execute("CREATE OR REPLACE VIEW stage4.read_policies_fingerprint AS " + OLD_FINGERPRINT)
        cur.execute("INSERT INTO stage4.accepted_read_policies (change, fingerprint) VALUES ('accepted_earlier', %s)",
                    (old_style,))
        pgcluster.run_change(conn, "stage4_api_reading")
        cur.execute("SELECT fingerprint FROM stage4.accepted_read_policies WHERE change = 'accepted_earlier'")
        assert cur.fetchone()[0] == before
        cur.execute("CALL stage4.prepare_online_rebuild('public.geometrias', %s, 2000, '2s')" % LAYOUT)
        conn.autocommit = False
        cur.execute("SELECT stage4.finish_online_rebuild('opt1_temporal_partitioning', 'public.geometrias', %s)" % LAYOUT)
        conn.commit()
        cur.execute(OLD_FINGERPRINT)
        assert cur.fetchone()[0] != old_style  # what the earlier definition saw: other policies
        cur.execute("SELECT fingerprint FROM stage4.read_policies_fingerprint")
        assert cur.fetchone()[0] == before
        cur.execute("SELECT exata FROM stage4.visibilidade")
        assert cur.fetchone()[0] is True
    conn.close()


def test_the_rebuild_locks_the_views_before_the_table(cluster, db):
    """A reader of public.geometrias_publicas locks the view, then the table. The rebuild takes its
    locks in that order too: taken table first, the reader would hold the view while waiting for
    the table, and the swap's DROP VIEW would deadlock with it (seen at 1,000,000 features)."""
    rebuild = cluster.connect(db, autocommit=False)
    reader = cluster.connect(db)
    with rebuild.cursor() as cur:
        cur.execute("SET deadlock_timeout = '100ms'")
        cur.execute("SELECT stage4.lock_for_rebuild('public.geometrias')")
        read = threading.Thread(target=lambda: reader.cursor().execute("SELECT count(*) FROM public.geometrias_publicas"),
                                daemon=True)
        read.start()
        for _ in range(100):  # the reader is queued behind the rebuild's locks
            if fetch(cluster, db, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0]:
                break
            time.sleep(0.05)
        cur.execute("SELECT c.relname FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE NOT l.granted AND l.locktype = 'relation'")
        assert cur.fetchall() == [("geometrias_publicas",)]
        cur.execute("DROP VIEW public.geometrias_publicas")  # what swap_shadow() does; no deadlock
        time.sleep(0.3)
    rebuild.rollback()
    read.join(10)
    assert not read.is_alive()
    rebuild.close()
    reader.close()


def test_calls_queued_behind_the_swap_complete_and_the_retired_functions_go_after_them(cluster, db, capsys):
    """An RPC returning the table's rows, called while the cutover holds the table, has resolved the
    function (and the table's row type) before it queues. The swap retires the old function and the
    old table, whole, instead of dropping them, so the call completes when the cutover commits, with
    the new table's rows. Dropped, it failed ("could not open relation with OID" here, "cache lookup
    failed for type" at 1,000,000 features). drop_retired() waits for the caller's transaction; until
    it drops them the retired table keeps its rows, so their files were not removed under the lock."""
    assert run(capsys, opt1_args(cluster, db))["action"] == "deployed"
    cutover = cluster.connect(db, autocommit=False)
    caller = cluster.connect(db, autocommit=False)
    outcome = {}

    def call():
        try:
            with caller.cursor() as cur:
                cur.execute("SET ROLE anon")
                cur.execute("SELECT count(*) FROM public.geometrias_no_raio(-43.1822, -22.9711, 5000)")
                outcome["rows"] = cur.fetchone()[0]
        except Exception as error:  # noqa: BLE001  (reported by the assertion below)
            outcome["error"] = str(error)
    expected = fetch(cluster, db, "SET ROLE anon; SELECT count(*) FROM public.geometrias_no_raio(-43.1822, -22.9711, 5000)")[0][0]
    with cutover.cursor() as cur:  # the revert's cutover, the copy in the transaction (no prepare)
        for key, value in VARIABLES.items():
            cur.execute("SELECT set_config(%s, %s, true)", ("stage4." + key, value))
        with open(os.path.join(pgcluster.SQL_ROOT, OPT1, "revert.sql"), encoding="utf-8") as handle:
            cur.execute(handle.read())
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    for _ in range(100):  # the call is queued behind the cutover's locks
        if fetch(cluster, db, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0]:
            break
        time.sleep(0.05)
    cutover.commit()
    thread.join(30)
    assert outcome == {"rows": expected}
    assert fetch(cluster, db, "SELECT count(*) FROM pg_proc WHERE pronamespace = 'stage4_retired'::regnamespace")[0][0] == 2
    assert fetch(cluster, db, "SELECT count(*) FROM stage4_retired.geometrias") == \
        fetch(cluster, db, "SELECT count(*) FROM public.geometrias")  # the partitioned table, with its partitions
    settle = threading.Thread(target=lambda: fetch(cluster, db, "SELECT stage4.drop_retired(30)"), daemon=True)
    settle.start()
    time.sleep(0.5)
    assert settle.is_alive()  # the caller's transaction is older than the swap
    caller.commit()
    settle.join(10)
    assert fetch(cluster, db, "SELECT to_regnamespace('stage4_retired')")[0][0] is None
    cutover.close()
    caller.close()


def terminate_prepare_mid_copy(cluster, db):
    """Waits until the copy has committed a few batches, then terminates the backend running it, in the
    same statement: the copy must not finish between the two."""
    for _ in range(600):
        found = fetch(cluster, db, "SELECT r.copied, pg_terminate_backend(a.pid) FROM stage4.online_rebuilds r, "
                                   "LATERAL (SELECT pid FROM pg_stat_activity WHERE query LIKE '%%prepare_online_rebuild%%' "
                                   "AND pid <> pg_backend_pid() AND state = 'active' LIMIT 1) a "
                                   "WHERE r.phase = 'copy' AND r.copied >= 4000")
        if found and found[0][1]:
            return found[0][0]
        time.sleep(0.05)
    raise AssertionError("the copy never got under way")


def interrupted_prepare(cluster, db, action="deploy"):
    """A run killed during the copy of OPT1's deploy (or revert): the module had marked the change prepared,
    its backend dies mid-copy. Returns how many rows were copied."""
    conn = cluster.connect(db)
    with conn.cursor() as cur:
        cur.execute(ledger.LEDGER_DDL.replace("{schema}", "stage4"))
        cur.execute("INSERT INTO stage4.prepared (change, run_id, files, action) VALUES (%s, 'killed', '{}', %s)",
                    (OPT1, action))
        # Batches of 100 rows: the copy is still under way when the kill lands (with 2,000 a copy out of a
        # partitioned table could finish first, and with 500 it did, once in four runs on an idle machine).
        for key, value in dict(VARIABLES, batch_rows="100").items():
            cur.execute("SELECT set_config(%s, %s, false)", ("stage4." + key, value))
    with open(os.path.join(pgcluster.SQL_ROOT, OPT1, change_files.PREPARE[action] + ".sql"), encoding="utf-8") as handle:
        prepare = handle.read()

    def prepare_until_killed():
        try:
            with conn.cursor() as cur:
                cur.execute(prepare)
        except Exception:  # noqa: BLE001  (terminated on purpose)
            pass
    thread = threading.Thread(target=prepare_until_killed, daemon=True)
    thread.start()
    copied = terminate_prepare_mid_copy(cluster, db)
    thread.join(30)
    assert fetch(cluster, db, "SELECT phase FROM stage4.online_rebuilds")[0][0] == "copy"
    return copied


def autovacuum_off(cluster, db):
    """Schema of every relation (or TOAST table) autovacuum may not touch."""
    return sorted(row[0] for row in fetch(cluster, db, """
        SELECT coalesce(m.relnamespace, c.relnamespace)::regnamespace::text
        FROM pg_class c LEFT JOIN pg_class m ON m.reltoastrelid = c.oid
        WHERE c.reloptions @> '{autovacuum_enabled=false}'"""))


def test_a_killed_prepare_is_resumed_and_converges(cluster, db, capsys):
    before = fetch(cluster, db, CHECKSUM)[0]
    copied = interrupted_prepare(cluster, db)
    assert 0 < copied < FEATURES
    # The shadow's 11 partitions (created under their final names in public) with their TOAST tables, and
    # the log: an autovacuum worker on them would hold the cutover up.
    assert autovacuum_off(cluster, db) == ["public"] * 22 + ["stage4_online"]
    would = run(capsys, opt1_args(cluster, db), check_mode=True, diff=True)
    assert would["action"] == "would_deploy" and would["prepared"] == "resumed"
    assert "-- ===== prepare.sql" in would["diff"]["after"]
    applied = run(capsys, opt1_args(cluster, db))
    assert applied["action"] == "deployed" and applied["prepared"] == "resumed", applied.get("msg")
    assert fetch(cluster, db, CHECKSUM)[0] == before
    assert leftovers(cluster, db) == (0, False, 0, 11)
    assert autovacuum_off(cluster, db) == []


def test_a_prepare_terminated_under_the_module_is_cleaned_up_then_run_again(cluster, db, capsys):
    before = fetch(cluster, db, CHECKSUM)[0]
    results = []
    thread = threading.Thread(target=lambda: results.append(run(capsys, opt1_args(cluster, db))), daemon=True)
    thread.start()
    terminate_prepare_mid_copy(cluster, db)
    thread.join(60)
    failed = results[0]
    assert failed["failed"] and "prepare.sql failed" in failed["msg"]
    assert "what prepare.sql built was removed (cleanup.sql)" in failed["msg"]
    assert leftovers(cluster, db) == (0, False, 0, 0)
    applied = run(capsys, opt1_args(cluster, db))
    assert applied["action"] == "deployed" and applied["prepared"] == "started", applied.get("msg")
    assert fetch(cluster, db, CHECKSUM)[0] == before


def test_revert_after_an_interrupted_prepare_restores_the_original_exactly(cluster, db, capsys):
    dump = schema_dump(cluster, db)
    before = fetch(cluster, db, CHECKSUM)[0]
    interrupted_prepare(cluster, db)
    assert leftovers(cluster, db)[:3] == (2, True, 1)
    assert schema_dump(cluster, db) != dump
    would = run(capsys, opt1_args(cluster, db, state="reverted"), check_mode=True)
    assert would["action"] == "would_clean_up" and not would["applied"]
    cleaned = run(capsys, opt1_args(cluster, db, state="reverted"))
    assert cleaned["action"] == "cleaned_up" and cleaned["executed"] == ["cleanup"], cleaned.get("msg")
    assert not run(capsys, opt1_args(cluster, db, state="reverted"))["changed"]
    assert leftovers(cluster, db) == (0, False, 0, 0)
    assert fetch(cluster, db, CHECKSUM)[0] == before
    assert schema_dump(cluster, db) == dump


def test_a_cutover_that_never_gets_its_lock_fails_cleanly(cluster, db, capsys):
    """Another session holds public.geometrias longer than every retry: the run fails with nothing
    applied. Dropping the capture trigger needs that lock too, so the cleanup says it could not run;
    once the lock is free, reverting the change removes what the prepare built."""
    blocker = cluster.connect(db, autocommit=False)

    def hold_lock_after_prepare():
        for _ in range(600):
            if fetch(cluster, db, "SELECT count(*) FROM stage4.online_rebuilds WHERE phase = 'catch_up'")[0][0]:
                break
            time.sleep(0.05)
        with blocker.cursor() as cur:
            cur.execute("LOCK TABLE public.geometrias IN ACCESS SHARE MODE")
    holder = threading.Thread(target=hold_lock_after_prepare, daemon=True)
    holder.start()
    failed = run(capsys, opt1_args(cluster, db, lock_retries=1, variables=dict(VARIABLES, lock_timeout="200ms")))
    blocker.rollback()
    blocker.close()
    assert failed["failed"] and "deploy.sql failed: canceling statement due to lock timeout" in failed["msg"]
    assert "lock not granted after 2 attempts" in failed["msg"]
    assert "cleanup.sql failed too" in failed["msg"] and "revert it to clean up" in failed["msg"]
    assert fetch(cluster, db, "SELECT relkind FROM pg_class WHERE oid = 'public.geometrias'::regclass")[0][0] == "r"
    assert fetch(cluster, db, "SELECT count(*) FROM stage4.ledger WHERE change = %s", (OPT1,))[0][0] == 0
    cleaned = run(capsys, opt1_args(cluster, db, state="reverted"))
    assert cleaned["action"] == "cleaned_up", cleaned.get("msg")
    assert leftovers(cluster, db) == (0, False, 0, 0)


def test_opt1_reverts_online_and_keeps_every_write(cluster, db, capsys):
    """The revert copies the table back into a plain one while the writer runs (prepare_revert.sql),
    then replays and compares only the keys written since the copy's proof under its lock. The table
    is then exactly as before OPT1 (its schema dump) with every committed write."""
    dump = schema_dump(cluster, db)
    assert run(capsys, opt1_args(cluster, db))["action"] == "deployed"
    reverted, writer = change_while_writing(cluster, db, capsys, opt1_args(cluster, db, state="reverted"), "OPT1 revert",
                                            "reverted", ["prepare_revert", "revert", "verify_reverted", "settle"])
    assert reverted["prepared"] == "started" and writer.statements > 100
    assert leftovers(cluster, db) == (0, False, 0, 0)
    assert schema_dump(cluster, db) == dump
    proof = fetch(cluster, db, "SELECT snapshot->'rows_proof' FROM stage4.table_snapshots WHERE change = %s",
                  (OPT1 + ":before_revert",))[0][0]
    assert proof["writes_replayed_at_cutover"] > 0 and int(proof["row_count"]) > 0
    events = fetch(cluster, db, "SELECT action FROM stage4.ledger_events WHERE change = %s ORDER BY id", (OPT1,))
    assert [e[0] for e in events] == ["prepare", "deploy", "prepare_revert", "revert"]


def test_an_interrupted_revert_is_cleaned_up_when_opt1_stays_and_resumed_when_it_goes(cluster, db, capsys):
    """A run killed while copying OPT1's revert: applying OPT1 again removes the copy (OPT1 stays as
    it was); a revert after another interruption resumes the copy and completes."""
    dump = schema_dump(cluster, db)
    assert run(capsys, opt1_args(cluster, db))["action"] == "deployed"
    applied = fetch(cluster, db, CHECKSUM)[0]
    interrupted_prepare(cluster, db, "revert")
    assert leftovers(cluster, db) == (2, True, 1, 11)
    would = run(capsys, opt1_args(cluster, db), check_mode=True)
    assert would["action"] == "would_clean_up" and would["applied"] is True
    cleaned = run(capsys, opt1_args(cluster, db))
    assert cleaned["action"] == "cleaned_up" and cleaned["executed"] == ["cleanup"], cleaned.get("msg")
    assert leftovers(cluster, db) == (0, False, 0, 11)
    assert fetch(cluster, db, CHECKSUM)[0] == applied
    assert not run(capsys, opt1_args(cluster, db))["changed"]

    copied = interrupted_prepare(cluster, db, "revert")
    assert 0 < copied < FEATURES
    reverted = run(capsys, opt1_args(cluster, db, state="reverted"))
    assert reverted["action"] == "reverted" and reverted["prepared"] == "resumed", reverted.get("msg")
    assert leftovers(cluster, db) == (0, False, 0, 0)
    assert fetch(cluster, db, CHECKSUM)[0] == applied
    assert schema_dump(cluster, db) == dump


def opt2_args(cluster, db, **extra):
    return opt1_args(cluster, db, change=OPT2, variables={"batch_rows": "2000", "lock_timeout": "2s"}, **extra)


PARTITION_STATE = """
    SELECT c.relname, c.relrowsecurity, c.relacl::text, obj_description(c.oid, 'pg_class'),
           (SELECT array_agg(ic.relname::text || ':' || (ip.inhparent IS NOT NULL)::text ORDER BY ic.relname)
            FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
            LEFT JOIN pg_inherits ip ON ip.inhrelid = i.indexrelid
            WHERE i.indrelid = c.oid),
           (SELECT array_agg(t.tgname::text ORDER BY t.tgname) FROM pg_trigger t WHERE t.tgrelid = c.oid AND NOT t.tgisinternal),
           (SELECT array_agg(con.conname::text ORDER BY con.conname) FROM pg_constraint con WHERE con.conrelid = c.oid)
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'public.geometrias'::regclass
    ORDER BY c.relname"""


def test_opt2_rebuilds_the_closed_partitions_online_and_keeps_every_write(cluster, db, capsys):
    """OPT2 after OPT1: each closed partition is copied, clustered and proven while the writer runs;
    the deploy swaps them in, and its settle.sql drops the partitions they replaced. Every committed write is kept, each new partition carries what the old
    one did (RLS, grants, comment, indexes attached to the parent's, the parent's triggers), and the
    revert restores the storage settings."""
    assert run(capsys, opt1_args(cluster, db))["action"] == "deployed"
    partitions_before = fetch(cluster, db, PARTITION_STATE)
    applied, _ = deploy_while_writing(cluster, db, capsys, opt2_args(cluster, db), "OPT2", settles=True)
    # The replaced partitions were retired whole by the swap (not dropped under its lock), then dropped.
    assert applied["settled"] == "retired objects dropped"
    assert fetch(cluster, db, "SELECT to_regnamespace('stage4_retired')")[0][0] is None
    # The closed partitions were swapped (new tables), the open ones left in place; nothing else moved.
    rebuilt = fetch(cluster, db, "SELECT relation, details->>'clustered_on', details->'rows_proof' ? 'row_count' "
                                 "FROM stage4.opt2_layout WHERE (details->>'rebuilt_online')::boolean ORDER BY 1")
    closed = fetch(cluster, db, "SELECT name FROM stage4.leaf_partitions('public.geometrias', "
                                "date_trunc('year', current_date)::date) WHERE closed ORDER BY 1")
    assert [r[0] for r in rebuilt] == [c[0] for c in closed] and len(closed) >= 6
    assert all(r[1] and r[2] for r in rebuilt)
    assert fetch(cluster, db, PARTITION_STATE) == partitions_before
    assert leftovers(cluster, db) == (0, False, 0, 11)
    assert autovacuum_off(cluster, db) == []
    assert fetch(cluster, db, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'stage4_online%%'")[0][0] == 0
    # The parent's snapshot holds the partitions' proofs, not a checksum taken under the lock.
    snapshot = fetch(cluster, db, "SELECT snapshot FROM stage4.table_snapshots WHERE change = %s AND relation = %s",
                     (OPT2, "public.geometrias"))[0][0]
    assert "checksum" not in snapshot and len(snapshot["rows_proof"]["partitions_rebuilt_online"]) == len(closed)
    # The rows of a closed partition are stored in GiST order now: neighbours on the map share pages.
    assert fetch(cluster, db, "SELECT bool_and(i.indisclustered) FROM stage4.opt2_layout l "
                              "JOIN pg_index i ON i.indrelid = l.relation::regclass "
                              "JOIN pg_class ic ON ic.oid = i.indexrelid AND ic.relname = l.details->>'clustered_on' "
                              "WHERE l.closed")[0][0] is True
    before_revert = fetch(cluster, db, CHECKSUM)
    reverted = run(capsys, opt2_args(cluster, db, state="reverted"))
    assert reverted["action"] == "reverted", reverted.get("msg")
    assert fetch(cluster, db, CHECKSUM) == before_revert
    assert fetch(cluster, db, PARTITION_STATE) == partitions_before


def test_an_interrupted_opt2_prepare_is_cleaned_up_by_its_revert(cluster, db, capsys):
    """A prepare that stopped after the first partitions (their shadows built, capture triggers in
    place) leaves nothing behind once the change is reverted: triggers, shadows and logs go, the
    partitions and their rows stay as they were."""
    assert run(capsys, opt1_args(cluster, db))["action"] == "deployed"
    before = fetch(cluster, db, CHECKSUM)
    schema = schema_dump(cluster, db)
    conn = cluster.connect(db)
    with conn.cursor() as cur:
        # As the module does before prepare.sql: the mark that tells a later run to resume or clean up.
        cur.execute("INSERT INTO stage4.prepared (change, run_id, files) VALUES (%s, 'killed', '{}')", (OPT2,))
        cur.execute("SELECT rel FROM stage4.leaf_partitions('public.geometrias', date_trunc('year', current_date)::date) "
                    "WHERE closed ORDER BY name LIMIT 2")
        for (partition,) in cur.fetchall():
            cur.execute("CALL stage4.prepare_online_rebuild(%s::regclass, "
                        "stage4.clustered_layout(%s::regclass, 'geom', 'lz4'), 2000, '2s')", (partition, partition))
        cur.execute("SELECT count(*) FROM stage4.online_rebuilds")
        assert cur.fetchone()[0] == 2
    conn.close()
    # Two shadows with their TOAST tables, and their logs.
    assert autovacuum_off(cluster, db) == ["stage4_online"] * 6
    cleaned = run(capsys, opt2_args(cluster, db, state="reverted"))
    assert cleaned["action"] == "cleaned_up" and cleaned["executed"] == ["cleanup"], cleaned.get("msg")
    assert fetch(cluster, db, "SELECT count(*) FROM stage4.online_rebuilds")[0][0] == 0
    assert leftovers(cluster, db) == (0, False, 0, 11)
    assert fetch(cluster, db, CHECKSUM) == before
    assert schema_dump(cluster, db) == schema
