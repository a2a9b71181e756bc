"""Generation speed on CPU with the embedded model (SmolLM2-135M-Instruct): tokens per second by batch size.

    .venv/bin/python bench/gen_cpu_bench.py                            # batch sizes 1, 8, 32; 64 new tokens
    .venv/bin/python bench/gen_cpu_bench.py --batch-sizes 1,8 --max-new-tokens 32
    taskset -c 0,1 python bench/gen_cpu_bench.py --model /path/to/model   # another model, pinned to two cores

Each batch size samples that many different prompts once (one left-padded `generate` call, after a warm-up call),
through the same `training.engine.sampling.sample` that `prefloop generate` and `prefloop eval` use. Reported: generated tokens (up to the
end-of-turn token, padding not counted) per second of wall time, and the share of responses cut at the token limit.
"""

from __future__ import annotations

import argparse
import time

from training.engine.sampling import Decoding, sample
from training.model_source import EMBEDDED_NAME
from training.models import load_for_generation

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis to a ten-year-old.",
    "Give three tips for writing clear emails.",
    "Why is the sky blue?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "How do I reverse a list in Python?",
    "What are the health benefits of walking every day?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--model", default=EMBEDDED_NAME, help="HF id or path (default: the embedded model)")
    args = parser.parse_args()
    import torch

    model, tokenizer = load_for_generation({"id": None, "base_model": args.model, "adapter_path": None})
    config = Decoding(max_new_tokens=args.max_new_tokens)
    sample(model, tokenizer, [[{"role": "user", "content": PROMPTS[0]}]], 1, config, seed=0)  # warm-up
    device = next(model.parameters()).device
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, max_new_tokens: {args.max_new_tokens}")
    print("batch  seconds  tokens  tokens/s  cut at limit")
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        conversations = [
            [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} (variant {i})"}] for i in range(batch_size)
        ]
        start = time.perf_counter()
        results = sample(model, tokenizer, conversations, 1, config, seed=batch_size)
        seconds = time.perf_counter() - start
        samples = [s for per_prompt in results for s in per_prompt]
        tokens = sum(s.tokens for s in samples)
        cut = sum(s.finish_reason == "length" for s in samples) / len(samples)
        print(f"{batch_size:5d}  {seconds:7.2f}  {tokens:6d}  {tokens / seconds:8.1f}  {cut:11.0%}")


if __name__ == "__main__":
    main()
