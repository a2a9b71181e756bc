"""Trainer callbacks every training run installs (imported after the backend is chosen: Unsloth must come first)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from transformers import TrainerCallback


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient norm and was stopped."""


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop at the first NaN or infinite loss or gradient norm, before the broken weights are saved.

    The trainer logs every `logging_steps` steps and saves after logging, so the last checkpoint on disk is one taken
    before the failure. Needs `logging_nan_inf_filter=False`, or the trainer hides non-finite losses from the log.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                raise NonFiniteLossError(
                    f"step {state.global_step}: {key} is {value}; training stopped (checkpoints in {args.output_dir} "
                    f"are from before it). Lower learning_rate (now {args.learning_rate}), look for empty or "
                    "truncated responses in the export, or train in float32"
                )


class SaveOnlyTrainedAdapter(TrainerCallback):
    """Keep only the trained ("default") adapter in each resumable checkpoint.

    DPO continuing an adapter holds a frozen copy of it, "ref", which PEFT saves in a subfolder of each checkpoint.
    Resuming (transformers 5.17, `Trainer._load_from_checkpoint`) then loads only the subfolders and silently skips
    the trained adapter at the top. The frozen copy is rebuilt from the parent checkpoint on resume anyway.
    """

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        for sub in checkpoint.iterdir() if checkpoint.is_dir() else ():
            if (sub / "adapter_config.json").exists():
                shutil.rmtree(sub)


class WriteHistory(TrainerCallback):
    """Rewrite `path` at every log that holds the key `when` with the list of such logs so far, each as
    {"step": global step, field: the log's value of key for each field: key in `fields`}. Installed before
    StopOnNonFiniteLoss, it keeps the step that stopped a run; a resumed run continues the file's history."""

    def __init__(self, path: Path, fields: dict[str, str], when: str):
        self.path, self.fields, self.when = Path(path), fields, when
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        if self.path.exists():  # resuming: the steps up to the checkpoint the run continues from
            self.history = [e for e in json.loads(self.path.read_text()) if e["step"] <= state.global_step]

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and self.when in logs:
            entry = {field: logs[key] for field, key in self.fields.items() if key in logs}
            self.history.append({"step": state.global_step} | entry)
            self.path.write_text(json.dumps(self.history, indent=2))
