"""Does attention's backward return NaN on this GPU for the batch shape that stopped RLOO, with PyTorch's default
SDPA backends and with training's (`training_attention` in training/common.py: cuDNN attention off)?

    python bench/attention_nan_check.py          # on a CUDA GPU: torch and cuDNN versions, then both counts

The batch has RLOO's 4th-step shape (default config, seed 0): 16 sequences, prompts left-padded to 64 tokens,
128-token completions, 192 tokens in all (64 mod 128), in bf16, through a random 2-layer Llama with 64-wide heads
(SmolLM2-135M's width). pytorch#196678: on H100/H200 with torch >= 2.11, cuDNN's attention backward returns NaN
query gradients for an explicit mask, a length of 64 mod 128 and a query row whose logsumexp is below -88.7, which
a left-pad row (it attends to nothing) always is. The loss stays finite; the gradient norm is NaN.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.common import training_attention  # noqa: E402

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


def main() -> None:
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")
    print(f"batch: {SEQUENCES} x {PROMPT_TOKENS + COMPLETION_TOKENS} tokens, left-padded, bf16")
    print(f"default SDPA backends: {nonfinite_gradients(training=False)} non-finite gradient elements")
    print(f"training_attention():  {nonfinite_gradients(training=True)} non-finite gradient elements")


if __name__ == "__main__":
    main()
