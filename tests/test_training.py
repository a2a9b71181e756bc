"""SFT, reward model, DPO and merge on the tiny random chat model: real trainers, real files, real DuckDB.

Every run is a few optimizer steps at max_length 64; the whole file takes about a minute on two cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from store import Store
from tests.training_data import PROMPTS, preference_rows, register_export, tiny
from training.algorithms import dpo, merge, reward, sft
from training.algorithms.callbacks import NonFiniteLossError
from training.algorithms.run import TrainingError
from training.models import load_adapter_model


def base_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def split_parameters(model) -> tuple[dict, dict]:
    """(base parameters by their name in the base checkpoint, adapter and score-head parameters) of a PEFT model."""
    base, trained = {}, {}
    for name, param in model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            trained[name] = param.detach().clone()
        else:
            plain = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")
            base[plain] = param.detach().clone()
    return base, trained


def assert_only_adapter_changed(model, model_dir: Path) -> None:
    base, trained = split_parameters(model)
    saved = base_weights(model_dir)
    for name, value in base.items():
        if name in saved:
            assert torch.equal(value, saved[name]), f"base parameter {name} changed"
    assert any(("lora_B" in n or "modules_to_save" in n) and v.abs().sum() > 0 for n, v in trained.items())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable), trainable


def sequence_logps(model, batch) -> torch.Tensor:
    """Sum of completion-token log-probs per sequence, computed from the model's full logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    logps = logits.float().log_softmax(-1).gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    return (logps * batch["completion_mask"][:, 1:]).sum(-1)


# --- DPO ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def round_one(tmp_path_factory, tiny_model_dir):
    """A database with one export and a round-1 DPO checkpoint trained on it (shared by the round-2 tests)."""
    root = tmp_path_factory.mktemp("round-one")
    store = Store(root / "db.duckdb")
    base_id = store.register_checkpoint("base", str(tiny_model_dir))
    store.new_round(base_id)
    register_export(store, root, "round-0")
    config = tiny(dpo.DPOTrainConfig, tiny_model_dir, root / "dpo-1", learning_rate=1e-2, report_to=["tensorboard"])
    result = dpo.train(store, config)
    return store, root, result


def test_dpo_lowers_the_loss_and_trains_only_the_adapter(round_one, tiny_model_dir):
    store, root, result = round_one
    metrics = result.metrics
    assert metrics["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at the first step
    assert metrics["last_loss"] < metrics["first_loss"] - 0.05
    assert metrics["global_step"] == 6
    assert 0.0 <= metrics["heldout_reward_accuracy"] <= 1.0
    assert_only_adapter_changed(result.trainer.model, tiny_model_dir)

    checkpoint = store.get_checkpoint(result.checkpoint_id)
    run_dir = root / "dpo-1"
    assert checkpoint["kind"] == "dpo" and checkpoint["round_id"] == 0
    assert checkpoint["parent_id"] == store.list_checkpoints("base")[0]["id"]
    assert checkpoint["export_id"] == store.list_exports()[0]["id"]
    assert checkpoint["base_model"] == str(tiny_model_dir)
    assert checkpoint["adapter_path"] == str(run_dir / "adapter")
    assert checkpoint["config"]["beta"] == 0.1 and checkpoint["config"]["learning_rate"] == 1e-2
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert not (run_dir / "adapter" / "ref").exists()  # only the trained adapter is kept
    assert (run_dir / "adapter" / "tokenizer_config.json").exists()
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 6
    assert "beta: 0.1" in (run_dir / "config.yaml").read_text()
    assert list((run_dir / "runs").rglob("events.out.tfevents.*")), "no TensorBoard log"
    (run,) = [r for r in store.list_training_runs() if r["checkpoint_id"] == result.checkpoint_id]
    assert run["status"] == "finished" and run["kind"] == "dpo" and run["metrics"]["global_step"] == 6


def test_dpo_checkpoint_is_what_generate_loads(round_one, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from training.models import load_for_generation

    store, _, result = round_one
    checkpoint = store.get_checkpoint(result.checkpoint_id)
    policy, tokenizer = load_for_generation(checkpoint)  # what `prefloop generate` samples with
    base = AutoModelForCausalLM.from_pretrained(checkpoint["base_model"], dtype=torch.float32)
    trained = load_adapter_model(checkpoint["base_model"], checkpoint["adapter_path"])
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Greet me."}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = policy.generate(**inputs, min_new_tokens=4, max_new_tokens=4, do_sample=False)
        logits = policy(**inputs).logits
        torch.testing.assert_close(logits, trained(**inputs).logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(logits, base(**inputs).logits, atol=1e-4)  # the adapter is in use
    assert output.shape[1] == inputs["input_ids"].shape[1] + 4


def test_dpo_round_two_reference_is_the_round_one_policy(round_one, tiny_model_dir, tmp_path):
    store, root, first = round_one
    parent = store.get_checkpoint(first.checkpoint_id)
    config = tiny(dpo.DPOTrainConfig, tiny_model_dir, tmp_path / "dpo-2", learning_rate=5e-3, max_steps=2)
    config.parent = parent["id"]
    result = dpo.train(store, config)
    trainer = result.trainer

    # Before the first update the policy is the reference: the implicit rewards are exactly zero.
    first_log = trainer.state.log_history[0]
    assert first_log["rewards/chosen"] == 0.0 and first_log["rewards/rejected"] == 0.0

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(trainer.model, batch)
    round_one_policy = load_adapter_model(parent["base_model"], parent["adapter_path"])
    expected = sequence_logps(round_one_policy, batch)
    torch.testing.assert_close(torch.cat([ref_chosen, ref_rejected]), expected, atol=1e-4, rtol=1e-5)
    with round_one_policy.disable_adapter():
        base_logps = sequence_logps(round_one_policy, batch)
    assert not torch.allclose(base_logps, expected, atol=1e-3)  # the base model would have been a different reference

    # The trained adapter moved on from its parent; the frozen reference copy did not.
    parent_adapter = load_file(str(Path(parent["adapter_path"]) / "adapter_model.safetensors"))
    params = dict(trainer.model.named_parameters())
    for key, value in parent_adapter.items():
        ref_name = key.replace(".weight", ".ref.weight")
        torch.testing.assert_close(params[ref_name].detach(), value)
    assert any(
        not torch.equal(params[k.replace(".weight", ".default.weight")].detach(), v) for k, v in parent_adapter.items()
    )
    checkpoint = store.get_checkpoint(result.checkpoint_id)
    assert checkpoint["parent_id"] == parent["id"] and checkpoint["base_model"] == parent["base_model"]


class InterruptAfterSave(TrainerCallback):
    """Raises KeyboardInterrupt right after the trainer saved the checkpoint of `step`, as Ctrl-C there would."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_dpo_resume_reproduces_the_uninterrupted_run(round_one, tiny_model_dir, tmp_path):
    store, _, first = round_one
    settings = dict(learning_rate=1e-2, max_steps=6, save_steps=2, parent=first.checkpoint_id)
    dpo.train(store, tiny(dpo.DPOTrainConfig, tiny_model_dir, tmp_path / "straight", **settings))

    config = tiny(dpo.DPOTrainConfig, tiny_model_dir, tmp_path / "interrupted", **settings)
    with pytest.raises(KeyboardInterrupt):
        dpo.train(store, config, callbacks=(InterruptAfterSave(4),))
    failed = store.list_training_runs()[-1]
    assert failed["status"] == "failed" and failed["error"] == "KeyboardInterrupt" and failed["checkpoint_id"] is None
    assert not (tmp_path / "interrupted" / "checkpoint-4" / "ref").exists()  # see SaveOnlyTrainedAdapter
    with pytest.raises(TrainingError, match="interrupted run \\(checkpoint-4\\).*--resume"):
        dpo.train(store, config)

    resumed = dpo.train(store, config, resume=True)
    assert resumed.metrics["global_step"] == 6
    assert store.get_checkpoint(resumed.checkpoint_id)["config"]["resumed_from"].endswith("checkpoint-4")
    straight = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    again = load_file(str(tmp_path / "interrupted" / "adapter" / "adapter_model.safetensors"))
    parent = load_file(
        str(Path(store.get_checkpoint(first.checkpoint_id)["adapter_path"]) / "adapter_model.safetensors")
    )
    assert straight.keys() == again.keys()
    for key in straight:
        torch.testing.assert_close(again[key], straight[key], atol=1e-6, rtol=1e-5)
    assert any(not torch.allclose(straight[k], parent[k]) for k in straight)  # resuming did not skip the training
    with pytest.raises(TrainingError, match="finished run"):
        dpo.train(store, config, resume=True)


def test_a_nan_loss_stops_training_with_a_clear_error(tiny_model_dir, tmp_path, store):
    from safetensors.torch import save_file

    broken = tmp_path / "nan-model"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    weights = base_weights(tiny_model_dir)
    weights["model.layers.0.mlp.down_proj.weight"][0, 0] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    register_export(store, tmp_path, "nan")

    with pytest.raises(NonFiniteLossError, match="step 1: loss is nan"):
        dpo.train(store, tiny(dpo.DPOTrainConfig, broken, tmp_path / "run"))
    (run,) = store.list_training_runs()
    assert run["status"] == "failed" and run["error"].startswith("NonFiniteLossError: step 1: loss is nan")
    assert store.list_checkpoints("dpo") == []


# --- reward model ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("reward")
    store = Store(root / "db.duckdb")
    register_export(store, root, "separable")
    config = tiny(reward.RewardTrainConfig, tiny_model_dir, root / "rm", learning_rate=1e-2, max_steps=8)
    return store, reward.train(store, config)


def reward_scores(model, tokenizer, rows: list[dict], key: str) -> torch.Tensor:
    texts = [tokenizer.apply_chat_template(r["prompt"] + r[key], tokenize=False) for r in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits.squeeze(-1)


def test_reward_model_separates_a_trivially_separable_set(reward_run, tiny_model_dir):
    store, result = reward_run
    assert result.metrics["heldout_accuracy"] == 1.0 and result.metrics["heldout_pairs"] == 4
    assert result.metrics["last_loss"] < result.metrics["first_loss"]
    assert_only_adapter_changed(result.trainer.model, tiny_model_dir)
    assert any("score" in n and p.requires_grad for n, p in result.trainer.model.named_parameters())

    checkpoint = store.get_checkpoint(result.checkpoint_id)
    assert checkpoint["kind"] == "reward" and checkpoint["parent_id"] is None
    (run,) = store.list_training_runs()
    assert run["metrics"]["heldout_accuracy"] == 1.0
    # Reloaded as PPO and evaluation load it: it ranks every held-out pair right.
    model = load_adapter_model(checkpoint["base_model"], checkpoint["adapter_path"], task="reward")
    tokenizer = result.trainer.processing_class
    rows = preference_rows(4, 100)
    assert (reward_scores(model, tokenizer, rows, "chosen") > reward_scores(model, tokenizer, rows, "rejected")).all()


def test_reward_model_scores_the_last_real_token_of_a_padded_sequence(reward_run):
    store, result = reward_run
    checkpoint = store.get_checkpoint(result.checkpoint_id)
    model = load_adapter_model(checkpoint["base_model"], checkpoint["adapter_path"], task="reward")
    tokenizer = result.trainer.processing_class
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    row = preference_rows(1)[0]
    short = reward_scores(model, tokenizer, [row], "rejected")
    padded = reward_scores(model, tokenizer, [row, row], "rejected")  # same text twice: no padding
    together = reward_scores(model, tokenizer, [{**row, "rejected": row["chosen"]}, row], "rejected")  # row 2 padded
    torch.testing.assert_close(padded[0], short[0])
    torch.testing.assert_close(together[1], short[0], atol=1e-5, rtol=1e-5)


# --- SFT ------------------------------------------------------------------------------------------------------------


def test_sft_on_the_chosen_responses_lowers_the_loss(tiny_model_dir, tmp_path, store):
    register_export(store, tmp_path, "sft-export")
    config = tiny(sft.SFTTrainConfig, tiny_model_dir, tmp_path / "sft", learning_rate=1e-2, max_steps=-1, min_steps=12)
    result = sft.train(store, config)
    assert result.metrics["last_loss"] < result.metrics["first_loss"] - 0.1
    assert result.metrics["global_step"] >= 12  # min_steps: more passes over a small export
    assert "eval_loss" in result.metrics["eval"]
    assert_only_adapter_changed(result.trainer.model, tiny_model_dir)
    checkpoint = store.get_checkpoint(result.checkpoint_id)
    assert checkpoint["kind"] == "sft" and checkpoint["export_id"] == store.list_exports()[0]["id"]
    # The next DPO run starts from it: SFT is the newest policy checkpoint.
    assert store.latest_checkpoint(("dpo", "sft", "base"))["id"] == result.checkpoint_id


def test_sft_on_a_jsonl_file(tiny_model_dir, tmp_path, store):
    path = tmp_path / "sft.jsonl"
    conversations = [
        {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "yes thanks"}]} for p in PROMPTS
    ]
    path.write_text("\n".join(json.dumps(c) for c in conversations) + "\n")
    config = tiny(sft.SFTTrainConfig, tiny_model_dir, tmp_path / "sft", learning_rate=1e-2, max_steps=4)
    config.data = str(path)
    result = sft.train(store, config)
    assert result.metrics["last_loss"] < result.metrics["first_loss"]
    checkpoint = store.get_checkpoint(result.checkpoint_id)
    assert checkpoint["export_id"] is None and checkpoint["round_id"] is None


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"sft\.jsonl:2: not JSON"),
        ('{"messages": "hi"}', r'sft\.jsonl:2: expected \{"messages"'),
        ('{"messages": [{"role": "user", "content": "hi"}]}', r"sft\.jsonl:2: the last message must be the assistant"),
    ],
)
def test_sft_jsonl_errors_name_the_line(tmp_path, line, message):
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(good) + "\n" + line + "\n")
    with pytest.raises(TrainingError, match=message):
        sft.read_sft_jsonl(path)


# --- merge ----------------------------------------------------------------------------------------------------------


def test_merge_writes_a_full_model_that_matches_base_plus_adapter(round_one, tmp_path):
    from transformers import AutoModelForCausalLM

    store, _, first = round_one
    checkpoint = store.get_checkpoint(first.checkpoint_id)
    merged_id = merge.merge(store, merge.MergeConfig(first.checkpoint_id, "float32", str(tmp_path / "merged32")))
    merged = store.get_checkpoint(merged_id)
    assert merged["kind"] == "merged" and merged["parent_id"] == first.checkpoint_id and merged["adapter_path"] is None
    inputs = {"input_ids": torch.tensor([[5, 17, 33, 2, 40, 41]])}
    with torch.no_grad():
        expected = load_adapter_model(checkpoint["base_model"], checkpoint["adapter_path"])(**inputs).logits
        full = AutoModelForCausalLM.from_pretrained(merged["base_model"], dtype=torch.float32)
        torch.testing.assert_close(full(**inputs).logits, expected, atol=1e-5, rtol=1e-4)

    merge.merge(store, merge.MergeConfig(first.checkpoint_id, output_dir=str(tmp_path / "merged16")))
    weights = load_file(str(tmp_path / "merged16" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    assert (tmp_path / "merged16" / "tokenizer_config.json").exists()
    with pytest.raises(TrainingError, match="exists"):
        merge.merge(store, merge.MergeConfig(first.checkpoint_id, output_dir=str(tmp_path / "merged16")))
    with pytest.raises(TrainingError, match="has no adapter"):
        merge.merge(store, merge.MergeConfig(merged_id))


def test_merged_reward_model_stays_a_reward_model(reward_run, tmp_path):
    from transformers import AutoModelForSequenceClassification

    store, result = reward_run
    checkpoint = store.get_checkpoint(result.checkpoint_id)
    merged = store.get_checkpoint(
        merge.merge(store, merge.MergeConfig(result.checkpoint_id, "float32", str(tmp_path / "rm")))
    )
    assert merged["kind"] == "reward" and merged["adapter_path"] is None
    tokenizer = result.trainer.processing_class
    rows = preference_rows(2, 100)
    full = AutoModelForSequenceClassification.from_pretrained(merged["base_model"], dtype=torch.float32)
    adapter = load_adapter_model(checkpoint["base_model"], checkpoint["adapter_path"], task="reward")
    torch.testing.assert_close(
        reward_scores(full, tokenizer, rows, "chosen"),
        reward_scores(adapter, tokenizer, rows, "chosen"),
        atol=1e-5,
        rtol=1e-4,
    )


# --- the CPU LM head, configs and the command line ------------------------------------------------------------------


def test_plain_lm_head_returns_the_log_softmax_of_the_labelled_tokens(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from training.engine.lm_head import choose_lm_head, projects_hidden_states_only, use_plain_lm_head

    input_ids = torch.tensor([[5, 17, 33, 2, 40, 41, 0, 0], [7, 8, 9, 10, 11, 12, 13, 14]])
    attention_mask = (torch.arange(8) < torch.tensor([[6], [8]])).long()
    labels = input_ids.masked_fill((attention_mask == 0) | (torch.arange(8) < 3), -100)  # prompt and padding
    targets, scored = labels[:, 1:], labels[:, 1:] != -100
    gradients = {}
    # Scored positions only (the default for a Llama) and the full logits (what models with logit scaling run).
    for scored_only in (None, False):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # as DPOTrainer does
        use_plain_lm_head(model, scored_positions_only=scored_only)
        projected = []  # rows the output projection sees
        model.lm_head.register_forward_hook(
            lambda module, args, out, rows=projected: rows.append(args[0].shape[:-1].numel())
        )
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
        assert projected == [int(scored.sum()) if scored_only is None else input_ids.numel()]

        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]  # the unpatched path
        log_p = logits.log_softmax(-1)
        expected = log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * scored
        torch.testing.assert_close(out.log_probs, expected)
        torch.testing.assert_close(out.entropy, -(log_p.exp() * log_p).sum(-1) * scored)
        torch.testing.assert_close(out.mean_logits, logits.mean(-1) * scored)
        assert torch.equal(out.is_top1, (logits.argmax(-1) == targets) & scored)
        torch.testing.assert_close(out.loss, -expected.sum() / scored.sum())
        out.log_probs.sum().backward()
        gradients[scored_only] = {n: p.grad for n, p in model.named_parameters()}
        assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
        generated = model.generate(input_ids=input_ids[:1, :4], min_new_tokens=3, max_new_tokens=3, do_sample=False)
        assert generated.shape == (1, 7)
    for name, gradient in gradients[False].items():
        torch.testing.assert_close(gradients[None][name], gradient, rtol=1e-5, atol=1e-7)
    assert projects_hidden_states_only(model)
    model.config.final_logit_softcapping = 30.0  # Gemma 2's: its forward transforms the logits, so they are computed
    assert not projects_hidden_states_only(model)

    assert choose_lm_head("auto", "cpu") == "plain"
    with pytest.raises(ValueError, match="needs a GPU"):
        choose_lm_head("fused", "cpu")


def test_configs_load_and_the_command_line_overrides_them(tmp_path):
    from training.config import ConfigError, build
    from training.loop.generation import GenerateConfig
    from training.model_source import ModelError
    from training.models import uses_gradient_checkpointing

    configs = Path(__file__).resolve().parents[1] / "configs"
    config = build(dpo.DPOTrainConfig, configs / "dpo.yaml", {"beta": "0.25", "loss_type": "ipo,sigmoid"})
    assert config.beta == 0.25 and config.loss_type == ["ipo", "sigmoid"]
    assert config.learning_rate == 2e-4 and config.lora_r == 16 and config.lora_alpha == 16 and config.seed == 3407
    assert config.lora_targets == ["all-linear"] and config.max_length == 2048 and config.weight_decay == 0.01
    # gradient_checkpointing: auto recomputes activations on a GPU only; YAML's true / false and Python bools work too.
    assert uses_gradient_checkpointing(config, "cuda") and not uses_gradient_checkpointing(config, "cpu")
    for value, on_cpu in (("true", True), ("False", False), (True, True), (False, False)):
        assert (
            uses_gradient_checkpointing(build(dpo.DPOTrainConfig, None, {"gradient_checkpointing": value}), "cpu")
            is on_cpu
        )
    with pytest.raises(ModelError, match="gradient_checkpointing must be true, false or auto, not 'sometimes'"):
        uses_gradient_checkpointing(build(dpo.DPOTrainConfig, None, {"gradient_checkpointing": "sometimes"}), "cpu")
    assert config.per_device_train_batch_size == 2 and config.gradient_accumulation_steps == 4
    assert build(reward.RewardTrainConfig, configs / "reward.yaml").learning_rate == 1e-4
    # The loop's candidates: k samples per prompt, one pair kept (the YAML once overrode k to 2 without anyone noticing)
    assert build(GenerateConfig, configs / "generate.yaml").samples_per_prompt == GenerateConfig().samples_per_prompt == 4
    assert build(sft.SFTTrainConfig, configs / "sft.yaml").learning_rate == 2e-4
    (tmp_path / "bad.yaml").write_text("rank: 8\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown field 'rank'"):
        build(dpo.DPOTrainConfig, tmp_path / "bad.yaml")


def test_every_command_prints_its_help(capsys):
    """`prefloop COMMAND --help` for every command: argparse formats help with %, so a field's help that says "50%"
    once made `loop-sim --help` crash."""
    from training.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"loop-sim", "train-dpo", "train-rm", "eval", "generate"} <= set(commands)
    for command in commands.values():
        command.format_help()  # raises on a stray %
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["loop-sim", "--help"])
    assert exited.value.code == 0
    printed = capsys.readouterr().out
    assert "the base model's: ~50%)" in printed and "--reward-model" in printed


def test_cli_train_dpo_with_an_ipo_loss(tiny_model_dir, tmp_path, db_path, capsys):
    from training.cli import main

    store = Store(db_path)
    assert main(["--db", str(db_path), "train-dpo"]) == 1
    assert "no export yet" in capsys.readouterr().err
    register_export(store, tmp_path, "cli")
    assert main(["--db", str(db_path), "train-dpo", "--export", "nope"]) == 1
    assert "no export named 'nope'; known: cli" in capsys.readouterr().err

    configs = Path(__file__).resolve().parents[1] / "configs"
    code = main(
        ["--db", str(db_path), "train-dpo", "--config", str(configs / "dpo.yaml"), "--model", str(tiny_model_dir)]
        + ["--output-dir", str(tmp_path / "run"), "--max-length", "64", "--max-steps", "2", "--lora-r", "4"]
        + ["--gradient-checkpointing", "false", "--report-to", "none", "--loss-type", "ipo"]
    )
    assert code == 0
    (checkpoint,) = store.list_checkpoints("dpo")
    assert checkpoint["config"]["loss_type"] == ["ipo"] and checkpoint["config"]["gradient_accumulation_steps"] == 4
    (run,) = store.list_training_runs()
    # IPO's loss with the policy equal to its reference is (1 / (2 beta))^2 = 25: the variant reached TRL.
    assert run["metrics"]["first_loss"] == pytest.approx(25.0)
    assert (
        main(
            [
                "--db",
                str(db_path),
                "train-dpo",
                "--config",
                str(configs / "dpo.yaml"),
                "--output-dir",
                str(tmp_path / "run"),
            ]
        )
        == 1
    )
    assert "a finished run" in capsys.readouterr().err
    mismatched = ["--loss-type", "sigmoid,sft", "--loss-weights", "1", "--output-dir", str(tmp_path / "weights")]
    assert main(["--db", str(db_path), "train-dpo", "--model", str(tiny_model_dir), *mismatched]) == 1
    assert "loss_weights has 1 entries for 2 loss_type (sigmoid,sft)" in capsys.readouterr().err


def test_min_steps_raises_the_epochs_of_a_small_export():
    """A round with few decisive labels still trains: 8 pairs at 8 a step make 1 step an epoch, so at least 16 steps
    take 16 epochs; an export large enough for the configured epochs is left alone."""
    from training.algorithms.run import TrainConfig, epochs_for

    config = TrainConfig(num_train_epochs=2, min_steps=16, per_device_train_batch_size=2, gradient_accumulation_steps=4)
    assert epochs_for(config, 8) == 16 and epochs_for(config, 20) == pytest.approx(16 / 3)
    assert epochs_for(config, 128) == 2  # 16 steps an epoch: the configured 2 epochs give 32
    assert epochs_for(TrainConfig(num_train_epochs=2), 8) == 2  # min_steps 0: off


def test_loss_weights_scale_each_term_of_a_combined_loss(tiny_model_dir, tmp_path, db_path):
    """DPO + SFT term with weights (1, w): at the first step the policy is its reference, so DPO's term is log 2 and
    the loss is log 2 + w * NLL of the chosen answers. Weights 0, 1 and 2 give exactly that line: the weights reach
    TRL's loss (bench/loop_variants.yaml's sft2 changes what it says)."""
    import math

    from training.cli import main

    store = Store(db_path)
    register_export(store, tmp_path, "cli")
    first_loss = {}
    for weight in (0, 1, 2):
        code = main(
            ["--db", str(db_path), "train-dpo", "--model", str(tiny_model_dir), "--max-length", "64"]
            + ["--max-steps", "1", "--lora-r", "4", "--gradient-checkpointing", "false", "--report-to", "none"]
            + ["--loss-type", "sigmoid,sft", "--loss-weights", f"1,{weight}"]
            + ["--output-dir", str(tmp_path / f"weight-{weight}")]
        )
        assert code == 0
        first_loss[weight] = store.list_training_runs()[-1]["metrics"]["first_loss"]
    nll = first_loss[1] - math.log(2)
    assert nll > 1.0  # a random tiny model is far from the chosen answers: the term is there to scale
    assert first_loss[0] == pytest.approx(math.log(2), abs=1e-4)
    assert first_loss[2] == pytest.approx(math.log(2) + 2 * nll, rel=1e-4)
