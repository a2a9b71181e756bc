"""The one place models are loaded: for training (Unsloth on a GPU, transformers + PEFT elsewhere, one config), for
generation and for scoring. Which model (the embedded default or `MODEL=<hf id or path>`) is `training/model_source.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import opt, parse_bool
from training.distributed import local_rank, world_size
from training.model_source import ModelError, load_tokenizer, resolve_model


def accelerator() -> str:
    """'cuda' for an NVIDIA or AMD (ROCm builds of torch report as cuda) GPU, else 'cpu'."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def unsloth_available() -> bool:
    """Unsloth is used when it is installed and a GPU is present (its CPU fallback covers SFT only)."""
    return accelerator() == "cuda" and importlib.util.find_spec("unsloth") is not None


# --- trainable models: one config, two backends -------------------------------------------------------------------

LORA_ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
BACKENDS = ("auto", "unsloth", "transformers")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass
class ModelConfig:
    """How the model is loaded and which LoRA adapter trains on it; every training config extends this one."""

    model: str = opt("", "base model (HF id or path) without a parent checkpoint; empty: $MODEL or embedded")
    backend: str = opt("auto", "unsloth (GPU only), transformers (+ PEFT), or auto: Unsloth where it runs")
    dtype: str = opt("auto", "auto (GPU: bfloat16, else float16; CPU: float32), bfloat16, float16 or float32")
    load_in_4bit: bool = opt(False, "load the base weights in 4 bits (QLoRA, GPU only); the reference uses 16")
    max_length: int = opt(2048, "most tokens of prompt + response; longer ones are truncated (reward model: dropped)")
    lora_r: int = opt(16, "LoRA rank")
    lora_alpha: int = opt(16, "LoRA scale numerator: the update is scaled by lora_alpha / lora_r")
    lora_dropout: float = opt(0.0, "dropout on the LoRA input (0 keeps steps deterministic, Unsloth fast)")
    lora_targets: list[str] = opt(LORA_ATTENTION, "adapted modules, comma-separated, or all-linear (not lm_head)")
    gradient_checkpointing: str = opt(
        "auto",
        "recompute activations in backward (much less memory, a third more compute): true, false, or auto: on a "
        "GPU, off on CPU, where RAM holds the activations (see uses_gradient_checkpointing)",
    )


@dataclass
class TrainableModel:
    """A PEFT-wrapped model ready for a TRL trainer, with the tokenizer and how it was loaded."""

    model: Any
    tokenizer: Any
    backend: str  # "unsloth" or "transformers"
    dtype: Any  # torch dtype of the base weights and of mixed-precision compute
    device: str  # "cuda" or "cpu"
    threads: int = 0  # on CPU: torch's intra-op threads (cpu_threads)

    def describe(self) -> str:
        loader = "Unsloth FastLanguageModel" if self.backend == "unsloth" else "transformers + PEFT"
        threads = f", {self.threads} thread{'s' if self.threads > 1 else ''}" if self.threads else ""
        return f"{loader} on {self.device}, {str(self.dtype).removeprefix('torch.')}{threads}"


def cpu_threads() -> int:
    """torch's intra-op threads for CPU training: $OMP_NUM_THREADS when set, else the cores not busy right now (the
    cores this process may use minus the other processes running on them; at least 1).

    torch starts one thread per core, and its OpenMP threads meet at a barrier after every operation: on a core that
    another process also wants, one thread stalls all of them. On the 2-core project machine at load ~10, a forward
    pass of the embedded model took 15.8 s on one thread and 49.4 s on two; idle, 10.6 s and 5.8 s
    (docs/benchmarks.md, "DPO after a 16-pair round on CPU"). "Busy right now" is the kernel's count of running
    processes, not the load average: that is a one-minute mean, so a run started just after another finished would
    count the finished one and leave a core idle.
    """
    import torch

    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, min(cores, cores - other_running_processes()))
    torch.set_num_threads(threads)
    return threads


def other_running_processes(samples: int = 5, interval: float = 0.02) -> int:
    """How many other processes are running now: the median over a few samples of /proc/stat's procs_running, less
    this one (the load average's one-minute mean where /proc is missing)."""
    import statistics
    import time

    try:
        counts = []
        for i in range(samples):
            with open("/proc/stat") as stat:
                counts.append(next(int(line.split()[1]) for line in stat if line.startswith("procs_running")))
            if i + 1 < samples:
                time.sleep(interval)
        return max(0, round(statistics.median(counts)) - 1)
    except (OSError, StopIteration, ValueError):
        return round(os.getloadavg()[0])


def uses_gradient_checkpointing(config: ModelConfig, device: str) -> bool:
    """Whether training recomputes activations in backward, from the `gradient_checkpointing` field (a bool, or
    true / false / auto as written in YAML or on the command line).

    auto is on for a GPU, whose memory is what limits batch and length, and off on CPU, where compute is what runs
    short and RAM holds the activations of the small models that train there at all: a DPO micro-batch of the
    embedded SmolLM2-135M (2 pairs of ~300 tokens) keeps ~2.5 GB without recomputation (docs/benchmarks.md). Set it
    true on CPU for long pairs (thousands of tokens) or larger models.
    """
    value = config.gradient_checkpointing
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() == "auto":
        return device == "cuda"
    try:
        return parse_bool(value)
    except argparse.ArgumentTypeError:
        raise ModelError(f"gradient_checkpointing must be true, false or auto, not {value!r}") from None


def choose_backend(requested: str) -> str:
    """'unsloth' or 'transformers' for the `backend` field; Unsloth only where it can run (a GPU and the package)."""
    if requested not in BACKENDS:
        raise ModelError(f"backend must be one of {', '.join(BACKENDS)}, not {requested!r}")
    if requested == "unsloth" and not unsloth_available():
        raise ModelError("backend unsloth needs a CUDA or ROCm GPU and the unsloth package (`make setup` there)")
    if requested == "auto":
        return "unsloth" if unsloth_available() else "transformers"
    return requested


def torch_dtype(name: str):
    """The torch dtype for the `dtype` field: auto is bfloat16 where the GPU supports it, float16 on older GPUs and
    float32 on CPU (CPU bfloat16 matmuls are slow and lose precision for no memory we need)."""
    import torch

    if name not in DTYPES:
        raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    if name == "auto":
        if accelerator() == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, name)


def lora_target_modules(config: ModelConfig) -> list[str] | str:
    """PEFT's target_modules: the listed module names, or the string "all-linear"."""
    return "all-linear" if config.lora_targets == ["all-linear"] else list(config.lora_targets)


def checkpoint_tokenizer(base_model: str, adapter_path: str | None = None):
    """The tokenizer saved next to an adapter (training saves it there), else the base model's."""
    has_own = adapter_path and (Path(adapter_path) / "tokenizer_config.json").exists()
    return load_tokenizer(adapter_path if has_own else base_model)


def load_trainable(
    config: ModelConfig, base_model: str, adapter_path: str | None = None, task: str = "causal-lm", seed: int = 0
) -> TrainableModel:
    """The base model with a trainable LoRA adapter: the one at `adapter_path` (training continues it), or a new one.

    task is "causal-lm" (SFT, DPO) or "reward" (a sequence classifier with one output, whose score head PEFT trains
    in full as a modules_to_save copy). `seed` fixes the new adapter's random initialisation.
    """
    if task not in ("causal-lm", "reward"):
        raise ModelError(f"task must be causal-lm or reward, not {task!r}")
    backend = choose_backend(config.backend)
    device = accelerator()
    dtype = torch_dtype(config.dtype)
    if config.load_in_4bit and device != "cuda":
        raise ModelError("load_in_4bit needs a GPU (bitsandbytes); on CPU train in float32")
    tokenizer = checkpoint_tokenizer(base_model, adapter_path)
    if backend == "unsloth":
        model = _load_unsloth(config, base_model, adapter_path, task, seed, dtype)
    else:
        model = _load_transformers(config, base_model, adapter_path, task, seed, dtype)
    if task == "reward":
        # A sequence classifier scores the last token that is not padding, which it finds through pad_token_id.
        model.config.pad_token_id = tokenizer.pad_token_id
        if not any(p.requires_grad for n, p in model.named_parameters() if "score" in n or "classifier" in n):
            raise ModelError(f"{base_model}: the reward model's score head is not trainable")
    return TrainableModel(model, tokenizer, backend, dtype, device, cpu_threads() if device == "cpu" else 0)


def _load_unsloth(config: ModelConfig, base_model: str, adapter_path: str | None, task: str, seed: int, dtype):
    from transformers import set_seed
    from unsloth import FastLanguageModel  # first: it patches transformers, PEFT and TRL on import

    set_seed(seed)  # a reward model's score head is initialised randomly while loading
    gradient_checkpointing = "unsloth" if uses_gradient_checkpointing(config, "cuda") else False  # GPU only
    kwargs = {
        "max_seq_length": config.max_length,
        "dtype": dtype,
        "load_in_4bit": config.load_in_4bit,
        "use_gradient_checkpointing": gradient_checkpointing,
        "random_state": seed,
    }
    if task == "reward":
        kwargs["num_labels"] = 1
    if world_size() > 1:
        kwargs["device_map"] = {"": f"cuda:{local_rank()}"}  # DDP: each process holds its own copy on its own GPU
    model, _ = FastLanguageModel.from_pretrained(model_name=base_model, use_exact_model_name=True, **kwargs)
    if adapter_path:
        # What Unsloth does for an adapter directory, but with the registered base model rather than the path the
        # adapter's config recorded on the machine that trained it: load the adapter trainable, then patch it.
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
        return FastLanguageModel.patch_peft_model(model, use_gradient_checkpointing=gradient_checkpointing)
    return FastLanguageModel.get_peft_model(
        model,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_modules(config),
        bias="none",
        use_gradient_checkpointing=gradient_checkpointing,
        random_state=seed,
    )


def _load_transformers(config: ModelConfig, base_model: str, adapter_path: str | None, task: str, seed: int, dtype):
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, set_seed

    # Seeded before loading: a reward model's new score head is initialised randomly by from_pretrained itself.
    set_seed(seed)
    kwargs = {"dtype": dtype}
    if config.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    if task == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    if config.load_in_4bit:
        checkpointing = uses_gradient_checkpointing(config, "cuda")  # 4-bit loading needs a GPU
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
    if adapter_path:
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=True)
    set_seed(seed)  # the adapter's initialisation does not depend on how many random numbers loading drew
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=lora_target_modules(config),
        bias="none",
        task_type="SEQ_CLS" if task == "reward" else "CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def load_adapter_model(base_model: str, adapter_path: str, task: str = "causal-lm", dtype=None):
    """A registered adapter on its base model, frozen, for scoring or merging (transformers + PEFT, on CPU)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dtype = dtype or torch.float32
    if task == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, dtype=dtype)
        model.config.pad_token_id = checkpoint_tokenizer(base_model, adapter_path).pad_token_id
    else:
        model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    return PeftModel.from_pretrained(model, adapter_path).eval()


def load_for_scoring(base_model: str, adapter_path: str | None = None, dtype: str = "float32"):
    """(model, tokenizer) for log-probs of a registered checkpoint: frozen, on the accelerator, the adapter unmerged.

    float32 by default whatever the model trains and samples in: sums of bf16 log-probs over a hundred tokens are off
    by about half a nat, and merging an adapter into bf16 weights would round away much of a small update."""
    import torch
    from transformers import AutoModelForCausalLM

    base = resolve_model(base_model)
    tokenizer = checkpoint_tokenizer(base, adapter_path)
    if adapter_path:
        model = load_adapter_model(base, adapter_path, dtype=getattr(torch, dtype))
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype)).eval()
    return model.to(accelerator()), tokenizer


def load_for_generation(checkpoint: dict, base_model: str | None = None, unsloth: bool = True):
    """(model, tokenizer) that sample from a registered checkpoint: its base model plus its LoRA adapter, if any.

    Unsloth's fast inference on a GPU when it is installed (and `unsloth` is true), transformers otherwise; on that
    path the adapter is merged into the weights, so sampling runs at the base model's speed. The tokenizer pads on the
    left, as batched generation needs. `base_model` replaces the recorded one (a checkpoint registered on another
    machine). `unsloth=False` is for training/engine/decode.py's static decoder, which runs transformers' own model classes.
    """
    import torch

    base = resolve_model(base_model or checkpoint["base_model"])
    adapter = checkpoint.get("adapter_path")
    if adapter and not Path(adapter).is_dir():
        raise ModelError(f"checkpoint {checkpoint['id']}: adapter directory {adapter} does not exist")
    # Training saves the tokenizer next to the adapter; it is the base model's unless training added tokens.
    has_own_tokenizer = adapter and (Path(adapter) / "tokenizer_config.json").exists()
    tokenizer = load_tokenizer(adapter if has_own_tokenizer else base)
    tokenizer.padding_side = "left"
    if unsloth and unsloth_available():
        from unsloth import FastLanguageModel  # before peft and transformers: it patches them

        model, _ = FastLanguageModel.from_pretrained(base, load_in_4bit=False)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter)
        FastLanguageModel.for_inference(model)
    else:
        from transformers import AutoModelForCausalLM

        device = accelerator()
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype).to(device)
        if adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    return model, tokenizer
