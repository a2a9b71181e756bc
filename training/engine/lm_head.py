"""Per-token log-probabilities for TRL's DPO and SFT trainers on CPU: full logits, log-softmax, gather.

TRL 1.15 patches the model's forward with a "fused LM head" (`trl.trainer.utils.add_fused_lm_head`): called with
`fused_lm_head=True` it projects the hidden states through the LM head in vocabulary tiles and folds each tile into
online log-sum-exp statistics with a Triton kernel (`trl.kernels.ChunkedLogProbFunction`), so the (batch, length,
vocabulary) logits never exist. On a GPU that saves gigabytes. On a CPU there is no Triton backend: without the
`triton` package the patched forward fails (`'NoneType' object has no attribute 'apply'`), and with it the kernel can
only run in Triton's interpreter (TRITON_INTERPRET=1), which executes every kernel instance in Python, one token
row and 1024 vocabulary entries at a time, forward and again in backward (see bench/dpo_cpu_step.py and
docs/benchmarks.md for the numbers).

`use_plain_lm_head` re-patches the same forward with the textbook computation, log-softmax and a gather, at the
labelled positions only. It returns the same `FusedCausalLMOutput` fields, so the trainers' losses and metrics are
unchanged; autograd does the backward. Where the model's output layer is a bare projection (Llama, Qwen, Mistral,
SmolLM: no logit scaling, soft-capping or MoE auxiliary loss in its config), the backbone's hidden states are
projected at the labelled positions alone: a DPO batch's prompt and padding positions (a third to a half of them)
cost no LM-head matmul, forward or backward, and no (batch, length, vocabulary) logits tensor is written and read
back. Other models run their own forward (so their scaling applies) and the logits are then indexed.
"""

from __future__ import annotations

import functools
import types

import torch
from trl.trainer.utils import FusedCausalLMOutput

LM_HEAD_CHOICES = ("auto", "fused", "plain")


def fused_lm_head_runs_here(device: str) -> bool:
    """TRL's Triton kernel needs a GPU and the triton package."""
    from trl.trainer import utils

    return device == "cuda" and utils._ChunkedLogProbFunction is not None


def choose_lm_head(requested: str, device: str) -> str:
    """'fused' (TRL's Triton kernel) or 'plain' (full logits); auto is fused where it runs, plain elsewhere."""
    if requested not in LM_HEAD_CHOICES:
        raise ValueError(f"lm_head must be one of {', '.join(LM_HEAD_CHOICES)}, not {requested!r}")
    if requested == "auto":
        return "fused" if fused_lm_head_runs_here(device) else "plain"
    if requested == "fused" and not fused_lm_head_runs_here(device):
        raise ValueError("lm_head fused needs a GPU and the triton package; use plain (or auto) here")
    return requested


def install_lm_head(trainer, requested: str, device: str, temperature: float = 1.0) -> str:
    """Give a TRL trainer's model the LM head `choose_lm_head` picks; returns which one ('fused' or 'plain').

    `temperature` must be the one the trainer gave its fused head (RLOO's sampling temperature; 1 for DPO and SFT).
    """
    lm_head = choose_lm_head(requested, device)
    if lm_head == "plain":
        use_plain_lm_head(trainer.model, temperature)
    return lm_head


# Config fields under which a model's forward does more to the hidden states than the output projection (TRL's
# fused head reads the same ones), or returns an auxiliary loss the projection alone would drop.
OUTPUT_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "output_multiplier",
    "lm_head_multiplier",
    "logits_scaling",
    "output_router_logits",
)


def projects_hidden_states_only(model) -> bool:
    """Whether `model`'s logits are its output embedding applied to its backbone's last hidden state, nothing more."""
    text_config = model.config.get_text_config()
    return (
        all(getattr(text_config, name, None) is None for name in OUTPUT_TRANSFORMS)
        and text_config is model.config  # vision-language models nest the language backbone differently
        and getattr(model, model.base_model_prefix, None) is not None
        and model.get_output_embeddings() is not None
    )


def use_plain_lm_head(model, temperature: float = 1.0, scored_positions_only: bool | None = None) -> None:
    """Replace the fused LM head TRL installed on `model` (a PEFT model or a transformers model) by the plain one,
    which divides the logits by `temperature` as TRL's does. `scored_positions_only` None projects only the labelled
    positions where that is exact (`projects_hidden_states_only`); False always computes the full logits."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    original_forward = types.MethodType(type(target).forward, target)
    if scored_positions_only is None:
        scored_positions_only = projects_hidden_states_only(target)

    @functools.wraps(type(target).forward)  # `generate` checks its keyword arguments against this signature
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        if not fused_lm_head:
            extra = {"labels": labels, "shift_labels": shift_labels, "num_items_in_batch": num_items_in_batch}
            return original_forward(*args, **kwargs, **{k: v for k, v in extra.items() if v is not None})
        kwargs["use_cache"] = False
        if shift_labels is None:  # position t predicts token t + 1
            labels, last = labels[:, 1:], -1
        else:
            labels, last = shift_labels, None
        mask = labels != -100
        if scored_positions_only:
            outputs = getattr(self, self.base_model_prefix)(*args, **kwargs)
            hidden = outputs.last_hidden_state[:, :last]
            logits = self.get_output_embeddings()(hidden[mask])  # (tokens, vocabulary): only the scored positions
        else:
            outputs = original_forward(*args, **kwargs)
            logits = outputs.logits[:, :last][mask]
        selected = logits.float() / temperature
        targets = labels[mask]
        log_z = torch.logsumexp(selected, dim=-1)
        log_probs = selected.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z
        with torch.no_grad():  # metrics only, as in TRL's kernel
            log_p = selected - log_z.unsqueeze(-1)
            entropy = -(log_p.exp() * log_p).sum(-1)
            log_sum_sq_probs = torch.logsumexp(2 * log_p, dim=-1)
            mean_logits = selected.mean(-1)
            is_top1 = selected.argmax(-1) == targets  # argmax takes the first of tied maxima, as TRL does

        def scatter(values):  # back to (batch, positions), zero where the label is -100
            return values.new_zeros(mask.shape).masked_scatter(mask, values)

        per_token = scatter(log_probs)
        denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-per_token.sum() / denominator,
            log_probs=per_token,
            entropy=scatter(entropy),
            log_sum_sq_probs=scatter(log_sum_sq_probs),
            mean_logits=scatter(mean_logits),
            is_top1=scatter(is_top1),
            label_mask=mask,
            aux_loss=getattr(outputs, "aux_loss", None),
        )

    target.forward = types.MethodType(forward, target)
