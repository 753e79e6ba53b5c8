"""The report fixtures the report's tests share: a real run's report.json and audit.jsonl
(tests/fixtures, run 20261127T000718Z at 251 features), variants of it, and a small DOM parser."""
import html.parser
import json
import os

from ansible_collections.biblioteca.stage4.plugins.filter.stage4_report_html import stage4_report_timeline

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


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
