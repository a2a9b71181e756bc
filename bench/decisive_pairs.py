"""How many of a round's pairs can teach DPO anything: the share of prompts whose k samples (from the base model)
give a pair the simulated judge decides (a or b, not a tie), for k = 2, 4 and 8, per judge.

    .venv/bin/python bench/decisive_pairs.py                          # 32 train prompts, 8 samples each, 256 tokens
    .venv/bin/python bench/decisive_pairs.py --prompts 64 --json docs/results/decisive-pairs-cpu.json

The samples are drawn once, 8 per prompt, exactly as `prefloop generate` draws candidates (configs/generate.yaml's
decoding, the one sampler); k = 2 and 4 use each prompt's first k of them. For each judge two shares are reported:
`selected`, the pair the round would show (the most different eligible pair, what round 0 selects) is decided by the
judge; `any`, at least one eligible pair among the k is. A tie teaches DPO nothing and is dropped from the export, so
`selected` is the share of a round's labels that become training rows under that judge.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JUDGES = ("shorter", "structured", "contains_word")
KS = (2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32, help="train-split seed prompts sampled")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="token limit of each sample")
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    from store import Store
    from store.importers import import_file
    from training.config import build
    from training.engine.sampling import sample_in_batches
    from training.loop import judges
    from training.loop.generation import GenerateConfig
    from training.loop.pair_selection import eligible_pairs, select_pair
    from training.model_source import default_model
    from training.models import load_for_generation

    with tempfile.TemporaryDirectory() as tmp:  # the seed prompts' train split, as the store assigns it
        store = Store(Path(tmp) / "prompts.duckdb")
        import_file(store, ROOT / "store/seeds/prompts.jsonl", kind="prompts", source="seed")
        conversations = [p["messages"] for p in store.list_prompts(split="train")][: args.prompts]
    generate = build(GenerateConfig, ROOT / "configs/generate.yaml", {"max_new_tokens": args.max_new_tokens})
    model, tokenizer = load_for_generation({"base_model": default_model(), "adapter_path": None}, unsloth=False)
    start = time.perf_counter()
    samples = sample_in_batches(model, tokenizer, conversations, max(KS), generate.decoding, args.seed)
    seconds = time.perf_counter() - start

    results = []
    for name, k in itertools.product(JUDGES, KS):
        judge = getattr(judges, name)
        selected = any_decisive = 0
        for messages, drawn in zip(conversations, samples):
            drawn = drawn[:k]
            pair = select_pair(drawn, "most-different")
            decided = [judge(messages, drawn[i].text, drawn[j].text)[0] in ("a", "b") for i, j in eligible_pairs(drawn)]
            selected += bool(pair) and judge(messages, drawn[pair[0]].text, drawn[pair[1]].text)[0] in ("a", "b")
            any_decisive += any(decided)
        results.append({"judge": name, "k": k, "prompts": len(conversations),
                        "selected": round(selected / len(conversations), 3),
                        "any": round(any_decisive / len(conversations), 3)})
    print(f"{len(conversations)} prompts x {max(KS)} samples, {args.max_new_tokens} tokens, in {seconds:.0f} s")
    print("| judge | k | selected pair decided | any eligible pair decided |\n|---|---:|---:|---:|")
    for row in results:
        print(f"| {row['judge']} | {row['k']} | {row['selected']:.2f} | {row['any']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"prompts": len(conversations), "max_new_tokens": args.max_new_tokens,
                                         "sample_seconds": round(seconds), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
