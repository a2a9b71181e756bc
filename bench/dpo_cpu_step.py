"""Time one LoRA DPO step on CPU with TRL's fused LM head and with prefloop's plain one, next to a plain LoRA step.

    .venv/bin/python bench/dpo_cpu_step.py                    # plain LM head vs a plain LoRA forward + backward
    PYTHONPATH=/tmp/triton-site TRITON_INTERPRET=1 .venv/bin/python bench/dpo_cpu_step.py --fused --trl-defaults

The batch is 4 preference pairs of about 130 tokens each (8 sequences) on the embedded SmolLM2-135M-Instruct, LoRA
r=16 on q/k/v/o, float32. Timed, each as the median of --repeats runs after one warm-up:
  lora_step        the 8 sequences through the LoRA model with the causal-LM loss, forward + backward
  dpo_plain        DPOTrainer.training_step with training/engine/lm_head.py's plain LM head (prefloop's CPU path)
  dpo_plain_trl    the same under TRL's own defaults on CPU, bf16 autocast and gradient checkpointing (--trl-defaults)
  dpo_fused        DPOTrainer.training_step with TRL's fused LM head, the Triton kernel run by Triton's interpreter
                   (--fused; needs `pip install --target DIR triton` on PYTHONPATH and TRITON_INTERPRET=1, because
                   Triton has no CPU backend and TRL fails without the package)
With --fused it also checks that both heads give the same per-token log-probs, DPO loss and rewards on the batch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAIRS = [
    (
        "Explain in a few sentences why the sky looks blue on a clear day, and why sunsets are often red or orange "
        f"instead. Keep it simple enough for a curious child. ({i})",
        "Sunlight is made of many colours. When it passes through the air, tiny gas molecules scatter the short blue "
        "waves much more than the long red ones, so blue light comes at us from every part of the sky. At sunset the "
        "light crosses far more air, most blue is scattered away, and the reds and oranges are what is left.",
        "The sky is blue because it reflects the ocean, which is blue. At sunset the sun gets colder and turns red, so "
        "the sky changes colour too. That is all there is to it, really, and scientists agree on it.",
    )
    for i in range(4)
]


def median_seconds(fn, repeats: int, warmup: bool = True) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process) over `repeats` runs after an optional warm-up.

    CPU seconds are reported too because the bench machine is shared: wall time grows with other processes' load,
    CPU time much less.
    """
    if warmup:
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def build_trainer(model_path: str, trl_defaults: bool = False):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from training.models import ModelConfig, load_trainable

    config = ModelConfig(model=model_path, backend="transformers", dtype="float32", gradient_checkpointing=trl_defaults)
    loaded = load_trainable(config, model_path, seed=3407)
    rows = [
        {
            "prompt": [{"role": "user", "content": prompt}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}],
        }
        for prompt, chosen, rejected in PAIRS
    ]
    args = DPOConfig(
        output_dir="/tmp/dpo-cpu-step",
        per_device_train_batch_size=len(rows),
        report_to=[],
        use_cpu=True,
        bf16=trl_defaults,  # TRL's default is bf16=True, which on CPU means bfloat16 autocast
        gradient_checkpointing=trl_defaults,
        save_strategy="no",
    )
    trainer = DPOTrainer(
        model=loaded.model, args=args, train_dataset=Dataset.from_list(rows), processing_class=loaded.tokenizer
    )
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(len(rows))]))
    trainer.model.train()
    trainer.create_optimizer_and_scheduler(num_training_steps=10)  # training_step reads these two
    trainer.current_gradient_accumulation_steps = 1
    return trainer, batch


def lora_step(trainer, batch) -> None:
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.backward()
    trainer.model.zero_grad()


def dpo_step(trainer, batch) -> None:
    trainer.training_step(trainer.model, batch)
    trainer.model.zero_grad()


def compare_heads(trainer, batch) -> dict:
    """Max differences between the fused and the plain head on the same batch and weights."""
    import torch

    from training.engine.lm_head import use_plain_lm_head

    # A fresh adapter (B = 0) makes the policy equal its reference and every reward zero on both paths; move the
    # trained adapter ("default", not the frozen "ref" copy) off zero so the rewards compared are not trivially equal.
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.model.named_parameters():
            if "lora_B.default" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    results = {}
    for name in ("fused", "plain"):
        if name == "plain":
            use_plain_lm_head(trainer.model)
        trainer._metrics["train"].clear()
        with torch.no_grad():
            out = trainer.model(**inputs, labels=labels, fused_lm_head=True)
            loss = trainer.compute_loss(trainer.model, dict(batch))
        metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
        results[name] = (out.log_probs, out.entropy, loss, metrics)
    (fl, fe, floss, fm), (pl, pe, ploss, pm) = results["fused"], results["plain"]
    return {
        "log_probs": (fl - pl).abs().max().item(),
        "entropy": (fe - pe).abs().max().item(),
        "loss": abs(floss.item() - ploss.item()),
        "rewards/chosen": abs(fm["rewards/chosen"] - pm["rewards/chosen"]),
        "rewards/rejected": abs(fm["rewards/rejected"] - pm["rewards/rejected"]),
        "loss_value": ploss.item(),
        "rewards/chosen_value": pm["rewards/chosen"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded", help="model name or path (default: the embedded model)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--fused", action="store_true", help="also time TRL's fused head under Triton's interpreter")
    parser.add_argument("--fused-repeats", type=int, default=1, help="timed runs of the (slow) fused step")
    parser.add_argument(
        "--trl-defaults", action="store_true", help="also time TRL's CPU defaults (bf16, checkpointing)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    import torch

    from training.engine.lm_head import use_plain_lm_head
    from training.model_source import resolve_model

    model_path = resolve_model(args.model)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"model {model_path}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    trainer, batch = build_trainer(model_path)
    tokens = int(batch["attention_mask"].sum())
    print(
        f"batch: {len(PAIRS)} pairs, {batch['input_ids'].shape[0]} sequences, {tokens} tokens (padded to "
        f"{batch['input_ids'].shape[1]}), {int(batch['completion_mask'].sum())} completion tokens",
        flush=True,
    )
    rows = {}

    def measure(name, fn, repeats, warmup=True):
        rows[name] = median_seconds(fn, repeats, warmup)
        print(f"{name:14s} {rows[name][0]:8.2f} s wall {rows[name][1]:8.2f} s CPU", flush=True)

    if args.fused:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--fused needs TRITON_INTERPRET=1 (and triton on PYTHONPATH)")
        # No warm-up: the interpreter compiles nothing, and one step takes minutes.
        measure("dpo_fused", lambda: dpo_step(trainer, batch), args.fused_repeats, warmup=False)
        diffs = compare_heads(trainer, batch)  # leaves the plain head installed
        print("fused vs plain, max abs difference: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()), flush=True)
    else:
        use_plain_lm_head(trainer.model)
    measure("dpo_plain", lambda: dpo_step(trainer, batch), args.repeats)
    measure("lora_step", lambda: lora_step(trainer, batch), args.repeats)
    if args.trl_defaults:
        slow, slow_batch = build_trainer(model_path, trl_defaults=True)
        use_plain_lm_head(slow.model)
        measure("dpo_plain_trl", lambda: dpo_step(slow, slow_batch), args.repeats)
    base = rows["lora_step"][0]
    print("wall time relative to lora_step: " + ", ".join(f"{k} {v[0] / base:.2f}x" for k, v in rows.items()))


if __name__ == "__main__":
    main()
