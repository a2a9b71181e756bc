"""Log-probability of a response given its prompt under a causal LM, batched, through the model's chat template.

    from training.engine.logprobs import response_logprobs
    scores = response_logprobs(model, tokenizer, [messages], ["Paris."])
    scores.sums[0], scores.tokens[0], scores.means[0]   # log p(response | prompt), its tokens, per-token mean

The response is what the template puts after the generation prompt, up to and including the first EOS token (the
template's newline after EOS is formatting, not the model's answer). DPO's implicit reward and the KL estimate both
need exactly this sum; the per-token mean is the length-normalised score.

Sequences are left-padded so every completion ends at the last position: then only the last `longest completion + 1`
positions' logits are computed (`logits_to_keep`), which is what keeps memory small with a 50k vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

Messages = list[dict]


@dataclass
class LogProbs:
    sums: list[float]  # log p(completion | prompt), natural log
    tokens: list[int]  # completion tokens scored

    @property
    def means(self) -> list[float]:
        return [s / n for s, n in zip(self.sums, self.tokens)]

    def log_ratios(self, reference: LogProbs, per_token: bool = False) -> list[float]:
        """log p(y|x) - log p_ref(y|x) of each completion, both scored on the same tokens: summed (DPO's implicit
        reward over beta; a KL sample), or with `per_token` divided by the completion's tokens."""
        return [(s - r) / (n if per_token else 1) for s, r, n in zip(self.sums, reference.sums, self.tokens)]


def prompt_ids(tokenizer, messages: Messages) -> list[int]:
    """Token ids of the prompt up to and including the assistant's generation prompt."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def completion_ids(tokenizer, messages: Messages, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of `response` as the assistant's answer to `messages`.

    Prompt and completion are tokenized separately (as TRL does), so a BPE merge across the boundary cannot move
    tokens between them.
    """
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        list(messages) + [{"role": "assistant", "content": response}], tokenize=False
    )
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the conversation differently from its generation prompt")
    ids = tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id) + 1]
    return tokenizer(prompt_text, add_special_tokens=False)["input_ids"], ids


def completion_logprobs(
    model, sequences: list[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int = 8, max_length: int = 1024
) -> LogProbs:
    """Sum of token log-probs of each completion given its prompt, for (prompt ids, completion ids) pairs.

    A sequence longer than `max_length` keeps its whole completion (cut to max_length - 1 tokens if need be) and the
    end of its prompt.
    """
    import torch

    if not sequences:
        return LogProbs([], [])
    fitted = []
    for prompt, completion in sequences:
        if not completion:
            raise ValueError("a completion to score has no tokens")
        completion = completion[: max_length - 1]
        fitted.append((prompt[max(0, len(prompt) + len(completion) - max_length) :], completion))
    sums, counts = [0.0] * len(fitted), [0] * len(fitted)
    order = sorted(range(len(fitted)), key=lambda i: -(len(fitted[i][0]) + len(fitted[i][1])))
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(fitted[i][0]) + len(fitted[i][1]) for i in chunk)
        keep = max(len(fitted[i][1]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        target_mask = torch.zeros((len(chunk), keep), dtype=torch.bool)
        for row, i in enumerate(chunk):
            ids = fitted[i][0] + fitted[i][1]
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
            target_mask[row, keep - len(fitted[i][1]) :] = True
        # Positions count from each row's first real token, as they would without padding.
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=attention.to(device),
                position_ids=position_ids.to(device),
                logits_to_keep=keep + 1,
            ).logits[:, :-1]
            logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits  # float64 stays
            targets = input_ids[:, -keep:].to(device)
            token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
            token_logps = (token_logps.double() * target_mask.to(device)).sum(-1).cpu()  # float64: exact sums
        for row, i in enumerate(chunk):
            sums[i] = float(token_logps[row])
            counts[i] = len(fitted[i][1])
    return LogProbs(sums, counts)


def response_logprobs(
    model, tokenizer, messages: list[Messages], responses: list[str], batch_size: int = 8, max_length: int = 1024
) -> LogProbs:
    """`completion_logprobs` of text responses, each the assistant's answer to the matching prompt messages."""
    if len(messages) != len(responses):
        raise ValueError(f"{len(messages)} prompts but {len(responses)} responses")
    sequences = [completion_ids(tokenizer, m, r) for m, r in zip(messages, responses)]
    return completion_logprobs(model, sequences, tokenizer.pad_token_id, batch_size, max_length)
