"""Simulated annotators: a judge function labels pairs through the same store API a person uses.

A judge takes the prompt (a message list) and the two responses and returns a choice ('a', 'b', 'tie' or
'both_bad') and a strength ('slight', 'clear' or None). Plug any judge in with `--judge module:function`; the
loop assumes nothing else about it. Built-in judges:

    training.loop.judges:shorter              prefers the shorter answer
    training.loop.judges:contains_word        prefers the answer containing $JUDGE_WORD (default "example") more often
    training.loop.judges:structured           prefers the answer laid out as a list (two or more item lines)
    training.loop.judges:reward_model         prefers the answer the store's latest reward model scores higher

    prefloop label-sim --judge training.loop.judges:shorter --noise 0.1
"""

from __future__ import annotations

import importlib
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from store import Judgment, Store

Judge = Callable[[list[dict], str, str], tuple[str, str | None]]


def shorter(messages: list[dict], response_a: str, response_b: str) -> tuple[str, str | None]:
    """Prefers the shorter response (by characters); clear when one is under two thirds of the other."""
    len_a, len_b = len(response_a.strip()), len(response_b.strip())
    if len_a == len_b:
        return "tie", None
    winner, short, long_ = ("a", len_a, len_b) if len_a < len_b else ("b", len_b, len_a)
    return winner, "clear" if short < 2 * long_ / 3 else "slight"


def _count_word(word: str, text: str) -> int:
    return len(re.findall(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE))


def contains_word(messages: list[dict], response_a: str, response_b: str) -> tuple[str, str | None]:
    """Prefers the response that uses the word $JUDGE_WORD more often; tie when equal. The default, "example" (an
    annotator who wants answers that give one), is a word the embedded model says in about one answer in fourteen: a
    property its own samples show, so the loop can learn it ("please", the first default, it practically never says;
    docs/loop.md)."""
    word = os.environ.get("JUDGE_WORD", "example")
    count_a, count_b = _count_word(word, response_a), _count_word(word, response_b)
    if count_a == count_b:
        return "tie", None
    return ("a" if count_a > count_b else "b"), ("clear" if min(count_a, count_b) == 0 else "slight")


_LIST_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+\S", re.MULTILINE)


def list_items(text: str) -> int:
    """Lines that open a bullet (-, *, •) or a numbered item (1. or 1))."""
    return len(_LIST_ITEM.findall(text))


def structured(messages: list[dict], response_a: str, response_b: str) -> tuple[str, str | None]:
    """Prefers the response laid out as a list (at least two item lines) over one that is not; tie when both or
    neither are. Length plays no part: a two-item list beats a ten-paragraph essay and loses to nothing shorter."""
    list_a, list_b = list_items(response_a) >= 2, list_items(response_b) >= 2
    if list_a == list_b:
        return "tie", None
    return ("a" if list_a else "b"), "clear"


def reward_model(store: Store) -> Judge:
    """A judge that prefers the response the store's latest registered reward model scores higher (clear when the
    scores differ by more than 1). It needs the store, so `load_judge` builds it with the one being labeled."""
    from training.engine.reward_scoring import load_reward_model, score_responses

    checkpoint = store.latest_checkpoint(("reward",))
    if checkpoint is None:
        raise RuntimeError("the reward_model judge needs a registered reward model: run `make train-rm` first")
    model, tokenizer = load_reward_model(checkpoint)

    def judge(messages: list[dict], response_a: str, response_b: str) -> tuple[str, str | None]:
        score_a, score_b = score_responses(model, tokenizer, [messages, messages], [response_a, response_b])
        return ("a" if score_a >= score_b else "b"), ("clear" if abs(score_a - score_b) > 1.0 else "slight")

    return judge


reward_model.needs_store = True  # load_judge calls it with the store to get the judge


def load_judge(spec: str, store: Store | None = None) -> Judge:
    """`module:function` → the judge function; errors say what is wrong with the spec. A function marked
    `needs_store` (e.g. `reward_model`) is a judge factory: it is called with `store` and returns the judge."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"--judge expects module:function, got {spec!r}")
    module = importlib.import_module(module_name)
    judge = getattr(module, function_name, None)
    if not callable(judge):
        raise ValueError(f"--judge {spec}: {module_name} has no function {function_name!r}")
    if getattr(judge, "needs_store", False):
        if store is None:
            raise ValueError(f"--judge {spec} reads the store, and none was given")
        return judge(store)
    return judge


@dataclass
class SimulationResult:
    judged: int
    flipped: int
    decisive: int = 0  # judgments of a or b: the pairs a preference dataset keeps


_FLIP = {"a": "b", "b": "a", "tie": "tie", "both_bad": "both_bad"}


def label_with_judge(
    store: Store,
    judge: Judge,
    name: str,
    round_id: int | None = None,
    noise: float = 0.0,
    limit: int | None = None,
    seed: int = 0,
) -> SimulationResult:
    """Label pairs of a round as annotator `sim:<name>` until none is left (or `limit`), like a person in the UI
    would: lease a pair, judge it, submit it and lease the next in one step. With probability `noise` an a/b choice
    is flipped."""
    annotator = store.ensure_annotator(f"sim:{name}", "simulated")
    rng = random.Random(seed)
    judged = flipped = decisive = 0
    pair = store.next_pair(annotator.id, round_id=round_id) if limit != 0 else None
    while pair is not None:
        choice, strength = judge(pair["messages"], pair["response_a"], pair["response_b"])
        if choice not in _FLIP:
            raise ValueError(f"judge returned {choice!r}; expected one of a, b, tie, both_bad")
        if rng.random() < noise and choice in ("a", "b"):
            choice, flipped = _FLIP[choice], flipped + 1
        judgment = Judgment(pair["id"], annotator.id, choice, strength)
        judged += 1
        decisive += choice in ("a", "b")
        if limit is not None and judged >= limit:  # leave no pair leased to an annotator that has stopped
            store.submit_judgment(judgment)
            break
        _, pair = store.submit_and_next(judgment, round_id=round_id)
    return SimulationResult(judged, flipped, decisive)
