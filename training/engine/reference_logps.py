"""DPO reference log-probs computed once per export and reference model, and cached with the export.

DPO compares the policy's log-probs of each response with the reference model's. TRL's DPOTrainer computes the
reference's inside every training step: one forward pass without gradients on the same batch, about a quarter of a
LoRA DPO step (reference forward, policy forward, policy backward at twice a forward; recomputation aside). The
reference is fixed for the whole run (the parent checkpoint), so its log-probs depend only on the export: with
`cache_ref_logps` (training/algorithms/dpo.py) they are computed once, before training, in length-sorted batches, stored under
the export's folder, and read back by every later run on the same export and reference.

TRL has `precompute_ref_log_probs` for this, but keys its cache by hashing the whole model (sha256 of every weight
copied to the CPU in float32: 30 GB and about a minute for a 7B model; more memory than the machine has for 32B).
Here the key names what the log-probs depend on: the export, the reference (base model and adapter), how sequences
are cut, the numerics (backend, dtype, LM head), and LD-DPO's tail weight when set. Each row's token counts are
stored with the values, so a cache that does not match the tokenized data is recomputed, never used.

When it pays: a one-epoch run does the same reference forwards either way (in one pass before training, with less
padding); more epochs, a resumed run, another run on the same export and parent (another beta, learning rate or
loss) and the held-out evaluation reuse them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from training.distributed import is_main_process
from training.engine.batching import pair_lengths, token_counts


class ReferenceCacheError(RuntimeError):
    """Reference log-probs cannot be precomputed for this run; the message says why."""


def attach_reference_logps(trainer, cache_dir: Path | None, key: dict, batch_size: int) -> dict[str, str]:
    """Give the trainer's train (and eval) dataset `ref_chosen_logps` / `ref_rejected_logps` columns, from the cache
    under `cache_dir` or computed with the trainer's reference; from then on its loss reads them instead of running
    the reference. Returns "cached" or "computed" per split. `cache_dir` None computes without caching."""
    if getattr(trainer, "is_fsdp_enabled", False):
        raise ReferenceCacheError(
            "cache_ref_logps runs the reference before training, when FSDP has not sharded the model yet; "
            "turn it off with --distributed fsdp"
        )
    status = {}
    trainer.train_dataset, status["train"] = with_reference_logps(
        trainer, trainer.train_dataset, cache_file(cache_dir, "train", key), batch_size
    )
    if trainer.eval_dataset is not None:
        trainer.eval_dataset, status["eval"] = with_reference_logps(
            trainer, trainer.eval_dataset, cache_file(cache_dir, "eval", key), batch_size
        )
    trainer.precompute_ref_logps = True  # TRL's DPO loss then takes the reference log-probs from the batch
    return status


def cache_file(cache_dir: Path | None, split: str, key: dict) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{split}-{digest}.pt"


def with_reference_logps(trainer, dataset, path: Path | None, batch_size: int):
    """(the dataset with the two reference columns, "cached" or "computed")."""
    counts = torch.from_numpy(token_counts(dataset))
    cached = load_cache(path, counts)
    if cached is not None:
        chosen, rejected = cached
        status = "cached"
    else:
        chosen, rejected = reference_logps(trainer, dataset, batch_size)
        if path is not None and is_main_process():
            save_cache(path, counts, chosen, rejected)
        status = "computed"
    dataset = dataset.add_column("ref_chosen_logps", chosen.tolist())
    return dataset.add_column("ref_rejected_logps", rejected.tolist()), status


def reference_logps(trainer, dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs of each pair's chosen and rejected completion, summed (with LD-DPO's tail weight when the
    run sets one) as TRL's loss computes them
    (trainer.compute_ref_log_probs: the "ref" adapter, or none, without gradients, under the trainer's autocast)."""
    from tqdm.auto import tqdm

    lengths = pair_lengths(dataset, trainer.args.max_length)
    # Longest first: batches of equal lengths (little padding), and one too large for memory fails at once.
    order = np.argsort(-np.array(lengths), kind="stable")
    chosen, rejected = torch.zeros(len(order)), torch.zeros(len(order))
    for start in tqdm(range(0, len(order), batch_size), desc="reference log-probs", unit="batch"):
        rows = order[start : start + batch_size]
        batch = trainer._prepare_inputs(trainer.data_collator([dataset[int(i)] for i in rows]))
        batch_chosen, batch_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
        index = torch.from_numpy(rows)
        chosen[index], rejected[index] = batch_chosen.float().cpu(), batch_rejected.float().cpu()
    return chosen, rejected


def load_cache(path: Path | None, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (chosen, rejected) log-probs, or None when there are none for exactly these token counts."""
    if path is None or not path.exists():
        return None
    saved = torch.load(path, weights_only=True)
    if not torch.equal(saved["token_counts"], counts):
        return None
    return saved["chosen"], saved["rejected"]


def save_cache(path: Path, counts: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    torch.save({"token_counts": counts, "chosen": chosen, "rejected": rejected}, partial)
    partial.replace(path)  # whole or not at all: a reader never sees half a file
