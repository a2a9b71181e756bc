"""Less padding in DPO batches: length-grouped sampling and length-bucketed forward passes.

TRL's preference collator pads each micro-batch to its longest sequence, the chosen and the rejected rows of every
pair together. Preference data is long-tailed (prompts and responses roughly lognormal, a few responses thousands of
tokens long), so a micro-batch drawn at random is mostly padding: the model computes on it and throws it away. Two
levers, each a DPOTrainConfig field that training/algorithms/dpo.py installs on the trainer:

- `group_by_length` (`use_length_grouped_sampler`): each epoch is a seeded shuffle cut into groups of GROUP_SIZE
  optimizer steps; a group is sorted by pair length and cut into micro-batches, and the micro-batches are shuffled
  again. Every pair is still seen once per epoch and an optimizer step (with gradient accumulation) still mixes
  micro-batches from anywhere in its group, but the pairs that share a micro-batch have similar lengths. The order
  depends only on the seed, the epoch and the config's batch shape, so an interrupted run resumes on the same batches
  and N GPUs train on the same steps as one. The first micro-batch is the one holding the longest pair: a batch too
  large for memory fails at the first step, not hours in.
- `length_buckets` (`use_length_buckets`): the rows of a micro-batch (2 per pair) are split into at most N buckets
  of similar length (`plan_buckets`: the split that minimises padded tokens), each run as its own forward pass, and
  the per-token outputs are put back in the padded layout TRL's loss expects. Grouping cannot remove the padding
  inside a pair (a chosen response of 900 tokens next to a rejected one of 200); bucketing can. Same math: only the
  rows each matrix product sees change.

TRL 1.15's own `padding_free` is disabled ("temporarily unavailable after a refactor"), and packing a micro-batch
into one row needs an attention that keeps the packed sequences apart: transformers' sdpa path then builds a dense
(tokens x tokens) mask, quadratic in the whole micro-batch, and its flex_attention path compiles for every new
packed length. Bucketing needs neither and runs with any attention implementation.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch.utils.data import Sampler

GROUP_SIZE = 64  # optimizer steps per length-sorted group: enough pairs to find similar lengths, few enough to mix
MIN_SAVING = 0.1  # split a micro-batch's forward pass only when that removes at least this share of its tokens
TOKEN_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")  # what TRL's DPOTrainer tokenizes an example into


def token_counts(dataset) -> np.ndarray:
    """(rows, 3) token counts of each tokenized pair: prompt, chosen response, rejected response."""
    import pyarrow.compute as pc

    parts = [
        np.stack([pc.list_value_length(table[column]).to_numpy() for column in TOKEN_COLUMNS], axis=1)
        for table in dataset.select_columns(list(TOKEN_COLUMNS)).with_format("arrow").iter(4096)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros((0, 3), dtype=np.int64)


def pair_lengths(dataset, max_length: int | None = None) -> list[int]:
    """Padded length of each tokenized pair as TRL's collator lays it out: prompt + the longer response, truncated."""
    counts = token_counts(dataset)
    lengths = counts[:, 0] + counts[:, 1:].max(axis=1, initial=0)
    return (lengths if max_length is None else np.minimum(lengths, max_length)).tolist()


def length_grouped_order(lengths: list[int], micro_batch: int, step: int, seed: int, epoch: int = 0) -> list[int]:
    """Indices of one epoch: micro-batches of similar-length pairs in a seeded random order, `step` pairs (an
    optimizer step) at a time; the micro-batch with the longest pair first.

    Only the config's batch shape enters (micro_batch: per_device_train_batch_size, step: that times
    gradient_accumulation_steps), not the number of processes: on N GPUs accelerate deals consecutive micro-batches to
    the ranks, so each optimizer step trains on the same pairs as on one. Inside a step the micro-batches go longest
    first, so the ranks of one accumulation round get similar lengths and none waits on a longer one.
    """
    generator = np.random.default_rng([seed, epoch])
    shuffled = generator.permutation(len(lengths))
    group = GROUP_SIZE * step
    batches = []
    for start in range(0, len(shuffled), group):
        members = sorted(shuffled[start : start + group].tolist(), key=lambda i: -lengths[i])
        batches += [members[i : i + micro_batch] for i in range(0, len(members), micro_batch)]
    # Full micro-batches are shuffled; a short one (the epoch's remainder) stays at the end, where the trainer
    # expects it (and drops it with dataloader_drop_last).
    full = [b for b in batches if len(b) == micro_batch]
    rest = [b for b in batches if len(b) != micro_batch]
    full = [full[i] for i in generator.permutation(len(full))]
    if full:
        longest = max(range(len(full)), key=lambda i: lengths[full[i][0]])
        full.insert(0, full.pop(longest))
    per_step = max(1, step // micro_batch)
    steps = [full[i : i + per_step] for i in range(0, len(full), per_step)]
    ordered = [batch for chunk in steps for batch in sorted(chunk, key=lambda b: -lengths[b[0]])]
    return [i for batch in ordered + rest for i in batch]


class LengthGroupedSampler(Sampler[int]):
    """A training sampler with `length_grouped_order`'s order; the trainer calls set_epoch at each epoch."""

    def __init__(self, lengths: list[int], micro_batch: int, step: int, seed: int):
        self.lengths, self.micro_batch, self.step, self.seed, self.epoch = lengths, micro_batch, step, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(length_grouped_order(self.lengths, self.micro_batch, self.step, self.seed, self.epoch))


def use_length_grouped_sampler(trainer, micro_batch: int, step: int, seed: int) -> None:
    """Make a (TRL) trainer draw its training batches with a LengthGroupedSampler (see length_grouped_order for
    micro_batch and step: the config's, which stay the same however many processes train)."""

    def sampler(train_dataset=None):
        dataset = trainer.train_dataset if train_dataset is None else train_dataset
        return LengthGroupedSampler(pair_lengths(dataset, trainer.args.max_length), micro_batch, step, seed)

    trainer._get_train_sampler = sampler  # Trainer.get_train_dataloader asks for its sampler through this hook


# --- length-bucketed forward passes ---------------------------------------------------------------------------------


def plan_buckets(lengths: list[int], buckets: int) -> list[list[int]]:
    """Row indices grouped into at most `buckets` groups of similar length: the grouping with the fewest padded
    tokens, sum over groups of (rows x longest row), longest group first. One group when splitting would save less
    than MIN_SAVING of the padded tokens (each extra forward pass has a fixed cost).

    The best grouping is a set of contiguous runs of the rows sorted by length, found by dynamic programming over
    the split points.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    if n == 0:
        return []
    longest = np.array([lengths[i] for i in order], dtype=np.float64)
    ends = np.arange(n + 1)
    # cost[i, j]: rows i..j-1 of the sorted order as one group, padded to row i's length; infinite unless i < j.
    cost = np.where(ends[None, :] > ends[:n, None], (ends[None, :] - ends[:n, None]) * longest[:, None], np.inf)
    best = np.full(n + 1, np.inf)  # best[j]: fewest padded tokens for the first j rows with the groups so far
    best[0] = 0.0
    starts = []  # per added group: for each end j, where the last group starts in the best grouping
    for _ in range(max(1, min(buckets, n))):
        totals = best[:n, None] + cost
        start = totals.argmin(axis=0)  # ties go to the earliest start: fewer groups
        best = totals[start, ends]
        best[0] = 0.0
        starts.append(start)
    if best[n] > (1 - MIN_SAVING) * n * longest[0]:
        return [order]
    groups, end = [], n
    for start in reversed(starts):
        if end == 0:
            break
        groups.append(order[start[end] : end])
        end = int(start[end])
    return groups[::-1]


def use_length_buckets(model, buckets: int) -> None:
    """Split every fused-LM-head forward of `model` (what TRL's DPO loss and reference pass call) into at most
    `buckets` forwards over rows of similar length; the outputs keep the shapes one padded forward would give.

    Install after the LM head (training/engine/lm_head.py replaces the forward on CPU). Calls without `fused_lm_head`
    (generation) and MoE calls asking for router logits (whose auxiliary loss would need merging) pass through.
    """
    if buckets <= 1:
        return
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    forward = target.forward  # the fused-head forward TRL installed on the instance

    @functools.wraps(forward)
    def bucketed(*args, fused_lm_head=False, **kwargs):
        mask = kwargs.get("attention_mask")
        if (
            not fused_lm_head
            or args
            or mask is None
            or mask.dim() != 2
            or kwargs.get("shift_labels") is not None
            or kwargs.get("output_router_logits")
        ):
            return forward(*args, fused_lm_head=fused_lm_head, **kwargs)
        row_lengths = mask.sum(dim=1).tolist()  # right-padded rows: the real tokens come first
        groups = plan_buckets(row_lengths, buckets)
        if len(groups) == 1:
            return forward(fused_lm_head=True, **kwargs)
        outputs = []
        for rows in groups:
            length = max(row_lengths[i] for i in rows)
            index = torch.tensor(rows, device=mask.device)
            part = {
                key: value.index_select(0, index)[:, :length] if _per_row(value, mask) else value
                for key, value in kwargs.items()
                if key != "num_items_in_batch"
            }
            outputs.append(forward(fused_lm_head=True, **part))
        return _merge(outputs, groups, mask.shape, kwargs.get("num_items_in_batch"))

    target.forward = bucketed


def _per_row(value, mask: torch.Tensor) -> bool:
    return torch.is_tensor(value) and value.shape == mask.shape


def _merge(outputs: list, groups: list[list[int]], shape: torch.Size, num_items_in_batch):
    """One FusedCausalLMOutput with the rows back in their places, each padded with zeros (TRL's value where the
    label is -100) to the full length."""
    rows, width = shape[0], shape[1] - 1  # per-token fields are shifted: position t scores token t + 1
    order = torch.tensor([i for group in groups for i in group], device=outputs[0].log_probs.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(rows, device=order.device)
    fields = {}
    for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask"):
        parts = [getattr(out, name) for out in outputs]
        if any(part is None for part in parts):
            fields[name] = None
            continue
        padded = [torch.cat([p, p.new_zeros(p.shape[0], width - p.shape[1])], dim=1) for p in parts]
        fields[name] = torch.cat(padded).index_select(0, inverse)
    denominator = fields["label_mask"].sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return type(outputs[0])(loss=-fields["log_probs"].sum() / denominator, **fields)
