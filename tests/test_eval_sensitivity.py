"""The evaluator sees a planted change and shows none where there is none, on a tiny model whose weights are bf16.

A loop that cannot show improvement is worse than useless: these tests plant a known change (an adapter with a known
KL to the base model) and check the figures find it, and plant no change (the base against itself, an adapter whose
update is exactly zero) and check the figures say so exactly.
"""

from __future__ import annotations

import pytest

from store import Judgment, PromptIn
from training.engine.logprobs import LogProbs
from training.loop.evaluation import EvalConfig, Evaluator, Spec, implicit_reward_margins, ordering
from training.metrics import bootstrap_by_group

PLANTED_SCALE = 0.42  # scales the planted adapter's B matrices to a KL of about 0.1 nats per response (measured)


@pytest.fixture(scope="module")
def bf16_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model saved in bfloat16, as a GPU loads and runs it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = tmp_path_factory.mktemp("bf16-model")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir).to(torch.bfloat16).save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(directory)
    return directory


def planted_adapter(base_dir, directory, scale: float) -> str:
    """A LoRA adapter with random A and B, B scaled by `scale` (0: the update is exactly zero)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                      init_lora_weights=False)
    peft = get_peft_model(model, lora)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.mul_(scale)
    peft.save_pretrained(directory)
    return str(directory)


@pytest.fixture
def heldout_store(store):
    store.heldout_fraction = 1.0
    store.add_prompts([PromptIn([{"role": "user", "content": f"Question {i}: why is the sky blue?"}], "test")
                       for i in range(40)])
    return store


def float64_kl(base_dir, adapter_dir, draws) -> float:
    """Mean log pi(y|x) - log base(y|x) over the draws, every weight and sum in float64."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.engine.logprobs import completion_logprobs

    pad = AutoTokenizer.from_pretrained(base_dir).pad_token_id
    sequences = [(s.prompt_ids, s.completion_ids) for s in draws]
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float64), adapter_dir)
    own, under_base = completion_logprobs(policy, sequences, pad), completion_logprobs(base, sequences, pad)
    return sum(p - b for p, b in zip(own.sums, under_base.sums)) / len(sequences)


def test_planted_kl_is_recovered_from_bf16_weights(heldout_store, bf16_model_dir, tmp_path):
    adapter = planted_adapter(bf16_model_dir, tmp_path / "planted", PLANTED_SCALE)
    config = EvalConfig(prompts=40, max_new_tokens=48, kl_samples_per_prompt=4, bootstrap=500)
    evaluator = Evaluator(heldout_store, config, log=lambda *_: None)
    policy, base = Spec(str(bf16_model_dir), adapter), Spec(str(bf16_model_dir), None)
    kl = evaluator.kl_to_base(policy, base)
    draws = [s for row in evaluator.samples(policy, "kl") for s in row]
    reference = float64_kl(bf16_model_dir, adapter, draws)
    assert 0.07 < reference < 0.14  # the planted change: about 0.1 nats per response
    assert kl["value"] == pytest.approx(reference, rel=0.2)
    assert kl["ci_low"] > 0 and kl["n"] == 160  # and the interval says there is a change


def test_no_change_shows_none(heldout_store, bf16_model_dir, tmp_path):
    """The base model against itself, and an adapter whose update is exactly zero: KL exactly 0 and every held-out
    pair's implicit reward margin exactly 0 (accuracy 0.5, each pair a tie)."""
    from tests.test_evaluate import add_pair

    base_id = heldout_store.register_checkpoint("base", str(bf16_model_dir))
    heldout_store.new_round(base_id)
    annotator, _ = heldout_store.add_annotator("ann")
    prompts = heldout_store.list_prompts()
    for i, prompt in enumerate(prompts[:6]):
        pair = add_pair(heldout_store, prompt["id"], (f"yes {i}", f"the sky {i}"), (base_id, base_id), 0, "samples")
        heldout_store.add_judgments_bulk([Judgment(pair, annotator.id, "a")])
    zero = planted_adapter(bf16_model_dir, tmp_path / "zero", 0.0)
    zero_id = heldout_store.register_checkpoint("dpo", str(bf16_model_dir), zero, parent_id=base_id)
    config = EvalConfig(prompts=8, max_new_tokens=16, bootstrap=200)
    evaluator = Evaluator(heldout_store, config, log=lambda *_: None)
    assert len(evaluator.pairs) == 6
    for checkpoint_id in (base_id, zero_id):
        rows = {r["metric"]: r for r in evaluator.evaluate(heldout_store.get_checkpoint(checkpoint_id))}
        assert (rows["kl_to_base"]["value"], rows["kl_to_base"]["ci_low"], rows["kl_to_base"]["ci_high"]) == (0, 0, 0)
        # The summed and the length-normalised implicit reward: no change in either.
        for accuracy in (rows["heldout_accuracy"], rows["heldout_accuracy_per_token"]):
            assert accuracy["value"] == 0.5 and accuracy["details"]["mean_margin"] == 0
            assert sum(e["n"] for e in accuracy["details"]["by_length"].values()) == accuracy["n"]
            assert {e["value"] for e in accuracy["details"]["by_length"].values()} == {0.5}


def test_length_drift_is_told_apart_from_the_labels_property():
    """A policy that gained 1 nat on what the labels prefer and drifted 0.05 nats a token from the base: the summed
    implicit reward ranks the longer chosen answers last, the per-token one ranks every pair right."""
    chosen_tokens, rejected_tokens = [100, 100, 10, 30], [20, 40, 60, 30]
    base_chosen, base_rejected = LogProbs([-50.0] * 4, chosen_tokens), LogProbs([-60.0] * 4, rejected_tokens)
    chosen = LogProbs([b + 1.0 - 0.05 * n for b, n in zip(base_chosen.sums, chosen_tokens)], chosen_tokens)
    rejected = LogProbs([b - 0.05 * n for b, n in zip(base_rejected.sums, rejected_tokens)], rejected_tokens)
    summed = [ordering(m) for m in implicit_reward_margins(chosen, base_chosen, rejected, base_rejected)]
    per_token = [ordering(m) for m in implicit_reward_margins(chosen, base_chosen, rejected, base_rejected, True)]
    assert summed == [0.0, 0.0, 1.0, 1.0]  # chosen 80 and 60 tokens longer: the drift outweighs the 1 nat
    assert per_token == [1.0, 1.0, 1.0, 1.0]
    assert [ordering(m) for m in implicit_reward_margins(base_chosen, base_chosen, base_rejected, base_rejected,
                                                         True)] == [0.5] * 4  # the base model ties every pair


def test_fewer_heldout_prompts_than_asked_says_the_real_n(heldout_store):
    lines = []
    evaluator = Evaluator(heldout_store, EvalConfig(prompts=150, samples_per_prompt=4), log=lines.append)
    assert len(evaluator.prompts) == 40
    assert lines == ["asked for 150 held-out prompts, the store has 40: sample-based figures use n = 40 prompts "
                     "x 4 samples"]


def test_bootstrap_by_group_resamples_prompts_not_samples():
    """Four samples of each prompt that agree with each other: the interval is as wide as the prompts' spread, far
    wider than the 4x as many samples would make it if they were independent."""
    import numpy as np

    rng = np.random.default_rng(0)
    prompt_means = rng.random(30)
    groups = [[m] * 4 for m in prompt_means]
    grouped = bootstrap_by_group(groups, n_boot=2000, seed=1)
    flat = bootstrap_by_group([[v] for g in groups for v in g], n_boot=2000, seed=1)
    assert grouped.value == pytest.approx(prompt_means.mean()) and grouped.n == 120
    assert (grouped.ci_high - grouped.ci_low) > 1.7 * (flat.ci_high - flat.ci_low)  # about 2x: sqrt(4)
