"""Rounds and candidate generation with tiny random models: lineage, pairing, strategies, splits, reproducibility."""

from __future__ import annotations

import pytest

from store import PromptIn, Store, StoreError
from store.prompts import pair_hash
from training.cli import main
from training.config import ConfigError
from training.generate import GenerateConfig, generate, pair_indices
from training.rounds import start_round

MAX_NEW_TOKENS = 12


@pytest.fixture(scope="module")
def stopping_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a bias towards the end-of-turn token, so responses both stop and get cut at the limit.

    Embedding dimension 0 is set to 1 for every token, which makes it dominate the normalised hidden state; an untied
    output head whose EOS row is larger in that dimension then adds a constant to the EOS logit (about 15% per step).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        embedding = model.get_input_embeddings().weight
        embedding[:, 0] = 1.0
        head = embedding.clone()
        head[tokenizer.eos_token_id, 0] = 1.75
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False)
    model.lm_head.weight = torch.nn.Parameter(head)
    directory = tmp_path_factory.mktemp("stopping-model")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


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


def test_pair_indices_skips_empty_and_identical_responses():
    assert pair_indices(["a", "b"]) == [(0, 1)]
    assert pair_indices(["same", " same\n"]) == []
    assert pair_indices(["", "text"]) == []
    assert pair_indices(["  \n", "\t"]) == []
    # Neighbouring distinct responses: the repeat and the empty one drop out, the rest form a chain.
    assert pair_indices(["x", "x ", "", "y", "z"]) == [(0, 3), (3, 4)]
    assert pair_indices(["one", "two", "three", "four"]) == [(0, 1), (1, 2), (2, 3)]


def test_generation_records_lineage(store, stopping_model_dir):
    add_prompts(store)
    checkpoint = store.register_checkpoint("base", str(stopping_model_dir))
    round_id = store.new_round(checkpoint, overlap_target=2)
    summary = generate(store, config(seed=5), progress=False)

    pairs = store.generated_pairs(round_id)
    assert summary.prompts == 6 and summary.responses == 18 and summary.pairs == len(pairs) > 0
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
                round=round_id,
                strategy="samples",
            )
            assert sampling["seed"] - 5 in prompts  # seed + the batch's first prompt id
            reason, tokens = pair[f"{side}_finish_reason"], pair[f"{side}_completion_tokens"]
            assert (reason == "length") == (tokens == MAX_NEW_TOKENS)
            assert "<|im_end|>" not in pair[f"{side}_text"]
            finish_reasons.add(reason)
    assert finish_reasons == {"stop", "length"}

    # Every prompt used is marked, with or without a pair: the next run takes six others.
    train = [p["id"] for p in prompts.values() if p["split"] == "train"]
    assert len(store.prompts_for_generation(round_id, "samples", "train", 1000)) == len(train) - 6
    first_prompts = {p["prompt_id"] for p in pairs}
    generate(store, config(seed=5), progress=False)
    assert len(store.prompts_for_generation(round_id, "samples", "train", 1000)) == len(train) - 12
    later = {p["prompt_id"] for p in store.generated_pairs(round_id)} - first_prompts
    assert later and not later & first_prompts
    assert store.status()["rounds"][0]["pairs"] == len(store.generated_pairs(round_id))


def test_generation_is_reproducible(tmp_path, tiny_model_dir):
    def texts(name: str, seed: int) -> list[str]:
        store = Store(tmp_path / f"{name}.duckdb")
        add_prompts(store, 20)
        store.new_round(store.register_checkpoint("base", str(tiny_model_dir)))
        generate(store, config(seed=seed, num_prompts=4), progress=False)
        return [(p["a_text"], p["b_text"]) for p in store.generated_pairs(0)]

    first = texts("first", 1)
    assert first and texts("second", 1) == first
    assert texts("other-seed", 2) != first


def test_heldout_generation_uses_only_heldout_prompts(store, tiny_model_dir):
    add_prompts(store, 60)
    round_id = store.new_round(store.register_checkpoint("base", str(tiny_model_dir)))
    heldout = {p["id"] for p in store.list_prompts(split="heldout")}
    assert heldout, "the fixture needs held-out prompts"
    generate(store, config(split="heldout", num_prompts=len(heldout) + 5, samples_per_prompt=2), progress=False)
    pairs = store.generated_pairs(round_id)
    assert pairs and all(p["split"] == "heldout" and p["prompt_id"] in heldout for p in pairs)
    with pytest.raises(StoreError, match="used every heldout prompt"):
        generate(store, config(split="heldout"), progress=False)
    # Held-out use does not consume training prompts.
    assert len(store.prompts_for_generation(round_id, "samples", "train", 1000)) == 60 - len(heldout)


def test_vs_previous_pairs_current_and_previous_checkpoints(store, tiny_model_dir, adapter_dir):
    add_prompts(store, 20)
    base = store.register_checkpoint("base", str(tiny_model_dir))
    store.new_round(base)
    with pytest.raises(StoreError, match="first round"):
        generate(store, config(strategy="vs-previous"), progress=False)
    tuned = store.register_checkpoint(
        "dpo", str(tiny_model_dir), adapter_path=str(adapter_dir), round_id=0, parent_id=base
    )
    round_id, checkpoint = start_round(store)
    assert checkpoint["id"] == tuned

    summary = generate(store, config(strategy="vs-previous", num_prompts=5), progress=False)
    pairs = store.generated_pairs(round_id, "vs-previous")
    assert summary.responses == 10 and len(pairs) == summary.pairs > 0
    for pair in pairs:
        assert (pair["a_checkpoint_id"], pair["b_checkpoint_id"]) == (tuned, base)
        assert pair["a_sampling"]["strategy"] == pair["b_sampling"]["strategy"] == "vs-previous"
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


def test_round_and_generate_commands(db_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("MODEL", str(tiny_model_dir))
    store = Store(db_path)
    add_prompts(store, 20)
    db = ["--db", str(db_path)]
    assert main(db + ["generate", "--num-prompts", "2"]) == 1
    assert "round new" in capsys.readouterr().err

    assert main(db + ["round", "new", "--if-none"]) == 0
    assert main(db + ["round", "new", "--if-none"]) == 0  # idempotent: still one round
    assert [r["id"] for r in store.list_rounds()] == [0]
    (checkpoint,) = store.list_checkpoints()
    assert (checkpoint["kind"], checkpoint["base_model"]) == ("base", str(tiny_model_dir))

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
