"""Runs a Stage 4 playbook while scripts/workload.py plays the application, and reports both.

    DB_HOST=... DB_PORT=... DB_NAME=... DB_USER=... DB_PASSWORD=... \\
    scripts/run_under_load.py --report reports/under_load.json -- \\
        ansible-playbook stage4.yml -i local -e stage4_benchmark_as_role=anon

The workload starts once preflight has counted the features (its rows would change the count)
and stops when the playbook ends; its rows are then deleted. Run the benchmark as anon
(stage4_benchmark_as_role) so that the workload's private rows do not change what the gate
compares (scripts/workload.py explains why). Exits with the playbook's status, or 1 when the
workload lost a committed write.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

WORKLOAD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workload.py")
# Printed by preflight's last task, after the feature count: the workload may start.
PREFLIGHT_DONE = "Say what this run will do"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", required=True, help="JSON report: the playbook's status and the workload's")
    parser.add_argument("--readers", default="2")
    parser.add_argument("--writers", default="2")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- ansible-playbook ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the playbook command after --")

    folder = tempfile.mkdtemp(prefix="stage4-under-load-")
    until_file = os.path.join(folder, "playbook.done")
    workload_report = os.path.join(folder, "workload.json")
    started = time.monotonic()
    playbook = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    workload = None
    for line in playbook.stdout:
        sys.stdout.write(line)
        if workload is None and PREFLIGHT_DONE in line:
            workload = subprocess.Popen([sys.executable, WORKLOAD, "--readers", args.readers, "--writers",
                                         args.writers, "--until-file", until_file, "--report", workload_report])
    playbook_rc = playbook.wait()
    with open(until_file, "w", encoding="utf-8"):
        pass
    workload_rc = workload.wait() if workload else None
    report = {"command": command, "playbook_rc": playbook_rc, "seconds": round(time.monotonic() - started, 1),
              "workload_rc": workload_rc, "workload": None}
    if workload is not None and os.path.exists(workload_report):
        with open(workload_report, encoding="utf-8") as handle:
            report["workload"] = json.load(handle)
    with open(args.report, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2, sort_keys=True)
    print("run_under_load: playbook rc=%s, workload rc=%s, report %s" % (playbook_rc, workload_rc, args.report))
    if playbook_rc:
        return playbook_rc
    return 1 if workload_rc else 0


if __name__ == "__main__":
    sys.exit(main())
