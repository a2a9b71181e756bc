"""What the RL algorithms (PPO, RLOO) share: the reward checkpoint that scores their rollouts, the round their run
belongs to, the prompts they roll out on, and the summary their run records."""

from __future__ import annotations

from training.algorithms.run import TrainingError, round_of


def resolve_reward(store, reward_id: int | None) -> dict:
    """The reward-model checkpoint: the given one, else the newest."""
    reward = store.get_checkpoint(reward_id) if reward_id is not None else store.latest_checkpoint(("reward",))
    if reward is None:
        raise TrainingError("no reward model is registered: train one first (`prefloop train-rm`, make train-rm)")
    if reward["kind"] != "reward" or not reward["adapter_path"]:
        raise TrainingError(f"checkpoint {reward['id']} is a {reward['kind']} checkpoint, not a reward model")
    return reward


def reward_round(store, reward: dict | None) -> int | None:
    """The round a run belongs to: that of the labels behind its reward model, else the newest round."""
    return reward["round_id"] if reward and reward["round_id"] is not None else round_of(store, None)


def train_prompts(store, tokenizer, max_tokens: int) -> list[list[dict]]:
    """The store's train-split prompts that fit `max_tokens` after the chat template."""
    prompts = [row["messages"] for row in store.list_prompts(split="train")]
    fitting = [prompts[i] for i in prompts_that_fit(tokenizer, prompts, max_tokens)]
    if not fitting:
        raise TrainingError(
            f"the store has {len(prompts)} train-split prompts and none fits {max_tokens} tokens: "
            "import prompts (`prefloop import`) or raise max_length"
        )
    return fitting


def prompts_that_fit(tokenizer, prompts: list[list[dict]], max_tokens: int) -> list[int]:
    """Indices of the prompts whose chat-template tokens (generation prompt included) fit `max_tokens`."""
    return [
        i for i, messages in enumerate(prompts)
        if len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        <= max_tokens
    ]


def summarize(history: list[dict], reward_key: str, kl_key: str) -> dict:
    """First and last reward and the last KL, for the run record (the full history is in the run directory)."""
    return {
        "steps": len(history),
        "reward_first": history[0][reward_key],
        "reward_last": history[-1][reward_key],
        "kl_last": history[-1].get(kl_key),  # absent when the KL penalty is off
    }
