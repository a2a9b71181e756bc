"""Does attention's backward return NaN on this GPU for the batch shape that stopped RLOO, with PyTorch's default
SDPA backends and with training's (`training_attention` in training/algorithms/run.py: cuDNN attention off)?

    python bench/attention_nan_check.py          # on a CUDA GPU: torch and cuDNN versions, then both counts
    python bench/attention_nan_check.py --steps 12 --db data/prefloop.duckdb   # which RLOO steps have that shape

The batch has RLOO's 4th-step shape (default config, seed 0): 16 sequences, prompts left-padded to 64 tokens,
128-token completions, 192 tokens in all (64 mod 128), in bf16, through a random 2-layer Llama with 64-wide heads
(SmolLM2-135M's width). pytorch#196678: on H100/H200 with torch >= 2.11, cuDNN's attention backward returns NaN
query gradients for an explicit mask, a length of 64 mod 128 and a query row whose logsumexp is below -88.7, which
a left-pad row (it attends to nothing) always is. The loss stays finite; the gradient norm is NaN.

With --steps N (any machine) it lists the first N steps of `train-rloo` with its defaults on a database: each step's
prompts in the order TRL's sampler draws them (seed 0), their lengths after the chat template, and the batch length
once a completion reaches max_new_tokens (128), marking those of 64 mod 128.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.algorithms.run import training_attention  # noqa: E402

PROMPT_TOKENS, COMPLETION_TOKENS, SEQUENCES = 64, 128, 16


def nonfinite_gradients(training: bool, device: str = "cuda") -> int:
    """Gradient elements that are NaN or infinite after one backward pass over the batch (0 when all are finite)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16)
    length = PROMPT_TOKENS + COMPLETION_TOKENS
    ids = torch.randint(3, config.vocab_size, (SEQUENCES, length), device=device)
    mask = torch.ones_like(ids)
    for row in range(SEQUENCES):
        mask[row, : row * 3] = 0  # left padding: row 0 holds the longest prompt, the others are shorter
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :PROMPT_TOKENS] = -100  # only completion tokens are scored, as in RLOO
    with training_attention() if training else nullcontext():
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
    assert torch.isfinite(loss), "the forward pass itself was not finite"
    return sum(int((~torch.isfinite(p.grad)).sum()) for p in model.parameters() if p.grad is not None)


def step_lengths(db: str, steps: int) -> None:
    """Print the first `steps` RLOO steps' prompt lengths and padded batch length (train-rloo's defaults)."""
    from trl.trainer.utils import RepeatSampler

    from store import Store
    from training.algorithms.rl_setup import train_prompts
    from training.algorithms.rloo import RLOOTrainConfig
    from training.model_source import default_model, resolve_model
    from training.models import checkpoint_tokenizer

    config = RLOOTrainConfig()
    tokenizer = checkpoint_tokenizer(resolve_model(default_model()), None)
    prompts = train_prompts(Store(db), tokenizer, config.max_length - config.max_new_tokens)
    per_step = config.per_device_train_batch_size // config.num_generations
    order = list(RepeatSampler(prompts, mini_repeat_count=1, batch_size=per_step, shuffle=True, seed=config.seed))
    for step in range(min(steps, len(order) // per_step)):
        chosen = order[step * per_step : (step + 1) * per_step]
        lengths = [  # as TRL tokenizes prompts
            len(tokenizer.apply_chat_template(prompts[i], add_generation_prompt=True, return_dict=True)["input_ids"])
            for i in chosen
        ]
        length = max(lengths) + config.max_new_tokens
        flag = "  <- 64 mod 128" if length % 128 == 64 else ""
        print(f"step {step + 1}: prompt lengths {lengths}, batch length {length}{flag}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=0, help="list this many RLOO steps' batch lengths instead")
    parser.add_argument("--db", default="data/prefloop.duckdb", help="database whose train prompts RLOO would use")
    args = parser.parse_args()
    if args.steps:
        step_lengths(args.db, args.steps)
        return
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    print(f"batch: {SEQUENCES} x {PROMPT_TOKENS + COMPLETION_TOKENS} tokens, left-padded, bf16")
    print(f"default SDPA backends: {nonfinite_gradients(training=False)} non-finite gradient elements")
    print(f"training_attention():  {nonfinite_gradients(training=True)} non-finite gradient elements")


if __name__ == "__main__":
    main()
