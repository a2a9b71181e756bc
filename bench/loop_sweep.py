"""Sweep the loop's DPO recipe: one `prefloop loop-sim` per (variant, judge), several at once on one GPU.

    python bench/loop_sweep.py --variants default,steps64 --judges shorter,structured --out sweep-out
    python bench/loop_sweep.py --loops default:shorter,default:shorter@0.2,seed2:contains_word   # chosen pairs only
    python bench/loop_sweep.py --list                       # the variants in bench/loop_variants.yaml
    bash bench/gpu_check.sh loop-sweep VARIANTS JUDGES      # on the GPU machine (environment, model, $OUT)

Each variant (bench/loop_variants.yaml) lays DPOTrainConfig fields over configs/dpo.yaml, GenerateConfig fields over
configs/generate.yaml and LoopConfig fields over the loop's defaults (the sweep sets no loop field of its own, so a
variant differs from the defaults by what it says and nothing else); each judge is a function of training/loop/judges.py
(`name` or `name@noise` for a noisy annotator). Every loop runs in its own folder
under --work (database, checkpoints, report), as its own process; a rerun of the same command skips loops that
finished and resumes the others from their state files (loop-sim's own resume). The embedded model is converted once
before the loops start. When all are done (or --deadline seconds have passed: the unfinished ones are left to resume)
it prints one row per loop and writes --out/sweep.json (every loop's loop-sim summary; one cut in its evaluation
has the rounds evaluated so far, marked "partial") and --out/sweep.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ROOT / "bench" / "loop_variants.yaml"


def loop_name(variant: str, judge: str) -> str:
    return f"{variant}--{judge.replace('@', '-noise')}"


# Throughput only, on a GPU with memory to spare for a 135M model: the same 8 pairs a step in one micro-batch instead of
# 2 x 4, and no activation recomputation. The objective is unchanged (configs/dpo.yaml keeps the reference's 2 x 4).
GPU_THROUGHPUT = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "gradient_checkpointing": False}


def write_configs(variant: str, spec: dict, folder: Path, throughput: bool) -> dict[str, Path]:
    """The variant's DPO and generation YAML files: its sections laid over configs/dpo.yaml and configs/generate.yaml."""
    unknown = set(spec) - {"dpo", "generate", "loop"}
    if unknown:
        raise SystemExit(f"bench/loop_variants.yaml: variant {variant}: unknown sections {sorted(unknown)}")
    paths = {}
    for section in ("dpo", "generate"):
        config = yaml.safe_load((ROOT / "configs" / f"{section}.yaml").read_text()) | spec.get(section, {})
        if section == "dpo" and throughput:
            config |= GPU_THROUGHPUT
        paths[section] = folder / f"{section}-{variant}.yaml"
        paths[section].write_text(yaml.safe_dump(config, sort_keys=False))
    return paths


def start(variant: str, judge: str, configs: dict[str, Path], loop: dict, work: Path, args) -> subprocess.Popen:
    name = loop_name(variant, judge)
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    judge_name, _, noise = judge.partition("@")
    command = [
        sys.executable, "-m", "training.cli", "--db", str(folder / "loop.duckdb"), "loop-sim", "--name", name,
        "--judge", f"training.loop.judges:{judge_name}", "--noise", noise or "0", "--rounds", str(args.rounds),
        "--prompts-file", str(ROOT / "store" / "seeds" / "prompts.jsonl"),
        "--generate-config", str(configs["generate"]), "--dpo-config", str(configs["dpo"]),
        "--report-dir", str(folder / "reports"),
    ] + (["--eval-config", str(args.eval_config)] if args.eval_config else [])
    for key, value in loop.items():
        command += ["--" + key.replace("_", "-"), str(value)]
    log = open(folder / "loop.log", "a")
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": str(args.threads),  # the loops share the machine's cores
    }
    return subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env)


def cell(result: dict | None) -> str:
    if not result:
        return "–"
    return f"{result['value']:.3f} [{result['low']:.3f}, {result['high']:.3f}] n={result['n']}"


def row_of(name: str, summary: dict | None, code: int | None) -> str:
    if summary is None:
        return f"| {name} | {'running' if code is None else f'exit {code}'} | | | | | | | |"
    if summary.get("partial"):  # cut in the evaluation: the rounds evaluated so far
        name += f" (rounds 0-{summary['rounds_evaluated']} of 0-{summary['rounds']} so far)"
    rounds = summary["per_round"]
    accuracy = " / ".join(f"{r['heldout_accuracy']['value']:.2f}" for r in rounds[1:] if r["heldout_accuracy"])
    per_token = " / ".join(f"{r['heldout_accuracy_per_token']['value']:.2f}" for r in rounds[1:]
                           if r.get("heldout_accuracy_per_token"))
    vs_reference = " / ".join(f"{r['heldout_accuracy_vs_reference']['value']:.2f}" for r in rounds[1:]
                              if r.get("heldout_accuracy_vs_reference"))
    kl = " / ".join(f"{r['kl_to_base']['value']:.2f}" for r in rounds[1:] if r["kl_to_base"])
    length = " / ".join(f"{r['response_length']['value']:.0f}" for r in rounds if r["response_length"])
    seconds = sum(summary["seconds"].values())
    return (f"| {name} | {cell(summary['win_rate_vs_round0'])} | {cell(summary['win_rate_vs_previous'])} | "
            f"{accuracy} | {per_token} | {vs_reference} | {kl} | {length} | {seconds:.0f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="", help="comma-separated names from bench/loop_variants.yaml")
    parser.add_argument("--judges", default="shorter", help="comma-separated judge functions, name@noise for noise")
    parser.add_argument("--loops", default="", help="variant:judge pairs instead of every variant with every judge")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-config", type=Path, help="EvalConfig YAML for every loop (default: its defaults)")
    parser.add_argument("--work", type=Path, default=Path("sweep-work"))
    parser.add_argument("--out", type=Path, default=Path("sweep-out"))
    parser.add_argument("--deadline", type=float, default=540, help="seconds before unfinished loops are stopped")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    parser.add_argument("--throughput", action="store_true", help="one micro-batch of 8, no checkpointing (GPU)")
    args = parser.parse_args()
    variants = yaml.safe_load(VARIANTS.read_text())
    if args.list:
        for name, spec in variants.items():  # resolved: the file shares sections between variants by YAML anchors
            print(f"{name}: {json.dumps(spec)}")
        return 0
    if args.loops:
        pairs = [tuple(item.split(":", 1)) for item in args.loops.split(",")]
        if any(len(pair) != 2 for pair in pairs):
            parser.error(f"--loops takes variant:judge pairs, not {args.loops!r}")
    else:
        pairs = [(v, j) for v in args.variants.split(",") if v for j in args.judges.split(",")]
    unknown = sorted({v for v, _ in pairs if v not in variants})
    if unknown or not pairs:
        parser.error(f"unknown variants {unknown}; known: {', '.join(variants)}")
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "training.cli", "model"], check=True, cwd=ROOT)  # convert once, not N times

    began = time.monotonic()
    loops = {}
    args.threads = max(1, (os.cpu_count() or 2) // len(pairs))
    for variant, judge in pairs:
        spec = variants[variant] or {}
        configs = write_configs(variant, spec, args.work, args.throughput)
        loops[loop_name(variant, judge)] = start(variant, judge, configs, spec.get("loop", {}), args.work, args)
    while any(p.poll() is None for p in loops.values()) and time.monotonic() - began < args.deadline:
        time.sleep(5)
    for process in loops.values():
        if process.poll() is None:
            process.terminate()  # loop-sim's state file keeps every finished stage: rerun to resume
    time.sleep(3)

    summaries, lines = {}, [
        "| loop | win rate vs round 0 | vs previous round | held-out acc. rounds 1.. | per token | vs reference "
        "| KL rounds 1.. | length rounds 0.. | seconds |", "|" + " --- |" * 9,
    ]
    for name, process in loops.items():
        path = args.work / name / "reports" / f"{name}.json"
        summaries[name] = json.loads(path.read_text()) if path.exists() else None
        lines.append(row_of(name, summaries[name], process.poll()))
        if summaries[name] is None or summaries[name].get("partial"):
            tail = (args.work / name / "loop.log").read_text(errors="replace")[-1500:]
            print(f"--- {name} did not finish; its log ends:\n{tail}")
    table = "\n".join(lines)
    print(table)
    (args.out / "sweep.md").write_text(table + "\n")
    (args.out / "sweep.json").write_text(json.dumps(summaries, indent=1, default=str))
    return 0 if all(s and not s.get("partial") for s in summaries.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
