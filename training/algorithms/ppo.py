"""PPO for a LoRA policy against the registered reward model, in one file (cleanrl style; TRL no longer ships PPO).

    prefloop train-ppo                                    # newest policy checkpoint, newest reward model
    prefloop train-ppo --config configs/ppo.yaml --reward-checkpoint 7 --num-updates 50
    make train-ppo CONFIG=configs/ppo.yaml

One update is one rollout batch followed by `ppo_epochs` passes of clipped updates over its minibatches:

1. Rollout: one response per prompt, sampled at temperature T with top-k and top-p off, so the sampling
   distribution is exactly softmax(logits / T); the log-probs PPO uses are computed at the same T. Each response is
   cut after its first EOS (EOS is not the pad token, so a pad token sampled mid-response stays a real token).
2. Score: the reward model reads prompt + response rendered by its chat template, as TRL's RewardTrainer trained it,
   at the last real token. A response that ran out of tokens before EOS loses `missing_eos_penalty`.
3. Per-token reward: -beta * (log pi(a|s) - log pi_ref(a|s)) at every response token, plus the score at the last.
4. GAE (gamma 1, lambda 0.95) with the value model; advantages whitened over the rollout's real tokens.
5. Clipped policy loss + vf_coef * clipped value loss, one AdamW over policy and value parameters.

Design choices:
- Reference model. The policy keeps training the start checkpoint's own LoRA adapter (a fresh one when it starts from
  a plain model), and the reference is a frozen copy of that adapter loaded under the name "reference"; with no start
  adapter, the reference is the policy with adapters disabled (a fresh LoRA has B = 0, so that is the start model).
  The alternative (merge the previous adapter into the base, train a fresh adapter on top, reference = adapters
  disabled) would leave an adapter that is only valid on the merged weights, so the registered checkpoint would have
  to carry a full merged copy of the model. A LoRA copy costs a few megabytes; TRL's RLOOTrainer does the same.
- Value model: a trainable LoRA copy of the reward model, whose score head (trained too) is the value head, so the
  critic starts out knowing what the reward looks like. With a programmatic reward (tests) it starts from the policy's
  base model with a fresh head. It reads the policy's tokens, so it needs the policy's tokenizer.
- Models load through training/models.py (`load_trainable`, `load_adapter_model`) on the transformers backend, and a
  run is recorded and saved by training/algorithms/run.py's `Run`, as DPO's is: checkpoints/round-<n>/ppo/ holds adapter/
  (the trained adapter and tokenizer, registered as a 'ppo' checkpoint), runs/ (TensorBoard), config.yaml,
  metrics.json (summary) and history.json (every update's metrics).
- Dropout is off in every model: with dropout, log-probs of the same tokens differ between rollout and update, so
  the ratio is not 1 at the first step and the KL to the reference is noisy.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from training.algorithms.ppo_math import (
    KLController,
    explained_variance,
    gae,
    logprobs_at_temperature,
    masked_mean,
    policy_loss,
    value_loss,
    whiten,
)
from training.algorithms.rl_setup import prompts_that_fit, resolve_reward, reward_round, summarize, train_prompts
from training.algorithms.run import Run, TrainingError, base_model_of, choose_parent, training_attention
from training.config import opt
from training.engine.reward_scoring import RewardFn, load_reward_model, per_token_scores, reward_model_fn, unwrap
from training.models import (
    ModelConfig,
    accelerator,
    checkpoint_tokenizer,
    load_trainable,
    resolve_model,
)

REFERENCE_ADAPTER = "reference"


@dataclass
class PPOConfig(ModelConfig):
    backend: str = opt("transformers", "transformers (+ PEFT): the loop switches adapters and calls generate itself")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass: less memory, more time")
    max_length: int = opt(512, "most tokens of prompt + response; prompts over max_length - max_new_tokens are skipped")
    parent: int | None = opt(
        None, "policy checkpoint to start from and to hold as the KL reference; empty: the newest policy checkpoint"
    )
    reward_checkpoint: int | None = opt(None, "reward-model checkpoint that scores responses; empty: the newest")
    output_dir: str = opt("", "run directory; empty: checkpoints/round-<n>/ppo (n: the reward model's round)")
    seed: int = opt(0, "seed of the LoRA and value-head initialisation, prompt order, sampling and minibatch order")
    num_updates: int = opt(100, "PPO updates; each samples one rollout batch and trains on it")
    rollout_batch_size: int = opt(64, "prompts per rollout batch, one response each")
    minibatch_size: int = opt(16, "responses per gradient step; also the batch size of the no-grad scoring passes")
    ppo_epochs: int = opt(4, "passes over each rollout batch")
    learning_rate: float = opt(3e-5, "AdamW learning rate of the policy's LoRA and of the value model")
    max_grad_norm: float = opt(1.0, "gradient norm clip")
    max_new_tokens: int = opt(128, "response length limit; a response that reaches it has no EOS")
    temperature: float = opt(0.7, "sampling temperature; log-probs are computed at the same temperature")
    missing_eos_penalty: float = opt(1.0, "subtracted from the score of a response that ends without EOS")
    kl_coef: float = opt(0.05, "beta: weight of the per-token KL penalty to the reference policy")
    target_kl: float | None = opt(
        None, "when set, beta adapts so the per-response KL tracks this value (Ziegler et al. 2019)"
    )
    kl_horizon: int = opt(10000, "responses over which the adaptive controller moves beta by at most a fifth")
    gamma: float = opt(1.0, "discount factor of GAE")
    lam: float = opt(0.95, "lambda of GAE")
    cliprange: float = opt(0.2, "policy ratio clip range epsilon")
    cliprange_value: float = opt(0.2, "value clip range around the rollout's values")
    vf_coef: float = opt(0.1, "weight of the value loss in the total loss")

    def validate(self) -> None:
        if self.backend != "transformers":
            raise ValueError(f"PPO runs on the transformers backend (+ PEFT), not {self.backend!r}")
        if self.load_in_4bit:
            raise ValueError("PPO trains 16-bit models: load_in_4bit is not supported (policy, value and reward model)")
        if self.rollout_batch_size % self.minibatch_size:
            raise ValueError(
                f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of minibatch_size "
                f"({self.minibatch_size})"
            )
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")
        if min(self.num_updates, self.ppo_epochs, self.max_new_tokens) < 1:
            raise ValueError("num_updates, ppo_epochs and max_new_tokens must be at least 1")
        if self.max_length <= self.max_new_tokens:
            raise ValueError(f"max_length ({self.max_length}) leaves no room for a prompt before max_new_tokens")


# A reward function scores a batch: (prompt messages, response texts, response token ids up to and including EOS)
# -> tensor of shape (batch,). The CLI uses the reward model; tests pass a programmatic one.


def response_batch(samples: list, pad_id: int, device=None):
    """The sampled completions (`training.engine.sampling.Sample`s) as one right-padded batch: (token ids, mask of the
    real tokens, the end-of-turn token included, has-EOS flags). A pad token the model sampled before its EOS is a
    real token: the mask comes from each completion's length, never from the token values."""
    import torch

    width = max(len(s.completion_ids) for s in samples)
    ids = torch.tensor([s.completion_ids + [pad_id] * (width - len(s.completion_ids)) for s in samples], device=device)
    lengths = torch.tensor([len(s.completion_ids) for s in samples], device=device)
    mask = torch.arange(width, device=device)[None, :] < lengths[:, None]
    has_eos = torch.tensor([s.stopped for s in samples], device=device)
    return ids, mask, has_eos


# --- models ----------------------------------------------------------------------------------------------------------


def _prepare(model, device: str, trainable: bool, gradient_checkpointing: bool = False):
    """Move to the device, switch dropout off, and keep trainable parameters in float32 (AdamW on bf16 loses updates)
    or freeze everything."""
    import torch

    model.to(device)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for param in model.parameters():
        if not trainable:
            param.requires_grad_(False)
        elif param.requires_grad:
            param.data = param.data.float()
    if gradient_checkpointing:  # only active in train mode: rollouts run in eval mode and keep the KV cache
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_policy(config: PPOConfig, base_model: str, adapter_path: str | None):
    """The trainable LoRA policy (a TrainableModel); with a start adapter, also a frozen copy of it as the reference."""
    loaded = load_trainable(config, base_model, adapter_path, "causal-lm", seed=config.seed)
    model = loaded.model
    if adapter_path:
        model.add_adapter(REFERENCE_ADAPTER, model.peft_config["default"])
        for name, param in model.named_parameters():
            if f".{REFERENCE_ADAPTER}." in name:
                param.data.copy_(model.get_parameter(name.replace(f".{REFERENCE_ADAPTER}.", ".default.")).data)
                param.requires_grad_(False)
        model.set_adapter("default")
    _prepare(model, loaded.device, True, config.gradient_checkpointing)
    return loaded


def load_value_model(config: PPOConfig, base_model: str, reward_adapter: str | None):
    """A trainable copy of the reward model (its LoRA and score head), or a fresh LoRA and head on `base_model`."""
    model = load_trainable(config, base_model, reward_adapter, "reward", seed=config.seed).model
    unwrap(model).score.float()  # a one-row head: float32 costs nothing and keeps small value updates
    return _prepare(model, accelerator(), True, config.gradient_checkpointing)


# --- rollouts and updates --------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One rollout batch; per-token tensors are (batch, response tokens) and 0 past each response's end."""

    query: object  # (batch, query tokens), left-padded
    query_mask: object
    response: object  # (batch, response tokens), pad after EOS
    response_mask: object  # 1.0 for real response tokens, EOS included
    has_eos: object  # (batch,)
    logprobs: object
    values: object
    advantages: object  # whitened
    returns: object
    scores: object  # (batch,): reward after the missing-EOS penalty
    kl: object  # (batch,): summed per-token log-ratio to the reference


def _sequence(query, query_mask, response, response_mask):
    """input_ids, attention mask and position ids of query + response (positions skip the left padding)."""
    import torch

    input_ids = torch.cat([query, response], dim=1)
    attention_mask = torch.cat([query_mask, response_mask], dim=1).long()
    return input_ids, attention_mask, (attention_mask.cumsum(-1) - 1).clamp(min=0)


def _policy_forward(model, query, query_mask, response, response_mask, temperature: float):
    """Per-token log-probs and entropies of the response tokens at temperature T."""
    input_ids, attention_mask, positions = _sequence(query, query_mask, response, response_mask)
    steps = response.shape[1]
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=False,
        logits_to_keep=steps + 1,  # the logits that predict the response tokens, and one more
    ).logits[:, :-1]
    return logprobs_at_temperature(logits, response, temperature)


def _value_forward(model, query, query_mask, response, response_mask):
    """Values of the states before each response token (the position that predicts it)."""
    input_ids, attention_mask, positions = _sequence(query, query_mask, response, response_mask)
    return per_token_scores(model, input_ids, attention_mask, positions)[:, query.shape[1] - 1 : -1]


def _reference(policy):
    """Context in which the policy computes the reference's log-probs."""
    from trl.trainer.utils import use_adapter

    return use_adapter(policy, REFERENCE_ADAPTER if REFERENCE_ADAPTER in policy.peft_config else None)


def _left_pad(sequences: list[list[int]], pad_id: int, device):
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in sequences], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=device)
    return ids, mask


def collect_rollout(policy, value_model, tokenizer, prompts, reward_fn: RewardFn, config, beta: float, seed: int):
    """One response per prompt from the policy (the one sampler, at the policy's temperature with no truncation of
    the distribution), scored by the reward function, with log-probs, reference log-probs, values and advantages."""
    import torch

    from training.engine.sampling import Decoding, sample

    # Dropout is off anyway; eval mode keeps generate's KV cache when gradient checkpointing is on.
    policy.eval()
    value_model.eval()
    device = next(policy.parameters()).device
    # top_p 1: the sampling distribution must be softmax(logits / T), the one the PPO ratio is taken under. The hf
    # engine: the static decoder captures the weights it is built with, and the policy's change every update.
    decoding = Decoding(config.temperature, top_p=1.0, max_new_tokens=config.max_new_tokens, engine="hf")
    samples = [per_prompt[0] for per_prompt in sample(policy, tokenizer, prompts, 1, decoding, seed)]
    query, query_mask = _left_pad([s.prompt_ids for s in samples], tokenizer.pad_token_id, device)
    response, response_mask, has_eos = response_batch(samples, tokenizer.pad_token_id, device)
    with torch.no_grad():
        response_mask = response_mask.float()
        logprobs, ref_logprobs, values = [], [], []
        for rows in torch.arange(len(samples), device=device).split(config.minibatch_size):
            args = (query[rows], query_mask[rows], response[rows], response_mask[rows])
            logprobs.append(_policy_forward(policy, *args, config.temperature)[0])
            with _reference(policy):
                ref_logprobs.append(_policy_forward(policy, *args, config.temperature)[0])
            values.append(_value_forward(value_model, *args))
        logprobs, ref_logprobs = torch.cat(logprobs) * response_mask, torch.cat(ref_logprobs) * response_mask
        values = torch.cat(values) * response_mask

        texts = [s.text for s in samples]
        scores = reward_fn(prompts, texts, [s.completion_ids for s in samples]).to(device).float()
        scores = scores - config.missing_eos_penalty * (~has_eos).float()

        per_token_kl = logprobs - ref_logprobs  # k1 estimator: its sum over a response is that response's log-ratio
        rewards = -beta * per_token_kl
        last = response_mask.sum(1).long() - 1
        rewards[torch.arange(len(last), device=device), last] += scores
        advantages, returns = gae(rewards, values, response_mask, config.gamma, config.lam)
        advantages = whiten(advantages, response_mask)
    return Rollout(
        query, query_mask, response, response_mask, has_eos, logprobs, values, advantages, returns, scores,
        per_token_kl.sum(1),
    )


def ppo_update(policy, value_model, optimizer, params, rollout: Rollout, config: PPOConfig, generator) -> dict:
    """`ppo_epochs` passes of clipped minibatch updates over one rollout batch; returns mean statistics."""
    import torch

    policy.train()
    value_model.train()
    stats = defaultdict(list)
    batch = rollout.response.shape[0]
    for _ in range(config.ppo_epochs):
        for rows in torch.randperm(batch, generator=generator).split(config.minibatch_size):
            rows = rows.to(rollout.response.device)
            mask = rollout.response_mask[rows]
            args = (rollout.query[rows], rollout.query_mask[rows], rollout.response[rows], mask)
            logprobs, entropy = _policy_forward(policy, *args, config.temperature)
            values = _value_forward(value_model, *args)
            pg_loss, pg_clipfrac, approx_kl = policy_loss(
                logprobs, rollout.logprobs[rows], rollout.advantages[rows], mask, config.cliprange
            )
            vf_loss, vf_clipfrac = value_loss(
                values, rollout.values[rows], rollout.returns[rows], mask, config.cliprange_value
            )
            optimizer.zero_grad(set_to_none=True)
            (pg_loss + config.vf_coef * vf_loss).backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            for key, value in (
                ("policy/loss", pg_loss),
                ("policy/clipfrac", pg_clipfrac),
                ("policy/approx_kl", approx_kl),
                ("policy/entropy", masked_mean(entropy.detach(), mask)),
                ("value/loss", vf_loss),
                ("value/clipfrac", vf_clipfrac),
            ):
                stats[key].append(value.item())
    return {key: sum(v) / len(v) for key, v in stats.items()}


def train(
    policy,
    value_model,
    tokenizer,
    prompts: list[list[dict]],
    reward_fn: RewardFn,
    config: PPOConfig,
    log_dir: Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Run `config.num_updates` PPO updates; returns one metrics dict per update (also written to TensorBoard)."""
    import torch
    from tqdm.auto import tqdm

    config.validate()
    kept = prompts_that_fit(tokenizer, prompts, config.max_length - config.max_new_tokens)
    if not kept:
        raise ValueError(f"no prompt fits max_length - max_new_tokens = {config.max_length - config.max_new_tokens}")
    prompts = [prompts[i] for i in kept]
    tokenizer.padding_side = "left"  # the sampler batches prompts padded on the left
    generator = torch.Generator().manual_seed(config.seed)  # prompt and minibatch order
    params = [p for model in (policy, value_model) for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, eps=1e-5)
    kl_controller = KLController(config.kl_coef, config.target_kl, config.kl_horizon)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    order: list[int] = []
    history = []
    bar = tqdm(range(1, config.num_updates + 1), desc="ppo", disable=not progress)
    for update in bar:
        while len(order) < config.rollout_batch_size:  # walk through the prompts in a fresh random order each pass
            order += torch.randperm(len(prompts), generator=generator).tolist()
        batch, order = order[: config.rollout_batch_size], order[config.rollout_batch_size :]
        beta = kl_controller.value
        rollout = collect_rollout(
            policy, value_model, tokenizer, [prompts[i] for i in batch], reward_fn, config, beta, config.seed + update
        )
        metrics = {"update": update, **rollout_metrics(rollout, beta)}
        metrics.update(ppo_update(policy, value_model, optimizer, params, rollout, config, generator))
        if not (math.isfinite(metrics["kl"]) and math.isfinite(metrics["policy/loss"])):
            raise TrainingError(
                f"update {update}: KL {metrics['kl']}, policy loss {metrics['policy/loss']}; training stopped before "
                f"saving. Lower learning_rate (now {config.learning_rate}) or raise kl_coef"
            )
        kl_controller.update(metrics["kl"], config.rollout_batch_size)
        history.append(metrics)
        bar.set_postfix(reward=f"{metrics['reward/score']:.3f}", kl=f"{metrics['kl']:.3f}")
        if writer is not None:
            for key, value in metrics.items():
                if key != "update":
                    writer.add_scalar(key, value, update)
    if writer is not None:
        writer.close()
    return history


def rollout_metrics(rollout: Rollout, beta: float) -> dict:
    """What one rollout says before the update: reward-model score, the KL-penalised reward, KL to the reference,
    response length and share ended by EOS, and how much of the returns the value model explains."""
    return {
        "reward/score": float(rollout.scores.mean()),
        "reward/rlhf": float((rollout.scores - beta * rollout.kl).mean()),
        "kl": float(rollout.kl.mean()),
        "kl_coef": beta,
        "response/length": float(rollout.response_mask.sum(1).mean()),
        "response/eos_fraction": float(rollout.has_eos.float().mean()),
        "value/explained_variance": explained_variance(rollout.values, rollout.returns, rollout.response_mask),
    }


def train_ppo(
    store, config: PPOConfig, reward_fn: RewardFn | None = None, overwrite: bool = False, progress: bool = True
) -> int:
    """PPO from the newest (or the given) policy checkpoint on the store's train-split prompts; returns the new
    checkpoint's id. Without `reward_fn` the registered reward model scores responses and initialises the value model.
    """
    import dataclasses
    from types import SimpleNamespace


    config.validate()
    parent = choose_parent(store, config.parent)
    base_model = base_model_of(config, parent)
    adapter = parent["adapter_path"] if parent else None
    reward = None if reward_fn else resolve_reward(store, config.reward_checkpoint)
    if reward is not None:
        config = dataclasses.replace(config, reward_checkpoint=reward["id"])  # the run records which one scored
    tokenizer = checkpoint_tokenizer(resolve_model(base_model), adapter)
    prompts = train_prompts(store, tokenizer, config.max_length - config.max_new_tokens)
    with Run(store, "ppo", config, reward_round(store, reward), None, parent, base_model, overwrite=overwrite) as run:
        loaded = load_policy(config, resolve_model(base_model), adapter)
        if reward is None:
            value_model = load_value_model(config, resolve_model(base_model), None)
            score = reward_fn
        else:
            reward_model, reward_tokenizer = load_reward_model(reward, loaded.dtype)
            if reward_tokenizer.get_vocab() != loaded.tokenizer.get_vocab():
                raise TrainingError(
                    f"reward checkpoint {reward['id']} has another tokenizer than the policy; the value model starts "
                    "from the reward model and must read the policy's tokens"
                )
            value_model = load_value_model(config, resolve_model(reward["base_model"]), reward["adapter_path"])
            score = reward_model_fn(reward_model, reward_tokenizer, config.minibatch_size)
        start = f"checkpoint {parent['id']} ({parent['kind']})" if parent else "the base model"
        scorer = f"reward checkpoint {reward['id']}" if reward else "a programmatic reward"
        print(f"ppo: {base_model} from {start}, scored by {scorer}; {loaded.describe()}; output {run.output_dir}")
        with training_attention():
            history = train(
                loaded.model, value_model, loaded.tokenizer, prompts, score, config, run.output_dir / "runs", progress
            )
        (run.output_dir / "history.json").write_text(json.dumps(history, indent=2))
        metrics = summarize(history, "reward/score", "kl")
        # Run.finish saves `trainer.model`'s trained adapter ("default") and the tokenizer next to it.
        checkpoint_id = run.finish(SimpleNamespace(model=loaded.model), loaded, metrics)
    return checkpoint_id
