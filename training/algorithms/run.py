"""What SFT, the reward model and DPO share: the training config, the export and parent checkpoint a run starts from,
its output directory, the TRL arguments built from the config, and the run record around it.

A run's output directory (default `checkpoints/round-<n>/<kind>/`) holds
    checkpoint-<step>/   resumable trainer checkpoints (adapter, optimizer, scheduler, RNG states): `--resume`
    runs/                TensorBoard logs: `tensorboard --logdir checkpoints`
    adapter/             the final LoRA adapter and the tokenizer: base_model + adapter is the registered checkpoint
    config.yaml          the run's config (pass it back with --config to repeat the run)
    metrics.json         the trainer's final and held-out metrics

The database records a training run at the start ("running"), and at the end "finished" with its metrics and the new
checkpoint, or "failed" with the error (an interruption included). No heavy imports at module level: `prefloop --help`
stays fast and, on a GPU, Unsloth is imported before transformers and TRL.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from store import Store, StoreError
from training.config import opt, to_dict
from training.distributed import (
    barrier,
    is_main_process,
    split_batch,
    world_size,
)
from training.distributed import (
    describe as describe_batches,
)
from training.loop.rounds import POLICY_KINDS
from training.model_source import default_model, resolve_model
from training.models import ModelConfig, TrainableModel, uses_gradient_checkpointing

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")  # what DPO and the reward model read from an export


class TrainingError(RuntimeError):
    """A run cannot start or finish; the message says why and what to do."""


@dataclass
class TrainConfig(ModelConfig):
    """Fields every trainer shares; each algorithm's config extends it and may change a default."""

    export: str = opt("", "export to train on, by name; empty: the newest export")
    parent: int | None = opt(None, "checkpoint to start from; empty: the newest policy checkpoint")
    output_dir: str = opt("", "run directory; empty: checkpoints/round-<n>/<kind>")
    learning_rate: float = opt(2e-4, "peak learning rate of the LoRA parameters")
    num_train_epochs: float = opt(1.0, "passes over the training split")
    min_steps: int = opt(
        0, "at least this many optimizer steps however small the export: more passes over a small one (0: off)"
    )
    max_steps: int = opt(-1, "stop after this many optimizer steps; -1: run num_train_epochs")
    per_device_train_batch_size: int = opt(2, "examples (pairs) per forward pass")
    gradient_accumulation_steps: int = opt(4, "forward passes per optimizer step")
    per_device_eval_batch_size: int = opt(4, "examples per forward pass on the held-out split")
    warmup_steps: float = opt(0.1, "learning-rate warmup: optimizer steps, or below 1 a fraction of all steps")
    lr_scheduler_type: str = opt("linear", "learning-rate schedule after warmup (transformers' names)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    max_grad_norm: float = opt(1.0, "gradient norm clip")
    optim: str = opt("adamw_torch", "optimizer (transformers' names; adamw_8bit saves memory on a GPU)")
    seed: int = opt(3407, "seed of the adapter's initialisation, data order and dropout")
    logging_steps: int = opt(1, "optimizer steps between log lines; the NaN check runs at each")
    save_steps: int = opt(50, "optimizer steps between resumable checkpoints")
    save_total_limit: int = opt(2, "resumable checkpoints kept (the newest)")
    report_to: list[str] = opt(["tensorboard"], "trainer loggers (tensorboard, wandb, ...); none for no logger")
    evaluate: bool = opt(True, "score the export's held-out (test) split after training")
    lm_head: str = opt("auto", "DPO/SFT log-probs: fused (TRL's Triton kernel, GPU), plain (full logits), or auto")
    gpus: int = opt(1, "processes (GPUs) to train on; above 1 the command relaunches itself under accelerate launch")
    distributed: str = opt("ddp", "with several GPUs: ddp (a model copy per GPU) or fsdp (sharded, transformers only)")


# --- what a run starts from -----------------------------------------------------------------------------------------


def load_export(store: Store, name: str = "") -> tuple[dict, Any]:
    """(export row, DatasetDict with train and test splits) of the named export, or the newest one."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    exports = store.list_exports()
    if not exports:
        raise TrainingError("no export yet: run `prefloop export` (make export) first")
    if name:
        found = [e for e in exports if e["name"] == name]
        if not found:
            raise TrainingError(f"no export named {name!r}; known: {', '.join(e['name'] for e in exports)}")
        export = found[0]
    else:
        export = exports[-1]
    path = Path(export["path"])
    if (path / "dataset_dict.json").exists():
        data = load_from_disk(str(path))
    elif (path / "train.parquet").exists():
        files = {
            split: str(path / f"{split}.parquet") for split in ("train", "test") if (path / f"{split}.parquet").exists()
        }
        data = load_dataset("parquet", data_files=files)
    else:
        raise TrainingError(f"export {export['name']!r}: {path} holds no dataset (dataset_dict.json or train.parquet)")
    if not isinstance(data, DatasetDict) or "train" not in data or len(data["train"]) == 0:
        raise TrainingError(f"export {export['name']!r} ({path}) has no training rows")
    return export, data


def epochs_for(config: TrainConfig, rows: int) -> float:
    """num_train_epochs, raised where `rows` examples would give fewer than min_steps optimizer steps."""
    if config.min_steps <= 0 or rows == 0:
        return config.num_train_epochs
    steps_per_epoch = math.ceil(rows / (config.per_device_train_batch_size * config.gradient_accumulation_steps))
    return max(config.num_train_epochs, config.min_steps / steps_per_epoch)


def with_min_steps(config: TrainConfig, rows: int, what: str = "pairs") -> TrainConfig:
    """The config, its num_train_epochs raised (epochs_for) where `rows` examples would give fewer than min_steps
    optimizer steps; a raise is printed."""
    epochs = epochs_for(config, rows)
    if epochs == config.num_train_epochs:
        return config
    print(f"{rows} {what}: {epochs:.2f} epochs for at least {config.min_steps} optimizer steps")
    return replace(config, num_train_epochs=epochs)


def require_columns(dataset, columns: tuple[str, ...], source: str) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise TrainingError(f"{source}: missing column(s) {', '.join(missing)} (has {', '.join(dataset.column_names)})")


def choose_parent(store: Store, parent_id: int | None, kinds: tuple[str, ...] = POLICY_KINDS) -> dict | None:
    """The checkpoint a policy run continues: the given one, else the newest policy checkpoint (None: base model)."""
    if parent_id is None:
        return store.latest_checkpoint(kinds)
    parent = store.get_checkpoint(parent_id)
    if parent["kind"] not in kinds:
        raise TrainingError(
            f"checkpoint {parent_id} is a {parent['kind']} checkpoint; expected one of {', '.join(kinds)}"
        )
    return parent


def base_model_of(config: TrainConfig, parent: dict | None) -> str:
    """The base model's registered name: the parent's, or --model / $MODEL / embedded without a parent."""
    if parent is None:
        return config.model or default_model()
    if config.model and resolve_model(config.model) != resolve_model(parent["base_model"]):
        raise TrainingError(
            f"--model {config.model} differs from the base model of parent checkpoint {parent['id']} "
            f"({parent['base_model']}); leave --model out, or pick another --parent"
        )
    return parent["base_model"]


def round_of(store: Store, export: dict | None) -> int | None:
    """The round whose labels a run learns from: the export's, or the newest round for an all-rounds export."""
    if export is not None and export["round_id"] is not None:
        return export["round_id"]
    latest = store.get_round()
    return latest["id"] if latest else None


# --- the run directory ----------------------------------------------------------------------------------------------


def last_trainer_checkpoint(output_dir: Path) -> str | None:
    """The trainer's newest checkpoint-<step> folder (transformers' get_last_checkpoint, without importing it here)."""
    steps = [
        (int(path.name.removeprefix("checkpoint-")), path)
        for path in output_dir.glob("checkpoint-*")
        if path.is_dir() and path.name.removeprefix("checkpoint-").isdigit()
    ]
    return str(max(steps)[1]) if steps else None


def prepare_output_dir(store: Store, output_dir: Path, resume: bool, overwrite: bool) -> str | None:
    """Check the run directory is fit for a new run (or a resumed one); returns the trainer checkpoint to resume."""
    registered = [c["id"] for c in store.list_checkpoints() if c["adapter_path"] == str(output_dir / "adapter")]
    if registered:
        raise TrainingError(
            f"{output_dir} holds checkpoint {registered[0]}, a finished run; pass --output-dir to train another"
        )
    last = last_trainer_checkpoint(output_dir)
    if resume:
        if last is None:
            raise TrainingError(f"nothing to resume: {output_dir} has no checkpoint-<step> folder")
        return last
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            what = f"an interrupted run ({Path(last).name})" if last else "files"
            raise TrainingError(f"{output_dir} holds {what}; pass --resume to continue it or --overwrite to start over")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return None


def trl_config(trl_class, config: ModelConfig, output_dir: Path, loaded: TrainableModel, **fixed):
    """TRL's config (DPOConfig, RewardConfig, SFTConfig, RLOOConfig) for `config`: every field the two classes share is passed by
    name, then what the run decides from the machine (batch split across processes, precision, activation
    recomputation, loggers), then `fixed` (what the algorithm maps by hand, e.g. an empty list meaning TRL's None)."""
    import dataclasses

    import torch

    shared = {f.name for f in dataclasses.fields(trl_class)} & {f.name for f in dataclasses.fields(config)}
    on_gpu = loaded.device == "cuda"
    processes = world_size()
    decided = {"output_dir": str(output_dir)}
    if hasattr(config, "gradient_accumulation_steps"):  # the batch of a step is split across the processes
        decided["per_device_train_batch_size"], decided["gradient_accumulation_steps"] = split_batch(
            config.per_device_train_batch_size, config.gradient_accumulation_steps, processes
        )
    decided |= {
        # Mixed precision only on a GPU; TRL's own default (bf16=True) would run CPU matmuls in slow bfloat16.
        "bf16": on_gpu and loaded.dtype == torch.bfloat16,
        "fp16": on_gpu and loaded.dtype == torch.float16,
        "use_cpu": not on_gpu,
        # Unsloth checkpoints activations itself (use_gradient_checkpointing="unsloth" when it loaded the model);
        # auto is on a GPU only: CPU training is short of compute, not memory (uses_gradient_checkpointing says why).
        "gradient_checkpointing": loaded.backend == "transformers"
        and uses_gradient_checkpointing(config, loaded.device),
        # DDP: reentrant checkpointing fires the gradient hooks twice, and every trainable parameter (LoRA, score
        # head) gets a gradient each step, so the unused-parameter search is only overhead.
        "gradient_checkpointing_kwargs": {"use_reentrant": False},
        "ddp_find_unused_parameters": False if processes > 1 else None,
        "logging_nan_inf_filter": False,  # StopOnNonFiniteLoss must see a NaN loss, not a smoothed-over one
        "save_strategy": "steps",
        "report_to": [] if config.report_to == ["none"] else list(config.report_to),
        "disable_tqdm": False,
        "eval_strategy": "no",
        "dataloader_num_workers": 0,
    }
    return trl_class(**({name: getattr(config, name) for name in shared} | decided | fixed))


@contextmanager
def training_attention() -> Iterator[None]:
    """Attention for passes that backpropagate: PyTorch's SDPA without its cuDNN backend (flash, memory-efficient and
    math attention are chosen as usual; on a CPU nothing changes).

    On H100/H200 with torch >= 2.11, cuDNN's attention backward returns NaN query gradients when an explicit mask is
    passed, the padded length is 64 mod 128 and some query row's logsumexp is below -88.7 (pytorch#196678; the
    forward is fine). A left-padded batch always has such rows: a pad position attends to nothing. RLOO's 4th step
    (seed 0, default config) is such a batch: prompts padded to 64 tokens plus 128-token completions, 192 in all; it
    stopped with a NaN gradient norm after a finite loss, from the base model and from an RLOO checkpoint alike.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
        yield


# --- the run record -------------------------------------------------------------------------------------------------


class Run:
    """One training run: its directory and database record; `with Run(...) as run:` records a failure.

    with Run(store, "dpo", config, round_id, export, parent, base_model, resume, overwrite) as run:
        ...train...
        checkpoint_id = run.finish(trainer, loaded, metrics)
    """

    def __init__(
        self,
        store: Store,
        kind: str,
        config: TrainConfig,
        round_id: int | None,
        export: dict | None,
        parent: dict | None,
        base_model: str,
        resume: bool = False,
        overwrite: bool = False,
    ):
        self.store, self.kind, self.config = store, kind, config
        self.round_id, self.export, self.parent, self.base_model = round_id, export, parent, base_model
        round_dir = f"round-{round_id}" if round_id is not None else "no-round"
        self.output_dir = Path(config.output_dir or Path("checkpoints") / round_dir / kind).resolve()
        # Several processes: rank 0 checks and prepares the directory while the others wait, then they look.
        self.is_main = is_main_process()
        if self.is_main:
            self.resume_from = prepare_output_dir(store, self.output_dir, resume, overwrite)
        barrier()
        if not self.is_main:
            self.resume_from = last_trainer_checkpoint(self.output_dir) if resume else None
        self.metrics: dict = {}
        self.run_id: int | None = None
        self.checkpoint_id: int | None = None

    def __enter__(self) -> Run:
        if not self.is_main:
            return self
        self.run_id = self.store.start_training_run(
            self.kind,
            str(self.output_dir),
            self.record(),
            round_id=self.round_id,
            export_id=self.export["id"] if self.export else None,
            parent_checkpoint_id=self.parent["id"] if self.parent else None,
        )
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.is_main and exc is not None and self.checkpoint_id is None:
            error = f"{exc_type.__name__}: {exc}" if str(exc) else exc_type.__name__
            self.store.finish_training_run(self.run_id, self.metrics, error=error)

    def record(self) -> dict:
        """The config as stored with the run and the checkpoint, plus where it came from."""
        record = to_dict(self.config)
        record["base_model"] = self.base_model
        if self.resume_from:
            record["resumed_from"] = self.resume_from
        return record

    def describe(self, loaded: TrainableModel) -> str:
        start = f"checkpoint {self.parent['id']} ({self.parent['kind']})" if self.parent else "the base model"
        data = f"export {self.export['name']!r}" if self.export else "an SFT file"
        return (
            f"{self.kind}: {self.base_model} from {start}, on {data}; {loaded.describe()}; "
            f"output {self.output_dir}" + (f"; resuming {Path(self.resume_from).name}" if self.resume_from else "")
        )

    def train(self, trainer) -> dict:
        """Run the trainer (from the checkpoint to resume, if any) and return its metrics (`training_metrics`)."""
        if self.is_main:
            print(f"batches: {describe_batches(trainer)}")
        with training_attention():
            return training_metrics(trainer, trainer.train(resume_from_checkpoint=self.resume_from))

    def finish(self, trainer, loaded: TrainableModel, metrics: dict) -> int | None:
        """Save adapter, tokenizer, config and metrics; register the checkpoint; mark the run finished.

        Every rank calls it (FSDP gathers the sharded weights from all of them); rank 0 writes and returns the new
        checkpoint's id, the others None once it has.
        """
        adapter_dir = self.output_dir / "adapter"
        # FSDP holds each rank's shard: gather the full state dict (a collective, so on every rank).
        sharded = getattr(trainer, "is_fsdp_enabled", False)
        state_dict = trainer.accelerator.get_state_dict(trainer.model) if sharded else None
        if self.is_main:
            self.checkpoint_id = self._save_and_register(trainer, loaded, metrics, adapter_dir, state_dict)
        barrier()
        return self.checkpoint_id

    def _save_and_register(self, trainer, loaded: TrainableModel, metrics: dict, adapter_dir: Path, state_dict) -> int:
        # Only the trained adapter: DPO also holds a frozen copy of the parent's ("ref").
        trainer.model.save_pretrained(str(adapter_dir), selected_adapters=["default"], state_dict=state_dict)
        loaded.tokenizer.save_pretrained(str(adapter_dir))
        (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        self.metrics = metrics
        (self.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        try:
            checkpoint_id = self.store.register_checkpoint(
                self.kind,
                self.base_model,
                adapter_path=str(adapter_dir),
                round_id=self.round_id,
                parent_id=self.parent["id"] if self.parent else None,
                export_id=self.export["id"] if self.export else None,
                config=self.record(),
            )
        except StoreError as exc:
            raise TrainingError(f"the adapter is saved in {adapter_dir} but could not be registered: {exc}") from exc
        self.store.finish_training_run(self.run_id, metrics, checkpoint_id=checkpoint_id)
        print(f"{self.kind} checkpoint {checkpoint_id}: {adapter_dir}")
        return checkpoint_id


def training_metrics(trainer, train_output) -> dict:
    """The trainer's summary, the first and last logged training losses (the log survives a resume) and, on a GPU,
    the peak memory allocated."""
    import torch

    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]
    metrics = {key: value for key, value in train_output.metrics.items()}
    metrics["global_step"] = trainer.state.global_step
    if torch.cuda.is_available():  # what a bigger model or batch would have to fit in, per GPU
        metrics["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if logs:
        metrics["first_loss"], metrics["last_loss"] = logs[0]["loss"], logs[-1]["loss"]
        metrics["last_log"] = logs[-1]
    return metrics


@dataclass
class TrainResult:
    checkpoint_id: int
    metrics: dict
    trainer: Any  # the TRL trainer, model included (tests inspect it)
