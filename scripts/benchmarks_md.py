#!/usr/bin/env python3
"""Writes the measured sections of BENCHMARKS.md (each run's tables, the pgbench ratio) from the project's own
measurements: no figure in them is typed by hand. The analysis between runs in BENCHMARKS.md is written by hand
and quotes each of its measurements with its command and date.

    scripts/benchmarks_md.py --run reports/local/<run id>/report.json \\
        --run reports/bench/local/<run id>/report.json --ratio reports/pgbench_ratio.json > BENCHMARKS.md

Each --run is a Stage 4 run's report.json (its stages, per-query figures, gates, the overall
judgement against the baseline and the timeline); --ratio is scripts/pgbench_ratio.py's JSON.
"""
import argparse
import json
import math
import os


def load(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def load_run(path):
    """A run's report.json, its provenance that of the baseline (metrics_baseline.json beside it) rather than the
    first stage's: the A/A control, measured first, skips the throughput phase."""
    report = load(path)
    baseline = os.path.join(os.path.dirname(path), "metrics_baseline.json")
    if os.path.exists(baseline):
        report["provenance"] = load(baseline).get("provenance") or report.get("provenance")
    return report


def ms(value):
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}"


def number(value, digits=1):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def table(head, rows, right_from=1):
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join("---" if i < right_from else "---:" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def machine(report):
    provenance = report.get("provenance") or {}
    client, server = provenance.get("client") or {}, provenance.get("server") or {}
    settings = server.get("settings") or {}
    measurement = provenance.get("measurement") or {}
    return (f'{client.get("cpu_count")} CPUs ({client.get("cpu_model")}), PostgreSQL {server.get("version")}, '
            f'PostGIS {report["database"].get("postgis_version")}; '
            + ", ".join(f"{name} {value}" for name, value in sorted(settings.items()))
            + f'. Client: {measurement.get("client")}, {measurement.get("concurrency")} client(s), '
              f'prepared statements {"on" if measurement.get("prepared") else "off"}, '
              f'{measurement.get("order")} order, {measurement.get("iterations")} timed executions per query '
              f'after {measurement.get("warmup")} warm-up rounds'
            + (f' (as many as fit in {measurement["time_budget_s"]:g} s per stage, at least '
               f'{measurement.get("min_iterations")})' if measurement.get("time_budget_s") else "")
            + (", measured as " + ", ".join(role.get("label") or "the owner" for role in measurement["roles"])
               if measurement.get("roles") else "")
            + f', {measurement.get("throughput_seconds")} s of '
              f'throughput per query; executed through {measurement.get("executor") or "psycopg2 EXECUTE + fetchall"}. '
              f'Commit {provenance.get("git_commit")}.')


def verdict_of(gate, query_id):
    return next((q.get("verdict", "n/a") for q in gate["queries"] if q["query"] == query_id), "n/a")


def run_section(report):
    stages = [s["stage"] for s in report["stages"]]
    features = report["database"]["features"]
    out = [f'## {features:,} features: run {report["run_id"]}', "",
           f'Outcome: **{report["outcome"]}**. Database {report["database"]["bytes"] / 1e6:,.0f} MB. '
           + machine(report), ""]
    out += [f'- {o["id"]} declined: {o["declined"]}' for o in report["optimizations"] if o.get("declined")]
    if out[-1].startswith("- "):
        out.append("")
    # A gated stage's cell carries its gate's verdict on the query (against the last accepted stage);
    # the shifts and their intervals are in the run's report.md.
    gates = {o["id"]: o["gate"] for o in report["optimizations"] if o.get("gate")}
    overall = report.get("overall")
    show_overall = overall and len(gates) > 1
    rows = []
    for query in report["queries"]:
        first = query["stages"][stages[0]]
        rows.append([f'{query["query"]} ({first["rows"]:,} rows)']
                    + [ms(query["stages"][s]["p50_ms"]) + (f' {verdict_of(gates[s], query["query"])}' if s in gates else "")
                       for s in stages]
                    + ([verdict_of(overall, query["query"])] if show_overall else []))
    rows.append(["**mean latency (ms)**"] + [ms(s["mean_ms"]) for s in report["stages"]] + ([""] if show_overall else []))
    rows.append(["**QPS, mixed workload**"] + [number(s["qps"]) for s in report["stages"]] + ([""] if show_overall else []))
    rows.append(["**cache-hit ratio**"] + [number(s["cache_hit_ratio"], 3) for s in report["stages"]]
                + ([""] if show_overall else []))
    rows.append(["**gate**"] + [f'**{gates[s].get("decision", "pass" if gates[s]["passed"] else "fail")}** vs '
                                f'{gates[s]["reference"]}' if s in gates else "" for s in stages]
                + (["judged"] if show_overall else []))
    out += ["### Median latency per query (ms), and the gate's verdict, per stage", "",
            table(["query"] + stages + (["overall vs baseline"] if show_overall else []), rows), ""]
    for stage, gate in gates.items():
        if not gate["passed"]:
            # The first two reasons; the run's report.md has every line.
            reasons = gate["reason"].split("; q")
            shown = "; q".join(reasons[:2])
            more = len(reasons) - 2
            out += [f'{stage}: {shown}' + (f' (and {more} more in the run\'s report.md)' if more > 0 else ""), ""]
    # As the owner only: each caller's latency is in the table above, and the report has every caller's QPS.
    qps_rows = [[query["query"]] + [number(query["stages"][s].get("qps")) for s in stages]
                for query in report["queries"] if "@" not in query["query"]]
    out += ["### Throughput per query (QPS, each query alone, prepared, as the connecting role)", "",
            table(["query"] + stages, qps_rows), ""]
    control = report.get("control")
    if control:
        out += [f'A/A control ({" then ".join(control["stages"])}, the unchanged database measured twice): the '
                f'queries moved by {control["median_fraction"] * 100:.1f}% (median) and at most '
                f'{control["max_fraction"] * 100:.1f}% (each one\'s Hodges-Lehmann shift); no gain within a '
                f'query\'s own figure is claimed.', ""]
    if overall:
        summary = overall["summary"]
        out += [f'**Overall, {overall["stage"]} against baseline:** geometric-mean speedup of the medians '
                f'**x{summary["speedup_geomean"]}**; {summary["better"]} better, {summary["unchanged"]} unchanged, '
                f'{summary["inconclusive"]} inconclusive, {summary["worse"]} worse.'
                + (f' {overall["workload"]["explanation"][0].upper()}{overall["workload"]["explanation"][1:]}.'
                   if overall.get("workload") else ""), ""]
    timeline = report.get("timeline") or []
    timed = [t for t in timeline if t.get("seconds") is not None]
    if timed:
        total = sum(t["seconds"] for t in timed)
        slowest = sorted(timed, key=lambda t: -t["seconds"])[:8]
        out += [f"### Where the time went ({total:,.0f} s from the end of preflight to the report)", "",
                table(["step", "outcome", "seconds"], [[t["step"], t["outcome"], number(t["seconds"])] for t in slowest],
                      right_from=2), ""]
    return "\n".join(out)


def ratio_section(ratio):
    rows = [[q["query"], number(q["module_qps"]), number(q["pgbench_tps"]), f'{q["ratio"]:.2f}',
             ", ".join(f"{r:.2f}" for r in q.get("round_ratios", []))]
            for q in ratio["queries"]]
    geomean = math.exp(sum(math.log(q["ratio"]) for q in ratio["queries"]) / len(ratio["queries"]))
    return "\n".join([
        "## Client overhead: the module against pgbench -M prepared", "",
        f'Same query, {ratio["clients"]} client(s), {ratio["seconds"]} s per query and side, median of '
        f'{ratio["rounds"]} rounds (the two sides of a query back to back, alternating which goes first), on '
        f'{ratio["dbname"]} '
        f'(`scripts/pgbench_ratio.py`, {ratio["pgbench"]}); the module executed through '
        f'{ratio.get("module_client") or "psycopg2 EXECUTE + fetchall"}. The ratio is module QPS / pgbench TPS.', "",
        table(["query", "module QPS", "pgbench TPS", "ratio", "ratio per round"], rows), "",
        f'Lowest ratio {ratio["lowest_ratio"]:.2f}, geometric mean {geomean:.2f}.', ""])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", default=[], help="a run's report.json (repeatable)")
    parser.add_argument("--ratio", help="scripts/pgbench_ratio.py's JSON")
    args = parser.parse_args()
    parts = ["# Benchmarks", "",
             "Every figure below was measured by this project's code (`plugins/modules/gis_benchmark.py`, the gate in "
             "`plugins/filter/stage4_gate.py`, `scripts/pgbench_ratio.py`). Each run's section and the ratio's "
             "table are written by `scripts/benchmarks_md.py` from the runs' `report.json`; the analysis between "
             "them (pgbench and EXPLAIN measurements) is written by hand, each figure with its command and date. "
             "Reproduce with `make demo` (251 features), "
             "`make bench-1m` (1,000,000 features) and `make pgbench-ratio`. Latency is the median of the "
             "timed executions; where the gate says \"unchanged\" no gain is claimed.", ""]
    parts += [run_section(load_run(path)) for path in args.run]
    if args.ratio:
        parts.append(ratio_section(load(args.ratio)))
    print("\n".join(parts).rstrip() + "\n")


if __name__ == "__main__":
    main()
