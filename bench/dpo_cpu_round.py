"""`make train-dpo` after a small labeling round, on the embedded model, timed as a whole process: the CPU user's case.

    .venv/bin/python bench/dpo_cpu_round.py                          # 16 judged pairs, configs/dpo.yaml
    .venv/bin/python bench/dpo_cpu_round.py --runs 2 --json docs/results/dpo-cpu-round.json
    .venv/bin/python bench/dpo_cpu_round.py --args "--gradient-checkpointing true"   # one lever, on the same round

1. The round (built once per --workdir, reused by later calls): a fresh database, the seed prompts, round 0 from the
   embedded SmolLM2-135M-Instruct; `prefloop generate`'s code samples k responses per train prompt (configs/generate.yaml
   with --samples) and keeps a pair per prompt until the round has --pairs pairs; the simulated judge (--judge,
   training.loop.judges:shorter) labels every pair as a person would through the store; `prefloop export` writes the round.
2. The training run, timed: `make train-dpo DB=<copy of the round's database>` (configs/dpo.yaml, the command a user
   runs), as a child process. Each run gets its own copy of the database, so it starts from the base model as the
   first DPO run does, and the export's cached reference log-probs (cache_ref_logps) are deleted first, so each run
   pays for them. Reported: wall seconds, the child's user + system CPU seconds (on a shared, loaded machine the wall
   time grows with the others' load, the CPU seconds much less), the optimizer steps, and the run's train reward
   accuracy and margin (the DPO implicit reward, from its metrics.json: the last epoch's steps, which see every pair).
3. Did the policy move? --heldout held-out prompts (never in a training export) are answered greedily
   (--greedy-tokens tokens) by the base model and by the new checkpoint; the bench counts the answers that differ
   and prints two examples.

The load average is printed with every figure: compare CPU seconds between calls, and wall seconds only at similar
load. Results go to docs/benchmarks.md by hand; --json writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_round(workdir: Path, pairs: int, samples: int, max_new_tokens: int, judge_spec: str, seed: int) -> dict:
    """The round's database, export and base checkpoint, built once: later calls read workdir/round.json."""
    summary_path = workdir / "round.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    import yaml

    from store import Store
    from store.importers import import_file
    from training.config import build
    from training.loop.export import ExportConfig, export
    from training.loop.judges import label_with_judge, load_judge
    from training.loop.loop_sim import LoopConfig, _generate
    from training.loop.rounds import start_round

    if workdir.exists():
        shutil.rmtree(workdir)  # a half-built round from an interrupted call
    workdir.mkdir(parents=True)
    store = Store(workdir / "round.duckdb")
    prompts = ROOT / "store/seeds/prompts.jsonl"
    import_file(store, prompts, kind="prompts", source=prompts.name)
    round_id, base = start_round(store)
    generate_yaml = yaml.safe_load((ROOT / "configs/generate.yaml").read_text())
    generate_yaml |= {"samples_per_prompt": samples, "max_new_tokens": max_new_tokens}
    (workdir / "generate.yaml").write_text(yaml.safe_dump(generate_yaml))
    start = time.perf_counter()
    loop = LoopConfig(generate_config=str(workdir / "generate.yaml"), seed=seed)
    _generate(store, loop, round_id, "train", pairs, log=print)  # what loop-sim runs: tops up to `pairs` pairs
    generate_seconds = time.perf_counter() - start
    # Generation can overshoot (a batch of prompts gives a pair each); the judge labels exactly `pairs` of them.
    judged = label_with_judge(
        store, load_judge(judge_spec), judge_spec.partition(":")[2], round_id, limit=pairs, seed=seed
    )
    exported = export(
        store,
        build(
            ExportConfig,
            ROOT / "configs/export.yaml",
            {"name": "bench-round", "round": str(round_id), "output_dir": str(workdir / "exports")},
        ),
    )
    summary = {
        "round": round_id,
        "base_checkpoint": base["id"],
        "pairs_generated": pairs,
        "samples_per_prompt": samples,
        "max_new_tokens": max_new_tokens,
        "judge": judge_spec,
        "judged": judged.judged,
        "decisive": judged.decisive,
        "export": exported["path"],
        "export_counts": exported["counts"],
        "generate_seconds": round(generate_seconds, 1),
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    return summary


# --- where one optimizer step's time goes ---------------------------------------------------------------------------


def profile_step(summary: dict, dpo_yaml: Path, variants: list[str], repeats: int) -> dict:
    """Time the parts of the run's first optimizer step (the trainer's first gradient_accumulation_steps
    micro-batches), in this process, on the trainer training/algorithms/dpo.py builds from `dpo_yaml`, once per variant:
    `ckpt` gradient checkpointing on, `full-head` the LM head over every position; `fast` neither."""
    from datasets import load_from_disk

    from training.algorithms.dpo import DPOTrainConfig, build_trainer
    from training.config import build
    from training.engine.lm_head import use_plain_lm_head
    from training.model_source import resolve_model
    from training.models import load_trainable

    dataset = load_from_disk(summary["export"])["train"].select_columns(["prompt", "chosen", "rejected"])
    results = {}
    for variant in variants:
        overrides = {"gradient_checkpointing": "ckpt" in variant, "cache_ref_logps": False, "report_to": "none"}
        config = build(DPOTrainConfig, dpo_yaml, overrides)
        loaded = load_trainable(config, resolve_model("embedded"), seed=config.seed)
        trainer = build_trainer(config, loaded, Path("/tmp/dpo-cpu-round-profile"), dataset)
        use_plain_lm_head(trainer.model, scored_positions_only="full-head" not in variant)
        start, start_cpu = time.perf_counter(), time.process_time()
        loader = iter(trainer.get_train_dataloader())
        batches = [trainer._prepare_inputs(next(loader)) for _ in range(config.gradient_accumulation_steps)]
        collate = (time.perf_counter() - start, time.process_time() - start_cpu)
        trainer.model.train()
        trainer.create_optimizer_and_scheduler(num_training_steps=10)
        trainer.current_gradient_accumulation_steps = config.gradient_accumulation_steps
        if trainer.args.gradient_checkpointing:  # what Trainer.train does before the first step
            trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        parts = {"collate": collate} | time_parts(trainer, batches, repeats)
        tokens = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(b["input_ids"].numel() for b in batches)
        scored = sum(int(b["completion_mask"][:, 1:].sum()) for b in batches)
        results[variant] = {"parts": parts, "tokens": tokens, "padded_positions": padded, "scored_positions": scored}
        print(f"-- {variant}: {len(batches)} micro-batches, {padded} positions ({tokens} tokens, {scored} scored)")
        for name, (wall, cpu) in parts.items():
            print(f"   {name:32s} {wall:7.2f} s wall {cpu:7.2f} s CPU", flush=True)
    return results


def time_parts(trainer, batches: list[dict], repeats: int) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of each part of a step over the micro-batches. The weights do not matter to the cost, so
    the new adapter stays at zero."""

    def policy_forward(batch, backward=False):
        labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        out = trainer.model(**inputs, labels=labels, fused_lm_head=True)
        if backward:
            out.log_probs.sum().backward()
            trainer.model.zero_grad()

    def training_step(batch):
        trainer.training_step(trainer.model, batch)
        trainer.model.zero_grad()

    parts = {
        "reference forward": lambda b: trainer.compute_ref_log_probs(trainer.model, b),
        "policy forward": policy_forward,
        "policy forward + backward": lambda b: policy_forward(b, backward=True),
        "training_step (TRL: all of it)": training_step,
    }
    from dpo_cpu_step import median_seconds  # bench/ is on the path of a bench script

    return {name: median_seconds(lambda fn=fn: [fn(b) for b in batches], repeats) for name, fn in parts.items()}


# --- the timed run --------------------------------------------------------------------------------------------------


def timed_train(summary: dict, workdir: Path, name: str, make_args: str, threads: int = 0, repo: Path = ROOT) -> dict:
    """`make train-dpo` on a fresh copy of the round's database, timed as a child process; its figures. `threads`
    sets OMP_NUM_THREADS (0: the command chooses); another `repo` (a checkout of an older commit, for a before and
    after) runs the command make runs there, `python -m training.cli ... train-dpo --config configs/dpo.yaml`, with
    this checkout's virtual environment."""
    from store import Store

    run_dir = workdir / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    db = run_dir / "prefloop.duckdb"
    shutil.copy(workdir / "round.duckdb", db)  # the export it records lives in workdir/exports, shared by every run
    shutil.rmtree(Path(summary["export"]) / "ref-logps", ignore_errors=True)  # each run computes its reference
    args = f"--output-dir {run_dir / 'dpo'} {make_args}".strip()
    command = ["make", "-s", "train-dpo", f"DB={db}", f"ARGS={args}"]
    env = dict(os.environ) | ({"OMP_NUM_THREADS": str(threads)} if threads else {})
    if repo != ROOT:
        command = [sys.executable, "-m", "training.cli", "--db", str(db), "train-dpo", "--config", "configs/dpo.yaml"]
        command += args.split()
        env["PYTHONPATH"] = str(repo)  # that checkout's code, not the editable install's
    load_before = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(run_dir / "train.log", "w") as log:
        done = subprocess.run(command, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed; see {run_dir / 'train.log'}")
    metrics = json.loads((run_dir / "dpo" / "metrics.json").read_text())
    (checkpoint,) = Store(db).list_checkpoints("dpo")
    result = {
        "command": " ".join(command) if repo != ROOT else f"make -s train-dpo DB={os.path.relpath(db, ROOT)} ARGS='{args}'",
        "repo": str(repo),
        "omp_num_threads": threads or None,
        "threads": _threads_used(run_dir / "train.log"),
        "wall_s": round(wall, 1),
        "user_s": round(after.ru_utime - before.ru_utime, 1),
        "sys_s": round(after.ru_stime - before.ru_stime, 1),
        "max_rss_gib": round(after.ru_maxrss / 2**20, 2),  # the largest child's peak: the training process
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "steps": metrics["global_step"],
        "train_runtime_s": round(metrics["train_runtime"], 1),
        "first_loss": metrics.get("first_loss"),
        "last_loss": metrics.get("last_loss"),
        "train_reward_accuracy": metrics.get("train_reward_accuracy"),
        "train_reward_margin": metrics.get("train_reward_margin"),
        "checkpoint": checkpoint,
    }
    print(
        f"{name}: {result['wall_s']} s wall, {result['user_s']} + {result['sys_s']} s user + sys CPU, "
        f"{result['steps']} steps, loss {result['first_loss']} -> {result['last_loss']}, train reward accuracy "
        f"{result['train_reward_accuracy']}, margin {result['train_reward_margin']} (load {result['load_before']})",
        flush=True,
    )
    return result


def _threads_used(log: Path) -> int | None:
    """The torch threads the run reported (`... on cpu, float32, N threads`), if it did."""
    import re

    found = re.search(r"on cpu, \w+, (\d+) threads?", log.read_text())
    return int(found.group(1)) if found else None


# --- did the policy move? -------------------------------------------------------------------------------------------


def greedy_answers(checkpoint: dict, conversations: list, max_new_tokens: int) -> list[str]:
    """Greedy answers of a registered checkpoint (base model + its adapter), one batch."""
    import torch

    from training.engine.sampling import chat_inputs
    from training.models import load_for_generation

    model, tokenizer = load_for_generation(checkpoint)
    inputs = chat_inputs(tokenizer, conversations)
    with torch.no_grad():
        output = model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id
        )
    width = inputs["input_ids"].shape[1]
    return [tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output]


def compare_greedy(workdir: Path, base: dict, trained: dict, prompts: int, max_new_tokens: int) -> dict:
    from store import Store

    heldout = Store(workdir / "round.duckdb").list_prompts("heldout", limit=prompts)
    conversations = [p["messages"] for p in heldout]
    cache = workdir / f"greedy-base-{prompts}-{max_new_tokens}.json"  # the base model's answers never change
    if cache.exists():
        before = json.loads(cache.read_text())
    else:
        before = greedy_answers(base, conversations, max_new_tokens)
        cache.write_text(json.dumps(before))
    after = greedy_answers(trained, conversations, max_new_tokens)
    changed = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    examples = [
        {"prompt": conversations[i][-1]["content"], "base": before[i], "trained": after[i]} for i in changed[:2]
    ]
    shorter = sum(len(after[i]) < len(before[i]) for i in changed)
    print(
        f"held-out greedy answers ({len(conversations)} prompts, {max_new_tokens} tokens): {len(changed)} changed, "
        f"{shorter} of them shorter"
    )
    for example in examples:
        print(json.dumps(example, indent=2, ensure_ascii=False))
    return {
        "prompts": len(conversations),
        "max_new_tokens": max_new_tokens,
        "changed": len(changed),
        "changed_and_shorter": shorter,
        "examples": examples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "data/bench/dpo-cpu-round", help="round and runs")
    parser.add_argument("--pairs", type=int, default=16, help="judged train pairs in the round")
    parser.add_argument("--samples", type=int, default=4, help="responses sampled per prompt (k)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="token limit of the round's responses")
    parser.add_argument("--judge", default="training.loop.judges:shorter", help="module:function of the simulated judge")
    parser.add_argument("--seed", type=int, default=3407, help="seed of generation and judge")
    parser.add_argument("--runs", type=int, default=1, help="timed `make train-dpo` runs (each from the base model)")
    parser.add_argument("--args", default="", help="extra ARGS for make train-dpo, e.g. a lever turned off")
    parser.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the run (0: the command chooses)")
    parser.add_argument("--repo", type=Path, default=ROOT, help="run another checkout's code (an older commit)")
    parser.add_argument("--label", default="run", help="runs go to <workdir>/<label>-<i>/")
    parser.add_argument("--heldout", type=int, default=16, help="held-out prompts answered greedily (0: skip)")
    parser.add_argument("--greedy-tokens", type=int, default=64, help="tokens of each greedy answer")
    parser.add_argument(
        "--profile",
        default="",
        help="instead of timing runs: profile one step of these variants, "
        "comma-separated: fast, ckpt (gradient checkpointing), full-head, ckpt+full-head",
    )
    parser.add_argument("--repeats", type=int, default=1, help="--profile: timed repeats per part (median)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    summary = build_round(args.workdir, args.pairs, args.samples, args.max_new_tokens, args.judge, args.seed)
    print(f"round: {json.dumps(summary)}")
    report = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "round": summary}
    if args.profile:
        report["profile"] = profile_step(summary, ROOT / "configs/dpo.yaml", args.profile.split(","), args.repeats)
    else:
        report["runs"] = [
            timed_train(summary, args.workdir, f"{args.label}-{i}", args.args, args.threads, args.repo.resolve())
            for i in range(args.runs)
        ]
        if args.heldout:
            from store import Store

            base = Store(args.workdir / "round.duckdb").get_checkpoint(summary["base_checkpoint"])
            trained = report["runs"][-1]["checkpoint"]
            report["greedy"] = compare_greedy(args.workdir, base, trained, args.heldout, args.greedy_tokens)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
