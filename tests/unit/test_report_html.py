"""plugins/filter/stage4_report_html.py: the HTML report as text, its timeline and the end-of-run summary.

From a real run's report (tests/fixtures/report_sample.json and its audit.jsonl, run 20261127T000718Z at
251 features). tests/integration/test_report_in_chromium.py opens the page in a browser.
"""
import copy
import json

import pytest

from ansible_collections.biblioteca.stage4.plugins.filter.stage4_report_html import (
    FilterModule, stage4_report_html, stage4_report_summary, stage4_report_timeline,
)
from report_samples import Dom, audit_text, check_mode_report, sample_report, stopped_report


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {"stage4_report_html", "stage4_report_timeline", "stage4_report_summary"}


def test_timeline_ties_changes_to_checksums_and_gates_to_decisions():
    entries = [json.loads(line) for line in audit_text().splitlines()]
    timeline = stage4_report_timeline(audit_text(), entries[0]["run_id"])
    assert [t["step"] for t in timeline] == [e["step"] for e in entries]
    for entry, item in zip(entries, timeline):
        assert item["time"] == entry["time"] and item["outcome"] == entry["outcome"]
        assert item["sql_sha256"] == (entry["sql_files"].get("deploy") or {}).get("sha256")
        assert item["revert_sha256"] is None  # nothing was reverted in this run
        if entry["step"].startswith("gate_"):
            assert item["gate"] == {"optimization": entry["step"][5:], "passed": entry["outcome"] == "passed",
                                    "reason": entry["details"]["reason"], "summary": entry["details"]["summary"]}
        else:
            assert item["gate"] is None
    opt1 = next(t for t in timeline if t["step"] == "opt1_temporal_partitioning")
    assert opt1["sql_sha256"] == "4be6c67f9c3fbba6a5844d1d91fc15a0894d28ae48a1b7c44a30af1e22ded173"


def test_timeline_names_the_revert_script_and_keeps_to_its_run():
    entry = next(e for e in map(json.loads, audit_text().splitlines()) if e["step"] == "opt1_temporal_partitioning")
    reverted = dict(entry, outcome="reverted")
    other_run = dict(entry, run_id="another-run")
    text = "\n".join(json.dumps(e) for e in (reverted, other_run)) + "\n\n"
    timeline = stage4_report_timeline(text, entry["run_id"])
    assert len(timeline) == 1
    assert timeline[0]["revert_sha256"] == entry["sql_files"]["revert"]["sha256"]
    assert timeline[0]["sql_sha256"] == entry["sql_files"]["deploy"]["sha256"]
    assert stage4_report_timeline("") == []
    with pytest.raises(ValueError, match="line 2"):
        stage4_report_timeline(json.dumps(entry) + "\n{not json\n")


def test_check_mode_report_without_stages():
    report = check_mode_report()
    page = stage4_report_html(report)
    dom = Dom(page)
    assert not dom.find("svg") and not dom.find("tr", "gate-row")
    assert "No benchmark ran in this run" in dom.text_by_id["benchmark"]
    assert "No backup was taken: check mode changes nothing." in dom.text_by_id["backup"]
    assert "check mode: nothing was changed" in dom.text_by_id["outcome"]
    assert "not run" in dom.text_by_id["facts"]
    lines = stage4_report_summary(report, "/r/local/run")
    assert lines[0].endswith("check mode: nothing was changed")
    assert lines[1] == "opt1  would be applied (check mode)  not measured in this run"
    assert "No benchmark ran." in lines


def test_stopped_run_with_a_reverted_optimization():
    report = stopped_report()
    page = stage4_report_html(report)
    dom = Dom(page)
    assert "o-bad" in next(e for e in dom.elements if e["attrs"].get("id") == "outcome")["attrs"]["class"]
    assert "FAILED" in dom.text_by_id["gate-opt3"]
    assert "gate forced to fail (rollback drill)" in dom.text_by_id["gate-opt3"]
    reverted_bars = [b["attrs"] for b in dom.find("rect", "bar") if b["attrs"]["data-stage"] == "opt3"]
    assert len(reverted_bars) == 10 and all(b.get("stroke-dasharray") for b in reverted_bars)
    assert "opt3 (reverted: gate failed)" in dom.text_by_id["benchmark"]
    assert {b["attrs"]["data-stage"] for b in dom.find("rect", "bar")} == {"baseline", "opt1", "opt2", "opt3"}
    assert len(dom.find("tr", "gate-row")) == 30
    assert "opt3 (reverted) 0.610 ms" in dom.text_by_id["key-figures"]
    lines = stage4_report_summary(report, "/r/local/run")
    assert lines[3].startswith("opt3  reverted: gate failed  mean 0.890 -> 0.610 ms vs opt2 (speed x1.46)")
    assert lines[3].endswith("; gate failed: gate forced to fail (rollback drill)")
    assert lines[4] == "opt4  not applied            not measured in this run"
    assert lines[6] == ("Mean latency: baseline 0.554 ms -> opt3 (reverted) 0.610 ms (+10.1%); "
                        "QPS 1,792 -> 1,626 (-9.2%)")
    assert lines[7].startswith("HTML:")


def test_every_value_is_escaped():
    report = sample_report()
    evil = '<script>alert("x")</script>'
    report["run_id"] = evil
    report["database"]["name"] = evil
    report["backup"]["file"] = "/backups/" + evil
    report["optimizations"][0]["title"] = evil
    report["optimizations"][0]["gate"]["reason"] = evil
    report["optimizations"][0]["gate"]["queries"][0]["query"] = evil
    report["queries"][0]["query"] = '"><script>alert(1)</script>'
    report["timeline"][0]["step"] = evil
    page = stage4_report_html(report)
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert 'data-query="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in page


def test_no_gain_is_claimed_where_the_gate_saw_no_difference():
    report = sample_report()
    gate = copy.deepcopy(report["optimizations"][2]["gate"])
    for query in gate["queries"]:
        query.update(verdict="unchanged", explanation=query["query"] + ": unchanged")
    gate["summary"].update(better=0, slower_within_tolerance=0, unchanged=10)
    gate["workload"] = None
    report["optimizations"][2]["gate"] = gate
    dom = Dom(stage4_report_html(report))
    assert "Unchanged on every query" in dom.text_by_id["gate-opt3"]
    assert "no gain is claimed" in dom.text_by_id["gate-opt3"]
    assert "better" not in dom.text_by_id["gate-opt3"]
    summary = stage4_report_summary(report, "/r")
    assert summary[3].endswith("10 queries: 10 unchanged")


def test_console_summary_of_the_fixture():
    lines = stage4_report_summary(sample_report(), "reports/local/20261127T000718Z-rollout-8d3c21/")
    assert lines == [
        "Stage 4 rollout on local, run 20261127T000718Z-rollout-8d3c21: completed: 5 applied, 0 already applied",
        "opt1  applied: gate passed  mean 0.554 -> 1.24 ms vs baseline (speed x0.45), 10 queries: "
        "10 unchanged (10 of them slower within tolerance)",
        "opt2  applied: gate passed  mean 1.24 -> 0.890 ms vs opt1 (speed x1.39), 10 queries: "
        "10 unchanged (1 of them slower within tolerance)",
        "opt3  applied: gate passed  mean 0.890 -> 0.610 ms vs opt2 (speed x1.46), 10 queries: 10 better",
        "opt4  applied: gate passed  mean 0.610 -> 0.803 ms vs opt3 (speed x0.76), 10 queries: "
        "10 unchanged (10 of them slower within tolerance)",
        "opt5  applied: gate passed  mean 0.803 -> 0.621 ms vs opt4 (speed x1.29), 10 queries: 9 better, 1 unchanged",
        "Mean latency: baseline 0.554 ms -> opt5 0.621 ms (+12.1%); QPS 1,792 -> 1,598 (-10.8%)",
        "Overall opt5 vs baseline: geometric-mean speedup x0.612, 10 queries: 10 unchanged (10 of them slower within "
        "tolerance); no query slower than at baseline beyond its tolerance",
        "HTML:     reports/local/20261127T000718Z-rollout-8d3c21/report.html",
        "Markdown: reports/local/20261127T000718Z-rollout-8d3c21/report.md",
        "JSON:     reports/local/20261127T000718Z-rollout-8d3c21/report.json",
        "Audit:    reports/local/20261127T000718Z-rollout-8d3c21/audit.jsonl",
    ]


def test_the_summary_compares_the_baseline_not_the_aa_control_measured_before_it():
    report = sample_report()
    control = dict(report["stages"][0], stage="baseline_control", mean_ms=0.9, qps=1000.0)
    report["stages"].insert(0, control)
    lines = stage4_report_summary(report, "out")
    assert "Mean latency: baseline 0.554 ms -> opt5 0.621 ms (+12.1%); QPS 1,792 -> 1,598 (-10.8%)" in lines


def test_a_declined_optimization_says_why_instead_of_a_gate():
    report = sample_report()
    reason = "public.geometrias holds 251 rows in 232 kB, below 8192 kB (min_parallel_table_scan_size)"
    report["optimizations"][0].update(status="declined", gate=None, declined=reason)
    dom = Dom(stage4_report_html(report))
    row = next(e for e in dom.find("tr", "opt-row") if e["attrs"]["data-opt"] == "opt1")
    assert "declined" in row["text"] and "not applied: " + reason in row["text"]
    lines = stage4_report_summary(report, "/r/local/run")
    assert lines[1].startswith("opt1  declined") and lines[1].endswith(reason)
