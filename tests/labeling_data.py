"""Rounds of pairs to label, for the labeler tests: texts chosen by the test (XSS payloads, markers to find on
screen), written with `insert_rows` like a store method would."""

from __future__ import annotations

from store import Judgment, PromptIn, ResponseIn, Store
from store.prompts import insert_rows, pair_hash, prompt_hash
from store.store import utcnow


def make_round(store: Store, items: list[tuple[list[dict], str, str]], overlap: int = 1) -> tuple[int, list[int]]:
    """A new round whose pairs are `items` (prompt messages, response a, response b). Returns (round id, pair ids)."""
    checkpoint = store.register_checkpoint("base", "test-model")
    round_id = store.new_round(checkpoint, overlap_target=overlap)
    store.add_prompts([PromptIn(messages, source="test") for messages, _, _ in items])
    by_hash = {p["content_hash"]: p["id"] for p in store.list_prompts()}
    prompt_ids = [by_hash[prompt_hash(messages)] for messages, _, _ in items]
    response_ids = store.add_responses(
        [
            ResponseIn(prompt_id, checkpoint, text, {}, None, None, "stop")
            for prompt_id, (_, a, b) in zip(prompt_ids, items)
            for text in (a, b)
        ]
    )
    now = utcnow()
    with store.transaction("test pairs") as con:
        pair_ids = insert_rows(
            con,
            "pairs",
            [
                dict(
                    prompt_id=prompt_id,
                    response_a_id=response_ids[2 * i],
                    response_b_id=response_ids[2 * i + 1],
                    round_id=round_id,
                    strategy="samples",
                    overlap_target=overlap,
                    content_hash=pair_hash(prompt_hash(messages), a, b),
                    created_at=now,
                )
                for i, (prompt_id, (messages, a, b)) in enumerate(zip(prompt_ids, items))
            ],
        )
    return round_id, sorted(pair_ids)


def simple_items(n: int, tag: str) -> list[tuple[list[dict], str, str]]:
    """n single-turn pairs whose texts carry `tag` and the index, so a test can tell them apart on screen."""
    return [
        ([{"role": "user", "content": f"{tag} question {i}: what is {i} + {i}?"}],
         f"{tag} answer {i}a: it is {2 * i}.", f"{tag} answer {i}b: it is {2 * i + 1}.")
        for i in range(n)
    ]


def judge(store: Store, judgment: Judgment) -> int:
    """Record a judgment the way the app does: lease the pair to its annotator, then submit (a new judgment needs the
    annotator's live lease; a re-submit is an update and needs none)."""
    store.hold_pair(judgment.annotator_id, judgment.pair_id)
    return store.submit_judgment(judgment)
