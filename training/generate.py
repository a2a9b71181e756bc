"""Candidate generation: sample responses from a round's checkpoint and store them as pairs to label.

    prefloop generate --num-prompts 64 --samples-per-prompt 2 --max-new-tokens 256
    prefloop generate --strategy vs-previous --split heldout     # current vs previous round, for win rate
    make generate ARGS="--num-prompts 16"

Strategies:
  samples      k >= 2 samples of the round's checkpoint per prompt; neighbouring distinct samples form pairs
               (k = 2 gives one pair, k = 4 gives three: 1-2, 2-3, 3-4, which links all four for a ranking).
  vs-previous  one sample of the round's checkpoint (response a) and one of the previous round's (response b) on the
               same prompt; their judgments measure the new model's win rate.

The prompts are the ones the round has not used with this strategy yet, train split by default (held-out prompts make
evaluation pairs and never reach a training export). Generation applies the chat template with the generation prompt
and stops at the end-of-turn token; a response cut at `max_new_tokens` is stored with finish_reason 'length'. Each
batch is seeded with `seed + its first prompt id`, recorded with every response, so the same database and config give
the same responses (on the same engine, which the record names too). Every `write_batch_size` prompts are written in
one short transaction.

Engines: `static` (training/decode.py: preallocated KV cache, the decode step replayed as a CUDA graph; the default on
a GPU, in batches of 256 unless --batch-size says otherwise) or `hf` (transformers' `generate`, Unsloth's where it is
installed; the default on CPU, batches of 16). bench/gen_throughput.py compares them.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from store import Candidates, ResponseIn, Store, StoreError
from training.cli import open_store
from training.config import ConfigError, add_arguments, from_args, opt

STRATEGIES = ("samples", "vs-previous")
SPLITS = ("train", "heldout")
ENGINES = ("auto", "static", "hf")
STATIC_BATCH_SIZE, HF_BATCH_SIZE = 256, 16  # default sequences per batch of each engine


@dataclass
class GenerateConfig:
    num_prompts: int = opt(64, "prompts to generate for (fewer when the round has used the others)")
    samples_per_prompt: int = opt(2, "responses sampled per prompt by the samples strategy (at least 2)")
    temperature: float = opt(1.0, "sampling temperature (above 0: greedy decoding would give identical samples)")
    top_p: float = opt(0.95, "nucleus sampling: keep the smallest set of tokens whose probability reaches top_p")
    max_new_tokens: int = opt(256, "token limit per response; a response cut there is marked finish_reason 'length'")
    seed: int = opt(0, "base seed; each batch uses seed + its first prompt id")
    batch_size: int = opt(
        0, "sequences sampled together (prompts per batch: batch_size // samples); 0: 256 on the static engine, else 16"
    )
    split: str = opt("train", "prompt split: train (pairs to label) or heldout (evaluation pairs)")
    strategy: str = opt("samples", "samples (two samples of the round's model) or vs-previous (vs previous round's)")
    round: int | None = opt(None, "round to generate for (default: the latest)")
    write_batch_size: int = opt(8, "prompts whose responses and pairs are written in one short transaction")
    model: str | None = opt(None, "base model to load instead of the checkpoint's recorded one (HF id or path)")
    engine: str = opt("auto", "static (cached CUDA-graph decoder), hf (transformers' generate); auto: static on GPU")

    def validate(self) -> None:
        checks = [
            ("num_prompts", self.num_prompts >= 1, "at least 1"),
            ("samples_per_prompt", self.samples_per_prompt >= 2, "at least 2 (a pair needs two responses)"),
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


@dataclass
class Sample:
    text: str
    prompt_tokens: int
    completion_tokens: int  # generated tokens before the stop token
    finish_reason: str  # 'stop' (end-of-turn token) or 'length' (cut at max_new_tokens)


@dataclass
class GenerateSummary:
    round_id: int
    prompts: int = 0
    responses: int = 0
    pairs: int = 0
    duplicates: int = 0
    unpaired_prompts: int = 0  # prompts whose samples were all empty or identical
    completion_tokens: int = 0
    seconds: float = 0.0


def decoding_engine(config: GenerateConfig) -> str:
    """'static' or 'hf': auto is static on a GPU, unless Unsloth was imported in this process (loop-sim's training
    does): it patches transformers' model classes, which the static decoder runs."""
    if config.engine != "auto":
        return config.engine
    from training.models import accelerator

    return "static" if accelerator() == "cuda" and "unsloth" not in sys.modules else "hf"


def pair_indices(texts: list[str]) -> list[tuple[int, int]]:
    """Pairs of neighbouring distinct responses; empty ones and repeats (compared after strip) never form a pair."""
    kept, seen = [], set()
    for i, text in enumerate(texts):
        key = text.strip()
        if key and key not in seen:
            seen.add(key)
            kept.append(i)
    return list(zip(kept, kept[1:]))


def chat_inputs(tokenizer, conversations: list[list[dict]]):
    """The conversations with the chat template and the generation prompt, tokenized as one left-padded batch."""
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in conversations]
    # The template already writes the special tokens; the tokenizer must not add a BOS of its own.
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def sample(
    model, tokenizer, conversations: list[list[dict]], num_samples: int, config: GenerateConfig, seed: int
) -> list[list[Sample]]:
    """`num_samples` responses to each conversation, generated as one left-padded batch by the config's engine."""
    import torch

    inputs = chat_inputs(tokenizer, conversations).to(model.device)
    stop_ids = {tokenizer.eos_token_id}
    if decoding_engine(config) == "static":
        from training.decode import decoder_for

        generated = decoder_for(model).generate(
            inputs["input_ids"].repeat_interleave(num_samples, dim=0),  # each prompt's samples side by side
            inputs["attention_mask"].repeat_interleave(num_samples, dim=0),
            config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            seed=seed,
        )
    else:
        torch.manual_seed(seed)
        with torch.no_grad():
            output = model.generate(
                **inputs,
                do_sample=True,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=0,  # top_p alone truncates (transformers would add top_k=50 otherwise)
                max_new_tokens=config.max_new_tokens,
                num_return_sequences=num_samples,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        generated = output[:, inputs["input_ids"].shape[1] :]
    generated = generated.tolist()
    prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
    results: list[list[Sample]] = [[] for _ in conversations]
    for row, ids in enumerate(generated):
        stop = next((i for i, token in enumerate(ids) if token in stop_ids), None)
        completion = ids if stop is None else ids[:stop]
        prompt_index = row // num_samples  # generate repeats each prompt num_samples times in place
        results[prompt_index].append(
            Sample(
                text=tokenizer.decode(completion, skip_special_tokens=True).strip(),
                prompt_tokens=prompt_tokens[prompt_index],
                completion_tokens=len(completion),
                finish_reason="length" if stop is None else "stop",
            )
        )
    return results


def generate(store: Store, config: GenerateConfig, progress: bool = True) -> GenerateSummary:
    """Generate for up to `config.num_prompts` unused prompts of the round and store responses and pairs."""
    from tqdm.auto import tqdm

    from training.models import load_for_generation

    config.validate()
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
    prompts = store.prompts_for_generation(round_id, config.strategy, config.split, config.num_prompts)
    if not prompts:
        raise StoreError(
            f"round {round_id} has used every {config.split} prompt with strategy {config.strategy}: "
            "import more prompts or start a new round"
        )

    engine = decoding_engine(config)
    models = [load_for_generation(c, config.model, unsloth=engine == "hf") for c in checkpoints]
    # samples: k draws of one model; vs-previous: one draw of each model, current first (response a).
    draws = config.samples_per_prompt if config.strategy == "samples" else 1
    # The CUDA-graph decoder is fastest on large batches (10x HF generate at 512 on an H100, docs/benchmarks.md).
    default_batch = STATIC_BATCH_SIZE if engine == "static" else HF_BATCH_SIZE
    prompts_per_batch = max(1, (config.batch_size or default_batch) // draws)
    summary = GenerateSummary(round_id)
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
        seed = config.seed + batch[0]["id"]
        per_model = [
            sample(model, tokenizer, [p["messages"] for p in batch], draws, config, seed) for model, tokenizer in models
        ]
        for i, prompt in enumerate(batch):
            responses = [
                ResponseIn(
                    prompt_id=prompt["id"],
                    checkpoint_id=checkpoint["id"],
                    text=s.text,
                    sampling=dict(
                        temperature=config.temperature,
                        top_p=config.top_p,
                        max_new_tokens=config.max_new_tokens,
                        seed=seed,
                        engine=engine,
                        round=round_id,
                        strategy=config.strategy,
                    ),
                    prompt_tokens=s.prompt_tokens,
                    completion_tokens=s.completion_tokens,
                    finish_reason=s.finish_reason,
                )
                for checkpoint, samples in zip(checkpoints, per_model)
                for s in samples[i]
            ]
            pairs = pair_indices([r.text for r in responses])
            summary.unpaired_prompts += not pairs
            summary.completion_tokens += sum(r.completion_tokens for r in responses)
            pending.append(Candidates(prompt["id"], responses, pairs))
        bar.update(len(batch))
        while len(pending) >= config.write_batch_size:
            write(pending[: config.write_batch_size])
            pending = pending[config.write_batch_size :]
    if pending:
        write(pending)
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate",
        help="sample responses from the round's checkpoint and store pairs to label",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p, GenerateConfig)
    p.add_argument(
        "--if-no-pairs", action="store_true", help="do nothing when the database already has pairs (for `make run`)"
    )
    p.set_defaults(run=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    store = open_store(args)
    if args.if_no_pairs and store.count_pairs() > 0:
        print("the database has pairs already; nothing to generate")
        return 0
    config = from_args(GenerateConfig, args)
    s = generate(store, config)
    print(
        f"round {s.round_id}: {s.prompts} prompts, {s.responses} responses, {s.pairs} new pairs "
        f"({s.duplicates} duplicates skipped, {s.unpaired_prompts} prompts without a distinct non-empty pair); "
        f"{s.completion_tokens} tokens in {s.seconds:.1f} s ({s.completion_tokens / max(s.seconds, 1e-9):.1f} tokens/s)"
    )
    return 0
