"""Simulated annotators: a judge function labels pairs through the same store API a person uses.

A judge takes the prompt (a message list) and the two responses and returns a choice ('a', 'b', 'tie' or
'both_bad') and a strength ('slight', 'clear' or None). Plug any judge in with `--judge module:function`; the
loop assumes nothing else about it. Built-in judges:

    training.judges:shorter              prefers the shorter answer
    training.judges:contains_word        prefers the answer containing $JUDGE_WORD (default "please") more often
    training.judges:structured           prefers the answer laid out as a list (two or more item lines)
    training.judges:reward_model         prefers the answer the latest registered reward model scores higher

    prefloop label-sim --judge training.judges:shorter --noise 0.1
"""

from __future__ import annotations

import argparse
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
    """Prefers the response that uses the word $JUDGE_WORD (default "please") more often; tie when equal."""
    word = os.environ.get("JUDGE_WORD", "please")
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


_reward_model = None  # (model, tokenizer), loaded once per process


def reward_model(messages: list[dict], response_a: str, response_b: str) -> tuple[str, str | None]:
    """Prefers the response the latest registered reward model scores higher ($PREFLOOP_DB names the store)."""
    global _reward_model
    from training.evaluate import load_reward_model, score_responses

    if _reward_model is None:
        store = Store(os.environ.get("PREFLOOP_DB", "data/prefloop.duckdb"))
        checkpoint = store.latest_checkpoint(("reward",))
        if checkpoint is None:
            raise RuntimeError("the reward_model judge needs a registered reward model: run `make train-rm` first")
        _reward_model = load_reward_model(checkpoint)
    model, tokenizer = _reward_model
    score_a, score_b = score_responses(model, tokenizer, [messages, messages], [response_a, response_b])
    return ("a" if score_a >= score_b else "b"), ("clear" if abs(score_a - score_b) > 1.0 else "slight")


def load_judge(spec: str) -> Judge:
    """`module:function` → the judge function; errors say what is wrong with the spec."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ValueError(f"--judge expects module:function, got {spec!r}")
    module = importlib.import_module(module_name)
    judge = getattr(module, function_name, None)
    if not callable(judge):
        raise ValueError(f"--judge {spec}: {module_name} has no function {function_name!r}")
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
    """Label pairs of a round as annotator `sim:<name>` until none is left (or `limit`), like a person would:
    lease the next pair, judge it, submit. With probability `noise` an a/b choice is flipped."""
    annotator = store.ensure_annotator(f"sim:{name}", "simulated")
    rng = random.Random(seed)
    judged = flipped = decisive = 0
    while limit is None or judged < limit:
        pair = store.next_pair(annotator.id, round_id=round_id)
        if pair is None:
            break
        choice, strength = judge(pair["messages"], pair["response_a"], pair["response_b"])
        if choice not in _FLIP:
            raise ValueError(f"judge returned {choice!r}; expected one of a, b, tie, both_bad")
        if rng.random() < noise and choice in ("a", "b"):
            choice, flipped = _FLIP[choice], flipped + 1
        store.submit_judgment(Judgment(pair["id"], annotator.id, choice, strength))
        judged += 1
        decisive += choice in ("a", "b")
    return SimulationResult(judged, flipped, decisive)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("label-sim", help="label a round's open pairs with a simulated annotator")
    p.add_argument("--judge", default="training.judges:shorter", help="module:function of the judge")
    p.add_argument("--name", help="annotator name suffix (sim:<name>; default: the judge's function name)")
    p.add_argument("--round", type=int, help="round to label (default: any open pair)")
    p.add_argument("--noise", type=float, default=0.0, help="probability of flipping an a/b choice")
    p.add_argument("--limit", type=int, help="stop after this many judgments")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=_cmd_label_sim)


def _cmd_label_sim(args: argparse.Namespace) -> int:
    from training.cli import open_store

    judge = load_judge(args.judge)
    name = args.name or args.judge.partition(":")[2]
    result = label_with_judge(open_store(args), judge, name, args.round, args.noise, args.limit, args.seed)
    print(f"sim:{name} judged {result.judged} pairs ({result.flipped} flipped by noise)")
    return 0
