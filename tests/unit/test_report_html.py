"""plugins/filter/stage4_report_html.py: the HTML report, its timeline and the end-of-run summary.

The page rendered from a real run's report (tests/fixtures/report_sample.json and its audit.jsonl,
run 20261127T000718Z at 251 features) is opened in Debian's headless Chromium: the DOM it builds is
checked, and its screenshot is decoded here (zlib + struct, no Pillow) to prove something was drawn.
Chromium is installed by `make setup`; the test fails rather than skips without it.
"""
import collections
import copy
import html.parser
import itertools
import json
import operator
import os
import struct
import subprocess
import sys
import zlib

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TESTS)
sys.path[:0] = [path for path in (REPO,) if path not in sys.path]

from ansible_collections.biblioteca.stage4.plugins.filter.stage4_report_html import (  # noqa: E402
    FilterModule, stage4_report_html, stage4_report_summary, stage4_report_timeline,
)

FIXTURES = os.path.join(TESTS, "fixtures")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW = (1280, 2400)


def audit_text():
    with open(os.path.join(FIXTURES, "audit_sample.jsonl"), encoding="utf-8") as handle:
        return handle.read()


def sample_report():
    """The fixture as the role builds it: report.json plus the timeline read from audit.jsonl."""
    with open(os.path.join(FIXTURES, "report_sample.json"), encoding="utf-8") as handle:
        report = json.load(handle)
    report["timeline"] = stage4_report_timeline(audit_text(), report["run_id"])
    return report


def stopped_report():
    """The fixture cut after opt3, whose gate is made to fail the way the rollback drill does."""
    report = sample_report()
    kept = ("baseline", "opt1", "opt2", "opt3")
    report["outcome"] = "stopped: opt3 failed its gate and was reverted"
    report["stages"] = [s for s in report["stages"] if s["stage"] in kept]
    for query in report["queries"]:
        query["stages"] = {stage: figures for stage, figures in query["stages"].items() if stage in kept}
    opt3 = report["optimizations"][2]
    opt3["status"] = "reverted: gate failed"
    opt3["gate"].update(passed=False, decision="fail", reason="gate forced to fail (rollback drill)")
    report["overall"] = None
    for opt in report["optimizations"][3:]:
        opt.update(status="not applied", gate=None)
    return report


def check_mode_report():
    report = sample_report()
    report.update(check_mode=True, backup=None, stages=[], queries=[], outcome="check mode: nothing was changed",
                  benchmark_settings={"iterations": None, "warmup": None, "concurrency": None})
    for opt in report["optimizations"]:
        opt.update(status="would be applied (check mode)", gate=None)
    return report


class Dom(html.parser.HTMLParser):
    """Every element's tag, attributes and text (its own and its descendants')."""

    VOID = {"br", "meta", "hr", "img", "input", "link", "wbr", "col", "area", "base", "embed", "source", "track"}

    def __init__(self, text):
        super().__init__()
        self.elements, self._open = [], []
        self.feed(text)
        self.close()
        self.text_by_id = {e["attrs"]["id"]: e["text"] for e in self.elements if e["attrs"].get("id")}

    def handle_starttag(self, tag, attrs):
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": ""})
        if tag not in self.VOID:
            self._open.append(len(self.elements) - 1)

    def handle_endtag(self, tag):
        while self._open:
            if self.elements[self._open.pop()]["tag"] == tag:
                break

    def handle_data(self, data):
        for index in self._open:
            self.elements[index]["text"] += data

    def find(self, tag=None, css_class=None):
        return [e for e in self.elements if (tag is None or e["tag"] == tag)
                and (css_class is None or css_class in e["attrs"].get("class", "").split())]


def decode_png(path):
    """(width, height, bytes per pixel, rows) of an 8-bit RGB/RGBA PNG as Chromium writes it."""
    with open(path, "rb") as handle:
        data = handle.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, idat = 8, []
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    assert depth == 8 and interlace == 0 and colour_type in (2, 6)
    bpp = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), width * bpp
    mask = (255).__and__
    previous, rows = bytes(stride), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)]
        if kind == 0:
            row = bytes(line)
        elif kind == 1:  # Sub: a running sum per channel
            row = bytearray(stride)
            for channel in range(bpp):
                row[channel::bpp] = bytes(map(mask, itertools.accumulate(line[channel::bpp])))
        elif kind == 2:  # Up
            row = bytes(map(mask, map(operator.add, line, previous)))
        else:  # Average (3) and Paeth (4) depend on the byte just decoded
            row = bytearray(line)
            for i in range(stride):
                left = row[i - bpp] if i >= bpp else 0
                up = previous[i]
                if kind == 3:
                    row[i] = (row[i] + ((left + up) >> 1)) & 255
                    continue
                up_left = previous[i - bpp] if i >= bpp else 0
                to_left, to_up, to_up_left = abs(up - up_left), abs(left - up_left), abs(left + up - 2 * up_left)
                predictor = (left if to_left <= to_up and to_left <= to_up_left
                             else up if to_up <= to_up_left else up_left)
                row[i] = (row[i] + predictor) & 255
        rows.append(bytes(row))
        previous = row
    return width, height, bpp, rows


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The fixture's page, the DOM Chromium built from it (--dump-dom) and its screenshot, in one run."""
    assert os.access(CHROMIUM, os.X_OK), "Chromium is missing: apt-get install -y --no-install-recommends chromium"
    folder = tmp_path_factory.mktemp("report_html")
    page = stage4_report_html(sample_report())
    page_path = folder / "report.html"
    page_path.write_text(page, encoding="utf-8")
    screenshot = folder / "report.png"
    result = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={folder / 'profile'}", f"--screenshot={screenshot}",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", "--dump-dom", page_path.as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "</html>" in result.stdout and screenshot.exists(), result.stderr[-2000:]
    return {"page": page, "dom_text": result.stdout, "dom": Dom(result.stdout), "screenshot": str(screenshot)}


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


def test_page_sections_and_charts_in_chromium(rendered):
    report, dom = sample_report(), rendered["dom"]
    for section in ("outcome", "facts", "optimizations", "benchmark", "latency-chart", "qps-chart", "cache-chart",
                    "gates", "gate-matrix", "backup", "timeline", "gate-details", "signoff"):
        assert section in dom.text_by_id, section
    assert len(dom.find("svg")) == 3  # latency per query, QPS, cache-hit ratio
    stages = [s["stage"] for s in report["stages"]]
    bars = [(b["attrs"]["data-query"], b["attrs"]["data-stage"]) for b in dom.find("rect", "bar")]
    assert len(bars) == len(report["queries"]) * len(stages) == 60
    assert set(bars) == {(q["query"], s) for q in report["queries"] for s in stages}
    assert len(dom.find("rect", "qps-bar")) == len(dom.find("rect", "cache-bar")) == len(stages)
    assert "LOGARITHMIC" in dom.text_by_id["latency-chart"]


def test_gate_tables_and_backup_in_chromium(rendered):
    report, dom = sample_report(), rendered["dom"]
    gated = [o for o in report["optimizations"] if o["gate"]]
    expected = [(o["id"], q) for o in gated for q in o["gate"]["queries"]]
    rows = dom.find("tr", "gate-row")
    assert len(rows) == len(expected) == 50
    for row, (opt_id, query) in zip(rows, expected):  # one row per query of every gate, ending with its verdict
        assert row["attrs"]["data-opt"] == opt_id
        assert row["text"].startswith(query["query"]) and row["text"].endswith(query["verdict"])
    cells = {(c["attrs"]["data-opt"], c["attrs"]["data-query"]): c["text"] for c in dom.find("td", "gate-cell")}
    assert sorted(cells) == sorted((opt_id, q["query"]) for opt_id, q in expected)
    short = {"better": "better", "unchanged": "unchanged"}
    for opt_id, query in expected:
        assert cells[(opt_id, query["query"])].startswith(short[query["verdict"]])
    assert len(dom.find("tr", "opt-row")) == len(report["optimizations"])
    details = dom.text_by_id["gate-details"]
    assert "Unchanged on 1 of 10 queries (no gain claimed for them)." in dom.text_by_id["gate-opt5"]
    assert "Unchanged on every query" in dom.text_by_id["gate-opt1"] and "no gain is claimed" in details
    assert "q02_radius: unchanged: median" in dom.text_by_id["gate-opt1"]  # the gate's line per query
    assert "workload mean latency 0.554 -> 1.2" in dom.text_by_id["gate-opt1"]
    assert dom.text_by_id["backup-sha256"] == report["backup"]["sha256"]
    backup = dom.text_by_id["backup"]
    assert "local_BIBLIOTECA_20261127T000718Z-rollout-8d3c21.pgc" in backup and "256,090 bytes" in backup
    assert "188" in backup
    assert len(dom.find("tr", "timeline-row")) == len(report["timeline"])
    for item in report["timeline"]:
        if item["sql_sha256"]:
            assert item["sql_sha256"] in dom.text_by_id["timeline"]
    facts = dom.text_by_id["facts"]
    for value in ("20261127T000718Z-rollout-8d3c21", "local", "rollout", "BIBLIOTECA", "15.18 (Debian 15.18-0+deb12u1)",
                  "3.3.2", "251"):
        assert value in facts
    assert dom.text_by_id["outcome"] == "Outcome: completed: 5 applied, 0 already applied"
    assert dom.text_by_id["key-figures"] == (
        "Mean latency: baseline 0.554 ms \u2192 opt5 0.621 ms (+12.1%); QPS 1,792 \u2192 1,598 (-10.8%)"
        "Overall opt5 vs baseline: geometric-mean speedup x0.612, 10 queries: 10 unchanged (10 of them slower within "
        "tolerance); no query slower than at baseline beyond its tolerance"
        "Every query returned the same result at every stage (identical result fingerprints).")


def test_page_is_self_contained(rendered):
    for text in (rendered["page"], rendered["dom_text"]):
        lowered = text.lower()
        assert "http://" not in lowered and "https://" not in lowered
        assert "<script" not in lowered and "<link" not in lowered and "<img" not in lowered
        assert "url(" not in lowered and "@import" not in lowered


def test_screenshot_shows_the_report(rendered):
    width, height, bpp, rows = decode_png(rendered["screenshot"])
    assert (width, height) == WINDOW
    is_full = bytes(1 if value == 255 else 0 for value in range(256))
    white = 0
    for row in rows:
        channels = [int.from_bytes(row[c::bpp].translate(is_full), "big") for c in range(3)]
        white += (channels[0] & channels[1] & channels[2]).bit_count()
    assert 1 - white / (width * height) > 0.15  # text, tables, charts: not a blank page
    sampled = collections.Counter(row[x:x + 3].hex() for row in rows[::4] for x in range(0, width * bpp, 4 * bpp))
    assert len([colour for colour, count in sampled.items() if count >= 20]) >= 12
    # every stage's colour in the latency chart was drawn
    for fill in {b["attrs"]["fill"].lower().lstrip("#") for b in rendered["dom"].find("rect", "bar")}:
        assert sampled[fill] >= 20, fill


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
