"""`prefloop eval`: did this round make the model better? Every number with a bootstrap 95% confidence interval and n.

    prefloop eval                      # the newest policy checkpoint and the newest reward model
    prefloop eval --all                # every registered checkpoint: one row set per round
    prefloop eval --checkpoint 7       # one checkpoint (policy or reward model)
    prefloop eval --table              # print the stored results, evaluate nothing
    prefloop eval --labels             # label quality: kappa, alpha, per-annotator agreement and bias
    make eval ARGS="--all"

Metrics stored per checkpoint (and the round it belongs to) in `eval_results`:

  heldout_accuracy      share of judged held-out pairs (final label a or b, store/final_labels.py) where the policy's
                        implicit reward log pi(y|x) - log base(y|x) is higher for the chosen response (DPO's reward up
                        to beta; base = the base model at the root of the lineage, so the figure is cumulative over
                        rounds). An exact tie counts 1/2: the base model itself scores exactly 0.5. Details break it
                        down by the store round whose generation made the pair (`by_pair_round`) and by which answer
                        is longer (`by_length`).
  heldout_accuracy_per_token  the same for the per-token mean log-ratio (the length-normalised reward). Far from the
                        base model every token's log-ratio drifts, so the sum also ranks by length: a judge whose
                        preferred answers are the longer ones sees the summed accuracy fall while this one rises
                        (docs/loop.md). The two side by side, with `by_length`, say which it is.
  heldout_accuracy_vs_reference  the same summed implicit reward against the model this checkpoint's DPO was pulled
                        towards: its parent under `reference: parent` (dpo.py's default; in the loop the previous
                        round), else the base model. This is the reward DPO defines and TRL's eval accuracy reports:
                        what the round's own training learned from the labels so far, one round's distance from its
                        reference instead of the whole lineage's from the base model (the drift above grows with it).
  win_rate_vs_previous  win rate over the model of the round the checkpoint was trained on (ties count 1/2): from
                        the final labels of held-out 'vs-previous' pairs when there are any, otherwise both models
                        sample k responses per held-out prompt and the newest reward model judges each pair.
  kl_to_base            KL(pi || base) in nats per response: the mean over responses y ~ pi (temperature 1, no
                        truncation, the only draws for which the estimator is unbiased) of log pi(y|x) - log base(y|x),
                        summed over the drawn tokens; the per-token figure is in details. Single responses can be
                        negative; the base model's is exactly 0.
  response_length       mean tokens per response before the end-of-turn token, with the share cut off at the limit.
  heldout_reward        the newest reward model's mean score of the policy's samples (what RL raises).
  reward_accuracy       (reward checkpoints) share of held-out pairs where the reward model scores chosen higher.
loop-sim adds judge_win_rate_vs_round0 and judge_win_rate_vs_previous (its simulated judge on the same samples).

Samples: k per held-out prompt (`samples_per_prompt`, 4) drawn as the candidates are (temperature 1, top-p 0.95; see
training/engine/sampling.py), so a model is judged as it is used; win rates pair sample j of one model with sample j of the
other and bootstrap over prompts, the unit that was drawn. Log-probs are computed with the weights in float32
(`score_dtype`) and an unmerged adapter, whatever dtype the model trains and samples in: a bf16 sum over a hundred
tokens is off by about half a nat, more than a round's effect.

A checkpoint's round is the round it generates (a rounds row), else the round after the one whose labels trained it,
else 0 (the base model): round n's models are the ones trained on the labels of round n-1.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

from store import Store
from training.config import ConfigError, opt
from training.engine.logprobs import LogProbs, completion_ids, completion_logprobs
from training.engine.sampling import Decoding, Sample, sample_in_batches
from training.loop.rounds import POLICY_KINDS
from training.metrics import (
    WIN_SCORES,
    Estimate,
    bootstrap,
    bootstrap_by_group,
    format_estimate,
    preference_outcome,
    win_rate,
)


@dataclass
class EvalConfig:
    max_pairs: int = opt(512, "judged held-out pairs to score (a fixed reproducible sample when there are more)")
    prompts: int = opt(200, "held-out prompts to sample responses on (win rates, KL, length, reward)")
    samples_per_prompt: int = opt(4, "responses per held-out prompt and model, drawn as the candidates are")
    temperature: float = opt(Decoding.temperature, "sampling temperature of the evaluation samples (the candidates')")
    top_p: float = opt(Decoding.top_p, "nucleus of the evaluation samples (the candidates'); KL draws use 1.0")
    max_new_tokens: int = opt(Decoding.max_new_tokens, "token limit of each sampled response")
    kl_samples_per_prompt: int = opt(1, "untruncated temperature-1 responses per prompt for the KL estimate")
    beta: float = opt(0.1, "DPO beta for the implicit reward margin reported, when the checkpoint's config has none")
    batch_size: int = opt(16, "sequences scored together")
    sample_batch_size: int = opt(0, "sequences sampled together; 0: the engine's default (256 static, 16 hf)")
    max_length: int = opt(1024, "longest prompt + response scored, in tokens (the prompt's start is cut first)")
    score_dtype: str = opt("float32", "weights' dtype when scoring log-probs: float32, or bfloat16 where memory is short")
    bootstrap: int = opt(1000, "bootstrap resamples behind each confidence interval")
    seed: int = opt(0, "seed of sampling and of the bootstrap, so reruns give the same numbers")

    def validate(self) -> None:
        for name in ("max_pairs", "prompts", "samples_per_prompt", "max_new_tokens", "kl_samples_per_prompt",
                     "batch_size", "bootstrap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, not {self.max_length}")
        if self.score_dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"score_dtype must be float32, bfloat16 or float16, not {self.score_dtype!r}")

    @property
    def decoding(self) -> Decoding:
        return Decoding(self.temperature, self.top_p, self.max_new_tokens)

    @property
    def kl_decoding(self) -> Decoding:
        return Decoding(1.0, 1.0, self.max_new_tokens)


class Spec(NamedTuple):
    """A model to load: base model name (as registered) and LoRA adapter directory, if any."""

    base_model: str
    adapter_path: str | None


def spec_of(checkpoint: dict) -> Spec:
    return Spec(checkpoint["base_model"], checkpoint.get("adapter_path"))


def checkpoint_round(checkpoint: dict, rounds: list[dict]) -> int:
    """The round a checkpoint's results belong to (see the module docstring)."""
    generated = [r["id"] for r in rounds if r["checkpoint_id"] == checkpoint["id"]]
    if generated:
        return min(generated)
    return 0 if checkpoint["round_id"] is None else checkpoint["round_id"] + 1


Outcome = Callable[[int, int, Sample, Sample], str]  # (prompt i, sample j, new's, old's) -> 'win' | 'tie' | 'loss'


def judged_outcome(judge, prompts: list[dict]) -> Outcome:
    """The outcome under a judge (`training/loop/judges.py`). The new model's sample is response a on even (prompt +
    sample) positions and b on odd ones, so a judge's position bias cancels out."""

    def outcome(i: int, j: int, new: Sample, old: Sample) -> str:
        new_side = "a" if (i + j) % 2 == 0 else "b"
        a, b = (new.text, old.text) if new_side == "a" else (old.text, new.text)
        choice, _ = judge(prompts[i]["messages"], a, b)
        return preference_outcome(choice, new_side)

    return outcome


class Evaluator:
    """Scores checkpoints on the store's held-out data, loading at most two models at a time (the base model used for
    every reference stays loaded) and caching what each model computed, so `--all` loads each model once per role."""

    def __init__(self, store: Store, config: EvalConfig, log=print):
        config.validate()
        self.store, self.config = store, config
        self.checkpoints = {c["id"]: c for c in store.list_checkpoints()}
        self.rounds = store.list_rounds()
        self.pairs = store.heldout_preference_pairs(config.max_pairs)
        self.prompts = store.list_prompts(split="heldout", limit=config.prompts)
        if 0 < len(self.prompts) < config.prompts:
            log(f"asked for {config.prompts} held-out prompts, the store has {len(self.prompts)}: sample-based "
                f"figures use n = {len(self.prompts)} prompts x {config.samples_per_prompt} samples")
        self._models: dict = {}  # key -> (model, tokenizer), at most two
        self._pair_logps: dict[Spec, tuple[LogProbs, LogProbs]] = {}
        self._samples: dict[tuple[Spec, str], list[list[Sample]]] = {}
        self._sample_logps: dict[tuple[Spec, Spec], LogProbs] = {}
        self._scores: dict[tuple[int, Spec | str], list[float]] = {}

    # --- models -----------------------------------------------------------------------------------------------
    def _load(self, key, loader, keep=()):
        if key not in self._models:
            for old in [k for k in self._models if k not in keep]:
                del self._models[old]
            gc.collect()
            self._models[key] = loader()
        return self._models[key]

    def sampler(self, spec: Spec):
        """The model as it generates: adapter merged, bf16 on a GPU, on the static decoder."""
        from training.models import load_for_generation

        return self._load(("sample", spec), lambda: load_for_generation({"id": None, **spec._asdict()}, unsloth=False))

    def scorer(self, spec: Spec, base: Spec | None = None):
        """The model for log-probs: `score_dtype` weights, the adapter unmerged. `base` stays loaded beside it."""
        from training.models import load_for_scoring

        keep = {("score", base)} if base else set()
        return self._load(("score", spec), lambda: load_for_scoring(*spec, dtype=self.config.score_dtype), keep)

    def reward_model(self, checkpoint: dict):
        from training.engine.reward_scoring import load_reward_model

        return self._load(("reward", checkpoint["id"]), lambda: load_reward_model(checkpoint))

    # --- cached computations ----------------------------------------------------------------------------------
    def pair_logps(self, spec: Spec, base: Spec | None = None) -> tuple[LogProbs, LogProbs]:
        """Log-probs of the chosen and of the rejected response of every held-out pair under this model."""
        if spec not in self._pair_logps:
            model, tokenizer = self.scorer(spec, base)
            c = self.config
            scored = []
            for side in ("chosen", "rejected"):
                sequences = [completion_ids(tokenizer, p["messages"], p[side]) for p in self.pairs]
                scored.append(completion_logprobs(model, sequences, tokenizer.pad_token_id, c.batch_size, c.max_length))
            self._pair_logps[spec] = (scored[0], scored[1])
        return self._pair_logps[spec]

    def samples(self, spec: Spec, purpose: str = "eval") -> list[list[Sample]]:
        """k samples per held-out prompt ('eval': the candidates' decoding), or the untruncated draws of 'kl'."""
        key = (spec, purpose)
        if key not in self._samples:
            c = self.config
            decoding, k = (c.decoding, c.samples_per_prompt) if purpose == "eval" else (c.kl_decoding, c.kl_samples_per_prompt)
            model, tokenizer = self.sampler(spec)
            conversations = [p["messages"] for p in self.prompts]
            seed = c.seed + (0 if purpose == "eval" else 7_919)
            self._samples[key] = sample_in_batches(model, tokenizer, conversations, k, decoding, seed, c.sample_batch_size)
        return self._samples[key]

    def sample_logps(self, sampled_by: Spec, scored_by: Spec, base: Spec | None = None) -> LogProbs:
        """Log-probs under `scored_by` of the KL draws of `sampled_by`, flattened prompt by prompt."""
        key = (sampled_by, scored_by)
        if key not in self._sample_logps:
            draws = [s for per_prompt in self.samples(sampled_by, "kl") for s in per_prompt]
            model, tokenizer = self.scorer(scored_by, base)
            self._sample_logps[key] = completion_logprobs(
                model, [(s.prompt_ids, s.completion_ids) for s in draws], tokenizer.pad_token_id,
                self.config.batch_size, self.config.max_length,
            )
        return self._sample_logps[key]

    def reward_scores(self, reward: dict, responses: Spec | str) -> list[float]:
        """Reward of each sample of a policy (a Spec, flattened prompt by prompt), or of the pairs' 'chosen' /
        'rejected' responses."""
        key = (reward["id"], responses)
        if key not in self._scores:
            if isinstance(responses, Spec):
                messages, texts = [], []
                for prompt, per_prompt in zip(self.prompts, self.samples(responses)):
                    messages += [prompt["messages"]] * len(per_prompt)
                    texts += [s.text for s in per_prompt]
            else:
                messages = [p["messages"] for p in self.pairs]
                texts = [p[responses] for p in self.pairs]
            from training.engine.reward_scoring import score_responses

            model, tokenizer = self.reward_model(reward)
            self._scores[key] = score_responses(model, tokenizer, messages, texts, self.config.batch_size,
                                                self.config.max_length)
        return self._scores[key]

    # --- lineage ----------------------------------------------------------------------------------------------
    def base_spec(self, checkpoint: dict) -> Spec:
        """The base model at the root of the checkpoint's lineage, without any adapter."""
        while checkpoint["parent_id"] is not None and checkpoint["parent_id"] in self.checkpoints:
            checkpoint = self.checkpoints[checkpoint["parent_id"]]
        return Spec(checkpoint["base_model"], None)

    def previous_policy(self, checkpoint: dict) -> dict | None:
        """The model of the round whose labels trained this checkpoint, else its parent (None for a root)."""
        trained_on = [r for r in self.rounds if r["id"] == checkpoint["round_id"]]
        previous_id = trained_on[0]["checkpoint_id"] if trained_on else checkpoint["parent_id"]
        previous = self.checkpoints.get(previous_id)
        return previous if previous is not None and previous["id"] != checkpoint["id"] else None

    def training_reference(self, checkpoint: dict, base: Spec) -> Spec:
        """The model DPO pulled this checkpoint towards: its parent under `reference: parent` (the default, also for
        checkpoints stored before the option existed), else (`reference: base`, other kinds, a root) the base model."""
        parent = self.checkpoints.get(checkpoint["parent_id"])
        if checkpoint["kind"] != "dpo" or parent is None or checkpoint["config"].get("reference", "parent") != "parent":
            return base
        return spec_of(parent)

    def latest_reward(self) -> dict | None:
        rewards = [c for c in self.checkpoints.values() if c["kind"] == "reward"]
        return max(rewards, key=lambda c: c["id"]) if rewards else None

    # --- metrics ----------------------------------------------------------------------------------------------
    def estimate(self, values, statistic=None) -> Estimate:
        return bootstrap(values, statistic, n_boot=self.config.bootstrap, seed=self.config.seed)

    def by_prompt(self, groups: Sequence[Sequence[float]]) -> Estimate:
        """Mean of every value, its interval from resampling prompts (the groups), n = values."""
        return bootstrap_by_group(groups, n_boot=self.config.bootstrap, seed=self.config.seed)

    def by_group(self, keys: Sequence, values: Sequence[float]) -> dict[str, dict]:
        """The mean of `values` for each key, with its interval, keys in order (as strings: JSON's keys)."""
        groups: dict = {}
        for key, value in zip(keys, values):
            groups.setdefault(key, []).append(value)
        return {str(key): asdict(self.estimate(group)) for key, group in sorted(groups.items())}

    def win_rate(self, new: Spec, old: Spec, outcome: Outcome) -> Estimate:
        """Win rate of `new` over `old`, sample j against sample j on every held-out prompt, by prompt."""
        groups = [
            [WIN_SCORES[outcome(i, j, n, o)] for j, (n, o) in enumerate(zip(mine, theirs))]
            for i, (mine, theirs) in enumerate(zip(self.samples(new), self.samples(old)))
        ]
        return self.by_prompt(groups)

    def evaluate(self, checkpoint: dict) -> list[dict]:
        """Metric rows (as `Store.add_eval_results` takes them) for one checkpoint."""
        if checkpoint["kind"] == "reward":
            return self.evaluate_reward(checkpoint)
        return self.evaluate_policy(checkpoint)

    def evaluate_reward(self, reward: dict) -> list[dict]:
        if not self.pairs:
            return []
        chosen, rejected = self.reward_scores(reward, "chosen"), self.reward_scores(reward, "rejected")
        margins = [c - r for c, r in zip(chosen, rejected)]
        return [
            self.estimate([float(m > 0) for m in margins]).row(
                "reward_accuracy", mean_margin=sum(margins) / len(margins)
            )
        ]

    def evaluate_policy(self, checkpoint: dict) -> list[dict]:
        spec, base = spec_of(checkpoint), self.base_spec(checkpoint)
        rows = []
        if self.pairs:
            rows.extend(self.heldout_accuracy(checkpoint, spec, base))
        if self.prompts:
            samples = self.samples(spec)
            per_prompt = [[float(s.tokens) for s in row] for row in samples]
            flat = [s for row in samples for s in row]
            rows.append(
                self.by_prompt(per_prompt).row(
                    "response_length",
                    unit="tokens",
                    prompts=len(samples),
                    mean_chars=sum(len(s.text) for s in flat) / len(flat),
                    truncated=sum(not s.stopped for s in flat),
                    max_new_tokens=self.config.max_new_tokens,
                )
            )
            reward = self.latest_reward()
            if reward is not None:
                # One reward model scores every round's samples, so the numbers compare across rounds (RL's target).
                scores = iter(self.reward_scores(reward, spec))
                rows.append(
                    self.by_prompt([[next(scores) for _ in row] for row in samples]).row(
                        "heldout_reward", reward_checkpoint=reward["id"], prompts=len(samples)
                    )
                )
            rows.append(self.kl_to_base(spec, base))
        win = self.win_rate_vs_previous(checkpoint)
        if win is not None:
            rows.append(win)
        return rows

    def heldout_accuracy(self, checkpoint: dict, spec: Spec, base: Spec) -> list[dict]:
        """Three rows: the accuracy of the implicit reward against the base model (summed log-ratio, and its per-token
        mean), and of the summed one against the checkpoint's training reference."""
        reference = self.training_reference(checkpoint, base)
        chosen, rejected = self.pair_logps(spec, base)
        beta = float(checkpoint["config"].get("beta", self.config.beta))
        # Length check: a policy far from the base scores every base-like token higher or lower, so the summed
        # log-ratio also ranks by length. The per-token figure and the split by which answer is longer tell a lead
        # whether a flat accuracy is the labels' property or the answers' lengths.
        longer = ["chosen_longer" if c > r else "chosen_shorter" if c < r else "same_length"
                  for c, r in zip(chosen.tokens, rejected.tokens)]
        # The pool mixes every round's held-out pairs, each sampled from that round's model: per generating round, a
        # lead can tell a model that orders the newest answers worse from one that forgets the oldest.
        pair_rounds = [pair["round_id"] for pair in self.pairs]
        rows = []
        forms = (("heldout_accuracy", base, False), ("heldout_accuracy_per_token", base, True),
                 ("heldout_accuracy_vs_reference", reference, False))
        for metric, against, per_token in forms:
            against_chosen, against_rejected = self.pair_logps(against, base)  # cached: loaded once per model
            margins = implicit_reward_margins(chosen, against_chosen, rejected, against_rejected, per_token)
            outcomes = [ordering(m) for m in margins]
            rows.append(self.estimate(outcomes).row(
                metric, beta=beta, mean_margin=beta * sum(margins) / len(margins), reference=against._asdict(),
                by_pair_round=self.by_group(pair_rounds, outcomes), by_length=self.by_group(longer, outcomes),
            ))
        return rows

    def kl_to_base(self, spec: Spec, base: Spec) -> dict:
        under_base = self.sample_logps(spec, base)
        own = self.sample_logps(spec, spec, base)
        per_response = iter(own.log_ratios(under_base))
        groups = [[next(per_response) for _ in row] for row in self.samples(spec, "kl")]
        total = sum(sum(g) for g in groups)
        return self.by_prompt(groups).row(
            "kl_to_base", unit="nats per response", nats_per_token=total / max(1, sum(own.tokens)),
            prompts=len(groups), base=base._asdict(),
        )

    def win_rate_vs_previous(self, checkpoint: dict) -> dict | None:
        human = self.store.vs_previous_outcomes(checkpoint["id"])
        if human:
            outcomes = [preference_outcome(r["final_choice"], r["new_side"]) for r in human]
            return win_rate(outcomes, self.config.seed, self.config.bootstrap).row(
                "win_rate_vs_previous",
                source="human",
                previous_checkpoints=sorted({r["previous_checkpoint_id"] for r in human}),
            )
        previous, reward = self.previous_policy(checkpoint), self.latest_reward()
        if previous is None or reward is None or not self.prompts or spec_of(previous) == spec_of(checkpoint):
            return None
        new, old = spec_of(checkpoint), spec_of(previous)
        new_scores, old_scores = self.reward_scores(reward, new), self.reward_scores(reward, old)
        k = self.config.samples_per_prompt

        def by_reward(i: int, j: int, _new: Sample, _old: Sample) -> str:
            n, o = new_scores[i * k + j], old_scores[i * k + j]
            return "win" if n > o else "loss" if n < o else "tie"

        return self.win_rate(new, old, by_reward).row(
            "win_rate_vs_previous",
            source="reward_model",
            reward_checkpoint=reward["id"],
            previous_checkpoints=[previous["id"]],
            prompts=len(self.prompts),
        )


# --- what to evaluate, and storing the results ----------------------------------------------------------------


def implicit_reward_margins(
    chosen: LogProbs, base_chosen: LogProbs, rejected: LogProbs, base_rejected: LogProbs, per_token: bool = False
) -> list[float]:
    """Per pair, the chosen answer's implicit reward minus the rejected one's (DPO's reward divided by beta): log pi -
    log base summed over each answer's tokens, or with `per_token` averaged over them (the length-normalised
    reward)."""
    chosen_rewards = chosen.log_ratios(base_chosen, per_token)
    return [c - r for c, r in zip(chosen_rewards, rejected.log_ratios(base_rejected, per_token))]


def ordering(margin: float) -> float:
    """1 when the chosen answer's reward is higher, 0 when lower, 1/2 for an exact tie (the base model's)."""
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def select_checkpoints(store: Store, checkpoint_id: int | None, every: bool) -> list[dict]:
    """That checkpoint; every checkpoint; or (the default) the newest policy and the newest reward model."""
    if checkpoint_id is not None:
        return [store.get_checkpoint(checkpoint_id)]
    if every:
        return store.list_checkpoints()
    latest = [store.latest_checkpoint(POLICY_KINDS), store.latest_checkpoint(("reward",))]
    return [c for c in latest if c is not None]


def evaluate(
    store: Store, config: EvalConfig, checkpoints: list[dict], log=print, evaluator: Evaluator | None = None
) -> dict[int, list[dict]]:
    """Evaluate and store each checkpoint's metrics; returns the rows per checkpoint id. Pass an `evaluator` to
    reuse its samples and scores afterwards (loop-sim's judge win rates)."""
    evaluator = evaluator or Evaluator(store, config, log)
    if not evaluator.pairs:
        log("no judged held-out pairs with a final label: held-out and reward-model accuracy are skipped")
    if not evaluator.prompts:
        log("no held-out prompts: KL, response length and reward-model win rate are skipped")
    results = {}
    for checkpoint in checkpoints:
        round_id = checkpoint_round(checkpoint, evaluator.rounds)
        log(f"checkpoint {checkpoint['id']} ({checkpoint['kind']}, round {round_id})")
        rows = evaluator.evaluate(checkpoint)
        store.add_eval_results(checkpoint["id"], round_id, rows)
        results[checkpoint["id"]] = rows
        for row in rows:
            estimate = Estimate(row["value"], row["ci_low"], row["ci_high"], row["n"])
            log(f"  {row['metric']:<22} {format_estimate(estimate)}")
    return results
