"""Rounds: a round is the checkpoint that generates candidates, the pairs it produced and their judgments.

    prefloop round new                     # next round from the newest policy checkpoint (round 0: the base model)
    prefloop round new --checkpoint 7 --overlap 2
    prefloop round new --if-none           # create round 0 only when the database has no round (used by `make run`)

`prefloop status` shows each round's checkpoint, prompts used, pairs, judgments and pairs with agreement pending.
"""

from __future__ import annotations

from store import Store, StoreError
from store.runs import CHECKPOINT_KINDS

# Checkpoints that can generate text; a reward model scores it.
POLICY_KINDS = tuple(kind for kind in CHECKPOINT_KINDS if kind != "reward")


def start_round(store: Store, checkpoint_id: int | None = None, overlap_target: int = 1) -> tuple[int, dict]:
    """Start the next round; returns (round number, its checkpoint).

    Without `checkpoint_id` the newest policy checkpoint generates. With none registered, the base model is
    registered as a 'base' checkpoint under the name it was given ("embedded" or `$MODEL`), not a resolved path,
    so the database means the same model on every machine.
    """
    from training.model_source import default_model

    if checkpoint_id is not None:
        checkpoint = store.get_checkpoint(checkpoint_id)
        if checkpoint["kind"] not in POLICY_KINDS:
            raise StoreError(f"checkpoint {checkpoint_id} is a {checkpoint['kind']} model and cannot generate")
    else:
        checkpoint = store.latest_checkpoint(POLICY_KINDS)
        if checkpoint is None:
            checkpoint = store.get_checkpoint(store.register_checkpoint("base", default_model()))
    round_id = store.new_round(checkpoint["id"], overlap_target)
    return round_id, checkpoint
