"""`prefloop eval`: did this round make the model better? Every number with a bootstrap 95% confidence interval.

    prefloop eval                      # the newest policy checkpoint and the newest reward model
    prefloop eval --all                # every registered checkpoint: one row set per round
    prefloop eval --checkpoint 7       # one checkpoint (policy or reward model)
    prefloop eval --table              # print the stored results, evaluate nothing
    prefloop eval --labels             # label quality: kappa, alpha, per-annotator agreement and bias
    make eval ARGS="--all"

Metrics stored per checkpoint (and the round it belongs to) in `eval_results`:

  heldout_acc_dpo       share of judged held-out pairs where the DPO implicit reward beta * (log pi - log pi_ref)
                        is higher for the human-chosen response; pi_ref is the checkpoint's parent, or its base
                        model when it has none. Not computed for the base model itself (pi = pi_ref).
  heldout_acc_lnlp      the same by length-normalised log-probability (mean log-prob per response token).
  reward_accuracy       (reward checkpoints) share of the same pairs where the reward model scores chosen higher.
  win_rate_vs_previous  win rate over the model of the round the checkpoint was trained on (ties count 1/2): from
                        the final labels of held-out 'vs-previous' pairs when there are any, otherwise both models
                        sample on held-out prompts and the newest reward model judges.
  kl_to_base            KL(pi || base) in nats per response, estimated on held-out prompts as the mean over responses
                        y ~ pi (temperature 1, no truncation) of log pi(y|x) - log base(y|x), summed over the sampled
                        tokens; the per-token figure is in details. An unbiased estimate, so single responses can
                        be negative.
  response_length       mean tokens per sampled response (before the end-of-turn token), to catch length hacking.

A checkpoint's round is the round it generates (a rounds row), else the round after the one whose labels trained it,
else 0 (the base model): round n's models are the ones trained on the labels of round n-1. Held-out pairs are those
of prompts in the held-out split with a final label of a or b (see store/evaluation.py).
"""

from __future__ import annotations

import argparse
import gc
from dataclasses import dataclass
from typing import NamedTuple

from store import Store
from training.cli import open_store
from training.config import ConfigError, add_arguments, from_args, opt
from training.logprobs import LogProbs, completion_ids, completion_logprobs, prompt_ids
from training.metrics import (
    Estimate,
    bootstrap,
    format_estimate,
    label_quality,
    preference_outcome,
    win_rate,
)
from training.rounds import POLICY_KINDS

METRICS = (
    "heldout_acc_dpo",
    "heldout_acc_lnlp",
    "reward_accuracy",
    "win_rate_vs_previous",
    "kl_to_base",
    "response_length",
)


@dataclass
class EvalConfig:
    max_pairs: int = opt(256, "judged held-out pairs to score (a fixed reproducible sample when there are more)")
    prompts: int = opt(32, "held-out prompts to sample responses on, for KL, length and reward-model win rate")
    max_new_tokens: int = opt(128, "token limit of each sampled response")
    beta: float = opt(0.1, "DPO beta for the implicit reward when the checkpoint's config records none")
    batch_size: int = opt(8, "sequences scored or sampled together")
    max_length: int = opt(1024, "longest prompt + response scored, in tokens (the prompt's start is cut first)")
    bootstrap: int = opt(1000, "bootstrap resamples behind each confidence interval")
    seed: int = opt(0, "seed of sampling and of the bootstrap, so reruns give the same numbers")

    def validate(self) -> None:
        for name in ("max_pairs", "prompts", "max_new_tokens", "batch_size", "bootstrap"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.max_length < 2:
            raise ConfigError(f"max_length must be at least 2, not {self.max_length}")


class Spec(NamedTuple):
    """A model to load: base model name (as registered) and LoRA adapter directory, if any."""

    base_model: str
    adapter_path: str | None


@dataclass
class Sampled:
    prompt_index: int
    prompt_ids: list[int]
    completion_ids: list[int]  # the sampled tokens, through the end-of-turn token when there was one
    text: str  # decoded answer, special tokens dropped
    tokens: int  # tokens before the end-of-turn token
    stopped: bool  # False when cut at max_new_tokens


def spec_of(checkpoint: dict) -> Spec:
    return Spec(checkpoint["base_model"], checkpoint.get("adapter_path"))


def checkpoint_round(checkpoint: dict, rounds: list[dict]) -> int:
    """The round a checkpoint's results belong to (see the module docstring)."""
    generated = [r["id"] for r in rounds if r["checkpoint_id"] == checkpoint["id"]]
    if generated:
        return min(generated)
    return 0 if checkpoint["round_id"] is None else checkpoint["round_id"] + 1


class Evaluator:
    """Scores checkpoints on the store's held-out data, loading one model at a time and caching what each model
    computed, so `--all` loads a parent once for its own metrics and its child's reference."""

    def __init__(self, store: Store, config: EvalConfig):
        config.validate()
        self.store, self.config = store, config
        self.checkpoints = {c["id"]: c for c in store.list_checkpoints()}
        self.rounds = store.list_rounds()
        self.pairs = store.heldout_preference_pairs(config.max_pairs)
        self.prompts = store.list_prompts(split="heldout", limit=config.prompts)
        self._loaded: tuple | None = None  # (key, model, tokenizer)
        self._pair_logps: dict[Spec, tuple[LogProbs, LogProbs]] = {}
        self._samples: dict[Spec, list[Sampled]] = {}
        self._sample_logps: dict[tuple[Spec, Spec], LogProbs] = {}
        self._scores: dict[tuple[int, Spec | str], list[float]] = {}

    # --- models -----------------------------------------------------------------------------------------------
    def _load(self, key, loader):
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None
            gc.collect()
            self._loaded = (key, *loader())
        return self._loaded[1], self._loaded[2]

    def policy(self, spec: Spec):
        from training.models import load_for_generation

        return self._load(spec, lambda: load_for_generation({"id": None, **spec._asdict()}))

    def reward_model(self, checkpoint: dict):
        return self._load(("reward", checkpoint["id"]), lambda: load_reward_model(checkpoint))

    # --- cached computations ----------------------------------------------------------------------------------
    def pair_logps(self, spec: Spec) -> tuple[LogProbs, LogProbs]:
        """Log-probs of the chosen and of the rejected response of every held-out pair under this model."""
        if spec not in self._pair_logps:
            model, tokenizer = self.policy(spec)
            c = self.config
            scored = []
            for side in ("chosen", "rejected"):
                sequences = [completion_ids(tokenizer, p["messages"], p[side]) for p in self.pairs]
                scored.append(completion_logprobs(model, sequences, tokenizer.pad_token_id, c.batch_size, c.max_length))
            self._pair_logps[spec] = (scored[0], scored[1])
        return self._pair_logps[spec]

    def samples(self, spec: Spec) -> list[Sampled]:
        if spec not in self._samples:
            model, tokenizer = self.policy(spec)
            self._samples[spec] = sample_responses(model, tokenizer, [p["messages"] for p in self.prompts], self.config)
        return self._samples[spec]

    def sample_logps(self, sampled_by: Spec, scored_by: Spec) -> LogProbs:
        key = (sampled_by, scored_by)
        if key not in self._sample_logps:
            samples = self.samples(sampled_by)
            model, tokenizer = self.policy(scored_by)
            self._sample_logps[key] = completion_logprobs(
                model,
                [(s.prompt_ids, s.completion_ids) for s in samples],
                tokenizer.pad_token_id,
                self.config.batch_size,
                self.config.max_length,
            )
        return self._sample_logps[key]

    def reward_scores(self, reward: dict, responses: Spec | str) -> list[float]:
        """Reward of the samples of a policy (a Spec), or of the pairs' 'chosen' / 'rejected' responses."""
        key = (reward["id"], responses)
        if key not in self._scores:
            if isinstance(responses, Spec):
                samples = self.samples(responses)
                messages = [self.prompts[s.prompt_index]["messages"] for s in samples]
                texts = [s.text for s in samples]
            else:
                messages = [p["messages"] for p in self.pairs]
                texts = [p[responses] for p in self.pairs]
            model, tokenizer = self.reward_model(reward)
            self._scores[key] = score_responses(model, tokenizer, messages, texts, self.config)
        return self._scores[key]

    # --- lineage ----------------------------------------------------------------------------------------------
    def base_spec(self, checkpoint: dict) -> Spec:
        """The base model at the root of the checkpoint's lineage, without any adapter."""
        while checkpoint["parent_id"] is not None and checkpoint["parent_id"] in self.checkpoints:
            checkpoint = self.checkpoints[checkpoint["parent_id"]]
        return Spec(checkpoint["base_model"], None)

    def reference_spec(self, checkpoint: dict) -> Spec:
        parent = self.checkpoints.get(checkpoint["parent_id"])
        return spec_of(parent) if parent is not None else Spec(checkpoint["base_model"], None)

    def previous_policy(self, checkpoint: dict) -> dict | None:
        """The model of the round whose labels trained this checkpoint, else its parent (None for a root)."""
        trained_on = [r for r in self.rounds if r["id"] == checkpoint["round_id"]]
        previous_id = trained_on[0]["checkpoint_id"] if trained_on else checkpoint["parent_id"]
        previous = self.checkpoints.get(previous_id)
        return previous if previous is not None and previous["id"] != checkpoint["id"] else None

    def latest_reward(self) -> dict | None:
        rewards = [c for c in self.checkpoints.values() if c["kind"] == "reward"]
        return max(rewards, key=lambda c: c["id"]) if rewards else None

    # --- metrics ----------------------------------------------------------------------------------------------
    def estimate(self, values, statistic=None) -> Estimate:
        return bootstrap(values, statistic, n_boot=self.config.bootstrap, seed=self.config.seed)

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
        spec, reference, base = spec_of(checkpoint), self.reference_spec(checkpoint), self.base_spec(checkpoint)
        rows = []
        if self.pairs:
            chosen, rejected = self.pair_logps(spec)
            rows.append(
                self.estimate([float(c > r) for c, r in zip(chosen.means, rejected.means)]).row("heldout_acc_lnlp")
            )
            if reference != spec:
                ref_chosen, ref_rejected = self.pair_logps(reference)
                beta = float(checkpoint["config"].get("beta", self.config.beta))
                margins = [
                    beta * ((pc - rc) - (pr - rr))
                    for pc, rc, pr, rr in zip(chosen.sums, ref_chosen.sums, rejected.sums, ref_rejected.sums)
                ]
                rows.append(
                    self.estimate([float(m > 0) for m in margins]).row(
                        "heldout_acc_dpo", beta=beta, mean_margin=sum(margins) / len(margins), reference=reference._asdict()
                    )
                )
        if self.prompts:
            samples = self.samples(spec)
            rows.append(
                self.estimate([float(s.tokens) for s in samples]).row(
                    "response_length",
                    unit="tokens",
                    mean_chars=sum(len(s.text) for s in samples) / len(samples),
                    truncated=sum(not s.stopped for s in samples),
                    max_new_tokens=self.config.max_new_tokens,
                )
            )
            reward = self.latest_reward()
            if reward is not None:
                # One reward model scores every round's samples, so the numbers compare across rounds (RL's target).
                rows.append(
                    self.estimate(self.reward_scores(reward, spec)).row("heldout_reward", reward_checkpoint=reward["id"])
                )
            if base != spec:
                own, under_base = self.sample_logps(spec, spec), self.sample_logps(spec, base)
                per_response = [p - b for p, b in zip(own.sums, under_base.sums)]
                rows.append(
                    self.estimate(per_response).row(
                        "kl_to_base",
                        unit="nats per response",
                        nats_per_token=sum(per_response) / max(1, sum(own.tokens)),
                        base=base._asdict(),
                    )
                )
        win = self.win_rate(checkpoint)
        if win is not None:
            rows.append(win)
        return rows

    def win_rate(self, checkpoint: dict) -> dict | None:
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
        new = self.reward_scores(reward, spec_of(checkpoint))
        old = self.reward_scores(reward, spec_of(previous))
        outcomes = ["win" if n > o else "loss" if n < o else "tie" for n, o in zip(new, old)]
        return win_rate(outcomes, self.config.seed, self.config.bootstrap).row(
            "win_rate_vs_previous",
            source="reward_model",
            reward_checkpoint=reward["id"],
            previous_checkpoints=[previous["id"]],
        )


def sample_responses(model, tokenizer, conversations: list[list[dict]], config: EvalConfig) -> list[Sampled]:
    """One response per conversation at temperature 1 with no top-k/top-p truncation, keeping the sampled token ids.

    `training.generate.sample` returns decoded texts; the KL estimate needs the very tokens that were drawn (a text
    re-tokenized need not give them back), hence this sampler.
    """
    import torch

    samples = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(conversations), config.batch_size):
        batch = [prompt_ids(tokenizer, m) for m in conversations[start : start + config.batch_size]]
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in batch])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
        torch.manual_seed(config.seed + start)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention.to(model.device),
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=config.max_new_tokens,
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row, ids in enumerate(output[:, width:].tolist()):
            stopped = eos in ids
            completion = ids[: ids.index(eos) + 1] if stopped else ids
            samples.append(
                Sampled(
                    prompt_index=start + row,
                    prompt_ids=batch[row],
                    completion_ids=completion,
                    text=tokenizer.decode(completion, skip_special_tokens=True).strip(),
                    tokens=len(completion) - stopped,
                    stopped=stopped,
                )
            )
    return samples


def load_reward_model(checkpoint: dict):
    """(model, tokenizer) of a reward checkpoint: AutoModelForSequenceClassification (one label) of the base model
    with the LoRA adapter and its saved score head (`training.models.load_adapter_model`), on the accelerator.
    Padding is on the right; the model scores the last token that is not padding."""
    import torch

    from training.models import ModelError, accelerator, checkpoint_tokenizer, load_adapter_model, resolve_model

    adapter = checkpoint.get("adapter_path")
    if not adapter:
        raise ModelError(f"reward checkpoint {checkpoint['id']} has no adapter directory")
    base = resolve_model(checkpoint["base_model"])
    device = accelerator()
    model = load_adapter_model(base, adapter, task="reward", dtype=torch.bfloat16 if device == "cuda" else None)
    tokenizer = checkpoint_tokenizer(base, adapter)
    tokenizer.padding_side = "right"
    return model.to(device), tokenizer


def score_responses(model, tokenizer, conversations: list[list[dict]], responses: list[str], config: EvalConfig):
    """Reward of each response as the assistant's answer, the conversation rendered by the chat template as TRL's
    RewardTrainer renders it for training."""
    import torch

    texts = [
        tokenizer.apply_chat_template(list(m) + [{"role": "assistant", "content": r}], tokenize=False)
        for m, r in zip(conversations, responses)
    ]
    scores = []
    device = next(model.parameters()).device
    for start in range(0, len(texts), config.batch_size):
        batch = tokenizer(
            texts[start : start + config.batch_size],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=config.max_length,
            add_special_tokens=False,
        ).to(device)
        with torch.inference_mode():
            scores += model(**batch).logits[:, 0].float().tolist()
    return scores


# --- command line ---------------------------------------------------------------------------------------------
def select_checkpoints(store: Store, checkpoint_id: int | None, every: bool) -> list[dict]:
    """That checkpoint; every checkpoint; or (the default) the newest policy and the newest reward model."""
    if checkpoint_id is not None:
        return [store.get_checkpoint(checkpoint_id)]
    if every:
        return store.list_checkpoints()
    latest = [store.latest_checkpoint(POLICY_KINDS), store.latest_checkpoint(("reward",))]
    return [c for c in latest if c is not None]


def evaluate(store: Store, config: EvalConfig, checkpoints: list[dict], log=print) -> dict[int, list[dict]]:
    """Evaluate and store each checkpoint's metrics; returns the rows per checkpoint id."""
    evaluator = Evaluator(store, config)
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


def results_table(store: Store) -> str:
    from training.commands import _table

    rows = [
        dict(
            round=r["round_id"],
            checkpoint=r["checkpoint_id"],
            kind=r["checkpoint_kind"],
            metric=r["metric"],
            value="" if r["value"] is None else f"{r['value']:.3f}",
            ci95="" if r["ci_low"] is None else f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]",
            n=r["n"],
            source=r["details"].get("source", ""),
        )
        for r in store.list_eval_results()
    ]
    if not rows:
        return "no evaluation results yet: run `prefloop eval`"
    return _table(rows, ["round", "checkpoint", "kind", "metric", "value", "ci95", "n", "source"])


def labels_report(store: Store, seed: int = 0, n_boot: int = 1000) -> str:
    from training.commands import _table

    quality = label_quality(store.label_rows(), seed, n_boot)
    lines = [
        f"Cohen's kappa (first two judgments of each pair): {format_estimate(quality['kappa'])}",
        f"Krippendorff's alpha (nominal, all judgments):    {format_estimate(quality['alpha'])}",
    ]
    rows = [
        dict(
            annotator=a["annotator"],
            judgments=a["count"],
            median_s="" if a["median_seconds"] is None else f"{a['median_seconds']:.1f}",
            **{key: format_estimate(a[key], 2) for key in ("agreement", "left_rate", "longer_rate", "gold_accuracy")},
        )
        for a in quality["annotators"]
    ]
    if rows:
        lines.append(_table(rows, list(rows[0])))
    return "\n".join(lines)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="held-out accuracy, win rate, KL and length per checkpoint, with 95%% confidence intervals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--checkpoint", type=int, metavar="ID", help="evaluate this checkpoint only")
    which.add_argument("--all", action="store_true", help="evaluate every registered checkpoint")
    which.add_argument("--table", action="store_true", help="print the stored results and evaluate nothing")
    which.add_argument("--labels", action="store_true", help="print label quality and evaluate nothing")
    add_arguments(p, EvalConfig)
    p.set_defaults(run=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    store = open_store(args)
    config = from_args(EvalConfig, args)
    config.validate()
    if args.labels:
        print(labels_report(store, config.seed, config.bootstrap))
        return 0
    if not args.table:
        checkpoints = select_checkpoints(store, args.checkpoint, args.all)
        if not checkpoints:
            print("no checkpoints registered: start a round (`prefloop round new`) or train one")
            return 1
        evaluate(store, config, checkpoints)
    print(results_table(store))
    return 0
