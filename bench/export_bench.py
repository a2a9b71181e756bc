"""Export speed: 100k synthetic judgments (50k pairs, two judgments each) to a Hugging Face dataset.

    .venv/bin/python bench/export_bench.py                       # 100k judgments, temporary database
    .venv/bin/python bench/export_bench.py --judgments 20000 --keep /tmp/bench.duckdb

Goal: the whole export (read, resolve, save_to_disk, Parquet, card) in at most 10 s on 2 CPU cores. The time the
database is held (one read transaction, during which the labeling UI waits) is reported separately. The synthetic
database is built through the store API in a few bulk transactions.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from store import Candidates, Judgment, PromptIn, ResponseIn, Store
from training.loop.export import ExportConfig, export

WORDS = "the model answers a question about water boils at sea level because pressure and heat matter here".split()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def build(store: Store, judgments: int, seed: int = 0) -> None:
    """judgments / 2 pairs on as many prompts, each judged by two annotators who agree 80% of the time."""
    rng = random.Random(seed)
    pairs = judgments // 2
    store.add_prompts(
        [PromptIn([{"role": "user", "content": f"Question {i}: {text(rng, 15)}?"}], "bench") for i in range(pairs)]
    )
    prompt_ids = [p["id"] for p in store.list_prompts()]
    checkpoint = store.register_checkpoint("base", "embedded")
    round_id = store.new_round(checkpoint, overlap_target=2)
    candidates = [
        Candidates(
            prompt_id,
            [ResponseIn(prompt_id, checkpoint, f"{i}/{j} {text(rng, 80)}", {}, 20, 100, "stop") for j in range(2)],
            [(0, 1)],
        )
        for i, prompt_id in enumerate(prompt_ids)
    ]
    pair_ids = store.add_candidates(round_id, "samples", candidates).pair_ids
    annotators = [store.ensure_annotator(f"bench-{i}", "simulated").id for i in range(2)]
    rows = []
    for pair_id in pair_ids:
        first = rng.choices(["a", "b", "tie", "both_bad"], weights=[45, 45, 6, 4])[0]
        second = first if rng.random() < 0.8 else rng.choice(["a", "b", "tie"])
        for annotator, choice in zip(annotators, (first, second)):
            rows.append(Judgment(pair_id, annotator, choice, strength=rng.choice(["slight", "clear", None])))
    store.add_judgments_bulk(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--judgments", type=int, default=100_000)
    parser.add_argument("--keep", type=Path, help="build (or reuse) the database at this path instead of a temp one")
    args = parser.parse_args()
    from datasets import disable_progress_bars

    disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.keep or Path(tmp) / "bench.duckdb"
        store = Store(db)
        if store.count_judgments() == 0:
            start = time.perf_counter()
            build(store, args.judgments)
            print(f"built {store.count_judgments()} judgments in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        rows = store.export_rows()
        held = time.perf_counter() - start
        print(f"read transaction (database held): {held:.2f} s for {len(rows)} pairs")
        start = time.perf_counter()
        result = export(
            store, ExportConfig(output_dir=str(Path(tmp) / "exports"), name=f"bench-{len(store.list_exports())}")
        )
        total = time.perf_counter() - start
        counts = result["counts"]
        print(
            f"export: {total:.2f} s for {counts['judgments']} judgments -> train {counts['train']}, test "
            f"{counts['test']}; dropped {counts['dropped']}"
        )


if __name__ == "__main__":
    main()
