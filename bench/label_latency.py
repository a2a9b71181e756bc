"""Label page latency: server-side time from a submit to the next pair rendered, with 1, 5 and 10 annotators at once,
without and then with exports running.

    .venv/bin/python bench/label_latency.py                  # 1, 5, 10 sessions; 40 submits each; both export modes
    .venv/bin/python bench/label_latency.py --sessions 10 --submits 60 --json docs/results/label_latency.json

What is measured: each annotator session is the real app (`streamlit_app.py`) run by Streamlit's AppTest in its own
process (AppTest keeps global state, so one session per process). After signing in, a session waits a random "think
time" (exponential, mean --think seconds: far faster than people, who take 10-60 s per pair), presses "A better", and
times that script run: the button callback (`submit_and_next`: the judgment and the next pair's lease in one store
transaction) and the page render. That is the work the server does between receiving the click and having sent the
next pair; network and browser painting are not included. AppTest's own overhead (a fresh script runner per run,
parsing the output) is included, so the numbers err high. Also reported per submit: how long it waited for the store's
cross-process lock, and how long it held it (the transaction: attach, statements, commit, detach).

With exports, another process runs `training.loop.export.export` in a loop over a database holding --judgments judgments
(built by bench/export_bench.py's `build`), so the UI competes with the export's reads (short transactions of
`store.generation.EXPORT_CHUNK_PAIRS` pairs) for the database and with its dataset building for the CPU. The load
average (`os.getloadavg`, as `uptime` shows it) is recorded before and after each run: on a shared machine it says
more about the figures than anything else. Prints a markdown table; --json also writes the runs, the machine and the
date. Goal: p95 <= 100 ms at 10 sessions on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.export_bench import build  # noqa: E402
from store import Candidates, PromptIn, ResponseIn, Store  # noqa: E402
from store.db import Gate  # noqa: E402


def open_round(store: Store, pairs: int) -> None:
    """A new (latest) round with `pairs` open pairs of short texts: what the annotators are served."""
    store.add_prompts([PromptIn([{"role": "user", "content": f"Latency prompt {i}: explain step {i}."}], "latency")
                       for i in range(pairs)])
    prompts = [p for p in store.list_prompts() if p["source"] == "latency"]
    checkpoint = store.register_checkpoint("base", "embedded")
    round_id = store.new_round(checkpoint)
    store.add_candidates(round_id, "samples", [
        Candidates(p["id"], [ResponseIn(p["id"], checkpoint, f"Answer {k} to prompt {p['id']}: " + "word " * 150,
                                        {}, 10, 150, "stop") for k in range(2)], [(0, 1)])
        for p in prompts
    ])


def _record_gate() -> list[tuple[float, float]]:
    """Wrap the store's cross-process lock so this process records (seconds waited, seconds held) per transaction."""
    spans = []
    held = Gate.held

    @contextmanager
    def recorded(self, purpose):
        with held(self, purpose) as waited:
            start = time.perf_counter()
            try:
                yield waited
            finally:
                spans.append((waited, time.perf_counter() - start))

    Gate.held = recorded
    return spans


def session(db: str, token: str, submits: int, think: float, seed: int, ready, results) -> None:
    """One annotator: sign in, then `submits` times think, press "A better" and time the run."""
    os.environ["PREFLOOP_DB"] = db
    from streamlit.testing.v1 import AppTest

    spans = _record_gate()
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=60).run()
    at.text_input[0].input(token)
    next(b for b in at.button if b.label == "Sign in").click().run()
    ready.wait()
    rng, timed = random.Random(seed), []
    for _ in range(submits):
        time.sleep(max(0.6, rng.expovariate(1 / think)))  # at least the double-click guard (0.5 s)
        pair = at.session_state["pair"]
        if pair is None:
            raise RuntimeError("ran out of pairs")
        spans.clear()
        start = time.perf_counter()
        next(b for b in at.button if b.label == "A better").click().run()
        timed.append((time.perf_counter() - start, sum(w for w, _ in spans), sum(h for _, h in spans), len(spans)))
        if at.session_state["pair"] is not None and at.session_state["pair"]["id"] == pair["id"]:
            raise RuntimeError(f"pair {pair['id']} was not judged: {[e.value for e in at.error]}")
    results.put(timed)


def export_loop(db: str, output_dir: str, stop, results) -> None:
    from datasets import disable_progress_bars

    from training.loop.export import ExportConfig, export

    disable_progress_bars()
    store, durations = Store(db), []
    spans = _record_gate()
    while not stop.is_set():
        start = time.perf_counter()
        export(store, ExportConfig(output_dir=output_dir, name=f"latency-{len(durations)}-{os.getpid()}"))
        durations.append(time.perf_counter() - start)
    results.put((durations, max((h for _, h in spans), default=0.0)))


def wait_for_all(ready, workers, timeout: float = 600) -> None:
    """The barrier every session reaches once signed in; a worker that died first is named, not waited for forever."""
    import threading

    try:
        ready.wait(timeout)
    except threading.BrokenBarrierError:
        dead = [f"{p.name} exit code {p.exitcode}" for p in workers if p.exitcode is not None]
        raise SystemExit(f"sessions did not all sign in within {timeout:.0f} s; {', '.join(dead) or 'none exited'}") from None


def next_result(results, workers):
    """The next session's timings; raises when a worker died without sending them."""
    import queue

    while True:
        try:
            return results.get(timeout=5)
        except queue.Empty:
            dead = [f"{p.name} exit code {p.exitcode}" for p in workers if p.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(f"a session died: {', '.join(dead)}") from None


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(db: Path, sessions: int, submits: int, think: float, exports: bool, tmp: Path) -> dict:
    store = Store(db)
    tokens = [store.add_annotator(f"latency-{sessions}-{exports}-{i}")[1] for i in range(sessions)]
    ctx = mp.get_context("spawn")
    ready, stop, results, export_results = ctx.Barrier(sessions + 1), ctx.Event(), ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=session, args=(str(db), token, submits, think, i, ready, results))
               for i, token in enumerate(tokens)]
    if exports:
        workers.append(ctx.Process(target=export_loop, args=(str(db), str(tmp / "exports"), stop, export_results)))
    for process in workers:
        process.start()
    wait_for_all(ready, workers)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    timed = [t for _ in range(sessions) for t in next_result(results, workers)]
    elapsed = time.perf_counter() - start
    load_after = os.getloadavg()[0]
    stop.set()
    export_times, export_longest_hold = export_results.get() if exports else ([], 0.0)
    for process in workers:
        process.join()
    total, waited, held, transactions = (list(column) for column in zip(*timed))
    ms = lambda seconds: round(1000 * seconds, 1)  # noqa: E731
    return {
        "sessions": sessions, "exports": "loop" if exports else "none", "submits": len(total),
        "per_s": round(len(total) / elapsed, 2), "p50_ms": ms(statistics.median(total)),
        "p95_ms": ms(percentile(total, 0.95)), "max_ms": ms(max(total)),
        "wait_p50_ms": ms(statistics.median(waited)), "wait_p95_ms": ms(percentile(waited, 0.95)),
        "held_p50_ms": ms(statistics.median(held)), "held_p95_ms": ms(percentile(held, 0.95)),
        "transactions_per_submit": max(transactions), "exports_done": len(export_times),
        "export_longest_hold_ms": ms(export_longest_hold), "load_1min": [round(load_before, 2), round(load_after, 2)],
    }


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model}), {memory:.0f} GiB, {platform.system()} {platform.release()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 5, 10], help="concurrent annotator sessions")
    parser.add_argument("--submits", type=int, default=40, help="submits timed per session")
    parser.add_argument("--think", type=float, default=2.0, help="mean seconds between a pair appearing and the press")
    parser.add_argument("--judgments", type=int, default=20_000, help="judgments in the database the exports read")
    parser.add_argument("--exports", choices=["loop", "none", "both"], default="both",
                        help="run exports back to back during the measurement, not at all, or both in turn")
    parser.add_argument("--json", type=Path, help="also write the runs, machine and date here")
    args = parser.parse_args()
    modes = {"loop": [True], "none": [False], "both": [False, True]}[args.exports]
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        db = tmp / "latency.duckdb"
        store = Store(db)
        build(store, args.judgments)
        # Each session leases one pair when it signs in and one after its last submit.
        open_round(store, pairs=len(modes) * sum(args.sessions) * (args.submits + 2) + 10)
        print(f"{machine()}; {store.count_judgments()} judgments")
        print("| sessions | exports | submits | submits/s | p50 ms | p95 ms | max ms | lock wait p50 / p95 ms "
              "| in store p50 / p95 ms | exports done | load |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for exports in modes:
            for sessions in args.sessions:
                r = run(db, sessions, args.submits, args.think, exports, tmp)
                runs.append(r)
                print(f"| {r['sessions']} | {r['exports']} | {r['submits']} | {r['per_s']:.1f} | {r['p50_ms']:.0f} "
                      f"| {r['p95_ms']:.0f} | {r['max_ms']:.0f} | {r['wait_p50_ms']:.0f} / {r['wait_p95_ms']:.0f} "
                      f"| {r['held_p50_ms']:.0f} / {r['held_p95_ms']:.0f} | {r['exports_done']} "
                      f"| {r['load_1min'][0]:.1f} → {r['load_1min'][1]:.1f} |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "benchmark": "bench/label_latency.py", "command": " ".join(["bench/label_latency.py", *sys.argv[1:]]),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "judgments": args.judgments, "think_seconds": args.think, "runs": runs,
        }, indent=1) + "\n")


if __name__ == "__main__":
    main()
