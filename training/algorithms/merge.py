"""Merge a registered LoRA adapter into its base model: a plain 16-bit HF checkpoint for serving elsewhere.

    prefloop merge --checkpoint 7                         # -> <run dir>/merged, registered as kind 'merged'
    prefloop merge --checkpoint 7 --dtype float16 --output-dir /srv/models/round-3
    make merge CHECKPOINT=7

The weights are merged in float32 on CPU (in the target dtype on a GPU, where float32 may not fit) and saved in
`dtype`, with the tokenizer the adapter was trained with. A policy is registered as kind 'merged'; a reward model merges
into a sequence classifier with its score head and is registered as kind 'reward' without an adapter. The merged
model is written to a temporary folder and renamed: it appears whole or not at all.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from store import Store
from training.algorithms.run import TrainingError
from training.config import opt, to_dict
from training.model_source import resolve_model
from training.models import accelerator, checkpoint_tokenizer, load_adapter_model

MERGE_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class MergeConfig:
    checkpoint: int | None = opt(None, "id of the checkpoint whose adapter is merged (required)")
    dtype: str = opt("bfloat16", "dtype of the saved weights: bfloat16, float16 or float32")
    output_dir: str = opt("", "where the merged model goes; empty: merged/ next to the adapter's folder")


def merge(store: Store, config: MergeConfig) -> int:
    """Merge, save and register; returns the new checkpoint's id."""
    import torch

    if config.checkpoint is None:
        raise TrainingError("--checkpoint is required (see `prefloop status` or the checkpoints table)")
    if config.dtype not in MERGE_DTYPES:
        raise TrainingError(f"dtype must be one of {', '.join(MERGE_DTYPES)}, not {config.dtype!r}")
    checkpoint = store.get_checkpoint(config.checkpoint)
    adapter_path = checkpoint["adapter_path"]
    if not adapter_path:
        raise TrainingError(f"checkpoint {checkpoint['id']} ({checkpoint['kind']}) has no adapter: it is a full model")
    output_dir = Path(config.output_dir or Path(adapter_path).parent / "merged").resolve()
    if output_dir.exists():
        raise TrainingError(f"{output_dir} exists; pass --output-dir or remove it")
    dtype = getattr(torch, config.dtype)
    base_model = resolve_model(checkpoint["base_model"])
    task = "reward" if checkpoint["kind"] == "reward" else "causal-lm"
    work_dtype = torch.float32 if accelerator() == "cpu" else dtype
    print(f"merging checkpoint {checkpoint['id']} ({checkpoint['kind']}): {base_model} + {adapter_path}")
    merged = load_adapter_model(base_model, adapter_path, task, work_dtype).merge_and_unload().to(dtype)
    staging = output_dir.with_name(output_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging))
    checkpoint_tokenizer(base_model, adapter_path).save_pretrained(str(staging))
    staging.rename(output_dir)
    # A merged reward model stays a reward model (a full one, no adapter): kind 'merged' means a policy that can
    # generate, and `round new` picks the newest policy checkpoint.
    merged_id = store.register_checkpoint(
        "reward" if task == "reward" else "merged",
        str(output_dir),
        round_id=checkpoint["round_id"],
        parent_id=checkpoint["id"],
        export_id=checkpoint["export_id"],
        config={**to_dict(config), "source_kind": checkpoint["kind"], "task": task},
    )
    print(f"merged checkpoint {merged_id}: {output_dir}")
    return merged_id
