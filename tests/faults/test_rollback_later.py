"""A rollback may come days after the rollout, once the table has grown: `playbooks/rollback.yml` with
no extra variables reverts what was applied whatever the feature count (issue 21)."""
import stage4_runs
from stage4_runs import run_stage4, sql


def test_rollback_after_the_table_grew_reverts_without_the_rollouts_count(cluster):
    db = stage4_runs.clone(cluster, "GREW")
    rc, output = run_stage4(cluster, db, "-e", "stage4_select=opt1")
    assert rc == 0, output[-2000:]
    sql(cluster, db, "INSERT INTO public.geometrias (nome, categoria, geom, data_referencia) "
                     "SELECT nome || ' (nova)', categoria, geom, data_referencia FROM public.geometrias LIMIT 30")
    rc, output = run_stage4(cluster, db, playbook="playbooks/rollback.yml")
    assert rc == 0, output[-2000:]
    assert "%d features." % (stage4_runs.FEATURES + 30) in output
    assert sql(cluster, db, "SELECT relkind, (SELECT count(*) FROM public.geometrias) FROM pg_class "
                            "WHERE oid = 'public.geometrias'::regclass") == [("r", stage4_runs.FEATURES + 30)]
