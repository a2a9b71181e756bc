"""Candidate generation: sample k responses per prompt from a round's checkpoint and store the pair worth judging.

    prefloop generate --num-prompts 64 --samples-per-prompt 4 --max-new-tokens 256
    prefloop generate --strategy vs-previous --split heldout     # current vs previous round, for win rate
    make generate ARGS="--num-prompts 16"

Strategies:
  samples      k samples of the round's checkpoint per prompt (default 4); of those, one pair is stored: the one the
               pair selection picks (training/loop/pair_selection.py: a reward model's or the DPO checkpoint's implicit
               reward's highest- against its lowest-scored, or for the base model the most different two). Never two
               cut-off responses, two identical texts or an empty one.
  vs-previous  one sample of the round's checkpoint and one of the previous round's on the same prompt; their
               judgments measure the new model's win rate.

The prompts are the ones the round has not used with this strategy yet, train split by default (held-out prompts make
evaluation pairs and never reach a training export), in an order shuffled per round, so each round starts on other
prompts. Generation applies the chat template with the generation prompt and stops at the end-of-turn token; a
response cut at `max_new_tokens` is stored with finish_reason 'length'. Each batch is seeded with
`seed + 1,000,000 x round + its first prompt id`, recorded with every response: rounds draw different samples, and the
same database and config give the same responses (on the same engine, which the record names too). Every
`write_batch_size` prompts are written in one short transaction; every sample is stored, paired or not.

Engines (training/engine/sampling.py): `static` (the cached CUDA-graph decoder, the default on a GPU, in batches of 256
sequences) or `hf` (transformers' `generate`, the default on CPU, batches of 16). bench/gen_throughput.py compares them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from store import Candidates, ResponseIn, Store, StoreError
from training.config import ConfigError, opt
from training.engine.sampling import ENGINES, Decoding, Sample, default_batch_size, engine_for, sample
from training.loop.pair_selection import REWARD_SELECTIONS, SELECTIONS, choose_selection, select_pair, shuffle_sides

STRATEGIES = ("samples", "vs-previous")
SPLITS = ("train", "heldout")
ROUND_SEED_STRIDE = 1_000_000  # seed of a batch: seed + ROUND_SEED_STRIDE * round + first prompt id


@dataclass
class GenerateConfig:
    num_prompts: int = opt(64, "prompts to generate for (fewer when the round has used the others)")
    samples_per_prompt: int = opt(4, "responses sampled per prompt by the samples strategy; one pair is kept")
    pair_selection: str = opt(
        "auto", "which two samples form the pair: most-different, reward-extremes, reward-uncertain, "
        "implicit-extremes, or auto (train pairs: a registered reward model's extremes, else the DPO checkpoint's "
        "implicit reward extremes, else most-different; held-out pairs: most-different, so no model picks the pairs "
        "it is measured on)"
    )
    implicit_reward: str = opt(
        "sum", "implicit-extremes ranks samples by log pi - log pi_ref summed over the tokens (sum: DPO's reward) or "
        "averaged over them (mean: per token, so the extremes are the answers the last round moved most, not the "
        "longest ones)"
    )
    temperature: float = opt(1.0, "sampling temperature (above 0: greedy decoding would give identical samples)")
    top_p: float = opt(0.95, "nucleus sampling: keep the smallest set of tokens whose probability reaches top_p")
    max_new_tokens: int = opt(256, "token limit per response; a response cut there is marked finish_reason 'length'")
    seed: int = opt(0, "base seed; each batch uses seed + 1,000,000 x round + its first prompt id")
    batch_size: int = opt(
        0, "sequences sampled together (prompts per batch: batch_size // samples); 0: 256 on the static engine, else 16"
    )
    split: str = opt("train", "prompt split: train (pairs to label) or heldout (evaluation pairs)")
    strategy: str = opt("samples", "samples (k samples of the round's model) or vs-previous (vs previous round's)")
    round: int | None = opt(None, "round to generate for (default: the latest)")
    write_batch_size: int = opt(8, "prompts whose responses and pairs are written in one short transaction")
    model: str | None = opt(None, "base model to load instead of the checkpoint's recorded one (HF id or path)")
    engine: str = opt("auto", "static (cached CUDA-graph decoder), hf (transformers' generate); auto: static on GPU")

    def validate(self) -> None:
        checks = [
            ("num_prompts", self.num_prompts >= 1, "at least 1"),
            ("samples_per_prompt", self.samples_per_prompt >= 2, "at least 2 (a pair needs two responses)"),
            ("pair_selection", self.pair_selection in SELECTIONS, f"one of {', '.join(SELECTIONS)}"),
            ("implicit_reward", self.implicit_reward in ("sum", "mean"), "sum or mean"),
            ("temperature", self.temperature > 0, "above 0"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
            ("batch_size", self.batch_size >= 0, "at least 1, or 0 for the engine's default"),
            ("write_batch_size", self.write_batch_size >= 1, "at least 1"),
            ("split", self.split in SPLITS, f"one of {', '.join(SPLITS)}"),
            ("strategy", self.strategy in STRATEGIES, f"one of {', '.join(STRATEGIES)}"),
            ("engine", self.engine in ENGINES, f"one of {', '.join(ENGINES)}"),
        ]
        for name, ok, wanted in checks:
            if not ok:
                raise ConfigError(f"{name} must be {wanted}, not {getattr(self, name)!r}")

    @property
    def decoding(self) -> Decoding:
        return Decoding(self.temperature, self.top_p, self.max_new_tokens, self.engine)


@dataclass
class GenerateSummary:
    round_id: int
    prompts: int = 0
    responses: int = 0
    pairs: int = 0
    duplicates: int = 0
    unpaired_prompts: int = 0  # prompts whose samples allowed no pair (empty, identical or all cut off)
    completion_tokens: int = 0
    truncated: int = 0  # responses cut at max_new_tokens
    seconds: float = 0.0
    selection: str = ""


def batch_seed(config: GenerateConfig, round_id: int, first_prompt_id: int) -> int:
    return config.seed + ROUND_SEED_STRIDE * round_id + first_prompt_id


def generate(store: Store, config: GenerateConfig, progress: bool = True) -> GenerateSummary:
    """Generate for up to `config.num_prompts` unused prompts of the round and store responses and pairs."""
    from tqdm.auto import tqdm

    from training.models import load_for_generation

    config.validate()
    round_id, checkpoints = round_checkpoints(store, config)
    prompts = store.prompts_for_generation(round_id, config.strategy, config.split, config.num_prompts)
    if not prompts:
        raise StoreError(
            f"round {round_id} has used every {config.split} prompt with strategy {config.strategy}: "
            "import more prompts or start a new round"
        )
    decoding = config.decoding
    engine = engine_for(decoding)
    models = [load_for_generation(c, config.model, unsloth=engine == "hf") for c in checkpoints]
    # samples: k draws of one model, one pair selected; vs-previous: one draw of each model, current first.
    draws = config.samples_per_prompt if config.strategy == "samples" else 1
    selection, scorer = pair_scorer(store, config, checkpoints[0])
    prompts_per_batch = max(1, (config.batch_size or default_batch_size(decoding)) // draws)
    summary = GenerateSummary(round_id, selection=selection)
    start = time.perf_counter()
    bar = tqdm(total=len(prompts), desc=f"round {round_id} {config.strategy}", unit="prompt", disable=not progress)

    def write(candidates: list[Candidates]) -> None:
        written = store.add_candidates(round_id, config.strategy, candidates)
        summary.prompts += len(candidates)
        summary.responses += written.responses
        summary.pairs += written.pairs
        summary.duplicates += written.duplicates
        bar.set_postfix(pairs=summary.pairs)

    # Batches are generated whole (a large batch is what makes the static engine fast) and written in short
    # transactions of `write_batch_size` prompts, so the labeling UI never waits long for the database.
    pending: list[Candidates] = []
    for batch_start in range(0, len(prompts), prompts_per_batch):
        batch = prompts[batch_start : batch_start + prompts_per_batch]
        seed = batch_seed(config, round_id, batch[0]["id"])
        conversations = [p["messages"] for p in batch]
        per_model = [sample(model, tokenizer, conversations, draws, decoding, seed) for model, tokenizer in models]
        scores = scorer(conversations, per_model[0]) if scorer else [None] * len(batch)
        sampling = dict(temperature=config.temperature, top_p=config.top_p, max_new_tokens=config.max_new_tokens,
                        seed=seed, engine=engine, round=round_id, strategy=config.strategy)
        for i, prompt in enumerate(batch):
            drawn = [(checkpoint, s) for checkpoint, samples in zip(checkpoints, per_model) for s in samples[i]]
            pending.append(prompt_candidates(prompt, drawn, sampling, selection, scores[i], summary))
        bar.update(len(batch))
        while len(pending) >= config.write_batch_size:
            write(pending[: config.write_batch_size])
            pending = pending[config.write_batch_size :]
    if pending:
        write(pending)
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def round_checkpoints(store: Store, config: GenerateConfig) -> tuple[int, list[dict]]:
    """The round to generate for and the checkpoints that sample: its own, and for vs-previous the previous
    round's as well."""
    round_ = store.get_round(config.round)
    if round_ is None:
        raise StoreError(
            "no round yet: start one with `prefloop round new`"
            if config.round is None
            else f"round {config.round} does not exist"
        )
    round_id = round_["id"]
    checkpoints = [store.get_checkpoint(round_["checkpoint_id"])]
    if config.strategy == "vs-previous":
        previous = store.previous_round(round_id)
        if previous is None:
            raise StoreError(f"round {round_id} is the first round: vs-previous needs a previous round to compare with")
        if previous["checkpoint_id"] == round_["checkpoint_id"]:
            raise StoreError(
                f"rounds {previous['id']} and {round_id} generate with the same checkpoint "
                f"({round_['checkpoint_id']}): there is nothing to compare"
            )
        checkpoints.append(store.get_checkpoint(previous["checkpoint_id"]))
    return round_id, checkpoints


def pair_scorer(store: Store, config: GenerateConfig, policy: dict):
    """(the pair selection this generation uses, the function scoring its samples or None); vs-previous selects
    nothing."""
    if config.strategy != "samples":
        return "", None
    reward = store.latest_checkpoint(("reward",))
    selection = choose_selection(config.pair_selection, reward is not None, policy["kind"] == "dpo", config.split)
    if selection in REWARD_SELECTIONS:
        return selection, reward_scorer(reward)
    if selection == "implicit-extremes":
        return selection, implicit_reward_scorer(store, policy, per_token=config.implicit_reward == "mean")
    return selection, None


def prompt_candidates(
    prompt: dict, drawn: list[tuple[dict, Sample]], sampling: dict, selection: str, scores, summary: GenerateSummary
) -> Candidates:
    """One prompt's responses (each with the checkpoint that drew it) and the pair chosen among them, counted into
    `summary`. With a `selection` (samples) the pair is the one it picks, sides shuffled by the seed; without
    (vs-previous) the current model's sample is response a, and the labeler shuffles the sides on screen."""
    samples = [s for _, s in drawn]
    responses = [
        ResponseIn(
            prompt_id=prompt["id"],
            checkpoint_id=checkpoint["id"],
            text=s.text,
            sampling=sampling,
            prompt_tokens=len(s.prompt_ids),
            completion_tokens=s.tokens,
            finish_reason=s.finish_reason,
        )
        for checkpoint, s in drawn
    ]
    if selection:
        pair = select_pair(samples, selection, scores)
        pair = shuffle_sides(pair, sampling["seed"], prompt["id"]) if pair else None
    else:
        pair = select_pair(samples, "most-different")  # two samples: only the eligibility rules apply
        pair = (0, 1) if pair else None
    summary.unpaired_prompts += pair is None
    summary.completion_tokens += sum(s.tokens for s in samples)
    summary.truncated += sum(not s.stopped for s in samples)
    return Candidates(prompt["id"], responses, [pair] if pair else [])


def reward_scorer(reward: dict):
    """score(conversations, samples per conversation) -> their rewards, by a registered reward checkpoint."""
    from training.engine.reward_scoring import load_reward_model, score_responses

    model, tokenizer = load_reward_model(reward)

    def score(conversations: list[list[dict]], samples: list[list[Sample]]) -> list[list[float]]:
        flat = [(m, s.text) for m, row in zip(conversations, samples) for s in row]
        scores = iter(score_responses(model, tokenizer, [m for m, _ in flat], [t for _, t in flat]))
        return [[next(scores) for _ in row] for row in samples]

    return score


def implicit_reward_scorer(store: Store, policy: dict, per_token: bool = False):
    """score(conversations, samples per conversation) -> log pi(y|x) - log pi_ref(y|x) of the drawn tokens, pi the
    DPO checkpoint and pi_ref the reference it was trained against (its parent, or the base model), in float32;
    with `per_token`, divided by the response's tokens."""
    from training.engine.logprobs import completion_logprobs
    from training.models import load_for_scoring

    parent = store.get_checkpoint(policy["parent_id"]) if policy["parent_id"] is not None else None
    by_base = policy["config"].get("reference") == "base" or parent is None
    reference = (policy["base_model"], None) if by_base else (parent["base_model"], parent.get("adapter_path"))
    scorers = [load_for_scoring(policy["base_model"], policy["adapter_path"]), load_for_scoring(*reference)]

    def score(conversations: list[list[dict]], samples: list[list[Sample]]) -> list[list[float]]:
        sequences = [(s.prompt_ids, s.completion_ids) for row in samples for s in row]
        own, under_reference = (completion_logprobs(m, sequences, t.pad_token_id, 16) for m, t in scorers)
        margins = iter(own.log_ratios(under_reference, per_token))
        return [[next(margins) for _ in row] for row in samples]

    return score
