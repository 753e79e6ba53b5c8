# -*- coding: utf-8 -*-
"""The benchmark's client processes: each opens its own sessions, warms up, then runs its schedule
of timed executions when the parent starts them all together.
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import time
import traceback

from ansible_collections.biblioteca.stage4.plugins.module_utils.bench_session import BenchmarkError, QueryFailed, callers, flush_stats, open_session
from ansible_collections.biblioteca.stage4.plugins.module_utils.executors import statement_executor

try:
    import psycopg
except ImportError:  # gis_benchmark reports it
    pass


# How often a waiting worker checks that its parent is alive, and the parent that its workers are.
LIVENESS_POLL_S = 1.0

# 'fork': the workers inherit the module as loaded, which works when Ansible runs it from its
# AnsiballZ zip as __main__ (a 'spawn' child would have to import it again, and cannot).
START_METHOD = "fork" if "fork" in multiprocessing.get_all_start_methods() else None

PREPARED_NAME = "stage4_bench_%d"


def prepare_statements(sessions, queries, prepared):
    """What runs each query: (its caller's session, EXECUTE of its prepared statement or the SQL)."""
    texts = []
    for index, query in enumerate(queries):
        conn = sessions[query.get("session", 0)]
        if not prepared:
            texts.append((conn, query["sql"]))
            continue
        try:
            with conn.cursor() as cur:
                cur.execute("PREPARE %s AS\n%s" % (PREPARED_NAME % index, query["sql"]))
        except psycopg.Error as exc:
            raise QueryFailed(index, exc) from exc
        texts.append((conn, "EXECUTE " + PREPARED_NAME % index))
    return texts


def run_untimed(texts, indexes):
    for index in indexes:
        conn, text = texts[index]
        try:
            with conn.cursor() as cur:
                cur.execute(text)
                cur.fetchall()
        except psycopg.Error as exc:
            raise QueryFailed(index, exc) from exc


def run_schedule(texts, schedule):
    """Time every execution of the schedule; returns (start, end, samples in ms per query, executor).

    Each sample covers executing the statement, receiving all its rows and freeing them, as one
    pgbench transaction does. (Freed by the next execute instead, as a cursor kept open would be, the
    43,000 rows of a map query added 4 ms to the point query after it at 1,000,000 features.)
    """
    executors = [statement_executor(conn, text) for conn, text in texts]
    samples = [[] for _ in texts]
    clock = time.perf_counter
    start = clock()
    for index in schedule:
        execute = executors[index][0]
        began = clock()
        try:
            execute()
        except (QueryFailed, psycopg.Error) as exc:
            raise QueryFailed(index, exc) from exc
        samples[index].append(round((clock() - began) * 1000.0, 3))
    return start, clock(), samples, ", ".join(sorted({name for _, name in executors}))


def run_for(target, seconds):
    """Execute text back to back for seconds; returns (start, end, executions, executor).

    The loop does nothing but execute, receive all rows and read the clock, to keep the client's
    share of the time as small as pgbench's (executor: which of EXECUTORS ran).
    """
    execute_prepared, client = statement_executor(*target)
    clock = time.perf_counter
    count = 0
    start = clock()
    deadline = start + seconds
    try:
        while True:
            execute_prepared()
            count += 1
            if clock() >= deadline:
                break
    except psycopg.Error as exc:
        raise QueryFailed(None, exc) from exc
    return start, clock(), count, client


def wait_for_signal(signal, parent_pid):
    while not signal.wait(LIVENESS_POLL_S):
        if os.getppid() != parent_pid:
            raise BenchmarkError("the benchmark's parent process is gone")


def describe_failure(exc, queries, phase):
    if isinstance(exc, QueryFailed):
        index = exc.index if exc.index is not None else phase.get("query")
        query = queries[index]
        where = " (%s)" % query["file"] if query.get("file") else ""
        return "query %s%s failed: %s" % (query["query_id"], where, exc)
    if isinstance(exc, BenchmarkError):
        return str(exc)
    return "benchmark worker failed: %s" % "".join(traceback.format_exception_only(exc)).strip()


def run_worker(params, queries, phases, number, signals, outbox):
    """One worker process: its own session per caller, then every phase, reporting to the parent.

    Messages are (kind, phase, worker, payload): ready (warm, waiting for the start signal),
    done (payload: the phase's measurements), exit (all done), error (payload: the message).
    """
    parent_pid = os.getppid()
    phase = {}
    sessions = []
    try:
        try:
            for caller in callers(params):
                sessions.append(open_session(params, caller))
            texts = prepare_statements(sessions, queries, params["prepared"])
            for phase_number, phase in enumerate(phases):
                run_untimed(texts, phase.get("warmup", []))
                outbox.put(("ready", phase_number, number, None))
                wait_for_signal(signals[phase_number], parent_pid)
                if "seconds" in phase:
                    payload = run_for(texts[phase["query"]], phase["seconds"])
                else:
                    payload = run_schedule(texts, phase["schedules"][number])
                outbox.put(("done", phase_number, number, payload))
            for conn in sessions:
                flush_stats(conn)
        finally:
            for conn in sessions:
                conn.close()
        outbox.put(("exit", None, number, None))
    except Exception as exc:  # any failure is the parent's to report; a worker must not hang it
        outbox.put(("error", None, number, describe_failure(exc, queries, phase)))


class WorkerPool:
    """Worker processes running the same phases, each one with its own connection.

    The parent lets the workers start a phase together, once all of them are ready (warm): the
    start signal is the barrier. Processes, not threads: the clients' Python work then runs in
    parallel, as separate application clients would.
    """

    def __init__(self, params, queries, phases, workers):
        context = multiprocessing.get_context(START_METHOD)
        self.outbox = context.Queue()
        self.signals = [context.Event() for _ in phases]
        self.inbox = {}
        self.processes = [
            context.Process(target=run_worker, name="gis_benchmark-%d" % number, daemon=True,
                            args=(params, queries, phases, number, self.signals, self.outbox))
            for number in range(workers)]

    def __enter__(self):
        for process in self.processes:
            process.start()
        return self

    def __exit__(self, *exc_info):
        for process in self.processes:
            if process.is_alive() and exc_info[0] is not None:
                process.terminate()
            process.join(LIVENESS_POLL_S * 5)
            if process.is_alive():
                process.kill()
                process.join()

    def _receive(self, message):
        kind, phase_number, worker, payload = message
        if kind == "error":
            raise BenchmarkError(payload)
        self.inbox.setdefault((kind, phase_number), {})[worker] = payload

    def wait_all(self, kind, phase_number=None):
        """The payloads of message kind for the phase from every worker, in worker order."""
        key = (kind, phase_number)
        while len(self.inbox.get(key, {})) < len(self.processes):
            try:
                self._receive(self.outbox.get(timeout=LIVENESS_POLL_S))
                continue
            except queue.Empty:
                pass
            ended = [number for number, process in enumerate(self.processes)
                     if process.exitcode is not None]
            # An ended process has written all its messages: read them before judging it.
            try:
                while True:
                    self._receive(self.outbox.get_nowait())
            except queue.Empty:
                pass
            lost = [number for number in ended if number not in self.inbox.get(("exit", None), {})]
            if lost:
                raise BenchmarkError("benchmark worker %d ended without reporting (exit code %s)"
                                     % (lost[0], self.processes[lost[0]].exitcode))
        return [self.inbox[key][number] for number in range(len(self.processes))]

    def run_phase(self, phase_number):
        """Wait until every worker is ready, start them together and return their payloads."""
        self.wait_all("ready", phase_number)
        self.signals[phase_number].set()
        return self.wait_all("done", phase_number)


def wall_seconds(payloads):
    """From the first start to the last end of the workers' (start, end, ...) payloads.

    perf_counter is CLOCK_MONOTONIC on Linux, one clock for all processes of the host.
    """
    return max(payload[1] for payload in payloads) - min(payload[0] for payload in payloads)


def throughput(payloads):
    """executions, seconds, qps and client of a throughput phase from its (start, end, count, client)
    per worker."""
    executions = sum(payload[2] for payload in payloads)
    wall = wall_seconds(payloads)
    return dict(executions=executions, seconds=round(wall, 6),
                qps=round(executions / wall, 3) if wall > 0 else None,
                client=", ".join(sorted({payload[3] for payload in payloads})))
