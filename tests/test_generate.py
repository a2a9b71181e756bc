"""Rounds and candidate generation with tiny random models: lineage, pairing, strategies, splits, reproducibility."""

from __future__ import annotations

import pytest

from store import PromptIn, Store, StoreError
from store.prompts import pair_hash
from training.cli import main
from training.config import ConfigError
from training.engine.sampling import Sample
from training.loop.generation import ROUND_SEED_STRIDE, GenerateConfig, generate
from training.loop.pair_selection import eligible_pairs, select_pair, shuffle_sides
from training.loop.rounds import start_round

MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model with random (not no-op) weights, as a trained adapter would change it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    directory = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, lora).save_pretrained(directory)
    return directory


def add_prompts(store: Store, n: int = 40) -> None:
    store.add_prompts([PromptIn([{"role": "user", "content": f"Question number {i}?"}], "test") for i in range(n)])


def config(**overrides) -> GenerateConfig:
    values = dict(num_prompts=6, samples_per_prompt=3, max_new_tokens=MAX_NEW_TOKENS, batch_size=6, write_batch_size=4)
    return GenerateConfig(**(values | overrides))


def drawn(*texts: str, cut: str = "") -> list[Sample]:
    """Samples with these texts; those whose index is in `cut` were cut off at the token limit."""
    return [Sample([1], [2], t, len(t.split()), "length" if str(i) in cut else "stop") for i, t in enumerate(texts)]


def test_eligible_pairs_never_empty_identical_or_both_cut_off():
    assert eligible_pairs(drawn("a", "b")) == [(0, 1)]
    assert eligible_pairs(drawn("same", " same\n")) == []
    assert eligible_pairs(drawn("", "text")) == []
    assert eligible_pairs(drawn("  \n", "\t")) == []
    assert eligible_pairs(drawn("one", "two", cut="01")) == []  # nothing to prefer between two unfinished answers
    assert eligible_pairs(drawn("one", "two", "three", cut="01")) == [(0, 2), (1, 2)]
    assert eligible_pairs(drawn("x", "x ", "", "y")) == [(0, 3), (1, 3)]


def test_eligible_pairs_show_a_cut_off_response_only_when_two_finished_ones_are_missing():
    # Two finished answers exist: the cut-off ones are left out, however different they are.
    assert eligible_pairs(drawn("one", "two", "three", "four", cut="13")) == [(0, 2)]
    assert select_pair(drawn("a b c", "x y z", "a b d", cut="1"), "most-different") == (0, 2)
    # One finished answer: it is paired with each cut-off one.
    assert eligible_pairs(drawn("one", "two", "three", cut="02")) == [(0, 1), (1, 2)]


def test_pair_selection_strategies():
    samples = drawn("the cat sat on the mat", "the cat sat on a mat", "dogs bark at the moon", "a cat sat")
    # Most different: the dog sentence shares "the" with the first two, nothing with the last one.
    assert select_pair(samples, "most-different") == (2, 3)
    scores = [0.1, 0.2, 3.0, -1.0]
    assert select_pair(samples, "reward-extremes", scores) == (2, 3)  # highest against lowest
    assert select_pair(samples, "reward-uncertain", scores) == (0, 1)  # the closest scores
    # An ineligible pair is never chosen, however far apart its scores.
    assert select_pair(drawn("a b", "c d", "a b c", cut="01"), "reward-extremes", [5.0, -5.0, 0.0]) == (0, 2)
    assert select_pair(drawn("same", "same"), "most-different") is None
    with pytest.raises(ValueError, match="needs reward scores"):
        select_pair(samples, "reward-extremes")
    # The stored order of a selected pair is a seeded coin per prompt: both orders occur, each reproducibly.
    orders = {shuffle_sides((2, 3), seed=0, prompt_id=i) for i in range(40)}
    assert orders == {(2, 3), (3, 2)}
    assert shuffle_sides((2, 3), 0, 7) == shuffle_sides((2, 3), 0, 7)


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_generation_records_lineage(store, stopping_model_dir, engine):
    add_prompts(store)
    checkpoint = store.register_checkpoint("base", str(stopping_model_dir))
    round_id = store.new_round(checkpoint, overlap_target=2)
    summary = generate(store, config(seed=5, engine=engine), progress=False)

    pairs = store.generated_pairs(round_id)
    assert summary.prompts == 6 and summary.responses == 18 and summary.pairs == len(pairs) > 0
    assert len({p["prompt_id"] for p in pairs}) == len(pairs)  # one pair per prompt, chosen among its 3 samples
    assert summary.selection == "most-different"
    prompts = {p["id"]: p for p in store.list_prompts()}
    finish_reasons = set()
    for pair in pairs:
        assert (pair["round_id"], pair["strategy"], pair["overlap_target"], pair["split"]) == (
            round_id,
            "samples",
            2,
            "train",
        )
        assert pair["content_hash"] == pair_hash(
            prompts[pair["prompt_id"]]["content_hash"], pair["a_text"], pair["b_text"]
        )
        assert pair["a_text"].strip() and pair["b_text"].strip() and pair["a_text"].strip() != pair["b_text"].strip()
        assert pair["a_prompt_tokens"] == pair["b_prompt_tokens"] > 0
        for side in "ab":
            assert pair[f"{side}_checkpoint_id"] == checkpoint
            sampling = pair[f"{side}_sampling"]
            assert sampling == dict(
                temperature=1.0,
                top_p=0.95,
                max_new_tokens=MAX_NEW_TOKENS,
                seed=sampling["seed"],
                engine=engine,
                round=round_id,
                strategy="samples",
            )
            assert sampling["seed"] - 5 - ROUND_SEED_STRIDE * round_id in prompts  # + the batch's first prompt id
            reason, tokens = pair[f"{side}_finish_reason"], pair[f"{side}_completion_tokens"]
            assert (reason == "length") == (tokens == MAX_NEW_TOKENS)
            assert "<|im_end|>" not in pair[f"{side}_text"]
            finish_reasons.add(reason)
        assert "stop" in (pair["a_finish_reason"], pair["b_finish_reason"])  # never two cut-off answers
    assert "stop" in finish_reasons and 0 < summary.truncated < summary.responses  # some samples were cut off

    # Every prompt used is marked, with or without a pair: the next run takes six others.
    train = [p["id"] for p in prompts.values() if p["split"] == "train"]
    assert len(store.prompts_for_generation(round_id, "samples", "train", 1000)) == len(train) - 6
    first_prompts = {p["prompt_id"] for p in pairs}
    generate(store, config(seed=5, engine=engine), progress=False)
    assert len(store.prompts_for_generation(round_id, "samples", "train", 1000)) == len(train) - 12
    later = {p["prompt_id"] for p in store.generated_pairs(round_id)} - first_prompts
    assert later and not later & first_prompts
    assert store.status()["rounds"][0]["pairs"] == len(store.generated_pairs(round_id))


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_generation_is_reproducible(tmp_path, stopping_model_dir, engine):
    def texts(name: str, seed: int, round_id: int = 0) -> list[str]:
        store = Store(tmp_path / f"{name}.duckdb")
        add_prompts(store, 20)
        for _ in range(round_id + 1):
            store.new_round(store.register_checkpoint("base", str(stopping_model_dir)))
        generate(store, config(seed=seed, num_prompts=4, engine=engine), progress=False)
        return [(p["prompt_id"], p["a_text"], p["b_text"]) for p in store.generated_pairs(round_id)]

    first = texts("first", 1)
    assert first and texts("second", 1) == first
    assert texts("other-seed", 2) != first
    # Another round of the same checkpoint starts on other prompts and draws other samples: the round is in the seed.
    later = texts("round-1", 1, round_id=1)
    assert later and {p for p, _, _ in later} != {p for p, _, _ in first}
    assert not {(a, b) for _, a, b in later} & {(a, b) for _, a, b in first}


def test_heldout_generation_uses_only_heldout_prompts(store, stopping_model_dir):
    add_prompts(store, 60)
    round_id = store.new_round(store.register_checkpoint("base", str(stopping_model_dir)))
    heldout = {p["id"] for p in store.list_prompts(split="heldout")}
    assert heldout, "the fixture needs held-out prompts"
    generate(store, config(split="heldout", num_prompts=len(heldout) + 5, samples_per_prompt=2), progress=False)
    pairs = store.generated_pairs(round_id)
    assert pairs and all(p["split"] == "heldout" and p["prompt_id"] in heldout for p in pairs)
    with pytest.raises(StoreError, match="used every heldout prompt"):
        generate(store, config(split="heldout"), progress=False)
    # Held-out use does not consume training prompts.
    assert len(store.prompts_for_generation(round_id, "samples", "train", 1000)) == 60 - len(heldout)


@pytest.mark.parametrize("engine", ["hf", "static"])
def test_vs_previous_pairs_current_and_previous_checkpoints(store, stopping_model_dir, adapter_dir, engine):
    add_prompts(store, 20)
    base = store.register_checkpoint("base", str(stopping_model_dir))
    store.new_round(base)
    with pytest.raises(StoreError, match="first round"):
        generate(store, config(strategy="vs-previous"), progress=False)
    tuned = store.register_checkpoint(
        "dpo", str(stopping_model_dir), adapter_path=str(adapter_dir), round_id=0, parent_id=base
    )
    round_id, checkpoint = start_round(store)
    assert checkpoint["id"] == tuned

    summary = generate(store, config(strategy="vs-previous", num_prompts=5, engine=engine), progress=False)
    pairs = store.generated_pairs(round_id, "vs-previous")
    assert summary.responses == 10 and len(pairs) == summary.pairs > 0
    for pair in pairs:
        assert (pair["a_checkpoint_id"], pair["b_checkpoint_id"]) == (tuned, base)
        assert pair["a_sampling"]["strategy"] == pair["b_sampling"]["strategy"] == "vs-previous"
        assert pair["a_sampling"]["engine"] == pair["b_sampling"]["engine"] == engine
    # The same prompts remain available for the samples strategy of this round.
    assert len(store.prompts_for_generation(round_id, "samples", "train", 1000)) == len(store.list_prompts("train"))

    store.new_round(tuned)
    with pytest.raises(StoreError, match="same checkpoint"):
        generate(store, config(strategy="vs-previous"), progress=False)


def test_adapter_changes_the_model(store, tiny_model_dir, adapter_dir):
    import torch

    from training.models import load_for_generation

    base = store.get_checkpoint(store.register_checkpoint("base", str(tiny_model_dir)))
    tuned = store.get_checkpoint(store.register_checkpoint("dpo", str(tiny_model_dir), adapter_path=str(adapter_dir)))
    inputs = torch.tensor([[5, 6, 7, 8]])
    models = [load_for_generation(c)[0] for c in (base, tuned)]
    logits = [model(inputs.to(model.device)).logits.float().cpu() for model in models]
    assert not torch.allclose(logits[0], logits[1])
    missing = dict(tuned, adapter_path=str(adapter_dir / "missing"))
    with pytest.raises(RuntimeError, match="does not exist"):
        load_for_generation(missing)


def test_generate_rejects_bad_input(store):
    with pytest.raises(StoreError, match="no round yet"):
        generate(store, config(), progress=False)
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        generate(store, config(samples_per_prompt=1), progress=False)
    with pytest.raises(ConfigError, match="strategy"):
        generate(store, config(strategy="best-of"), progress=False)
    with pytest.raises(ConfigError, match="engine must be one of auto, static, hf"):
        generate(store, config(engine="vllm"), progress=False)


def test_auto_engine_is_static_on_a_gpu_without_unsloth(monkeypatch):
    import sys

    from training import models
    from training.engine.sampling import engine_for

    def engine(**overrides):
        return engine_for(config(**overrides).decoding)

    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    monkeypatch.setattr(models, "accelerator", lambda: "cpu")
    assert engine() == "hf" and engine(engine="static") == "static"
    monkeypatch.setattr(models, "accelerator", lambda: "cuda")
    assert engine() == "static" and engine(engine="hf") == "hf"
    monkeypatch.setitem(sys.modules, "unsloth", object())  # imported: transformers' classes are patched
    assert engine() == "hf"


def test_round_and_generate_commands(db_path, tiny_model_dir, stopping_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MODEL", str(stopping_model_dir))
    store = Store(db_path)
    add_prompts(store, 20)
    db = ["--db", str(db_path)]
    assert main(db + ["generate", "--num-prompts", "2"]) == 1
    assert "round new" in capsys.readouterr().err

    assert main(db + ["round", "new", "--if-none"]) == 0
    assert main(db + ["round", "new", "--if-none"]) == 0  # idempotent: still one round
    assert [r["id"] for r in store.list_rounds()] == [0]
    (checkpoint,) = store.list_checkpoints()
    assert (checkpoint["kind"], checkpoint["base_model"]) == ("base", str(stopping_model_dir))

    args = ["generate", "--if-no-pairs", "--num-prompts", "3", "--max-new-tokens", "8", "--batch-size", "4"]
    assert main(db + args) == 0
    pairs = store.count_pairs()
    assert pairs > 0
    assert main(db + args) == 0  # pairs exist: nothing more
    assert store.count_pairs() == pairs

    reward = store.register_checkpoint("reward", str(tiny_model_dir))
    assert main(db + ["round", "new", "--checkpoint", str(reward)]) == 1
    assert "cannot generate" in capsys.readouterr().err
    assert main(db + ["round", "new", "--overlap", "3"]) == 0
    assert store.get_round()["overlap_target"] == 3 and store.get_round()["checkpoint_id"] == checkpoint["id"]


# --- the static decoder (training/engine/decode.py) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def chatty_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its matrices redrawn at a larger scale, so greedy continuations depend on the prompt (at
    the fixture's own initialisation every prompt continues with one token repeated, which would prove nothing)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.normal_(0.0, 0.3)
    directory = tmp_path_factory.mktemp("chatty-model")
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(directory)
    return directory


def questions(n: int, start: int = 0, repeat: int = 4) -> list[list[dict]]:
    """Conversations of several lengths, so batches are left-padded."""
    return [
        [{"role": "user", "content": f"Question {i}? " + "why is the sky blue " * (i % repeat)}]
        for i in range(start, start + n)
    ]


def test_static_decoder_greedy_matches_generate(chatty_model_dir):
    """Float32 greedy decoding gives transformers' tokens exactly: left padding, stops, cache reuse and rebuilds."""
    from collections import Counter

    import torch

    from training.engine.decode import StaticDecoder
    from training.engine.sampling import chat_inputs
    from training.models import load_for_generation

    model, tokenizer = load_for_generation({"id": None, "base_model": str(chatty_model_dir), "adapter_path": None})
    pad, new_tokens = tokenizer.pad_token_id, 40
    decoder = StaticDecoder(model)

    def both(inputs, stop):
        with torch.no_grad():
            output = model.generate(
                **inputs, do_sample=False, max_new_tokens=new_tokens, eos_token_id=stop, pad_token_id=pad
            )
        expected = output[:, inputs["input_ids"].shape[1] :]
        got = decoder.generate(
            inputs["input_ids"], inputs["attention_mask"], new_tokens, greedy=True, eos_token_id=stop, pad_token_id=pad
        )
        return got, expected

    inputs = chat_inputs(tokenizer, questions(8))
    assert len(set(inputs["attention_mask"].sum(dim=1).tolist())) > 1
    got, expected = both(inputs, None)
    assert torch.equal(got, expected)
    assert len({tuple(row) for row in expected.tolist()}) == 8  # every prompt continues differently

    # Stop at a token that some rows produce, at different steps, and others never do.
    rows_with = Counter(token for row in expected.tolist() for token in set(row))
    stop = next(token for token, rows in rows_with.most_common() if rows < 8)
    got, expected = both(inputs, stop)
    stopped = (expected == stop).any(dim=1)
    assert stopped.any() and not stopped.all()
    assert torch.equal(got, expected)  # pad after the stop token, as generate writes

    # Five rows reuse the eight-row cache (three finished filler rows); a longer prompt makes it rebuild.
    shape = decoder.shape
    got, expected = both(chat_inputs(tokenizer, questions(5, start=3)), stop)
    assert torch.equal(got, expected) and decoder.shape == shape
    got, expected = both(chat_inputs(tokenizer, questions(3, start=30, repeat=100)), None)
    assert torch.equal(got, expected) and decoder.shape[0] == 3 and decoder.shape[1] > shape[1]


def test_top_p_sampling_draws_from_transformers_nucleus():
    """Inverting the CDF on a grid of uniforms reproduces the distribution of transformers' temperature and top-p
    warpers: no token outside the nucleus, each inside as often as its renormalised probability."""
    import torch
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from training.engine.decode import sample_top_p

    torch.manual_seed(0)
    rows, vocab, grid = 6, 40, 4096
    logits = torch.randn(rows, vocab) * 3
    uniform = ((torch.arange(grid) + 0.5) / grid).repeat(rows)
    for temperature, top_p in [(1.0, 0.95), (0.7, 0.5), (1.3, 1.0)]:
        scores = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        expected = torch.softmax(scores, dim=-1)
        picks = sample_top_p(logits.repeat_interleave(grid, dim=0), uniform, temperature, top_p).view(rows, grid)
        frequency = torch.zeros(rows, vocab).scatter_add_(1, picks, torch.ones(rows, grid)) / grid
        assert not (frequency[expected == 0] > 0).any()
        assert (expected > 0).sum() < rows * vocab or top_p == 1
        torch.testing.assert_close(frequency, expected, atol=1.5 / grid, rtol=0)


def test_decode_step_never_reads_back_to_the_host(tiny_model_dir):
    """The captured step must not wait for the device: no .item(), bool(tensor), nonzero or tensor-from-Python-data
    (each would break CUDA graph capture). Checked on CPU by recording every aten op the step dispatches."""
    from collections import Counter

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from training.engine.decode import StaticDecoder
    from training.engine.sampling import chat_inputs
    from training.models import load_for_generation

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    model, tokenizer = load_for_generation({"id": None, "base_model": str(tiny_model_dir), "adapter_path": None})
    inputs = chat_inputs(tokenizer, questions(3))
    decoder = StaticDecoder(model)
    for greedy in (True, False):
        settings = (6, greedy, 0.8, 0.9, tokenizer.eos_token_id, tokenizer.pad_token_id)
        with torch.no_grad(), decoder._grouped_attention():
            decoder.start(inputs["input_ids"], inputs["attention_mask"], settings, seed=0)
            with Record() as record:
                decoder.decode_step()
        host_reads = {"aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.masked_select", "aten.lift_fresh"}
        assert not host_reads & set(record.ops), record.ops
        assert record.ops["aten.index_copy_"] == 2 * model.config.num_hidden_layers + 1  # cache keys, values; tokens
        assert ("aten.sort" in record.ops) != greedy


def test_static_decoder_rejects_bad_input(tiny_model_dir, adapter_dir):
    import torch
    from peft import PeftModel

    from training.engine.decode import DecodeError, StaticDecoder
    from training.models import load_for_generation

    model, _ = load_for_generation({"id": None, "base_model": str(tiny_model_dir), "adapter_path": None})
    right_padded = torch.tensor([[5, 6, 7], [5, 6, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(DecodeError, match="left-padded"):
        StaticDecoder(model).generate(*right_padded, 4, pad_token_id=0)
    with pytest.raises(DecodeError, match="CUDA graphs need the model on a CUDA device"):
        StaticDecoder(model, cuda_graphs=True)
    with pytest.raises(DecodeError, match="merge the LoRA adapter"):
        StaticDecoder(PeftModel.from_pretrained(model, adapter_dir))


def test_gen_throughput_smoke(chatty_model_dir, tmp_path):
    """bench/gen_throughput.py --smoke end to end in its own process: both paths, the table and the JSON."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "gen.json"
    script = Path(__file__).resolve().parents[1] / "bench" / "gen_throughput.py"
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--model", str(chatty_model_dir), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["errors"] == []
    assert [(r["path"], r["batch"]) for r in results["throughput"]] == [
        ("hf", 8), ("hf", 16), ("static", 8), ("static", 16)
    ]  # fmt: skip
    for run in results["throughput"]:
        assert run["tokens"] == 8 * 2 * 12 and run["tokens_per_s"] > 0 and run["seconds"] > 0
    assert set(results["speedups"]) == {f"static@{a} / hf@{b}" for a in (8, 16) for b in (8, 16)}
    (identity,) = results["identity"]
    assert identity["dtype"] == "float32" and identity["sequences"] == 8 and identity["identical_share"] == 1.0
    assert "| static (no graphs) | 16 |" in done.stdout and "| float32 | 8 | 8 (100.0%) |" in done.stdout


@pytest.mark.parametrize("engine, prompts_per_batch", [("hf", 8), ("static", 128)])
def test_batch_size_zero_is_the_engines_default(store, stopping_model_dir, engine, prompts_per_batch):
    """16 sequences (8 prompts x 2 samples) with hf, 256 (128 prompts) on the static engine: one seed per batch."""
    add_prompts(store, 20)
    round_id = store.new_round(store.register_checkpoint("base", str(stopping_model_dir)))
    generate(store, config(num_prompts=20, samples_per_prompt=2, batch_size=0, engine=engine), progress=False)
    seeds = {p[f"{side}_sampling"]["seed"] for p in store.generated_pairs(round_id) for side in "ab"}
    assert len(seeds) == -(-20 // prompts_per_batch)


def test_reward_model_picks_its_highest_against_its_lowest(store, stopping_model_dir, tmp_path):
    """With a reward model registered, auto selection stores the sample it scores highest against the one it scores
    lowest (among eligible pairs), recomputed here by drawing the same samples again and scoring each one alone."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from training.engine.reward_scoring import load_reward_model, score_responses
    from training.engine.sampling import sample
    from training.models import load_for_generation

    add_prompts(store, 20)
    base = store.register_checkpoint("base", str(stopping_model_dir))
    round_id = store.new_round(base)
    with pytest.raises(ValueError, match="needs a registered reward model"):
        generate(store, config(pair_selection="reward-uncertain"), progress=False)
    torch.manual_seed(3)
    classifier = AutoModelForSequenceClassification.from_pretrained(stopping_model_dir, num_labels=1)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      task_type="SEQ_CLS")
    get_peft_model(classifier, lora).save_pretrained(tmp_path / "rm")
    reward = store.register_checkpoint("reward", str(stopping_model_dir), str(tmp_path / "rm"), parent_id=base)

    settings = config(num_prompts=6, samples_per_prompt=4, batch_size=24, engine="hf")  # one batch of 6 prompts
    batch = store.prompts_for_generation(round_id, "samples", "train", 6)
    summary = generate(store, settings, progress=False)
    assert summary.selection == "reward-extremes" and summary.pairs > 0
    model, tokenizer = load_for_generation(store.get_checkpoint(base), unsloth=False)
    reward_model, reward_tokenizer = load_reward_model(store.get_checkpoint(reward))
    pairs = {p["prompt_id"]: p for p in store.generated_pairs(round_id)}
    seed = next(iter(pairs.values()))["a_sampling"]["seed"]
    again = sample(model, tokenizer, [p["messages"] for p in batch], 4, settings.decoding, seed)
    expected = {}
    for prompt, samples in zip(batch, again):
        scores = [score_responses(reward_model, reward_tokenizer, [prompt["messages"]], [s.text])[0] for s in samples]
        pick = select_pair(samples, "reward-extremes", scores)
        if pick is not None:
            expected[prompt["id"]] = {samples[pick[0]].text, samples[pick[1]].text}
    assert expected and {i: {p["a_text"], p["b_text"]} for i, p in pairs.items()} == expected


@pytest.mark.parametrize("implicit_reward", ["sum", "mean"])
def test_a_dpo_round_picks_by_its_implicit_reward(store, stopping_model_dir, adapter_dir, implicit_reward):
    """A round whose checkpoint DPO trained ranks its samples by log pi - log pi_ref against its parent (the base
    here), summed over the tokens or per token, and stores the extremes: recomputed by drawing the same batch again
    and scoring it in float64."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.engine.logprobs import completion_logprobs
    from training.engine.sampling import sample
    from training.models import load_for_generation

    add_prompts(store, 60)  # some of them held out
    base = store.register_checkpoint("base", str(stopping_model_dir))
    store.new_round(base)
    tuned = store.register_checkpoint("dpo", str(stopping_model_dir), str(adapter_dir), round_id=0, parent_id=base)
    round_id, _ = start_round(store, tuned)
    settings = config(num_prompts=12, samples_per_prompt=6, batch_size=72, engine="hf", implicit_reward=implicit_reward)
    batch = store.prompts_for_generation(round_id, "samples", "train", 12)
    summary = generate(store, settings, progress=False)
    assert summary.selection == "implicit-extremes" and summary.pairs > 0

    model, tokenizer = load_for_generation(store.get_checkpoint(tuned), unsloth=False)
    seed = store.generated_pairs(round_id)[0]["a_sampling"]["seed"]
    again = sample(model, tokenizer, [p["messages"] for p in batch], 6, settings.decoding, seed)
    reference = AutoModelForCausalLM.from_pretrained(stopping_model_dir, dtype=torch.float64)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(stopping_model_dir, dtype=torch.float64),
                                       adapter_dir)
    expected = {"sum": {}, "mean": {}}
    for prompt, samples in zip(batch, again):
        sequences = [(s.prompt_ids, s.completion_ids) for s in samples]
        own, ref = (completion_logprobs(m, sequences, tokenizer.pad_token_id) for m in (policy, reference))
        scores = {"sum": [o - r for o, r in zip(own.sums, ref.sums)],
                  "mean": [o - r for o, r in zip(own.means, ref.means)]}
        for rule, rule_scores in scores.items():
            pick = select_pair(samples, "implicit-extremes", rule_scores)
            if pick is not None:
                expected[rule][prompt["id"]] = {samples[pick[0]].text, samples[pick[1]].text}
    pairs = {p["prompt_id"]: {p["a_text"], p["b_text"]} for p in store.generated_pairs(round_id)}
    assert expected[implicit_reward] and pairs == expected[implicit_reward]
    assert expected["sum"] != expected["mean"]  # the batch tells the two rules apart
    # Held-out pairs measure this checkpoint: auto leaves them to most-different, not to its own scores.
    assert generate(store, config(split="heldout", num_prompts=4), progress=False).selection == "most-different"
