"""Evaluation benchmark: how long `prefloop eval` takes for one round on the embedded model (or `--model`).

Run from the repository root (prints a markdown table for docs/benchmarks.md):

    .venv/bin/python bench/eval_bench.py                              # 64 pairs, 32 prompts, 64 new tokens
    .venv/bin/python bench/eval_bench.py --pairs 256 --prompts 64 --max-new-tokens 128

It builds a throwaway database: the seed prompts, all held out; a base checkpoint; a DPO-like checkpoint and a reward
model that are random LoRA adapters on the base (their numbers mean nothing, their cost is real); one judged
`samples` pair per prompt whose responses are other seed prompts' texts (lengths vary as real answers do). Then it
times each part of evaluating the DPO checkpoint and the reward model, one model loaded at a time, as `eval` does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from store import Candidates, Judgment, PromptIn, ResponseIn, Store
from training.config import add_arguments, from_args, opt
from training.loop.evaluation import EvalConfig, Evaluator, spec_of

SEEDS = Path(__file__).resolve().parent.parent / "store" / "seeds" / "prompts.jsonl"


@dataclass
class BenchConfig:
    pairs: int = opt(64, "judged held-out pairs to score")
    prompts: int = opt(32, "held-out prompts to sample on (KL, length)")
    max_new_tokens: int = opt(64, "token limit of each sampled response")
    batch_size: int = opt(8, "sequences scored or sampled together")
    model: str = opt("embedded", "base model: 'embedded' or an HF id or path")


def random_adapter(base: str, directory: Path, reward: bool) -> str:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if reward:
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    else:
        model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(
        r=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="SEQ_CLS" if reward else "CAUSAL_LM",
    )
    get_peft_model(model, config).save_pretrained(directory)
    return str(directory)


def build(store: Store, config: BenchConfig, workdir: Path) -> tuple[dict, dict]:
    from training.model_source import resolve_model

    store.heldout_fraction = 1.0
    seeds = [json.loads(line)["messages"] for line in SEEDS.read_text().splitlines() if line.strip()]
    ids = store.add_prompts([PromptIn(m, "bench") for m in seeds]).ids
    base = store.register_checkpoint("base", config.model)
    store.new_round(base)
    path = resolve_model(config.model)
    dpo = store.register_checkpoint(
        "dpo", config.model, random_adapter(path, workdir / "dpo", False), round_id=0, parent_id=base
    )
    reward = store.register_checkpoint(
        "reward", config.model, random_adapter(path, workdir / "rm", True), round_id=0, parent_id=base
    )
    texts = [m[-1]["content"] * (1 + i % 3) for i, m in enumerate(seeds)]
    candidates = [
        Candidates(
            prompt_id,
            [ResponseIn(prompt_id, base, texts[(i + k) % len(texts)], {}, None, None, "stop") for k in (1, 2)],
            [(0, 1)],
        )
        for i, prompt_id in enumerate(ids[: config.pairs])
    ]
    pair_ids = store.add_candidates(0, "samples", candidates).pair_ids
    judge = store.ensure_annotator("bench", "simulated")
    store.add_judgments_bulk([Judgment(p, judge.id, "a" if p % 3 else "b") for p in pair_ids])
    return store.get_checkpoint(dpo), store.get_checkpoint(reward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, BenchConfig)
    config = from_args(BenchConfig, parser.parse_args())
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        dpo, reward = build(store, config, Path(tmp))
        evaluator = Evaluator(
            store,
            EvalConfig(prompts=config.prompts, max_new_tokens=config.max_new_tokens, batch_size=config.batch_size),
        )
        spec, reference = spec_of(dpo), evaluator.reference_spec(dpo)
        timings = []

        def timed(label: str, work, amount: str):
            start = time.perf_counter()
            result = work()
            timings.append((label, time.perf_counter() - start, amount))
            return result

        n = len(evaluator.pairs)
        timed("load policy (merge LoRA)", lambda: evaluator.policy(spec), "1 model")
        timed("score pairs under the policy", lambda: evaluator.pair_logps(spec), f"{2 * n} responses")
        samples = timed("sample responses", lambda: evaluator.samples(spec), f"{config.prompts} prompts")
        tokens = sum(len(s.completion_ids) for s in samples)
        timed("score samples under the policy", lambda: evaluator.sample_logps(spec, spec), f"{tokens} tokens")
        timed("load base + score pairs", lambda: evaluator.pair_logps(reference), f"{2 * n} responses")
        timed("score samples under the base", lambda: evaluator.sample_logps(spec, reference), f"{tokens} tokens")
        timed("load reward model + score pairs", lambda: evaluator.evaluate(reward), f"{2 * n} responses")
        rows = timed("rest: base samples, reward-model win rate", lambda: evaluator.evaluate(dpo), "metrics")
    print(f"## Evaluation ({date.today()}, model {config.model}, {n} pairs, {config.prompts} prompts, "
          f"max_new_tokens {config.max_new_tokens}, batch {config.batch_size})\n")
    print("| step | seconds | work |\n|---|---:|---|")
    for label, seconds, amount in timings:
        print(f"| {label} | {seconds:.1f} | {amount} |")
    print(f"| total | {sum(t[1] for t in timings):.1f} | |")
    print("\nmetrics: " + ", ".join(f"{r['metric']}={r['value']:.3f} (n={r['n']})" for r in rows))


if __name__ == "__main__":
    main()
