"""The one sampler: k responses to each conversation, with the token ids that were drawn, their texts and stops.

    from training.engine.sampling import Decoding, sample
    samples = sample(model, tokenizer, conversations, num_samples=4, decoding=Decoding(top_p=0.95), seed=7)
    samples[i][j].text, .completion_ids, .tokens, .finish_reason      # prompt i, sample j

Candidate generation (`prefloop generate`), evaluation (win-rate samples and the KL estimate), the loop's health
check and PPO's rollouts all draw through `sample`, so a model is judged on responses drawn exactly as its
candidates are. Two engines:
`static` (training/engine/decode.py: a preallocated KV cache with the decode step replayed as a CUDA graph; the default on a
GPU) and `hf` (transformers' `generate`; the default on CPU, and the only one for a model Unsloth has patched).

A completion is the sampled tokens through the first end-of-turn token when there is one (`finish_reason` 'stop'),
else all `max_new_tokens` of them ('length'); `tokens` counts those before the end-of-turn token. The ids are kept
because a log-prob of the response (KL, implicit reward) must score the very tokens drawn: decoding a text and
tokenizing it again need not give them back.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

ENGINES = ("auto", "static", "hf")
STATIC_BATCH_SIZE, HF_BATCH_SIZE = 256, 16  # default sequences per batch of each engine


@dataclass(frozen=True)
class Decoding:
    """How responses are drawn."""

    temperature: float = 1.0  # softmax temperature; above 0 (greedy decoding would repeat one answer k times)
    top_p: float = 0.95  # nucleus: the smallest set of tokens whose probability reaches top_p; 1.0 = no truncation
    max_new_tokens: int = 256  # a response cut here has finish_reason 'length'
    engine: str = "auto"  # static, hf, or auto: static on a GPU unless Unsloth was imported in this process


@dataclass
class Sample:
    prompt_ids: list[int]  # the prompt as the model saw it: chat template plus generation prompt
    completion_ids: list[int]  # the drawn tokens, through the end-of-turn token when there was one
    text: str  # the decoded answer, special tokens dropped, stripped
    tokens: int  # tokens before the end-of-turn token
    finish_reason: str  # 'stop' (end-of-turn token) or 'length' (cut at max_new_tokens)

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"


def engine_for(decoding: Decoding) -> str:
    """'static' or 'hf': auto is static on a GPU, unless Unsloth was imported in this process (it patches the
    transformers model classes the static decoder runs)."""
    if decoding.engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {decoding.engine!r}")
    if decoding.engine != "auto":
        return decoding.engine
    from training.models import accelerator

    return "static" if accelerator() == "cuda" and "unsloth" not in sys.modules else "hf"


def default_batch_size(decoding: Decoding) -> int:
    """Sequences per batch when the caller gives none: the static decoder is fastest on large batches."""
    return STATIC_BATCH_SIZE if engine_for(decoding) == "static" else HF_BATCH_SIZE


def chat_inputs(tokenizer, conversations: list[list[dict]]):
    """The conversations with the chat template and the generation prompt, tokenized as one left-padded batch."""
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in conversations]
    # The template already writes the special tokens; the tokenizer must not add a BOS of its own.
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def sample(model, tokenizer, conversations: list[list[dict]], num_samples: int, decoding: Decoding, seed: int):
    """`num_samples` responses to each conversation, drawn as one left-padded batch: a list per conversation."""
    import torch

    if decoding.temperature <= 0 or not 0 < decoding.top_p <= 1:
        raise ValueError(f"sampling needs temperature > 0 and top_p in (0, 1], not {decoding}")
    if tokenizer.padding_side != "left":
        raise ValueError("batched sampling needs a tokenizer that pads on the left")
    inputs = chat_inputs(tokenizer, conversations).to(model.device)
    eos = tokenizer.eos_token_id
    if engine_for(decoding) == "static":
        from training.engine.decode import decoder_for

        generated = decoder_for(model).generate(
            inputs["input_ids"].repeat_interleave(num_samples, dim=0),  # each prompt's samples side by side
            inputs["attention_mask"].repeat_interleave(num_samples, dim=0),
            decoding.max_new_tokens,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            eos_token_id=eos,
            pad_token_id=tokenizer.pad_token_id,
            seed=seed,
        )
    else:
        torch.manual_seed(seed)
        with torch.no_grad():
            output = model.generate(
                **inputs,
                do_sample=True,
                temperature=decoding.temperature,
                top_p=decoding.top_p,
                top_k=0,  # top_p alone truncates (transformers would add top_k=50 otherwise)
                max_new_tokens=decoding.max_new_tokens,
                num_return_sequences=num_samples,  # repeats each prompt num_samples times in place
                eos_token_id=eos,
                pad_token_id=tokenizer.pad_token_id,
            )
        generated = output[:, inputs["input_ids"].shape[1] :]
    width = inputs["input_ids"].shape[1]
    prompts = [row[width - int(n) :] for row, n in zip(inputs["input_ids"].tolist(), inputs["attention_mask"].sum(1))]
    results: list[list[Sample]] = [[] for _ in conversations]
    for row, ids in enumerate(generated.tolist()):
        stop = ids.index(eos) if eos in ids else None
        completion = ids if stop is None else ids[: stop + 1]
        answer = completion if stop is None else completion[:-1]
        results[row // num_samples].append(
            Sample(
                prompt_ids=prompts[row // num_samples],
                completion_ids=completion,
                text=tokenizer.decode(answer, skip_special_tokens=True).strip(),
                tokens=len(answer),
                finish_reason="length" if stop is None else "stop",
            )
        )
    return results


def sample_in_batches(
    model, tokenizer, conversations: list[list[dict]], num_samples: int, decoding: Decoding, seed: int,
    batch_size: int = 0,
) -> list[list[Sample]]:
    """`sample` over any number of conversations, `batch_size` sequences at a time (0: the engine's default).
    Batch b is seeded with `seed + b`, so the same call gives the same samples."""
    per_batch = max(1, (batch_size or default_batch_size(decoding)) // num_samples)
    results: list[list[Sample]] = []
    for b, start in enumerate(range(0, len(conversations), per_batch)):
        results += sample(model, tokenizer, conversations[start : start + per_batch], num_samples, decoding, seed + b)
    return results
