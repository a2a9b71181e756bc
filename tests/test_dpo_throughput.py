"""DPO throughput levers (training/engine/batching.py, training/engine/reference_logps.py) and bench/dpo_throughput.py's CPU smoke.

A lever may change how fast DPO trains, never what it computes: each is checked against TRL's own computation on the
same batch. How fast is bench/dpo_throughput.py's job on a GPU, not a test's.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.training_data import register_export, tiny
from training.algorithms import dpo
from training.engine.batching import (
    MIN_SAVING,
    LengthGroupedSampler,
    length_grouped_order,
    pair_lengths,
    plan_buckets,
    token_counts,
    use_length_buckets,
)
from training.engine.reference_logps import attach_reference_logps
from training.models import load_trainable

ROOT = Path(__file__).resolve().parents[1]
WORDS = "the quick brown fox jumps over lazy dog sky sea blue one world".split()


def varied_pairs(n: int, offset: int = 0) -> list[dict]:
    """Pairs whose prompts and responses differ in length, so batches need padding."""
    return [
        {
            "prompt": [{"role": "user", "content": " ".join(WORDS[: 2 + (i + offset) % 7])}],
            "chosen": [{"role": "assistant", "content": " ".join(WORDS * (1 + (i + offset) % 3))}],
            "rejected": [{"role": "assistant", "content": " ".join(WORDS[: 1 + (i + offset) % 11])}],
        }
        for i in range(n)
    ]


def build(tiny_model_dir, tmp_path, rows, **fields):
    config = tiny(dpo.DPOTrainConfig, tiny_model_dir, tmp_path / "run", max_length=128, evaluate=False, **fields)
    loaded = load_trainable(config, str(tiny_model_dir), seed=0)
    return dpo.build_trainer(config, loaded, tmp_path / "run", Dataset.from_list(rows))


def move_adapter_off_zero(model) -> None:
    """A fresh adapter (B = 0) makes policy and reference equal and every reward zero; give B values."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def loss_metrics_gradients(trainer, batch):
    trainer.model.zero_grad()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}  # num_tokens: a running sum
    gradients = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    return loss.detach(), metrics, gradients


# --- length-grouped batches -----------------------------------------------------------------------------------------


def padded_tokens(order: list[int], lengths: list[int], micro_batch: int) -> int:
    return sum(
        len(batch) * max(lengths[i] for i in batch)
        for batch in (order[i : i + micro_batch] for i in range(0, len(order), micro_batch))
    )


def test_length_grouped_order_is_a_seeded_epoch_with_far_less_padding():
    rng = np.random.default_rng(0)
    lengths = np.clip(np.round(400 * np.exp(0.7 * rng.standard_normal(1000))), 8, 2048).astype(int).tolist()
    order = length_grouped_order(lengths, micro_batch=8, step=8, seed=3407, epoch=0)

    assert sorted(order) == list(range(1000))  # every pair once
    assert order == length_grouped_order(lengths, 8, 8, 3407, 0)  # what a resumed run replays
    assert order != length_grouped_order(lengths, 8, 8, 3407, 1) and order != length_grouped_order(lengths, 8, 8, 1, 0)
    assert max(lengths) in [lengths[i] for i in order[:8]]  # the longest batch first: memory fails at step one
    random_order = rng.permutation(1000).tolist()
    assert padded_tokens(order, lengths, 8) < 0.75 * padded_tokens(random_order, lengths, 8)
    # Micro-batches are shuffled, not sorted: consecutive ones come from anywhere in the length range.
    maxima = [max(lengths[i] for i in order[b : b + 8]) for b in range(8, 1000, 8)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)

    sampler = LengthGroupedSampler(lengths, 8, 8, seed=3407)
    sampler.set_epoch(1)
    assert list(sampler) == length_grouped_order(lengths, 8, 8, 3407, 1) and len(sampler) == 1000


def test_grouped_steps_mix_lengths_and_put_each_steps_longest_micro_batch_first():
    rng = np.random.default_rng(1)
    lengths = rng.integers(10, 2000, size=640).tolist()
    order = length_grouped_order(lengths, micro_batch=4, step=16, seed=0)  # 4 micro-batches per optimizer step
    assert sorted(order) == list(range(640))
    for start in range(0, 640, 16):
        maxima = [max(lengths[i] for i in order[b : b + 4]) for b in range(start, start + 16, 4)]
        assert maxima == sorted(maxima, reverse=True)  # the ranks of one accumulation round get similar lengths
    spreads = [np.ptp([lengths[i] for i in order[s : s + 16]]) for s in range(0, 640, 16)]
    assert np.median(spreads) > 500  # a step is not one narrow length band: its micro-batches come from anywhere


def test_a_remainder_batch_stays_last():
    lengths = list(range(1, 12))  # 11 pairs in micro-batches of 4: two full, one of 3
    order = length_grouped_order(lengths, micro_batch=4, step=4, seed=0)
    assert sorted(order) == list(range(11)) and len({lengths[i] for i in order[-3:]}) == 3


def test_the_trainer_draws_length_grouped_batches(tiny_model_dir, tmp_path):
    trainer = build(tiny_model_dir, tmp_path, varied_pairs(12), group_by_length=True, length_buckets=1)
    lengths = pair_lengths(trainer.train_dataset, 128)
    sampler = trainer._get_train_sampler(trainer.train_dataset)
    assert isinstance(sampler, LengthGroupedSampler) and sampler.lengths == lengths
    order = length_grouped_order(lengths, micro_batch=2, step=2, seed=trainer.args.seed)
    # The batches the trainer trains on are the sampler's: each as wide as the longest pair the order put in it.
    widths = [batch["input_ids"].shape[1] for batch in trainer.get_train_dataloader()]
    assert widths == [max(lengths[i] for i in order[b : b + 2]) for b in range(0, 12, 2)]
    assert widths[0] == max(lengths)


# --- length-bucketed forward passes ---------------------------------------------------------------------------------


def best_grouping_by_brute_force(lengths: list[int], buckets: int) -> int:
    """Fewest padded tokens over every assignment of rows to at most `buckets` groups (not only contiguous runs)."""
    best = math.inf
    for labels in itertools.product(range(buckets), repeat=len(lengths)):
        groups = [[lengths[i] for i in range(len(lengths)) if labels[i] == g] for g in range(buckets)]
        best = min(best, sum(len(g) * max(g) for g in groups if g))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=6), st.integers(1, 3))
def test_plan_buckets_finds_the_fewest_padded_tokens(lengths, buckets):
    groups = plan_buckets(lengths, buckets)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths))) and len(groups) <= buckets
    cost = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    best = best_grouping_by_brute_force(lengths, buckets)
    if best <= (1 - MIN_SAVING) * len(lengths) * max(lengths):
        assert cost == best
    else:  # too little to gain from another forward pass
        assert len(groups) == 1


def test_length_buckets_give_trls_loss_metrics_and_gradients(tiny_model_dir, tmp_path):
    trainer = build(tiny_model_dir, tmp_path, varied_pairs(4), group_by_length=False, length_buckets=1)
    move_adapter_off_zero(trainer.model)
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(4)]))
    assert len(set(batch["attention_mask"].sum(1).tolist())) > 4  # rows of many lengths
    one_pass = loss_metrics_gradients(trainer, batch)

    inner = trainer.model.get_base_model().forward
    computed = []

    def spy(*args, **kwargs):  # the fused-head forward under the buckets: what each pass computes
        computed.append(kwargs["input_ids"].numel())
        return inner(*args, **kwargs)

    trainer.model.get_base_model().forward = spy
    use_length_buckets(trainer.model, 4)
    bucketed = loss_metrics_gradients(trainer, batch)

    assert len(computed) > 2  # policy and reference forwards were both split
    assert sum(computed) < 2 * batch["input_ids"].numel() * (1 - MIN_SAVING)
    assert abs(rewards := one_pass[1]["rewards/margins"]) > 1e-4, rewards  # a non-trivial comparison
    torch.testing.assert_close(bucketed[0], one_pass[0], atol=1e-6, rtol=1e-6)
    assert bucketed[1].keys() == one_pass[1].keys()
    for key, value in one_pass[1].items():
        assert bucketed[1][key] == pytest.approx(value, abs=1e-5), key
    for name, gradient in one_pass[2].items():
        torch.testing.assert_close(bucketed[2][name], gradient, atol=1e-6, rtol=1e-5)


# --- cached reference log-probs -------------------------------------------------------------------------------------


def test_cached_reference_logps_are_trls_and_are_reused(tiny_model_dir, tmp_path):
    rows = varied_pairs(6)
    live = build(tiny_model_dir, tmp_path / "live", rows, group_by_length=False)
    move_adapter_off_zero(live.model)
    cached = build(tiny_model_dir, tmp_path / "cached", rows, group_by_length=False)
    move_adapter_off_zero(cached.model)
    cache = tmp_path / "cache"
    assert attach_reference_logps(cached, cache, {"export": "x"}, batch_size=4) == {"train": "computed"}
    assert cached.precompute_ref_logps and len(list(cache.glob("train-*.pt"))) == 1

    batch = live.data_collator([live.train_dataset[i] for i in range(6)])
    ref_chosen, ref_rejected = live.compute_ref_log_probs(live.model, batch)
    torch.testing.assert_close(torch.tensor(cached.train_dataset["ref_chosen_logps"]), ref_chosen, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        torch.tensor(cached.train_dataset["ref_rejected_logps"]), ref_rejected, atol=1e-5, rtol=0
    )
    # The loss, metrics and gradients are those of TRL's reference run inside the step.
    cached_batch = cached.data_collator([cached.train_dataset[i] for i in range(6)])
    assert "ref_chosen_logps" in cached_batch
    from_cache, from_live = loss_metrics_gradients(cached, cached_batch), loss_metrics_gradients(live, batch)
    torch.testing.assert_close(from_cache[0], from_live[0], atol=1e-5, rtol=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert from_cache[1][key] == pytest.approx(from_live[1][key], abs=1e-5), key

    again = build(tiny_model_dir, tmp_path / "again", rows, group_by_length=False)
    assert attach_reference_logps(again, cache, {"export": "x"}, batch_size=4) == {"train": "cached"}
    assert again.train_dataset["ref_chosen_logps"] == cached.train_dataset["ref_chosen_logps"]
    # Another reference, or other tokens under the same key, are computed afresh.
    other = build(tiny_model_dir, tmp_path / "other", rows, group_by_length=False)
    assert attach_reference_logps(other, cache, {"export": "y"}, batch_size=4) == {"train": "computed"}
    changed = build(tiny_model_dir, tmp_path / "changed", varied_pairs(6, offset=1), group_by_length=False)
    assert attach_reference_logps(changed, cache, {"export": "x"}, batch_size=4) == {"train": "computed"}


def test_ld_dpo_weights_the_longer_responses_tail_and_keys_its_own_cache(tiny_model_dir, tmp_path, capsys):
    """LD-DPO (`ld_alpha`): the reference log-probs count the tokens past the shorter response's length at that
    weight, and a cache made with another weight (or none) is not read for it."""
    rows, cache = varied_pairs(6), tmp_path / "cache"

    def reference(name: str, ld_alpha: float | None):
        config = tiny(dpo.DPOTrainConfig, tiny_model_dir, tmp_path / name, max_length=128, evaluate=False,
                      group_by_length=False, cache_ref_logps=True, ld_alpha=ld_alpha)
        loaded = load_trainable(config, str(tiny_model_dir), seed=0)
        trainer = dpo.build_trainer(config, loaded, tmp_path / name, Dataset.from_list(rows),
                                    reference_cache=(cache, {"export": "x"}))
        status = "cached" if "reference log-probs train cached" in capsys.readouterr().out else "computed"
        logps = torch.tensor([trainer.train_dataset["ref_chosen_logps"], trainer.train_dataset["ref_rejected_logps"]])
        return logps, status, token_counts(trainer.train_dataset)[:, 1:].T

    plain, status, lengths = reference("plain", None)
    assert status == "computed"
    half, status, _ = reference("half", 0.5)
    assert status == "computed"  # not the plain sums of the same export and reference
    assert reference("half-again", 0.5)[1] == "cached" and reference("plain-again", None)[1] == "cached"
    longer, shorter = lengths.argmax(axis=0), lengths.argmin(axis=0)
    unequal = lengths[0] != lengths[1]
    assert unequal.any()
    pairs = torch.arange(len(rows))
    # The shorter response is all shared length: unchanged. The longer one's tail counts half: its (negative)
    # log-prob rises by half the tail's.
    torch.testing.assert_close(half[shorter, pairs], plain[shorter, pairs])
    assert (half[longer, pairs][unequal] > plain[longer, pairs][unequal] + 1e-3).all(), (half, plain, lengths)
    with pytest.raises(ValueError, match="ld_alpha must be in"):
        tiny(dpo.DPOTrainConfig, tiny_model_dir, tmp_path / "bad", ld_alpha=1.5).validate()


def test_train_dpo_caches_the_reference_with_the_export(tiny_model_dir, tmp_path, store, capsys):
    base = store.register_checkpoint("base", str(tiny_model_dir))
    store.new_round(base)
    register_export(store, tmp_path, "cached")

    def run(name: str, parent: int, **fields):
        config = tiny(dpo.DPOTrainConfig, tiny_model_dir, tmp_path / name, max_steps=2, cache_ref_logps=True, **fields)
        config.parent = parent
        result = dpo.train(store, config)
        return result, capsys.readouterr().out

    first, out = run("one", base)
    assert "reference log-probs train computed, eval computed" in out
    cache = tmp_path / "exports" / "cached" / "ref-logps"
    assert len(list(cache.glob("train-*.pt"))) == 1 and len(list(cache.glob("eval-*.pt"))) == 1
    assert first.metrics["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference before any update
    assert 0.0 <= first.metrics["heldout_reward_accuracy"] <= 1.0

    again, out = run("two", base, beta=0.3)  # same export, same reference: another beta reuses them
    assert "reference log-probs train cached, eval cached" in out
    assert again.metrics["first_loss"] == pytest.approx(0.6931, abs=1e-3)
    _, out = run("three", first.checkpoint_id)  # the next round's reference is the first run's adapter
    assert "reference log-probs train computed, eval computed" in out
    assert len(list(cache.glob("train-*.pt"))) == 2
    ld, out = run("four", base, ld_alpha=0.5)  # LD-DPO trains end to end, on reference log-probs of its own
    assert "reference log-probs train computed, eval computed" in out and ld.metrics["global_step"] == 2
    assert len(list(cache.glob("train-*.pt"))) == 3


# --- the bench harness ----------------------------------------------------------------------------------------------


def test_throughput_harness_smoke_runs_every_path(tiny_model_dir, tmp_path):
    out = tmp_path / "report.json"
    command = [sys.executable, str(ROOT / "bench" / "dpo_throughput.py"), "--smoke", "--configs", "trl,unsloth,all"]
    command += ["--tokenizer", str(tiny_model_dir), "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    results = {entry["config"]: entry for entry in report["results"]}
    assert report["data"]["pairs"] == 4 and report["data"]["round_trip_max_error"] == 0.0
    assert results["unsloth"]["skipped"] == "Unsloth needs a GPU"
    for name in ("trl", "all"):
        result = results[name]
        assert "error" not in result, result.get("error")
        assert result["measured_steps"] == 2 and len(result["logs"]) == 4  # two epochs of two steps
        assert 0 < result["real_tokens"] <= result["computed_tokens"] <= result["padded_tokens"]
        assert result["tokens_per_s"] > 0 and result["useful_mfu"] > 0
        assert all(abs(entry["loss"] - math.log(2)) < 0.05 for entry in result["logs"])
    assert results["all"]["ref_pass_s"] > 0
    assert results["all"]["tokens_per_s_incl_ref_pass"] < results["all"]["tokens_per_s"]
    assert "| trl | trl | defaults |" in done.stdout and "| all | prefloop |" in done.stdout


# --- the CPU levers together ----------------------------------------------------------------------------------------


def test_the_cpu_levers_train_the_steps_of_trls_plain_path(tiny_model_dir, tmp_path, store, monkeypatch):
    """The LM head at the scored positions only, no gradient checkpointing, reference log-probs computed once and one
    forward pass per row length (what `make train-dpo` runs on CPU) train the run that the full-logits head,
    recomputed activations, TRL's reference pass in every step and one padded pass train: the same loss and rewards at
    every step of two epochs, the same adapter at the end."""
    from datasets import DatasetDict

    from training.engine import lm_head

    base = store.register_checkpoint("base", str(tiny_model_dir))
    store.new_round(base)
    path = tmp_path / "exports" / "varied"
    DatasetDict(
        {"train": Dataset.from_list(varied_pairs(8)), "test": Dataset.from_list(varied_pairs(4, 20))}
    ).save_to_disk(str(path))
    store.register_export("varied", str(path), 0, {}, {"train": 8, "test": 4})

    def run(name: str, **fields):
        config = tiny(
            dpo.DPOTrainConfig,
            tiny_model_dir,
            tmp_path / name,
            max_length=128,
            max_steps=-1,
            num_train_epochs=2,
            gradient_accumulation_steps=2,
            learning_rate=5e-3,
            **fields,
        )
        config.parent = base
        result = dpo.train(store, config)
        logs = [entry for entry in result.trainer.state.log_history if "loss" in entry and "train_runtime" not in entry]
        adapter = {n: p.detach().clone() for n, p in result.trainer.model.named_parameters() if "lora_" in n}
        return result, logs, adapter

    fast, fast_logs, fast_adapter = run("fast", gradient_checkpointing="auto", cache_ref_logps=True, length_buckets=0)
    assert not fast.trainer.args.gradient_checkpointing  # auto on CPU
    with monkeypatch.context() as patch:
        patch.setattr(lm_head, "projects_hidden_states_only", lambda model: False)  # the full (rows, length, V) logits
        slow, slow_logs, slow_adapter = run(
            "slow", gradient_checkpointing=True, cache_ref_logps=False, length_buckets=1
        )
    assert slow.trainer.args.gradient_checkpointing and not slow.trainer.precompute_ref_logps

    assert len(fast_logs) == len(slow_logs) == 4  # 8 pairs, 4 a step, 2 epochs
    assert fast_logs[-1]["rewards/margins"] > 0.01  # the policy moved: the comparison is not between zeros
    keys = (
        "loss",
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "entropy",
        "mean_token_accuracy",
        "grad_norm",
    )
    for fast_entry, slow_entry in zip(fast_logs, slow_logs):
        for key in keys:
            assert fast_entry[key] == pytest.approx(slow_entry[key], rel=1e-4, abs=1e-5), (key, fast_entry["step"])
    for name, value in slow_adapter.items():
        torch.testing.assert_close(fast_adapter[name], value, rtol=1e-4, atol=1e-6)
    assert fast.metrics["heldout_reward_accuracy"] == slow.metrics["heldout_reward_accuracy"]
    assert fast.metrics["eval"]["eval_rewards/margins"] == pytest.approx(
        slow.metrics["eval"]["eval_rewards/margins"], rel=1e-4, abs=1e-5
    )
