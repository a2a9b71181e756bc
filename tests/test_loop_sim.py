"""`loop-sim` end to end on CPU: two rounds of generate → judge → export → DPO → eval with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.cli import main
from training.config import build
from training.loop.judges import contains_word, label_with_judge, load_judge, shorter
from training.loop.loop_report import TABLE_METRICS, format_length_table, rows_from_summary
from training.loop.loop_sim import LoopConfig, run_loop
from training.metrics import Estimate, format_estimate

SEEDS = Path(__file__).resolve().parents[1] / "store" / "seeds" / "prompts.jsonl"


def prefers_letter_e(messages, response_a, response_b):
    """A judge that prefers the response containing the token "e" more often (frequent enough in a tiny model's
    near-uniform samples to give a decision on most pairs)."""
    count_a, count_b = response_a.count("e"), response_b.count("e")
    if count_a == count_b:
        return "tie", None
    return ("a" if count_a > count_b else "b"), "clear"


def prefers_letter_e_density(messages, response_a, response_b):
    """Prefers the response with more e's per character: a content preference a tiny model's token distribution can
    learn, decided on most pairs, and blind to length."""
    density_a, density_b = (r.count("e") / max(1, len(r)) for r in (response_a, response_b))
    if density_a == density_b:
        return "tie", None
    return ("a" if density_a > density_b else "b"), "clear"


def prefers_alphabetical_start(messages, response_a, response_b):
    """Prefers the response whose first character comes first in Unicode order: a preference about the first token,
    which a tiny model's LoRA can learn from a few dozen pairs, decided on almost every pair, blind to length."""
    first_a, first_b = response_a.strip()[:1], response_b.strip()[:1]
    if first_a == first_b:
        return "tie", None
    return ("a" if first_a < first_b else "b"), "clear"


def test_the_reports_length_table_is_left_out_without_the_split_and_marks_missing_parts():
    part = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10}

    def row(round_id, by_length):
        accuracy = None if by_length is None else dict(part, details={"by_length": by_length})
        return {"round": round_id, "checkpoint": round_id + 1, "heldout_accuracy": accuracy,
                "heldout_accuracy_per_token": None}

    assert format_length_table([row(0, None), row(1, {})]) == ""  # results from before the split, or none at all
    lines = format_length_table([row(0, None), row(1, {"chosen_shorter": part})]).splitlines()
    assert lines[2:] == ["| 0 | – | – | – | – |", "| 1 | – | 0.500 [0.400, 0.600] n=10 | – | – |"]


def test_builtin_judges_and_loading():
    assert shorter([], "short", "a much longer answer") == ("a", "clear")
    assert shorter([], "same", "same") == ("tie", None)
    assert contains_word([], "for example, this", "no")[0] == "a"
    assert load_judge("tests.test_loop_sim:prefers_letter_e") is prefers_letter_e
    with pytest.raises(ValueError, match="module:function"):
        load_judge("no_colon")
    with pytest.raises(ValueError, match="has no function"):
        load_judge("training.loop.judges:missing")


def scaled_down_recipe(tmp_path):
    """configs/dpo.yaml with only what the tiny model's size calls for changed: one batch of 8 pairs a step, short
    sequences, and five times the learning rate (measured on this model: 3e-4 moved it barely, 1e-3 clearly, 5e-3
    collapsed it in a round); generation and evaluation cut to 24-token answers and 32 held-out prompts. loop-sim's
    own defaults (k = 8, a fixed 48 DPO steps a round over every round's labels) stay as they are."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    dpo = yaml.safe_load((root / "configs" / "dpo.yaml").read_text())
    dpo |= dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, max_length=256, learning_rate=1e-3,
                report_to=["none"])
    files = {
        "dpo": dpo,
        "generate": dict(max_new_tokens=24, batch_size=64, write_batch_size=64),
        "eval": dict(prompts=32, max_new_tokens=24, bootstrap=500),
    }
    for name, values in files.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(values))
    return {f"{name}_config": str(tmp_path / f"{name}.yaml") for name in files}


@pytest.mark.slow
def test_the_loop_makes_the_model_better_under_the_judge(store, chat_model_dir, tmp_path, monkeypatch):
    """Two rounds of the default recipe, scaled down, on a tiny chat model whose answers have many lengths: the
    `shorter` judge's preference is learned, and the figures show it (win rate over round 0 and KL with intervals above
    0.5 and 0), while the base model's own figures show no change."""
    monkeypatch.chdir(tmp_path)  # checkpoints/ lands here
    monkeypatch.setenv("MODEL", str(chat_model_dir))
    config = build(
        LoopConfig,
        None,
        dict(
            name="cpu-loop",
            rounds=2,
            judge="training.loop.judges:shorter",
            prompts_file=str(SEEDS),
            pairs_per_round=48,
            heldout_pairs=24,
            health_prompts=16,
            report_dir=str(tmp_path / "reports"),
            **scaled_down_recipe(tmp_path),
        ),
    )
    # The run is cut during the evaluation of the last checkpoint (planted); the rerun resumes from the state file
    # and evaluates that checkpoint only.
    from training.loop.evaluation import Evaluator

    real_evaluate, evaluated = Evaluator.evaluate, []

    def evaluate_until_cut(self, checkpoint):
        evaluated.append(checkpoint["id"])
        if len(evaluated) == 3:
            raise KeyboardInterrupt("planted: the call's time ran out")
        return real_evaluate(self, checkpoint)

    monkeypatch.setattr(Evaluator, "evaluate", evaluate_until_cut)
    with pytest.raises(KeyboardInterrupt, match="planted"):
        run_loop(store, config, log=lambda *_: None)
    # The cut run left the report of what it measured: rounds 0 and 1, marked as the figures so far.
    so_far = json.loads((tmp_path / "reports" / "cpu-loop.json").read_text())
    assert (so_far["partial"], so_far["rounds_evaluated"], len(so_far["per_round"])) == (True, 1, 2), so_far
    assert so_far["win_rate_vs_round0"]["n"] == 32 * 4
    assert "**So far:** rounds 0 to 1 of 0 to 2" in (tmp_path / "reports" / "cpu-loop.md").read_text()
    rows = run_loop(store, config, log=lambda *_: None)
    assert len(evaluated) == 4 and evaluated[3] == evaluated[2] and len(set(evaluated)) == 3, evaluated

    assert [row["round"] for row in rows] == [0, 1, 2]
    report = (tmp_path / "reports" / "cpu-loop.md").read_text()
    assert "| 2 |" in report and (tmp_path / "reports" / "cpu-loop.png").stat().st_size > 0
    summary = json.loads((tmp_path / "reports" / "cpu-loop.json").read_text())
    assert (summary["judge"], summary["noise"], summary["rounds"]) == ("training.loop.judges:shorter", 0.0, 2)
    assert (summary["partial"], summary["rounds_evaluated"]) == (False, 2) and "So far" not in report
    win = summary["win_rate_vs_round0"]
    assert win["n"] == 32 * 4 and win["low"] > 0.5, win  # 32 held-out prompts x 4 samples of each model
    last_kl = rows[-1]["kl_to_base"]
    assert last_kl["ci_low"] > 0, last_kl
    assert rows[0]["kl_to_base"]["value"] == 0 and rows[0]["heldout_accuracy"]["value"] == 0.5  # no change, none shown
    assert rows[-1]["heldout_accuracy"]["value"] > 0.5
    # Held-out accuracy by the loop round that generated the pairs: the parts make up the whole.
    overall, parts = summary["per_round"][-1]["heldout_accuracy"], summary["per_round"][-1]["heldout_accuracy_by_pair_round"]
    assert set(parts) == {"0", "1"}, parts
    assert sum(part["n"] for part in parts.values()) == overall["n"]
    assert sum(part["value"] * part["n"] for part in parts.values()) == pytest.approx(overall["value"] * overall["n"])
    # ... and so do its parts by which answer is longer; the length-normalised figure counts the same pairs.
    by_length = summary["per_round"][-1]["heldout_accuracy_by_length"]
    assert set(by_length) <= {"chosen_longer", "chosen_shorter", "same_length"} and by_length
    assert sum(part["value"] * part["n"] for part in by_length.values()) == pytest.approx(overall["value"] * overall["n"])
    per_token = summary["per_round"][-1]["heldout_accuracy_per_token"]
    assert per_token["n"] == overall["n"]
    per_token_by_length = summary["per_round"][-1]["heldout_accuracy_per_token_by_length"]
    assert sum(part["value"] * part["n"] for part in per_token_by_length.values()) == pytest.approx(
        per_token["value"] * per_token["n"])
    assert "held-out accuracy per token" in report
    # Against each round's training reference: round 1 was pulled towards the base model (the same figure), round 2
    # towards round 1's checkpoint.
    vs_reference = [row["heldout_accuracy_vs_reference"] for row in rows]
    assert (vs_reference[1]["value"], vs_reference[1]["n"]) == (rows[1]["heldout_accuracy"]["value"], overall["n"])
    round1_adapter = store.get_checkpoint(rows[1]["checkpoint"])["adapter_path"]
    assert round1_adapter and vs_reference[2]["details"]["reference"]["adapter_path"] == round1_adapter
    assert vs_reference[2]["value"] != rows[2]["heldout_accuracy"]["value"] or \
        vs_reference[2]["details"]["mean_margin"] != rows[2]["heldout_accuracy"]["details"]["mean_margin"]
    assert "held-out accuracy vs the round's reference" in report
    # The Markdown report shows the split too, each part with its n: a lead can see a length drift without the JSON.
    lines = report.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| round | summed, preferred answer the longer"))
    last_split = next(line for line in lines[header:] if line.startswith("| 2 |"))

    def cell(part):
        return format_estimate(Estimate(part["value"], part["low"], part["high"], part["n"])) if part else "–"

    expected = [cell(summary["per_round"][-1][key].get(side))
                for key in ("heldout_accuracy_by_length", "heldout_accuracy_per_token_by_length")
                for side in ("chosen_longer", "chosen_shorter")]
    assert last_split == "| 2 | " + " | ".join(expected) + " |", report
    # The summary holds what its plot was drawn from: `prefloop loop-plot` redraws it from the JSON alone.
    fields = ("value", "ci_low", "ci_high", "n")
    assert [{m: r[m] and tuple(r[m][f] for f in fields) for m, _ in TABLE_METRICS} for r in rows_from_summary(summary)] \
        == [{m: r[m] and tuple(r[m][f] for f in fields) for m, _ in TABLE_METRICS} for r in rows]
    assert main(["loop-plot", str(tmp_path / "reports" / "cpu-loop.json"), "--out", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").stat().st_size > 0
    assert summary["per_round"][0]["heldout_accuracy_per_token"]["value"] == 0.5  # the base model ties every pair
    assert rows[-1]["response_length"]["value"] < rows[0]["response_length"]["value"]  # what `shorter` asks for
    state = json.loads((tmp_path / "reports" / "cpu-loop.state.json").read_text())
    assert state["stages"]["round-0/judge"]["judged"] >= 48 and set(state["seconds"]) >= {"round-1/train", "eval/round-2"}
    assert state["stages"]["round-1/health"]["checked"]
    steps = [state["stages"][f"round-{r}/train"]["metrics"]["global_step"] for r in (0, 1)]
    assert steps == [LoopConfig().dpo_steps] * 2 == [48, 48]  # loop-sim's own step budget reached training
    generated = state["stages"]["round-0/generate-train"]
    assert generated["prompts"] > 0 and generated["responses"] == 8 * generated["prompts"]  # loop-sim's k
    # Without a reward model, round 1's train pairs are its DPO checkpoint's implicit-reward extremes; held-out pairs
    # are never picked by a model.
    assert [state["stages"][f"round-{r}/generate-{split}"]["selection"] for r in (0, 1) for split in ("train", "heldout")
            ] == ["most-different", "most-different", "implicit-extremes", "most-different"]
    assert "reward-model accuracy" not in report  # no reward model, no column of dashes

    # Every judgment went through the store as the simulated annotator; a rerun finds every stage finished.
    sim = store.get_annotator("sim:shorter")
    assert sim is not None and sim.role == "simulated"
    checkpoints_before = len(store.list_checkpoints())
    assert run_loop(store, config, log=lambda *_: None) == rows
    assert len(store.list_checkpoints()) == checkpoints_before


@pytest.mark.slow
def test_a_loop_with_a_reward_model_picks_pairs_by_it_and_reports_its_accuracy(store, chat_model_dir, tmp_path,
                                                                               monkeypatch):
    """`reward_model`: each round's labels train a reward model before the DPO run; the next round's train pairs are
    its best against its worst sample, and round r's report row holds the held-out accuracy of the model of rounds
    0..r-1's labels, the figure a by-hand scoring of the stored held-out pairs gives."""
    import yaml

    from training.engine.reward_scoring import load_reward_model, score_responses

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL", str(chat_model_dir))
    (tmp_path / "reward.yaml").write_text(yaml.safe_dump(dict(
        per_device_train_batch_size=8, gradient_accumulation_steps=1, max_length=256, learning_rate=1e-3,
        num_train_epochs=1, report_to=["none"])))
    config = build(LoopConfig, None, dict(
        name="rm-loop", rounds=2, judge="training.loop.judges:shorter", prompts_file=str(SEEDS), pairs_per_round=24,
        heldout_pairs=16, health_prompts=8, dpo_steps=8, reward_model=True, reward_config=str(tmp_path / "reward.yaml"),
        reward_min_steps=10,  # one epoch of its 24-30 pairs is 3-4 steps of 8
        report_dir=str(tmp_path / "reports"), **scaled_down_recipe(tmp_path),
    ))
    rows = run_loop(store, config, log=lambda *_: None)

    state = json.loads((tmp_path / "reports" / "rm-loop.state.json").read_text())["stages"]
    reward_models = [store.get_checkpoint(state[f"round-{r}/reward"]["checkpoint_id"]) for r in (0, 1)]
    assert [c["kind"] for c in reward_models] == ["reward", "reward"]
    assert [c["round_id"] for c in reward_models] == [state[f"round-{r}/start"]["round"] for r in (0, 1)]
    assert [state[f"round-{r}/generate-{split}"]["selection"] for r in (0, 1) for split in ("train", "heldout")] == [
        "most-different", "most-different", "reward-extremes", "most-different"]

    pairs = store.heldout_preference_pairs(512)
    assert rows[0]["reward_accuracy"] is None  # no labels before round 0
    for r, reward in ((1, reward_models[0]), (2, reward_models[1])):
        model, tokenizer = load_reward_model(reward)
        chosen, rejected = (score_responses(model, tokenizer, [p["messages"] for p in pairs], [p[side] for p in pairs],
                                            batch_size=4) for side in ("chosen", "rejected"))
        result = rows[r]["reward_accuracy"]
        assert result["checkpoint_id"] == reward["id"]
        assert (result["value"], result["n"]) == (
            pytest.approx(sum(c > r_ for c, r_ in zip(chosen, rejected)) / len(pairs)), len(pairs))
    report = (tmp_path / "reports" / "rm-loop.md").read_text()
    assert "reward-model accuracy (labels so far)" in report
    summary = json.loads((tmp_path / "reports" / "rm-loop.json").read_text())
    assert summary["per_round"][2]["reward_accuracy"]["n"] == len(pairs)
    # Each reward model ran at least reward_min_steps steps however few its pairs, and the summary keeps its run.
    assert min(summary["reward_models"][str(r)]["metrics"]["global_step"] for r in (0, 1)) >= 10
    assert summary["reward_models"]["0"]["checkpoint_id"] == reward_models[0]["id"]


@pytest.mark.slow
def test_a_loop_stopped_by_the_health_check_still_reports_the_rounds_before(store, chat_model_dir, tmp_path,
                                                                             monkeypatch):
    """Round 1's checkpoint fails its health check (planted): the loop raises, but first evaluates rounds 0 and 1 and
    writes the report saying where and why it stopped."""
    from training.loop import loop_sim
    from training.loop.loop_sim import LoopError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MODEL", str(chat_model_dir))
    real_check, checked = loop_sim._check_health, []

    def check_then_fail(store, config, checkpoint_id, log):
        checked.append(checkpoint_id)
        if len(checked) == 2:
            raise LoopError(f"checkpoint {checkpoint_id} collapsed: planted")
        return real_check(store, config, checkpoint_id, log)

    monkeypatch.setattr(loop_sim, "_check_health", check_then_fail)
    config = build(LoopConfig, None, dict(
        name="stopped", rounds=3, judge="training.loop.judges:shorter", prompts_file=str(SEEDS), pairs_per_round=16,
        heldout_pairs=8, health_prompts=8, report_dir=str(tmp_path / "reports"), **scaled_down_recipe(tmp_path),
    ))
    with pytest.raises(LoopError, match="planted"):
        run_loop(store, config, log=lambda *_: None)
    summary = json.loads((tmp_path / "reports" / "stopped.json").read_text())
    assert summary["rounds"] == 3 and summary["rounds_evaluated"] == 1
    assert summary["stopped"] == f"checkpoint {checked[1]} collapsed: planted"
    assert [row["round"] for row in summary["per_round"]] == [0, 1]
    assert summary["win_rate_vs_round0"]["n"] == 32 * 4
    assert "**Stopped after round 1:** checkpoint" in (tmp_path / "reports" / "stopped.md").read_text()


def test_health_check_stops_a_collapsed_policy(store, stopping_model_dir, tmp_path, monkeypatch):
    """An adapter that makes the model answer nothing but the end-of-turn token: the loop stops with the figures."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from store import PromptIn
    from training.loop.loop_sim import LoopError, _check_health

    monkeypatch.chdir(tmp_path)
    store.heldout_fraction = 1.0
    store.add_prompts([PromptIn([{"role": "user", "content": f"Question {i}?"}], "test") for i in range(8)])
    model = AutoModelForCausalLM.from_pretrained(stopping_model_dir)
    peft = get_peft_model(model, LoraConfig(r=2, lora_alpha=2, target_modules=["lm_head"], init_lora_weights=False))
    eos = model.config.eos_token_id
    with torch.no_grad():  # the update adds a huge constant to the EOS logit
        peft.base_model.model.lm_head.lora_A["default"].weight.fill_(1.0)
        peft.base_model.model.lm_head.lora_B["default"].weight.zero_()
        peft.base_model.model.lm_head.lora_B["default"].weight[eos] = 100.0
    peft.save_pretrained(tmp_path / "collapsed")
    base = store.register_checkpoint("base", str(stopping_model_dir))
    collapsed = store.register_checkpoint("dpo", str(stopping_model_dir), str(tmp_path / "collapsed"), parent_id=base)
    config = build(LoopConfig, None, dict(health_prompts=8, eval_config=scaled_down_recipe(tmp_path)["eval_config"]))
    with pytest.raises(LoopError, match=r"checkpoint \d+ collapsed: of 8 held-out answers 100% are empty"):
        _check_health(store, config, collapsed, log=lambda *_: None)
    healthy = _check_health(store, config, base, log=lambda *_: None)
    assert healthy["empty_share"] < 0.5 and healthy["kl_to_base"] == 0
    # answers that read but a KL past the bound (planted: a bound below the base model's 0) are named as such
    config.max_kl = -1.0
    with pytest.raises(LoopError, match=r"checkpoint \d+ moved past the KL bound: .* KL to the base model is 0.0"):
        _check_health(store, config, base, log=lambda *_: None)


def test_noise_flips_choices(store, tmp_path):
    from tests.labeling_data import make_round

    make_round(store, [([{"role": "user", "content": f"q{i}"}], f"yes {i}", f"no {i}") for i in range(20)])
    result = label_with_judge(store, lambda m, a, b: ("a", None), "always-a", noise=1.0, seed=1)
    assert result.judged == 20 and result.flipped == 20
    choices = {j["choice"] for j in store.judgments()}
    assert choices == {"b"}


def load_loop_sweep():
    """bench/loop_sweep.py as a module (bench/ is scripts, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "loop_sweep.py"
    spec = importlib.util.spec_from_file_location("loop_sweep", path)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    return sweep


def test_a_sweep_variant_differs_from_the_loop_defaults_by_what_it_says(tmp_path, monkeypatch):
    """bench/loop_sweep.py starts each loop-sim with the variant's loop fields and no loop field of its own: a sweep
    option that set, say, the pairs per round would make every variant measure something the defaults are not."""
    import argparse

    from training.config import add_arguments, from_args

    sweep = load_loop_sweep()
    commands = []
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda command, **_: commands.append(command))
    args = argparse.Namespace(rounds=3, eval_config=None, threads=1)
    variants = {"default": {}, "steps64": {"loop": {"dpo_steps": 64}}}
    for variant, variant_spec in variants.items():
        configs = sweep.write_configs(variant, variant_spec, tmp_path, throughput=True)
        sweep.start(variant, "contains_word@0.2", configs, variant_spec.get("loop", {}), tmp_path, args)

    parser = argparse.ArgumentParser()
    add_arguments(parser, LoopConfig)
    # What every loop of a sweep sets: where it runs, its judge and rounds, and the variant's config files.
    sweep_fields = {"name", "judge", "noise", "rounds", "prompts_file", "generate_config", "dpo_config", "report_dir"}
    defaults = LoopConfig()
    for (variant, variant_spec), command in zip(variants.items(), commands):
        options = parser.parse_args(command[command.index("loop-sim") + 1:])
        given = {name for name, value in vars(options).items() if value is not None and name != "config"}
        assert given == sweep_fields | set(variant_spec.get("loop", {})), variant
        config = from_args(LoopConfig, options)
        assert (config.judge, config.noise) == ("training.loop.judges:contains_word", 0.2)
        assert config.pairs_per_round == defaults.pairs_per_round
        assert config.dpo_steps == variant_spec.get("loop", {}).get("dpo_steps", defaults.dpo_steps)


def test_every_sweep_variant_builds_valid_configs(tmp_path):
    """A variant of bench/loop_variants.yaml that names an unknown field or a bad value fails here, on the CPU, not
    after the carry on the GPU: its DPO and generation files and its loop fields build and validate as loop-sim's."""
    import yaml

    from training.algorithms.dpo import DPOTrainConfig
    from training.config import build
    from training.loop.generation import GenerateConfig

    sweep = load_loop_sweep()
    variants = yaml.safe_load(sweep.VARIANTS.read_text())
    assert {"default", "select-per-token"} <= set(variants)
    for variant, variant_spec in variants.items():
        variant_spec = variant_spec or {}
        configs = sweep.write_configs(variant, variant_spec, tmp_path, throughput=True)
        for cls, path in ((DPOTrainConfig, configs["dpo"]), (GenerateConfig, configs["generate"])):
            built = build(cls, path)
            built.validate()
            section = "dpo" if cls is DPOTrainConfig else "generate"
            for key, value in variant_spec.get(section, {}).items():
                assert getattr(built, key) == value, (variant, key)
        loop = build(LoopConfig, None, variant_spec.get("loop", {}))
        for key, value in variant_spec.get("loop", {}).items():
            assert getattr(loop, key) == value, (variant, key)


def test_a_sweep_of_chosen_loops_starts_those_and_no_others(tmp_path, monkeypatch):
    """`--loops variant:judge,...` starts exactly the pairs named (not every variant with every judge), each with its
    own variant's loop fields."""
    sweep = load_loop_sweep()
    started = []

    class Finished:
        def __init__(self, command, **_):
            started.append(command)

        def poll(self):
            return 0

    monkeypatch.setattr(sweep.subprocess, "run", lambda *a, **k: None)  # the model conversion
    monkeypatch.setattr(sweep.subprocess, "Popen", Finished)
    monkeypatch.setattr(sweep.time, "sleep", lambda _: None)
    # The first loop was cut in its evaluation: its report holds rounds 0-1 of 0-3, marked partial.
    estimate = {"value": 0.6, "low": 0.55, "high": 0.65, "n": 800}
    figures = {"heldout_accuracy": estimate, "kl_to_base": estimate, "response_length": estimate}
    cut = {"partial": True, "rounds": 3, "rounds_evaluated": 1, "win_rate_vs_round0": estimate,
           "win_rate_vs_previous": estimate, "per_round": [figures, figures], "seconds": {"round-0/train": 1.0}}
    reports = tmp_path / "work" / "p128--shorter" / "reports"
    reports.mkdir(parents=True)
    (reports / "p128--shorter.json").write_text(json.dumps(cut))
    monkeypatch.setattr("sys.argv", ["loop_sweep.py", "--loops", "p128:shorter,default:contains_word@0.2",
                                     "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    assert sweep.main() == 1  # one loop cut, the other wrote no summary: the sweep says so
    names = [command[command.index("--name") + 1] for command in started]
    assert names == ["p128--shorter", "default--contains_word-noise0.2"]
    assert "--pairs-per-round" in started[0] and "--pairs-per-round" not in started[1]
    assert started[1][started[1].index("--noise") + 1] == "0.2"
    table = (tmp_path / "out" / "sweep.md").read_text()
    assert table.count("exit 0") == 1 and "| p128--shorter (rounds 0-1 of 0-3 so far) | 0.600 [0.550, 0.650]" in table
    monkeypatch.setattr("sys.argv", ["loop_sweep.py", "--loops", "p128"])
    with pytest.raises(SystemExit):
        sweep.main()
