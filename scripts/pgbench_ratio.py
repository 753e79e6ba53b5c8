#!/usr/bin/env python3
"""How close the benchmark module's throughput is to pgbench's, query by query.

For each benchmark query, the same number of clients run it back to back for the same number of
seconds, once through the gis_benchmark module's own code (its per-query throughput phase:
worker processes, prepared statements, every row fetched) and once with
`pgbench -n -M prepared -c N -j N -T S -f <query>`. The ratio module QPS / pgbench TPS tells how
much of the time the Python client adds: at 1.0 none, at 0.9 a tenth. The two sides of one query
run back to back (who goes first alternates between rounds), so that both see the same minute of a
machine whose speed drifts: on a shared 2-core VM the same side's rounds a minute apart differed by up
to 30%. Each round gives one ratio; the median over the rounds is reported.

    DB_PASSWORD=... scripts/pgbench_ratio.py --host 127.0.0.1 --port 55432 --user postgres \\
        --dbname BIBLIOTECA --clients 1 --seconds 3 --rounds 5 --json reports/pgbench_ratio.json

Prints a Markdown table (for BENCHMARKS.md) and writes the figures as JSON.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

import project_modules

project_modules.register()
from ansible_collections.biblioteca.stage4.plugins.modules import gis_benchmark  # noqa: E402  (importable once register() ran)
from ansible_collections.biblioteca.stage4.plugins.module_utils import bench_queries, benchmark  # noqa: E402

TPS_LINE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)


def pgbench_binary():
    found = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    if not os.path.exists(found):
        raise SystemExit("pgbench not found: install postgresql-client-15 or postgresql-15")
    return found


def pgbench_tps(args, statement, workdir):
    """TPS of pgbench -M prepared running statement alone (one statement = one transaction)."""
    script = os.path.join(workdir, "query.sql")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(statement + ";\n")
    done = subprocess.run(
        [pgbench_binary(), "-n", "-M", "prepared", "-c", str(args.clients), "-j", str(args.clients),
         "-T", str(args.seconds), "-f", script, "-h", args.host, "-p", str(args.port), "-U", args.user, args.dbname],
        capture_output=True, text=True, check=False, env=dict(os.environ, PGPASSWORD=args.password))
    found = TPS_LINE.search(done.stdout)
    if done.returncode != 0 or not found:
        raise SystemExit("pgbench failed (exit %d): %s" % (done.returncode, done.stderr.strip()[-500:]))
    return float(found.group(1))


def module_qps(args, queries):
    """Per-query QPS from the module's throughput phase, as a rollout stage measures it."""
    params = gis_benchmark.with_defaults(dict(
        login_host=args.host, login_port=args.port, login_user=args.user, login_password=args.password,
        login_db=args.dbname, queries_dir=args.queries_dir, run_id="pgbench-ratio", stage="ratio",
        iterations=args.clients, warmup=2, concurrency=args.clients, throughput_seconds=float(args.seconds),
        store=False))
    measured = benchmark.run_benchmark(params, [dict(query) for query in queries])
    return {query_id: figures["qps"] for query_id, figures in measured["queries"].items()}, measured


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--queries-dir", default=os.path.join(project_modules.REPO, "files", "benchmark", "queries"))
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", help="where to write the figures")
    args = parser.parse_args()
    args.password = os.environ.get("DB_PASSWORD") or os.environ.get("PGPASSWORD") or ""
    if args.clients < 1 or args.seconds < 1 or args.rounds < 1:
        parser.error("--clients, --seconds and --rounds must be at least 1")
    return args


def main():
    args = parse_args()
    queries = bench_queries.load_queries(args.queries_dir)
    ours = {q["query_id"]: [] for q in queries}
    theirs = {q["query_id"]: [] for q in queries}
    ratios = {q["query_id"]: [] for q in queries}
    measured = None
    with tempfile.TemporaryDirectory(prefix="pgbench-ratio-") as workdir:
        for round_number in range(args.rounds):
            for query in queries:
                query_id = query["query_id"]
                # Alternate who goes first, so that a drift of the machine does not favour one side.
                if round_number % 2 == 0:
                    qps, measured = module_qps(args, [query])
                    tps = pgbench_tps(args, query["sql"], workdir)
                else:
                    tps = pgbench_tps(args, query["sql"], workdir)
                    qps, measured = module_qps(args, [query])
                ours[query_id].append(qps[query_id])
                theirs[query_id].append(tps)
                ratios[query_id].append(qps[query_id] / tps)
            print("round %d of %d done" % (round_number + 1, args.rounds), file=sys.stderr)
    rows = []
    for query in queries:
        query_id = query["query_id"]
        rows.append(dict(query=query_id, module_qps=round(statistics.median(ours[query_id]), 1),
                         pgbench_tps=round(statistics.median(theirs[query_id]), 1),
                         ratio=round(statistics.median(ratios[query_id]), 3), module_rounds=ours[query_id],
                         pgbench_rounds=theirs[query_id], round_ratios=[round(r, 3) for r in ratios[query_id]]))
    result = dict(clients=args.clients, seconds=args.seconds, rounds=args.rounds, dbname=args.dbname,
                  server=measured["provenance"]["server"], client_cpus=os.cpu_count(), client_machine=platform.platform(),
                  pgbench=subprocess.run([pgbench_binary(), "--version"], capture_output=True, text=True,
                                         check=False).stdout.strip(),
                  module_client=measured["provenance"]["measurement"]["executor"],
                  lowest_ratio=min(row["ratio"] for row in rows),
                  geometric_mean_ratio=round(statistics.geometric_mean([row["ratio"] for row in rows]), 3),
                  queries=rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2, sort_keys=True)
            handle.write("\n")
    print("| Query | module QPS | pgbench -M prepared TPS | ratio | ratio per round |")
    print("|---|---:|---:|---:|---|")
    for row in rows:
        print("| {query} | {module_qps:,.1f} | {pgbench_tps:,.1f} | {ratio:.2f} | {rounds} |".format(
            rounds=", ".join("%.2f" % ratio for ratio in row["round_ratios"]), **row))
    print("\n%d client(s), %d s per query and side, the two sides back to back; median of %d rounds; "
          "lowest ratio %.2f, geometric mean %.2f"
          % (args.clients, args.seconds, args.rounds, result["lowest_ratio"], result["geometric_mean_ratio"]))


if __name__ == "__main__":
    main()
