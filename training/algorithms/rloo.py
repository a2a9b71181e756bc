"""RLOO (REINFORCE leave-one-out) on a LoRA adapter with TRL's RLOOTrainer, scored by the registered reward model.

    prefloop train-rloo                                   # newest policy checkpoint, newest reward model
    prefloop train-rloo --config configs/rloo.yaml --max-steps 100
    prefloop train-rloo --resume                          # continue an interrupted run
    make train-rloo CONFIG=configs/rloo.yaml

Each prompt gets `num_generations` completions; a completion's advantage is its reward minus the mean reward of the
other completions of the same prompt, so no value model is needed. The reward is the function PPO uses
(`training.engine.reward_scoring`: prompt + completion rendered by the reward tokenizer's chat template, score
at the last real token) minus `missing_eos_penalty` for a completion without EOS. The KL penalty's reference is the parent
checkpoint, as in DPO: TRL keeps a frozen copy ("ref") of the adapter it trains, which is the parent's adapter, or a
fresh one equal to the base model. The run directory and the registered 'rloo' checkpoint are laid out as DPO's
(training/algorithms/run.py), plus history.json: every step's reward-model score, reward, KL, completion length, share
cut at the length limit, loss and gradient norm, rewritten at each step so that a stopped run keeps it
(bench/rloo_curves.py draws it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from training.algorithms.rl_setup import resolve_reward, reward_round, summarize, train_prompts
from training.algorithms.run import Run, base_model_of, choose_parent, trl_config
from training.config import opt
from training.engine.reward_scoring import load_reward_model, reward_model_fn
from training.model_source import resolve_model
from training.models import ModelConfig, checkpoint_tokenizer, load_trainable


@dataclass
class RLOOTrainConfig(ModelConfig):
    backend: str = opt("transformers", "transformers (+ PEFT); unsloth or auto are untested with RLOO")
    gradient_checkpointing: bool = opt(False, "recompute activations in the backward pass: less memory, more time")
    max_length: int = opt(512, "most tokens of prompt + completion; longer prompts (minus max_new_tokens) are skipped")
    parent: int | None = opt(
        None, "policy checkpoint to start from and to hold as the KL reference; empty: the newest policy checkpoint"
    )
    reward_checkpoint: int | None = opt(None, "reward-model checkpoint that scores completions; empty: the newest")
    output_dir: str = opt("", "run directory; empty: checkpoints/round-<n>/rloo (n: the reward model's round)")
    seed: int = opt(0, "seed of the adapter's initialisation, prompt order and sampling")
    max_steps: int = opt(100, "optimizer steps; the learning rate decays linearly to 0 at the last one")
    per_device_train_batch_size: int = opt(16, "completions per optimizer step: a multiple of num_generations")
    num_generations: int = opt(4, "completions per prompt; each one's baseline is the others' mean reward")
    learning_rate: float = opt(
        5e-4, "AdamW learning rate of the LoRA parameters; measured on the GPU against 3e-5 and 2e-4 (docs/benchmarks.md)"
    )
    warmup_steps: float = opt(0.0, "learning-rate warmup: optimizer steps, or below 1 a fraction of all steps")
    max_grad_norm: float = opt(1.0, "gradient norm clip")
    max_new_tokens: int = opt(128, "completion length limit; a completion that reaches it has no EOS")
    temperature: float = opt(0.7, "sampling temperature; TRL computes log-probs at the same temperature")
    missing_eos_penalty: float = opt(1.0, "subtracted from the reward of a completion that ends without EOS")
    beta: float = opt(0.05, "weight of the KL penalty to the reference, subtracted from each completion's reward")
    epsilon: float = opt(0.2, "policy ratio clip range")
    num_iterations: int = opt(1, "optimisation passes over each generation batch")
    logging_steps: int = opt(1, "optimizer steps between log lines; the NaN check runs at each")
    save_steps: int = opt(50, "optimizer steps between resumable checkpoints")
    save_total_limit: int = opt(2, "resumable checkpoints kept (the newest)")
    report_to: list[str] = opt(["tensorboard"], "trainer loggers (tensorboard, wandb, ...); none for no logger")
    lm_head: str = opt("auto", "log-probs: fused (TRL's Triton kernel, GPU), plain (full logits), or auto")


def eos_penalized_reward(score, eos_token_id: int, penalty: float):
    """A TRL reward function (prompts, completions, completion_ids) around a PPO RewardFn, with the missing-EOS
    penalty (TRL's completion ids end with EOS when the completion has one). The mean reward-model score alone is
    logged as `reward_model_score` (TRL's `reward` includes the penalty)."""

    def reward_model(prompts, completions, completion_ids, log_metric=None, **kwargs) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = [float(s) for s in score(prompts, texts, completion_ids)]
        if log_metric is not None:
            log_metric("reward_model_score", sum(scores) / len(scores))
        ended = [bool(ids) and ids[-1] == eos_token_id for ids in completion_ids]
        return [s - (0.0 if e else penalty) for s, e in zip(scores, ended)]

    return reward_model


# history.json's fields and the TRL log keys they come from
HISTORY_FIELDS = {
    "reward_model_score": "reward_model_score",
    "reward": "reward",  # reward-model score minus the missing-EOS penalty (the KL penalty is not in it)
    "kl": "kl",  # mean per-token log-ratio to the reference (TRL's first-order estimate)
    "completion_length": "completions/mean_length",
    "clipped_ratio": "completions/clipped_ratio",  # share of completions cut at max_new_tokens (no EOS)
    "entropy": "entropy",
    "loss": "loss",
    "grad_norm": "grad_norm",
}


def train_rloo(
    store, config: RLOOTrainConfig, resume: bool = False, overwrite: bool = False, callbacks: tuple = ()
) -> int:
    """RLOO from the newest (or the given) policy checkpoint on the store's train-split prompts; returns the new
    checkpoint's id."""
    if config.per_device_train_batch_size % config.num_generations:
        raise ValueError(
            f"per_device_train_batch_size ({config.per_device_train_batch_size}) must be a multiple of "
            f"num_generations ({config.num_generations})"
        )
    parent = choose_parent(store, config.parent)
    base_model = base_model_of(config, parent)
    adapter = parent["adapter_path"] if parent else None
    reward = resolve_reward(store, config.reward_checkpoint)
    config = dataclasses.replace(config, reward_checkpoint=reward["id"])  # the run records which one scored
    prompts = train_prompts(
        store, checkpoint_tokenizer(resolve_model(base_model), adapter), config.max_length - config.max_new_tokens
    )
    with Run(store, "rloo", config, reward_round(store, reward), None, parent, base_model, resume, overwrite) as run:
        loaded = load_trainable(config, resolve_model(base_model), adapter, seed=config.seed)
        start = f"checkpoint {parent['id']} ({parent['kind']})" if parent else "the base model"
        print(f"rloo: {base_model} from {start}, scored by reward checkpoint {reward['id']}, {len(prompts)} prompts; "
              f"{loaded.describe()}; output {run.output_dir}")

        import trl  # after load_trainable: Unsloth patches TRL when it is imported first
        from datasets import Dataset

        from training.algorithms.callbacks import SaveOnlyTrainedAdapter, StopOnNonFiniteLoss, WriteHistory
        from training.engine.lm_head import install_lm_head

        reward_model, reward_tokenizer = load_reward_model(reward, loaded.dtype)
        score = reward_model_fn(reward_model, reward_tokenizer, config.per_device_train_batch_size)
        history = WriteHistory(run.output_dir / "history.json", HISTORY_FIELDS, when="reward")
        args = trl_config(
            trl.RLOOConfig, config, run.output_dir, loaded, max_completion_length=config.max_new_tokens,
            top_k=0, top_p=1.0,  # sample from softmax(logits / T) itself, the distribution the loss's log-probs use
            disable_dropout=True,
        )
        trainer = trl.RLOOTrainer(
            model=loaded.model,
            reward_funcs=eos_penalized_reward(score, loaded.tokenizer.eos_token_id, config.missing_eos_penalty),
            args=args,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=loaded.tokenizer,
            # history first: the step that stops the run is in it
            callbacks=[history, StopOnNonFiniteLoss(), SaveOnlyTrainedAdapter(), *callbacks],
        )
        install_lm_head(trainer, config.lm_head, loaded.device, config.temperature)
        metrics = run.train(trainer)
        if history.history:
            metrics |= summarize(history.history, "reward", "kl")  # as PPO's: the score less the EOS penalty
        checkpoint_id = run.finish(trainer, loaded, metrics)
    return checkpoint_id
