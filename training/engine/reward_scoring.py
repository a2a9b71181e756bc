"""The reward model, loaded once and scored one way for every reader: PPO and RLOO rewards, the evaluation's
held-out reward, reward-based pair selection in generation, and the `reward_model` judge.

A reward checkpoint is a sequence-classification model (one label) of its base model with a LoRA adapter and a saved
score head (`training/algorithms/reward.py` trains it). A response's score is the score head at the last real token
of prompt + response rendered by the reward tokenizer's chat template, as TRL's RewardTrainer renders it in training.
The head runs in float32 whatever the backbone's dtype.
"""

from __future__ import annotations

from collections.abc import Callable

RewardFn = Callable[[list[list[dict]], list[str], list[list[int]]], "torch.Tensor"]  # noqa: F821


def load_reward_model(checkpoint: dict, dtype=None):
    """(model, tokenizer) of a registered reward checkpoint: frozen, on the accelerator (bf16 there unless `dtype`
    says otherwise, float32 on CPU), the score head in float32, the tokenizer padding on the right."""
    import torch

    from training.model_source import ModelError, resolve_model
    from training.models import accelerator, checkpoint_tokenizer, load_adapter_model

    adapter = checkpoint.get("adapter_path")
    if not adapter:
        raise ModelError(f"reward checkpoint {checkpoint['id']} has no adapter directory")
    base = resolve_model(checkpoint["base_model"])
    device = accelerator()
    dtype = dtype or (torch.bfloat16 if device == "cuda" else torch.float32)
    model = load_adapter_model(base, adapter, task="reward", dtype=dtype)
    unwrap(model).score.float()
    model.requires_grad_(False)
    tokenizer = checkpoint_tokenizer(base, adapter)
    tokenizer.padding_side = "right"
    return model.to(device), tokenizer


def unwrap(model):
    """The transformers model under a PEFT wrapper (LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def per_token_scores(model, input_ids, attention_mask, position_ids):
    """The score head applied at every position of a sequence-classification model: (batch, tokens) in float32.

    At the last real token it is the reward model's score; at every token, PPO's value model's value.
    """
    inner = unwrap(model)
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).last_hidden_state
    return inner.score(hidden.float()).squeeze(-1)  # the loaders keep the head in float32


def score_responses(
    model, tokenizer, conversations: list[list[dict]], responses: list[str], batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """The reward of each response as the assistant's answer to its conversation (texts cut to `max_length` tokens
    when given)."""
    return score_tensor(model, tokenizer, conversations, responses, batch_size, max_length).tolist()


def score_tensor(model, tokenizer, conversations, responses, batch_size: int, max_length: int | None = None):
    """`score_responses` as a float32 CPU tensor."""
    import torch

    texts = [
        tokenizer.apply_chat_template(list(m) + [{"role": "assistant", "content": r}], tokenize=False)
        for m, r in zip(conversations, responses)
    ]
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            padding_side="right",
            truncation=max_length is not None,
            max_length=max_length,
            add_special_tokens=False,
            return_tensors="pt",
        ).to(device)
        mask = batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            per_token = per_token_scores(model, batch["input_ids"], mask, positions)
        scores.append(per_token.gather(1, (mask.sum(-1) - 1)[:, None]).squeeze(1))
    return torch.cat(scores).cpu() if scores else torch.zeros(0)


def reward_model_fn(model, tokenizer, batch_size: int) -> RewardFn:
    """The reward model as the RL trainers' reward function: (prompts, response texts, response ids) -> scores."""

    def score(prompts: list[list[dict]], responses: list[str], response_ids: list[list[int]]):
        return score_tensor(model, tokenizer, prompts, responses, batch_size)

    return score
