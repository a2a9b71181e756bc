"""Store benchmark: judgment submits across processes, then a soak of a labeler, an exporter and a bulk inserter.

Run from the repository root (prints markdown tables for docs/benchmarks.md):

    .venv/bin/python bench/store_bench.py                                   # 1, 4, 8 writers, then a 600 s soak
    .venv/bin/python bench/store_bench.py --soak-seconds 0                  # writers only
    .venv/bin/python bench/store_bench.py --writers '' --soak-seconds 60    # a short soak only
    nohup .venv/bin/python bench/store_bench.py > /tmp/store_bench.log 2>&1 &   # the full run, in the background

Writers: N processes, one annotator each, submit judgments as fast as they can for `--writer-seconds`. Every submit is
one gated transaction (store/db.py), so this measures the cost of taking the gate and opening the file per unit of
work, and how fairly the gate is shared (fewest and most submits of one process). A writer's first judgment of a pair
needs its lease, so it holds the pair first (timed apart as "hold"); the seed pairs' overlap target leaves room for
every writer; later rounds through the pairs are updates. A second table splits each submit into its phases (`Phases`:
waiting in the queue, waiting for the lock, ATTACH, the statements, COMMIT, which checkpoints into the file, and
DETACH), timed by wrapping the gate and the attach in the writer processes; the store's code is not changed.

Soak: UI-like labelers (next_pair, a short think, submit_judgment), an exporter (export_rows: every judged pair joined
with its prompt and responses, plus status) and a bulk inserter (prompts, then candidate responses and pairs in
batches, as `generate` writes them) run together. Each reports its operations' latencies; StoreBusy must stay 0, and
the judgments stored must equal the submits acknowledged.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import store.store as store_module
from store import Judgment, PromptIn, ResponseIn, Store, StoreBusy
from store.db import Gate
from store.generation import Candidates
from training.config import add_arguments, from_args, opt

SPAWN = mp.get_context("spawn")  # fork would copy DuckDB and lock state into the children


@dataclass
class BenchConfig:
    db: str = opt("", "Database file to use (it is created); a fresh temporary file when empty.")
    writers: list[int] = opt([1, 4, 8], "Numbers of concurrent writer processes to measure, comma-separated.")
    writer_seconds: float = opt(20.0, "Seconds each writer level runs.")
    seed_pairs: int = opt(2000, "Pairs created before the writers start (writers cycle through them).")
    soak_seconds: float = opt(600.0, "Seconds the soak runs; 0 skips it.")
    labelers: int = opt(2, "UI-like labeler processes in the soak.")
    think_seconds: float = opt(0.3, "Mean pause between showing a pair and submitting it (people take 10-60 s).")
    export_every: float = opt(5.0, "Seconds between two full exports in the soak.")
    bulk_every: float = opt(2.0, "Seconds between two bulk inserts in the soak.")
    bulk_prompts: int = opt(50, "Prompts (each with two responses and one pair) per bulk insert.")
    lock_timeout: float = opt(30.0, "Seconds a unit of work waits for the database before StoreBusy.")


# --- building data -------------------------------------------------------------------------------------------------
def add_candidate_pairs(store: Store, round_id: int, n: int, tag: str) -> list[int]:
    """n new prompts with two responses and one pair each, written the way `generate` writes them."""
    prompts = store.add_prompts(
        [PromptIn([{"role": "user", "content": f"bench prompt {tag} {i} {random.random()}"}], "bench") for i in range(n)]
    )
    candidates = [
        Candidates(
            prompt_id,
            [ResponseIn(prompt_id, None, f"answer {side} to {prompt_id}", {"temperature": 0.7}, 5, 9, "stop")
             for side in ("a", "b")],
            [(0, 1)],
        )
        for prompt_id in prompts.ids
    ]
    return store.add_candidates(round_id, "samples", candidates).pair_ids


def prepare(path: Path, seed_pairs: int, overlap: int = 1) -> tuple[int, list[int]]:
    store = Store(path)
    checkpoint = store.register_checkpoint("base", "bench-model")
    round_id = store.new_round(checkpoint, overlap_target=overlap)
    pair_ids = []
    for start in range(0, seed_pairs, 500):
        pair_ids += add_candidate_pairs(store, round_id, min(500, seed_pairs - start), f"seed{start}")
    return round_id, pair_ids


# --- worker processes ----------------------------------------------------------------------------------------------
class Tally:
    """Latencies per operation and error counts of one worker process."""

    def __init__(self, role: str):
        self.role, self.latencies, self.busy, self.errors, self.first_error = role, {}, 0, 0, ""

    def timed(self, op: str, fn, *args):
        start = time.perf_counter()
        try:
            result = fn(*args)
        except StoreBusy:
            self.busy += 1
            return None
        except Exception:
            self.errors += 1
            self.first_error = self.first_error or traceback.format_exc()
            return None
        self.latencies.setdefault(op, []).append(time.perf_counter() - start)
        return result


def wait_until(t: float) -> None:
    time.sleep(max(0.0, t - time.time()))


class Phases:
    """Where each unit of work of this process spends its time, in seconds per phase: waiting in the queue
    (`<db>.queue`), waiting for the lock (`<db>.lock`), ATTACH, the statements (BEGIN and the unit's own queries),
    COMMIT (with checkpoint_threshold 0 it writes the changed blocks into the file and syncs it) and DETACH.

    `install()` wraps `Gate._take` and the `attached` that Store.transaction uses, in this process only; `finish()`
    closes the record of one call (the rest of its time is `other`: validation, Python, the process's own scheduling).
    """

    NAMES = ("queue", "lock", "attach", "statements", "commit", "detach", "other")

    def __init__(self):
        self.current: dict[str, float] = {}
        self.records: list[dict[str, float]] = []

    def install(self) -> None:
        take, attached = Gate._take, store_module.attached
        phases = self

        def timed_take(gate, fd, *args):
            start = time.perf_counter()
            take(gate, fd, *args)  # the gate takes the queue file first, then the lock file
            phases.current["lock" if "queue" in phases.current else "queue"] = time.perf_counter() - start

        @contextmanager
        def timed_attached(*args):
            start = time.perf_counter()
            with attached(*args) as con:
                phases.current["attach"] = time.perf_counter() - start
                yield _TimedConnection(con, phases, time.perf_counter())
                detach_start = time.perf_counter()
            phases.current["detach"] = time.perf_counter() - detach_start

        Gate._take, store_module.attached = timed_take, timed_attached

    def finish(self, total: float) -> None:
        record = {name: self.current.get(name, 0.0) for name in self.NAMES[:-1]}
        record["other"] = total - sum(record.values())
        self.records.append(record)
        self.current = {}


class _TimedConnection:
    """A DuckDB connection that times the statements before COMMIT, and COMMIT itself, into `Phases`."""

    def __init__(self, con, phases: Phases, attached_at: float):
        self._con, self._phases, self._attached_at = con, phases, attached_at

    def execute(self, query, *args):
        if query != "COMMIT":
            return self._con.execute(query, *args)
        start = time.perf_counter()
        self._phases.current["statements"] = start - self._attached_at
        result = self._con.execute(query, *args)
        self._phases.current["commit"] = time.perf_counter() - start
        return result

    def __getattr__(self, name):
        return getattr(self._con, name)


def writer(path, lock_timeout, annotator_id, pair_ids, start_at, seconds, results):
    store = Store(path, lock_timeout, migrate=False)
    tally, phases = Tally("writer"), Phases()
    phases.install()
    wait_until(start_at)
    i = 0
    while time.time() < start_at + seconds:
        pair_id = pair_ids[i % len(pair_ids)]
        if i < len(pair_ids):
            tally.timed("hold", store.hold_pair, annotator_id, pair_id)
        phases.current = {}
        start = time.perf_counter()
        if tally.timed("submit", store.submit_judgment, Judgment(pair_id, annotator_id, "a")) is not None:
            phases.finish(time.perf_counter() - start)
        i += 1
    results.put(tally.__dict__ | {"phases": phases.records})


def labeler(path, lock_timeout, annotator_id, think_seconds, start_at, seconds, results):
    store = Store(path, lock_timeout, migrate=False)
    tally = Tally("labeler")
    acknowledged = 0
    wait_until(start_at)
    while time.time() < start_at + seconds:
        pair = tally.timed("next_pair", store.next_pair, annotator_id)
        if pair is None:
            time.sleep(0.5)
            continue
        time.sleep(random.expovariate(1 / think_seconds))
        judgment = Judgment(pair["id"], annotator_id, random.choice("ab"), "clear", None, "a", think_seconds)
        if tally.timed("submit", store.submit_judgment, judgment) is not None:
            acknowledged += 1
    results.put(tally.__dict__ | {"acknowledged": acknowledged})


def exporter(path, lock_timeout, every, start_at, seconds, results):
    store = Store(path, lock_timeout, migrate=False)
    tally = Tally("exporter")
    rows = 0
    wait_until(start_at)
    while time.time() < start_at + seconds:
        rows = len(tally.timed("export_rows", store.export_rows) or [])
        tally.timed("status", store.status)
        time.sleep(every)
    results.put(tally.__dict__ | {"rows": rows})


def bulk_inserter(path, lock_timeout, round_id, every, n, start_at, seconds, results):
    store = Store(path, lock_timeout, migrate=False)
    tally = Tally("bulk")
    wait_until(start_at)
    batch = 0
    while time.time() < start_at + seconds:
        tally.timed(f"insert {n} pairs", add_candidate_pairs, store, round_id, n, f"bulk{os.getpid()}-{batch}")
        batch += 1
        time.sleep(every)
    results.put(tally.__dict__)


def run_processes(specs: list[tuple]) -> list[dict]:
    """Start (target, args) in spawned processes, each given a results queue last; gather one result from each."""
    results = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, results)) for target, args in specs]
    for p in procs:
        p.start()
    gathered = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return gathered


def sample_load(samples: list[float], stop: threading.Event) -> None:
    while not stop.wait(10):
        samples.append(os.getloadavg()[0])


# --- reporting -----------------------------------------------------------------------------------------------------
def percentile_ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def latency_cells(values: list[float]) -> str:
    return " | ".join(f"{percentile_ms(values, q):.1f}" for q in (0.5, 0.95, 0.99, 1.0))


def bench_writers(config: BenchConfig, path: Path, pair_ids: list[int]) -> None:
    """Print one table row per writer level as soon as it is measured, then where the time of a submit went."""
    store = Store(path, config.lock_timeout, migrate=False)
    print(
        "| writer processes | submits/s | p50 ms | p95 ms | p99 ms | max ms | submits per process (min-max) "
        "| StoreBusy | other errors | load average |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )
    breakdown = [
        "| writer processes | " + " | ".join(f"{name} p50 / p95 ms" for name in Phases.NAMES)
        + " | in the gate: mean ms | waiting: share of the total |",
        "|---:" * (len(Phases.NAMES) + 3) + "|",
    ]
    for n in config.writers:
        annotators = [store.ensure_annotator(f"bench-writer-{n}-{i}", "simulated").id for i in range(n)]
        start_at = time.time() + 3 + 0.5 * n  # spawned children need a moment to import duckdb and pyarrow
        done = run_processes(
            [(writer, (path, config.lock_timeout, a, pair_ids, start_at, config.writer_seconds)) for a in annotators]
        )
        latencies = [t for d in done for t in d["latencies"].get("submit", [])]
        counts = [len(d["latencies"].get("submit", [])) for d in done]
        print(
            f"| {n} | {len(latencies) / config.writer_seconds:.0f} | {latency_cells(latencies)} "
            f"| {min(counts)}-{max(counts)} | {sum(d['busy'] for d in done)} | {sum(d['errors'] for d in done)} "
            f"| {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
        for d in done:
            if d["first_error"]:
                print(d["first_error"], flush=True)
        breakdown.append(phase_row(n, [record for d in done for record in d["phases"]]))
    print("\nWhere the time of a submit goes (each phase's p50 / p95 over all submits of the level):\n", flush=True)
    print("\n".join(breakdown), flush=True)


def phase_row(n: int, records: list[dict[str, float]]) -> str:
    """One breakdown row: each phase's p50 / p95, the mean time holding the gate (attach to detach), and the share of
    all submit time spent waiting for it (queue and lock)."""
    cells = []
    for name in Phases.NAMES:
        values = [r[name] for r in records]
        cells.append(f"{percentile_ms(values, 0.5):.1f} / {percentile_ms(values, 0.95):.1f}")
    held = [sum(r[name] for name in ("attach", "statements", "commit", "detach")) for r in records]
    waiting = sum(r["queue"] + r["lock"] for r in records) / max(sum(sum(r.values()) for r in records), 1e-9)
    return f"| {n} | " + " | ".join(cells) + f" | {1000 * sum(held) / max(len(held), 1):.1f} | {waiting:.0%} |"


def soak(config: BenchConfig, path: Path, round_id: int) -> list[str]:
    store = Store(path, config.lock_timeout, migrate=False)
    annotators = [store.ensure_annotator(f"bench-labeler-{i}", "simulated").id for i in range(config.labelers)]
    judgments_before = store.count_judgments()
    start_at, seconds, timeout = time.time() + 5, config.soak_seconds, config.lock_timeout
    specs = [(labeler, (path, timeout, a, config.think_seconds, start_at, seconds)) for a in annotators]
    specs.append((exporter, (path, timeout, config.export_every, start_at, seconds)))
    specs.append((bulk_inserter, (path, timeout, round_id, config.bulk_every, config.bulk_prompts, start_at, seconds)))
    load, stop = [], threading.Event()
    threading.Thread(target=sample_load, args=(load, stop), daemon=True).start()
    done = run_processes(specs)
    stop.set()

    acknowledged = sum(d.get("acknowledged", 0) for d in done)
    stored = store.count_judgments() - judgments_before
    lines = [
        "| role | operation | count | per s | p50 ms | p95 ms | p99 ms | max ms | StoreBusy | other errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for role in ("labeler", "exporter", "bulk"):
        mine = [d for d in done if d["role"] == role]
        ops = sorted({op for d in mine for op in d["latencies"]})
        for op in ops:
            values = [t for d in mine for t in d["latencies"].get(op, [])]
            lines.append(
                f"| {role} x{len(mine)} | {op} | {len(values)} | {len(values) / seconds:.2f} | {latency_cells(values)} "
                f"| {sum(d['busy'] for d in mine)} | {sum(d['errors'] for d in mine)} |"
            )
    for d in done:
        if d["first_error"]:
            print(d["first_error"], flush=True)
    lines.append("")
    lines.append(
        f"Judgments acknowledged by labelers: {acknowledged}; stored: {stored} "
        f"({'equal' if acknowledged == stored else 'MISMATCH'}). Last export: "
        f"{max(d.get('rows', 0) for d in done)} judged pairs; pairs in the database: {store.count_pairs()}; "
        f"file size {path.stat().st_size / 2**20:.0f} MiB. Machine load (1-minute load average, sampled every 10 s "
        f"during the soak): mean {sum(load) / max(1, len(load)):.1f}, max {max(load, default=0):.1f}."
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser, BenchConfig)
    config = from_args(BenchConfig, parser.parse_args(argv))
    scratch = tempfile.TemporaryDirectory(prefix="store-bench-")
    path = Path(config.db) if config.db else Path(scratch.name) / "bench.duckdb"
    round_id, pair_ids = prepare(path, config.seed_pairs, overlap=max(config.writers, default=1))
    print(f"# store bench {date.today()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    if config.writers:
        print(f"\nWriters ({config.writer_seconds:.0f} s per level, {len(pair_ids)} pairs):\n", flush=True)
        bench_writers(config, path, pair_ids)
    if config.soak_seconds > 0:
        print(f"\nSoak ({config.soak_seconds:.0f} s, {config.labelers} labelers):\n", flush=True)
        lines = soak(config, path, round_id)
        print("\n".join(lines), flush=True)
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
