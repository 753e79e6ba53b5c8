"""plugins/filter/stage4_report_html.py: the HTML report in a browser.

The page rendered from a real run's report (tests/fixtures/report_sample.json and its audit.jsonl,
run 20261127T000718Z at 251 features) is opened in Debian's headless Chromium: the DOM it builds is
checked, and its screenshot is decoded here (zlib + struct, no Pillow) to prove something was drawn.
Chromium is installed by `make setup`; the test fails rather than skips without it.
"""
import collections
import itertools
import operator
import os
import struct
import subprocess
import zlib

import pytest

from ansible_collections.biblioteca.stage4.plugins.filter.stage4_report_html import stage4_report_html
from report_samples import Dom, sample_report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WINDOW = (1280, 2400)


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


