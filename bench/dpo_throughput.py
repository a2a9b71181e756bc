"""DPO throughput on one GPU: TRL + PEFT, Unsloth, and prefloop's train-dpo path with each of its levers, on the
same synthetic preference data and the same random-weight Qwen2.5-shaped model.

    python bench/dpo_throughput.py --shape 0.5b                     # every config of the shape, one process each
    python bench/dpo_throughput.py --shape 7b --configs trl,unsloth,prefloop,all
    python bench/dpo_throughput.py --shape 32b                      # the reference workflow's headline config
    python bench/dpo_throughput.py --shape 7b --config "hf=prefloop:backend=transformers;length_buckets=2"
    python bench/dpo_throughput.py --smoke                          # CPU, tiny model: every path's code, seconds
    python bench/dpo_throughput.py --list                           # the configs and shapes

On the GPU machine run it as bench/gpu_check.sh runs the CLI (PYTHONPATH with the carry, HF_HUB_OFFLINE=1); results
go to $OUT (or --out). Each config runs in its own process: memory is measured from a clean start, and Unsloth is
imported first in its own process only.

Paths: (a) `trl`: TRL's DPOTrainer with a PEFT LoraConfig and TRL's defaults (gradient checkpointing, bf16, padded
random batches, the reference run in every step). (b) `unsloth`: Unsloth's FastLanguageModel + get_peft_model
("unsloth" gradient checkpointing) under the same TRL defaults. (c) `prefloop`: `training.algorithms.dpo.build_trainer` on
`training.models.load_trainable`, what `prefloop train-dpo` runs (on a GPU with Unsloth installed, through Unsloth),
with its default levers; the `+lever` configs turn one lever on over `levers-off`. What every path shares: the data,
the LoRA shape, the optimiser settings (learning rate, constant schedule, seed), max_length, the batch per step.

Data: pairs in prefloop's export format from a fixed seed; prompt lengths lognormal around 150 tokens (sigma 0.6),
responses around 250 (sigma 0.7, cut at 1,500); the smoke shape scales them down. The text is random words, each one
token of the tokenizer (decode -> encode gives back exactly the intended tokens); chosen responses draw from one half
of the words and rejected ones from the other, so there is a preference to learn and the losses move.

Measured: every config trains two epochs over the same pairs, `steps` optimizer steps each (the shape's, or
--steps); the first warms up (compilation, autotuning, the allocator), the second is measured, so every config is
timed on exactly the same pairs whatever order it takes them in. Real tokens are the non-padding tokens of the
batches (prompt + response, chosen and rejected rows); tokens/s is real tokens over the second epoch's wall time
(CUDA synchronised at each step end). Peak memory is torch.cuda.max_memory_allocated over
the whole process (loading and the reference pass included). Useful MFU counts 6 N FLOPs per real token (N: the
parameters of the matrix products, LM head included, input embedding not) against 989 TFLOP/s (H100 dense bf16); for
LoRA DPO that is the work actually needed: the reference forward (2N), the policy forward (2N) and its backward to
the activations (2N). Recomputed activations and padding are not useful work. `padding`: the share of padding in the
batches as TRL's collator pads them / in what the forward passes compute (less with length buckets). `incl. ref
pass`: with cached reference log-probs, tokens/s charging the measured epoch the (cold) reference pass over it, as a
one-epoch run pays it. Loss, reward accuracy and margin are TRL's logged values over the measured steps;
`max abs dloss vs trl` is the largest per-step difference to (a), which compares like with like only where the data
order is the same (no length grouping): grouped configs see other pairs at each step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

H100_BF16_FLOPS = 989e12
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]


@dataclass
class Shape:
    """A Qwen2.5 model shape and the batch, data and steps the bench trains it with."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int | None  # None: the tokenizer's size
    tied: bool
    lora_targets: list[str]
    batch: int  # pairs per micro-batch
    accumulation: int  # micro-batches per optimizer step
    max_length: int
    configs: list[str]  # run by default
    steps: int = 8  # optimizer steps per epoch: one epoch warms up, the next is measured
    prompt_tokens: int = 150
    response_tokens: int = 250
    max_response_tokens: int = 1500
    in_memory: bool = False  # too large to save on the GPU machine's disk: built where from_pretrained would load it


LEVERS_OFF = {"group_by_length": False, "length_buckets": 1, "cache_ref_logps": False}
# name: (path, fields: DPOTrainConfig's for prefloop, DPOConfig's for trl and unsloth, environment of the process)
CONFIGS = {
    "trl": ("trl", {}, {}),
    "unsloth": ("unsloth", {}, {}),
    "prefloop": ("prefloop", {}, {}),
    "levers-off": ("prefloop", LEVERS_OFF, {}),
    "+group": ("prefloop", LEVERS_OFF | {"group_by_length": True}, {}),
    "+buckets": ("prefloop", LEVERS_OFF | {"length_buckets": 4}, {}),
    "+refcache": ("prefloop", LEVERS_OFF | {"cache_ref_logps": True}, {}),
    "+no-ckpt": ("prefloop", LEVERS_OFF | {"gradient_checkpointing": False}, {}),
    "all": ("prefloop", {"group_by_length": True, "length_buckets": 4, "cache_ref_logps": True}, {}),
    "prefloop-hf": ("prefloop", {"backend": "transformers"}, {}),
    # Unsloth's fused losses: its fused-linear log-prob kernel replaces TRL's unless UNSLOTH_FUSED_LINEAR=0; its
    # fused preference loss is opt-in, and declines TRL 1.15's DPO loss (which already calls the fused head).
    "unsloth-trl-kernel": ("unsloth", {}, {"UNSLOTH_FUSED_LINEAR": "0"}),
    "unsloth-fused-loss": ("unsloth", {}, {"UNSLOTH_FUSED_PREFERENCE_LOSS": "1"}),
}
SHAPES = {
    "smoke": Shape(
        hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, vocab=None, tied=True, lora_targets=ALL_LINEAR,
        batch=2, accumulation=1, max_length=256, configs=["trl", "unsloth", "prefloop", "all"],
        steps=2, prompt_tokens=24, response_tokens=40, max_response_tokens=160,
    ),
    "0.5b": Shape(  # Qwen2.5-0.5B
        hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=151936, tied=True,
        lora_targets=ALL_LINEAR, batch=16, accumulation=1, max_length=2048,
        configs=["trl", "unsloth", "prefloop", "all", "levers-off", "+group", "+buckets", "+refcache", "+no-ckpt",
                 "unsloth-trl-kernel", "unsloth-fused-loss"],
    ),
    "7b": Shape(  # Qwen2.5-7B
        hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064, tied=False,
        lora_targets=ALL_LINEAR, batch=16, accumulation=1, max_length=2048, configs=["trl", "unsloth", "prefloop", "all"],
    ),
    "32b": Shape(  # Qwen2.5-32B, the reference workflow's headline config: LoRA r16 on q/k/v/o, 2 x 4 pairs, 2048
        hidden=5120, intermediate=27648, layers=64, heads=40, kv_heads=8, vocab=152064, tied=False,
        lora_targets=ATTENTION, batch=2, accumulation=4, max_length=2048, configs=["prefloop-hf", "prefloop"],
        steps=4, in_memory=True,
    ),
}  # fmt: skip


# --- data and model (parent process) --------------------------------------------------------------------------------


def word_tokens(tokenizer) -> list[int]:
    """Ids of tokens that are one space-led lowercase word and encode back to themselves alone."""
    import re

    word = re.compile(r"^ [a-z]{2,}$")
    ids = []
    for token, token_id in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1]):
        text = tokenizer.convert_tokens_to_string([token])
        if word.match(text) and tokenizer.encode(text, add_special_tokens=False) == [token_id]:
            ids.append(token_id)
    if len(ids) < 8:
        raise SystemExit(f"the tokenizer has only {len(ids)} single-token words; the synthetic text needs 8 or more")
    return ids


def synthetic_pairs(tokenizer, shape: Shape, pairs: int, seed: int) -> tuple[list[dict], dict]:
    """(rows in prefloop's export format, their token statistics)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = rng.permutation(word_tokens(tokenizer))
    good, bad = words[: len(words) // 2], words[len(words) // 2 :]

    def length(median: int, sigma: float, cap: int) -> int:
        return int(np.clip(round(median * math.exp(sigma * rng.standard_normal())), 4, cap))

    rows, intended, measured = [], [], []
    for _ in range(pairs):
        lengths = (
            length(shape.prompt_tokens, 0.6, 4 * shape.prompt_tokens),
            length(shape.response_tokens, 0.7, shape.max_response_tokens),
            length(shape.response_tokens, 0.7, shape.max_response_tokens),
        )
        texts = [tokenizer.decode(rng.choice(pool, n).tolist()) for pool, n in zip((words, good, bad), lengths)]
        rows.append(
            {
                "prompt": [{"role": "user", "content": texts[0]}],
                "chosen": [{"role": "assistant", "content": texts[1]}],
                "rejected": [{"role": "assistant", "content": texts[2]}],
            }
        )
        intended.append(lengths)
        measured.append([len(tokenizer.encode(t, add_special_tokens=False)) for t in texts])
    intended, measured = np.array(intended), np.array(measured)
    stats = {
        "pairs": pairs,
        "mean_prompt_tokens": float(measured[:, 0].mean()),
        "mean_response_tokens": float(measured[:, 1:].mean()),
        "max_response_tokens": int(measured[:, 1:].max()),
        "mean_sequence_tokens": float((measured[:, :1] + measured[:, 1:]).mean()),
        "round_trip_max_error": float((abs(measured - intended) / intended).max()),
    }
    if stats["round_trip_max_error"] > 0.02:
        raise SystemExit(f"decode -> encode changed the lengths by up to {stats['round_trip_max_error']:.1%}")
    return rows, stats


def qwen_config(shape: Shape, tokenizer):
    from transformers import AutoConfig

    return AutoConfig.for_model(
        "qwen2",
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        vocab_size=shape.vocab or len(tokenizer),
        max_position_embeddings=32768,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=shape.tied,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        dtype="bfloat16",
    )


def matmul_parameters(config) -> int:
    """N of the 6N rule: every parameter but the input embedding (a lookup, not a product); a tied LM head once."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # a tied embedding is one parameter, counted once
    return total if config.tie_word_embeddings else total - model.get_input_embeddings().weight.numel()


def build_model(shape: Shape, tokenizer_path: str, model_dir: Path, device: str) -> None:
    """A random-weight model of the shape saved in model_dir with the tokenizer (config only when in_memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    from training.model_source import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    config = qwen_config(shape, tokenizer)
    marker = model_dir / "bench-shape.json"
    wanted = json.dumps(config.to_dict(), sort_keys=True, default=str)
    if marker.exists() and marker.read_text() == wanted:
        print(f"model: reusing {model_dir}")
        return
    shutil.rmtree(model_dir, ignore_errors=True)
    model_dir.mkdir(parents=True)
    if shape.in_memory:
        config.save_pretrained(model_dir)
    else:
        torch.manual_seed(0)
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.save_pretrained(model_dir)
        del model
    tokenizer.save_pretrained(model_dir)
    marker.write_text(wanted)
    print(f"model: built {model_dir}")


# --- one config (worker process) ------------------------------------------------------------------------------------


@dataclass
class Spec:
    """Everything a worker process needs to run one config."""

    name: str
    path: str
    overrides: dict
    shape: str
    model_dir: str
    data_file: str
    output_dir: str
    result_file: str
    device: str
    learning_rate: float
    seed: int
    matmul_parameters: int
    ref_cache_dir: str
    settings: dict = field(default_factory=dict)  # the Shape as a dict
    env: dict = field(default_factory=dict)  # set before anything is imported


def run_worker(spec: Spec) -> dict:
    os.environ.update(spec.env)
    from training.models import choose_backend

    shape = Shape(**spec.settings)
    backend = choose_backend(spec.overrides.get("backend", "auto")) if spec.path == "prefloop" else spec.path
    if "unsloth" in (spec.path, backend):
        import unsloth  # noqa: F401  (first: it patches transformers, PEFT and TRL on import)
    import torch
    from datasets import Dataset

    if shape.in_memory:
        build_where_loaded(spec.model_dir, spec.device)
    train_dataset = Dataset.from_list(json.loads(Path(spec.data_file).read_text()))
    clock = step_clock(spec.device)
    build = {"trl": trl_trainer, "unsloth": unsloth_trainer, "prefloop": prefloop_trainer}[spec.path]
    trainer = build(spec, shape, train_dataset, clock)
    count_tokens(trainer, clock)
    trainer.add_callback(clock)
    trainer.train()
    result = clock.summary(shape.steps)
    if spec.device == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    result["useful_mfu"] = 6 * spec.matmul_parameters * result["tokens_per_s"] / H100_BF16_FLOPS
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]
    keys = ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")
    result["logs"] = [{"step": e.get("step"), **{k: e.get(k) for k in keys}} for e in logs]
    return result


def schedule_args(spec: Spec, shape: Shape) -> dict:
    """What every path trains with, under the same names in TRL's DPOConfig and in DPOTrainConfig."""
    return {
        "output_dir": spec.output_dir,
        "per_device_train_batch_size": shape.batch,
        "gradient_accumulation_steps": shape.accumulation,
        "max_steps": 2 * shape.steps,
        "learning_rate": spec.learning_rate,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        "max_length": shape.max_length,
        "logging_steps": 1,
        "seed": spec.seed,
    }


def dpo_config_args(spec: Spec, shape: Shape) -> dict:
    """The DPOConfig settings (a) and (b) share with (c): everything else is TRL's default."""
    on_cpu = spec.device == "cpu"
    args = schedule_args(spec, shape) | {"save_strategy": "no", "report_to": [], "use_cpu": on_cpu}
    if on_cpu:
        args["bf16"] = False  # TRL's default bf16=True means slow bfloat16 autocast on a CPU
    return args | spec.overrides


def trl_trainer(spec: Spec, shape: Shape, train_dataset, clock):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from training.engine.lm_head import install_lm_head
    from training.model_source import load_tokenizer

    dtype = torch.bfloat16 if spec.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=dtype)
    lora = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=shape.lora_targets, task_type="CAUSAL_LM")
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(**dpo_config_args(spec, shape)),
        train_dataset=train_dataset,
        processing_class=load_tokenizer(spec.model_dir),
        peft_config=lora,
    )
    install_lm_head(trainer, "auto", spec.device)  # TRL's fused head on a GPU; on a CPU it cannot run
    return trainer


def unsloth_trainer(spec: Spec, shape: Shape, train_dataset, clock):
    import torch
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=spec.model_dir,
        max_seq_length=shape.max_length,
        dtype=torch.bfloat16,
        load_in_4bit=False,
        use_exact_model_name=True,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=shape.lora_targets,
        bias="none",
        use_gradient_checkpointing="unsloth",
        random_state=spec.seed,
    )
    from trl import DPOConfig, DPOTrainer  # after Unsloth: its patched trainer

    return DPOTrainer(
        model=model,
        ref_model=None,
        args=DPOConfig(**dpo_config_args(spec, shape)),
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )


def prefloop_trainer(spec: Spec, shape: Shape, train_dataset, clock):
    from training.algorithms import dpo
    from training.config import build
    from training.engine import reference_logps
    from training.models import load_trainable

    values = schedule_args(spec, shape) | {
        "model": spec.model_dir,
        "lora_r": 16,
        "lora_alpha": 16,
        "lora_targets": shape.lora_targets,
        "save_steps": 10**9,
        "report_to": ["none"],
        "evaluate": False,
    }
    config = build(dpo.DPOTrainConfig, None, values | spec.overrides)
    loaded = load_trainable(config, spec.model_dir, seed=config.seed)
    attach = reference_logps.attach_reference_logps

    def timed_attach(*args, **kwargs):  # the reference pass, timed on its own
        start = clock.now()
        status = attach(*args, **kwargs)
        clock.ref_pass_s = clock.now() - start
        return status

    reference_logps.attach_reference_logps = timed_attach
    clock.length_buckets = config.length_buckets
    cache = (Path(spec.ref_cache_dir), {"bench": spec.shape, "seed": spec.seed})
    return dpo.build_trainer(config, loaded, Path(spec.output_dir), train_dataset, reference_cache=cache)


def build_where_loaded(model_dir: str, device: str) -> None:
    """Make from_pretrained(model_dir) build the model from its config, random weights straight on the device: the
    32B shape cannot be saved on the GPU machine's disk. Everything after loading runs unchanged."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    load = AutoModelForCausalLM.from_pretrained

    def from_config_where_loaded(path, *args, **kwargs):
        if str(path) != model_dir:
            return load(path, *args, **kwargs)
        dtype = kwargs.get("dtype") or kwargs.get("torch_dtype") or torch.bfloat16
        config = kwargs.get("config") or AutoConfig.from_pretrained(path)
        torch.manual_seed(0)
        with torch.device(device):  # Unsloth asks for its attention implementation; transformers' loader for none
            return AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=kwargs.get("attn_implementation")
            )

    AutoModelForCausalLM.from_pretrained = staticmethod(from_config_where_loaded)


def step_clock(device: str):
    """A trainer callback that records wall time and real (non-padding) tokens at the end of every optimizer step.
    Made here, not at import: in a worker, transformers may only be imported after Unsloth."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
            self.real = self.padded = self.computed = 0  # running sums (real and padded: tensors on the device)
            self.ends, self.real_at, self.padded_at, self.computed_at = [], [], [], []
            self.start = self.ref_pass_s = None
            self.length_buckets = 1  # prefloop's length_buckets, for the tokens actually computed

        def now(self) -> float:
            self.sync()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kwargs):
            self.start = self.now()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(self.now())
            self.real_at.append(int(self.real))
            self.padded_at.append(int(self.padded))
            self.computed_at.append(int(self.computed))

        def summary(self, steps: int) -> dict:
            """The second epoch's figures (`steps` optimizer steps an epoch)."""
            if len(self.ends) != 2 * steps:
                raise RuntimeError(f"{len(self.ends)} optimizer steps ran; expected 2 epochs of {steps}")
            before = steps - 1  # the measured epoch starts at the end of the first one
            seconds = self.ends[-1] - self.ends[before]
            tokens = self.real_at[-1] - self.real_at[before]
            padded = self.padded_at[-1] - self.padded_at[before]
            computed = self.computed_at[-1] - self.computed_at[before]
            result = {
                "measured_steps": steps,
                "seconds": seconds,
                "real_tokens": tokens,
                "padded_tokens": padded,
                "computed_tokens": computed,
                "padding_share": 1 - tokens / padded,  # as TRL's collator pads
                "computed_padding_share": 1 - tokens / computed,  # what the forward passes compute (length buckets)
                "tokens_per_s": tokens / seconds,
                "first_step_s": self.ends[0] - self.start,
                "step_s": [b - a for a, b in zip(self.ends[before:-1], self.ends[before + 1 :])],
                "ref_pass_s": self.ref_pass_s,
            }
            if self.ref_pass_s is not None:  # a one-epoch run pays the reference pass over its pairs once
                result["tokens_per_s_incl_ref_pass"] = tokens / (seconds + self.ref_pass_s)
            return result

    return StepClock()


def count_tokens(trainer, clock) -> None:
    """Count every micro-batch's real, padded and computed tokens where the trainer computes its loss (no host sync
    unless length buckets split the batch, which reads the row lengths anyway)."""
    from training.engine.batching import plan_buckets

    compute_loss = trainer.compute_loss

    def counted(model, inputs, *args, **kwargs):
        mask = inputs["attention_mask"]
        clock.real = clock.real + mask.sum()
        clock.padded = clock.padded + mask.numel()
        if clock.length_buckets > 1:
            rows = mask.sum(dim=1).tolist()
            clock.computed += sum(len(g) * max(rows[i] for i in g) for g in plan_buckets(rows, clock.length_buckets))
        else:
            clock.computed += mask.numel()
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = counted


# --- the run (parent process) ---------------------------------------------------------------------------------------


def parse_config(text: str) -> tuple[str, tuple[str, dict, dict]]:
    """NAME=PATH[:field=value;env.VARIABLE=value;...] -> (name, (path, fields, environment)); field values are JSON
    where they parse, strings otherwise."""
    name, _, rest = text.partition("=")
    path, _, fields = rest.partition(":")
    if not name or path not in ("trl", "unsloth", "prefloop"):
        raise SystemExit(f"--config {text!r}: expected NAME=trl|unsloth|prefloop[:field=value;env.VAR=value;...]")
    values, env = {}, {}
    for item in filter(None, fields.split(";")):
        key, _, value = (part.strip() for part in item.partition("="))
        if key.startswith("env."):
            env[key.removeprefix("env.")] = value
            continue
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return name, (path, values, env)


def run_all(args: argparse.Namespace) -> dict:
    from training.model_source import load_tokenizer, resolve_model

    shape_name = "smoke" if args.smoke else args.shape
    shape = SHAPES[shape_name]
    shape = Shape(**{**asdict(shape), "steps": args.steps or shape.steps})
    configs = dict(CONFIGS)
    custom = dict(parse_config(text) for text in args.config)
    configs.update(custom)
    names = [n for n in (args.configs.split(",") if args.configs else shape.configs) if n] + list(custom)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise SystemExit(f"unknown config(s) {', '.join(unknown)}; --list shows them")
    device = "cpu" if args.smoke else "cuda"
    work = Path(args.work_dir).resolve() / shape_name
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else Path(os.environ.get("OUT", ".")) / f"dpo-throughput-{shape_name}.json"
    logs = out.parent / f"{out.stem}-logs"  # the workers' output, next to the report
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the smoke run is the CPU path, on any machine

    tokenizer_path = resolve_model(args.tokenizer)
    tokenizer = load_tokenizer(tokenizer_path)
    pairs = shape.steps * shape.batch * shape.accumulation  # one epoch
    rows, data_stats = synthetic_pairs(tokenizer, shape, pairs, args.seed)
    data_file = work / "pairs.json"
    data_file.write_text(json.dumps(rows))
    model_dir = work / "model"
    started = time.monotonic()
    if device == "cpu":
        build_model(shape, tokenizer_path, model_dir, device)
    else:  # in a process of its own: this one never touches the GPU
        call = [sys.executable, __file__, "--build", json.dumps([shape_name, tokenizer_path, str(model_dir)])]
        subprocess.run(call, check=True, env=env, timeout=args.budget_s)
    report = {
        "shape": shape_name,
        "settings": asdict(shape),
        "data": data_stats,
        "matmul_parameters": matmul_parameters(qwen_config(shape, tokenizer)),
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "results": [],
    }
    print(f"{shape_name}: N = {report['matmul_parameters'] / 1e9:.3f} B; data: {json.dumps(data_stats)}", flush=True)
    common = {
        "shape": shape_name,
        "model_dir": str(model_dir),
        "data_file": str(data_file),
        "device": device,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "matmul_parameters": report["matmul_parameters"],
        "settings": asdict(shape),
    }
    for name in names:
        path, overrides, config_env = configs[name]
        entry = {"config": name, "path": path, "overrides": overrides, "env": config_env}
        left = args.budget_s - (time.monotonic() - started)
        batch = overrides.get("per_device_train_batch_size", shape.batch)
        batch *= overrides.get("gradient_accumulation_steps", shape.accumulation)
        if batch != shape.batch * shape.accumulation:
            entry["skipped"] = f"{batch} pairs a step, not the shape's {shape.batch * shape.accumulation}: other data"
        elif path == "unsloth" and device == "cpu":
            entry["skipped"] = "Unsloth needs a GPU"
        elif left < 30:
            entry["skipped"] = f"time budget ({args.budget_s} s) spent"
        else:
            entry |= run_config(name, configs[name], common, work, logs, env, left)
        if "skipped" in entry:
            print(f"{name}: skipped ({entry['skipped']})", flush=True)
        report["results"].append(entry)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    print(markdown_table(report))
    print(f"results: {out}")
    return report


def run_config(
    name: str, config: tuple[str, dict, dict], common: dict, work: Path, logs: Path, env: dict, timeout: float
) -> dict:
    """Run one config (path, fields, environment) in a worker process, its output in logs/; its result, or what
    went wrong."""
    path, overrides, config_env = config
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    spec = Spec(
        name=name,
        path=path,
        overrides=overrides,
        output_dir=str(work / "runs" / slug),
        result_file=str(work / f"result-{slug}.json"),
        ref_cache_dir=str(work / "ref-cache" / slug),
        env=config_env,
        **common,
    )
    shutil.rmtree(spec.ref_cache_dir, ignore_errors=True)  # cold: the reference pass is part of what is measured
    Path(spec.result_file).unlink(missing_ok=True)
    log = logs / f"{slug}.txt"
    print(f"{name}: running ({path}, {json.dumps(overrides | config_env)}); log {log}", flush=True)
    begun = time.monotonic()
    with log.open("w") as sink:
        command = [sys.executable, __file__, "--worker", json.dumps(asdict(spec))]
        try:
            subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            print(f"{name}: stopped at the time budget", flush=True)
            stopped = f"stopped at the time budget after {time.monotonic() - begun:.0f} s"
            return {"skipped": stopped, "process_s": timeout}
    wall = time.monotonic() - begun
    result = json.loads(Path(spec.result_file).read_text()) if Path(spec.result_file).exists() else {}
    if "tokens_per_s" not in result:
        error = result.get("error") or log.read_text()[-3000:]
        print(f"{name}: failed after {wall:.0f} s:\n{error[-3000:]}", flush=True)
        return {"error": error[-1500:], "process_s": wall}
    print(f"{name}: {result['tokens_per_s']:,.0f} tok/s, process {wall:.0f} s", flush=True)
    return result | {"process_s": wall}


def markdown_table(report: dict) -> str:
    results = {r["config"]: r for r in report["results"] if "tokens_per_s" in r}
    unsloth = results.get("unsloth", {}).get("tokens_per_s")
    reference = results.get("trl", {}).get("logs")
    lines = [
        f"Shape {report['shape']} (N = {report['matmul_parameters'] / 1e9:.2f} B), {report['data']['pairs']} pairs, "
        f"mean sequence {report['data']['mean_sequence_tokens']:.0f} tokens (+ chat template)",
        "",
        "| config | path | changes | real tok/s | x unsloth | incl. ref pass | peak GiB | useful MFU | padding / computed "
        "| loss | reward acc | margin | max abs dloss vs trl |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for entry in report["results"]:
        changes = ", ".join(f"{k}={v}" for k, v in (entry["overrides"] | entry["env"]).items()) or "defaults"
        head = f"| {entry['config']} | {entry['path']} | {changes} |"
        if "tokens_per_s" not in entry:
            why = entry.get("skipped") or "failed: " + entry.get("error", "").strip().splitlines()[-1][:80]
            lines.append(f"{head} {why} |" + " |" * 9)
            continue
        logs = entry["logs"][-entry["measured_steps"] :]
        dloss = "-"
        if reference and entry["config"] != "trl":
            pairs = zip(reference[-len(logs) :], logs)
            dloss = f"{max(abs(a['loss'] - b['loss']) for a, b in pairs):.4f}"
        cells = [
            f"{entry['tokens_per_s']:,.0f}",
            f"{entry['tokens_per_s'] / unsloth:.2f}" if unsloth else "-",
            f"{entry['tokens_per_s_incl_ref_pass']:,.0f}" if entry.get("tokens_per_s_incl_ref_pass") else "-",
            f"{entry['peak_gib']:.1f}" if entry.get("peak_gib") else "-",
            f"{entry['useful_mfu']:.1%}",
            f"{entry['padding_share']:.0%} / {entry['computed_padding_share']:.0%}",
            mean_of(logs, "loss"),
            mean_of(logs, "rewards/accuracies"),
            mean_of(logs, "rewards/margins"),
            dloss,
        ]
        lines.append(f"{head} " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_of(logs: list[dict], key: str) -> str:
    values = [entry[key] for entry in logs if entry.get(key) is not None]
    return f"{sum(values) / len(values):.4f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=[s for s in SHAPES if s != "smoke"], default="0.5b")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny Qwen2-shaped model, 2 epochs of 2 steps")
    parser.add_argument("--configs", default="", help="comma-separated config names (default: the shape's list)")
    parser.add_argument("--config", action="append", default=[], help="extra NAME=PATH[:field=value;...] config")
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps an epoch (default: the shape's)")
    parser.add_argument("--learning-rate", type=float, default=5e-5, help="every path's (constant) learning rate")
    parser.add_argument("--seed", type=int, default=3407, help="data, LoRA initialisation and data order")
    parser.add_argument("--tokenizer", default="embedded", help="tokenizer (model name or path; default embedded)")
    parser.add_argument("--work-dir", default=os.environ.get("DPO_BENCH_DIR", "/tmp/prefloop-dpo-bench"))
    parser.add_argument("--out", default="", help="JSON report (default: $OUT/dpo-throughput-<shape>.json)")
    parser.add_argument("--budget-s", type=int, default=520, help="start no config after this many seconds")
    parser.add_argument("--list", action="store_true", help="print the configs and shapes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--build", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.list:
        for name, (path, overrides, config_env) in CONFIGS.items():
            print(f"{name:18s} {path:9s} {json.dumps(overrides | config_env)}")
        for name, shape in SHAPES.items():
            print(f"shape {name}: {json.dumps(asdict(shape))}")
    elif args.build:
        shape_name, tokenizer_path, model_dir = json.loads(args.build)
        build_model(SHAPES[shape_name], tokenizer_path, Path(model_dir), "cuda")
    elif args.worker:
        spec = Spec(**json.loads(args.worker))
        try:
            result = run_worker(spec)
        except Exception:  # reported by the parent with the log; the process still fails
            Path(spec.result_file).write_text(json.dumps({"error": traceback.format_exc()}))
            raise
        Path(spec.result_file).write_text(json.dumps(result))
    else:
        run_all(args)


if __name__ == "__main__":
    main()
