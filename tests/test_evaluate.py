"""`prefloop eval` on a tiny model over two rounds, the store queries behind it, log-probs, and the dashboard section.

The scenario: a base checkpoint generates round 0; a DPO-like checkpoint (a random LoRA adapter on the base, so it
differs from it) trained on round 0 generates round 1; a reward model (LoRA + score head) is trained on round 0.
Held-out pairs with known final labels, and vs-previous pairs of round 1 with human judgments, are built through the
store's APIs.
"""

from __future__ import annotations

import json

import pytest

from store import Judgment, PairIn, PromptIn, ResponseIn, StoreError
from store.prompts import insert_rows, pair_hash
from store.store import utcnow
from tests.labeling_data import judge
from training.cli import main

PROMPTS = [
    "Explain why the sky is blue in one sentence.",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Say hello to the world.",
    "def add(a, b): what does it return?",
    "Thanks, please say yes or no.",
]
# (chosen, rejected) texts of the held-out pairs of round 0, stored with the chosen one as a or b alternately.
PREFERENCES = [
    ("Because of the sky.", "The quick brown fox."),
    ("Paris is the capital of France.", "Water boils at 100 degrees."),
    ("The sea and the sky.", "yes no maybe"),
    ("hello world", "sorry"),
    ("It returns a + b.", "The lazy dog."),
    ("yes", "thanks please sorry hello"),
]


def add_pair(store, prompt_id, texts, checkpoints, round_id, strategy):
    """A pair through the store's own tables: responses by add_responses, the pair row by insert_rows."""
    response_ids = store.add_responses(
        [ResponseIn(prompt_id, ckpt, text, {}, None, None, "stop") for text, ckpt in zip(texts, checkpoints)]
    )
    (prompt,) = store.get_prompts([prompt_id])
    with store.transaction("test: add pair") as con:
        (pair_id,) = insert_rows(
            con,
            "pairs",
            [
                dict(
                    prompt_id=prompt_id,
                    response_a_id=response_ids[0],
                    response_b_id=response_ids[1],
                    round_id=round_id,
                    strategy=strategy,
                    content_hash=pair_hash(prompt["content_hash"], *texts),
                    created_at=utcnow(),
                )
            ],
        )
    return pair_id


def make_adapter(tiny_model_dir, directory, sequence_classification=False, seed=1):
    """A LoRA adapter with random (non-zero) weights, so the adapted model differs from its base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if sequence_classification:
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
        task = "SEQ_CLS"
    else:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        task = "CAUSAL_LM"
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type=task)
    get_peft_model(model, config).save_pretrained(directory)
    return str(directory)


@pytest.fixture
def scenario(store, tiny_model_dir, tmp_path):
    store.heldout_fraction = 1.0  # every prompt of this test is held out
    prompt_ids = store.add_prompts([PromptIn([{"role": "user", "content": p}], "test") for p in PROMPTS]).ids
    base = store.register_checkpoint("base", str(tiny_model_dir))
    store.new_round(base)
    dpo = store.register_checkpoint(
        "dpo", str(tiny_model_dir), make_adapter(tiny_model_dir, tmp_path / "dpo"), round_id=0, parent_id=base,
        config={"beta": 0.2},
    )
    reward = store.register_checkpoint(
        "reward", str(tiny_model_dir), make_adapter(tiny_model_dir, tmp_path / "rm", True), round_id=0, parent_id=base
    )
    store.new_round(dpo)
    ann, _ = store.add_annotator("ann")
    bob, _ = store.add_annotator("bob")
    admin, _ = store.add_annotator("root", role="admin")

    heldout = []
    for i, (prompt_id, (chosen, rejected)) in enumerate(zip(prompt_ids, PREFERENCES)):
        texts = (chosen, rejected) if i % 2 == 0 else (rejected, chosen)
        pair_id = add_pair(store, prompt_id, texts, (base, base), 0, "samples")
        choice = "a" if i % 2 == 0 else "b"
        judge(store, Judgment(pair_id, ann.id, choice, shown_left="a", seconds_spent=3.0))
        heldout.append(dict(pair_id=pair_id, messages=[{"role": "user", "content": PROMPTS[i]}], chosen=chosen,
                            rejected=rejected))
    # Round 1 vs-previous pairs: a by the DPO checkpoint (new), b by the base (previous).
    vs = [add_pair(store, prompt_ids[i], (f"new answer {i}", f"old answer {i}"), (dpo, base), 1, "vs-previous")
          for i in range(5)]
    return dict(prompt_ids=prompt_ids, base=base, dpo=dpo, reward=reward, ann=ann, bob=bob, admin=admin,
                heldout=heldout, vs=vs)


def judge_vs_previous(store, s):
    """Outcomes for the new model: win, win, loss, tie (adjudicated over a loss), and one split vote (no label).

    Win rate = (1 + 1 + 0 + 0.5) / 4 = 0.625 on n = 4 pairs.
    """
    ann, bob = s["ann"].id, s["bob"].id
    for pair_id, choice in zip(s["vs"], ["a", "a", "b", "b"]):
        judge(store, Judgment(pair_id, ann, choice))
    store.adjudicate(s["vs"][3], s["admin"].id, "tie")
    # Two judgments on an overlap-1 pair (an older database or an import can hold them): in bulk.
    store.add_judgments_bulk([Judgment(s["vs"][4], ann, "a"), Judgment(s["vs"][4], bob, "b")])


def manual_logps(model, tokenizer, messages, response):
    """log p(response | prompt) from one unpadded forward pass, token by token."""
    import torch

    from training.engine.logprobs import completion_ids

    prompt, completion = completion_ids(tokenizer, messages, response)
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].log_softmax(-1)
    return sum(logits[len(prompt) + k - 1, token].item() for k, token in enumerate(completion)), len(completion)


def test_batched_logprobs_equal_one_at_a_time_forward(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.engine.logprobs import response_logprobs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    messages = [[{"role": "user", "content": p}] for p in PROMPTS]
    responses = [c for c, _ in PREFERENCES[:5]] + [""]
    batched = response_logprobs(model, tokenizer, messages, responses, batch_size=4)
    for m, r, total, n in zip(messages, responses, batched.sums, batched.tokens):
        expected, expected_n = manual_logps(model, tokenizer, m, r)
        assert total == pytest.approx(expected, abs=1e-3)
        assert n == expected_n
    assert batched.tokens[-1] == 1  # an empty answer is just the end-of-turn token
    assert batched.means[0] == pytest.approx(batched.sums[0] / batched.tokens[0])
    # The template's newline after <|im_end|> is not part of the response.
    assert tokenizer.decode(tokenizer.apply_chat_template(messages[0] + [{"role": "assistant", "content": "hi"}])
                            ).endswith("<|im_end|>\n")
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        response_logprobs(model, tokenizer, messages[:2], responses[:1])


def test_final_labels_and_label_rows(store, scenario):
    s = scenario
    judge_vs_previous(store, s)
    pairs = store.heldout_preference_pairs()
    # Decided vs-previous pairs are held-out preference pairs too; the tie and the split vote are not.
    assert {p["pair_id"] for p in pairs} == {h["pair_id"] for h in s["heldout"]} | set(s["vs"][:3])
    by_id = {p["pair_id"]: p for p in pairs}
    for h in s["heldout"]:
        assert (by_id[h["pair_id"]]["chosen"], by_id[h["pair_id"]]["rejected"]) == (h["chosen"], h["rejected"])
    outcomes = {r["pair_id"]: (r["final_choice"], r["new_side"], r["previous_checkpoint_id"])
                for r in store.vs_previous_outcomes(s["dpo"])}
    # The split vote has no final label; the adjudication replaces ann's 'b'.
    assert outcomes == {
        s["vs"][0]: ("a", "a", s["base"]),
        s["vs"][1]: ("a", "a", s["base"]),
        s["vs"][2]: ("b", "a", s["base"]),
        s["vs"][3]: ("tie", "a", s["base"]),
    }
    # The base generates round 0, which has no vs-previous pairs: round 1's pairs are not its win rate.
    assert store.vs_previous_outcomes(s["base"]) == []
    # Gold answers are final labels too, and take precedence over the majority (not over an adjudication).
    first = s["heldout"][0]["pair_id"]
    store.set_gold(first, "b")
    assert {p["pair_id"]: p["final_choice"] for p in store.heldout_preference_pairs()}[first] == "b"
    store.set_gold(first, None)
    with pytest.raises(StoreError, match="gold choice must be one of"):
        store.set_gold(first, "A")
    with pytest.raises(StoreError, match="pair 99999 does not exist"):
        store.set_gold(99999, "a")
    store.set_gold(s["vs"][0], "a")
    assert store.gold_pairs() == [dict(pair_id=s["vs"][0], round_id=1, gold_choice="a", judgments=1, correct=1)]
    rows = store.label_rows()
    assert len(rows) == len(s["heldout"]) + 6
    gold_row = next(r for r in rows if r["pair_id"] == s["vs"][0])
    assert (gold_row["len_a"], gold_row["len_b"], gold_row["gold_choice"]) == (12, 12, "a")
    assert len(store.label_rows(round_id=1)) == 6
    # Imported judgments are not anyone's labeling work: they stay out of agreement and bias.
    store.add_imported_pairs([PairIn([{"role": "user", "content": "imported?"}], "yes", "no", "file")], "file")
    assert len(store.label_rows()) == len(rows)


def test_gold_answers_are_set_listed_and_cleared_from_the_command_line(store, db_path, capsys):
    prompt = store.add_prompts([PromptIn([{"role": "user", "content": "2 + 2?"}], "test")]).ids[0]
    checkpoint = store.register_checkpoint("base", "m")
    round_id = store.new_round(checkpoint)
    pair = add_pair(store, prompt, ("4", "5"), (checkpoint, checkpoint), round_id, "samples")
    assert main(["--db", str(db_path), "gold", "set", str(pair), "a"]) == 0
    assert store.gold_pairs() == [dict(pair_id=pair, round_id=round_id, gold_choice="a", judgments=0, correct=0)]
    capsys.readouterr()
    assert main(["--db", str(db_path), "gold", "list"]) == 0
    assert str(pair) in capsys.readouterr().out
    assert main(["--db", str(db_path), "gold", "clear", str(pair)]) == 0
    assert store.gold_pairs() == []
    assert main(["--db", str(db_path), "gold", "set", "99999", "b"]) == 1
    assert "pair 99999 does not exist" in capsys.readouterr().err


def _results(store):
    return {(r["checkpoint_id"], r["metric"]): r for r in store.list_eval_results()}


def test_eval_all_writes_one_row_set_per_round(store, scenario, db_path, tiny_model_dir, capsys):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.engine.reward_scoring import load_reward_model

    s = scenario
    judge_vs_previous(store, s)
    argv = ["--db", str(db_path), "eval", "--all", "--prompts", "4", "--max-new-tokens", "6", "--bootstrap", "200"]
    assert main(argv) == 0
    results = _results(store)
    by_round = {}
    for (checkpoint_id, metric), row in results.items():
        by_round.setdefault(row["round_id"], set()).add((checkpoint_id, metric))
    assert by_round == {
        0: {(s["base"], m) for m in ("heldout_accuracy", "heldout_accuracy_per_token", "heldout_accuracy_vs_reference",
                                     "response_length", "heldout_reward", "kl_to_base")},
        1: {
            (s["dpo"], "heldout_accuracy"),
            (s["dpo"], "heldout_accuracy_per_token"),
            (s["dpo"], "heldout_accuracy_vs_reference"),
            (s["dpo"], "response_length"),
            (s["dpo"], "heldout_reward"),
            (s["dpo"], "kl_to_base"),
            (s["dpo"], "win_rate_vs_previous"),
            (s["reward"], "reward_accuracy"),
        },
    }
    for row in results.values():
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
    # The base model against itself: no change, and none shows.
    assert (results[(s["base"], "kl_to_base")]["value"], results[(s["base"], "kl_to_base")]["ci_high"]) == (0.0, 0.0)
    assert results[(s["base"], "heldout_accuracy")]["value"] == 0.5
    assert results[(s["base"], "heldout_accuracy_per_token")]["value"] == 0.5
    # A DPO run whose parent is the base model was pulled towards the base: both figures are the same one.
    vs_reference = results[(s["dpo"], "heldout_accuracy_vs_reference")]
    assert vs_reference["details"]["reference"] == {"base_model": str(tiny_model_dir), "adapter_path": None}
    assert {k: vs_reference[k] for k in ("value", "n")} == {k: results[(s["dpo"], "heldout_accuracy")][k]
                                                           for k in ("value", "n")}

    # Held-out accuracy recomputed one pair at a time with unpadded, unmerged models: the implicit reward against the
    # base model, an exact tie counting 1/2.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), scenario_adapter(store, s))
    pairs = store.heldout_preference_pairs()
    assert len(pairs) == len(s["heldout"]) + 3
    correct, per_token_margins, by_length, by_length_per_token = [], [], {}, {}
    for h in pairs:
        (pc, nc), (pr, nr) = (manual_logps(policy, tokenizer, h["messages"], h[k]) for k in ("chosen", "rejected"))
        with policy.disable_adapter():
            (bc, _), (br, _) = (manual_logps(policy, tokenizer, h["messages"], h[k]) for k in ("chosen", "rejected"))
        correct.append((pc - bc) - (pr - br) > 0)
        per_token_margins.append((pc - bc) / nc - (pr - br) / nr)
        side = "chosen_longer" if nc > nr else "chosen_shorter" if nc < nr else "same_length"
        by_length.setdefault(side, []).append(correct[-1])
        by_length_per_token.setdefault(side, []).append(per_token_margins[-1] > 0)
    accuracy = results[(s["dpo"], "heldout_accuracy")]
    assert 0 < sum(correct) < len(correct)  # the scenario's adapter gets some pairs right and some wrong
    assert accuracy["value"] == pytest.approx(sum(correct) / len(correct))
    assert accuracy["n"] == len(pairs)
    assert accuracy["details"]["beta"] == 0.2  # from the checkpoint's config
    # The length checks: the length-normalised reward's accuracy, and each split by the longer answer.
    per_token = results[(s["dpo"], "heldout_accuracy_per_token")]
    assert per_token["details"]["mean_margin"] == pytest.approx(0.2 * sum(per_token_margins) / len(pairs), abs=1e-4)
    assert per_token["details"]["mean_margin"] != pytest.approx(accuracy["details"]["mean_margin"], abs=1e-3)
    correct_per_token = [m > 0 for m in per_token_margins]
    assert (per_token["value"], per_token["n"]) == (pytest.approx(sum(correct_per_token) / len(pairs)), len(pairs))
    for row, split in ((accuracy, by_length), (per_token, by_length_per_token)):
        assert {side: (e["value"], e["n"]) for side, e in row["details"]["by_length"].items()} == {
            side: (pytest.approx(sum(values) / len(values)), len(values)) for side, values in split.items()
        }

    reward_model, reward_tokenizer = load_reward_model(store.get_checkpoint(s["reward"]))

    def reward(messages, text):
        ids = reward_tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text}],
                                                   return_tensors="pt", return_dict=True)
        with torch.no_grad():
            return reward_model(**ids).logits[0, 0].item()

    correct = [reward(h["messages"], h["chosen"]) > reward(h["messages"], h["rejected"]) for h in pairs]
    assert results[(s["reward"], "reward_accuracy")]["value"] == pytest.approx(sum(correct) / len(correct))

    win = results[(s["dpo"], "win_rate_vs_previous")]
    assert (win["value"], win["n"], win["details"]["source"]) == (0.625, 4, "human")
    assert win["details"]["previous_checkpoints"] == [s["base"]]
    kl = results[(s["dpo"], "kl_to_base")]
    assert kl["n"] == 4 and kl["details"]["prompts"] == 4 and kl["value"] != 0  # one untruncated draw per prompt
    length = results[(s["dpo"], "response_length")]
    assert 0 <= length["value"] <= 6 and length["n"] == 16 and length["details"]["prompts"] == 4  # 4 samples each

    # A rerun replaces the rows instead of adding to them; --table prints them without evaluating.
    count = len(store.list_eval_results())
    assert main(argv) == 0
    assert len(store.list_eval_results()) == count
    capsys.readouterr()
    assert main(["--db", str(db_path), "eval", "--table"]) == 0
    table = capsys.readouterr().out
    assert "win_rate_vs_previous" in table and "0.625" in table and "human" in table
    assert main(["--db", str(db_path), "eval", "--labels"]) == 0
    assert "Krippendorff's alpha" in capsys.readouterr().out


def scenario_adapter(store, s):
    return store.get_checkpoint(s["dpo"])["adapter_path"]


def test_accuracy_against_the_training_reference(store, scenario, tiny_model_dir, tmp_path):
    """A second round's DPO continues the first's checkpoint and is pulled towards it: its held-out accuracy against
    that reference is the reward its training defined. One that did not move ties every pair (no change, none shown)
    while its accuracy against the base is its parent's; one that moved is recomputed by hand; `reference: base`
    measures against the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.loop.evaluation import EvalConfig, Evaluator, spec_of

    s = scenario
    parent_adapter = scenario_adapter(store, s)
    unmoved = store.register_checkpoint("dpo", str(tiny_model_dir), parent_adapter, round_id=1, parent_id=s["dpo"],
                                        config={"beta": 0.2})  # stored before `reference` existed: the parent
    moved_dir = make_adapter(tiny_model_dir, tmp_path / "moved", seed=2)
    moved = store.register_checkpoint("dpo", str(tiny_model_dir), moved_dir, round_id=1, parent_id=s["dpo"],
                                      config={"beta": 0.2, "reference": "parent"})
    to_base = store.register_checkpoint("dpo", str(tiny_model_dir), moved_dir, round_id=1, parent_id=s["dpo"],
                                        config={"beta": 0.2, "reference": "base"})
    evaluator = Evaluator(store, EvalConfig(bootstrap=100))

    def rows(checkpoint_id):
        checkpoint = evaluator.checkpoints[checkpoint_id]
        found = evaluator.heldout_accuracy(checkpoint, spec_of(checkpoint), evaluator.base_spec(checkpoint))
        return {row["metric"]: row for row in found}

    parent, same = rows(s["dpo"]), rows(unmoved)
    assert same["heldout_accuracy_vs_reference"]["value"] == 0.5  # every pair an exact tie
    assert same["heldout_accuracy_vs_reference"]["details"]["mean_margin"] == 0
    assert same["heldout_accuracy_vs_reference"]["details"]["reference"]["adapter_path"] == parent_adapter
    assert same["heldout_accuracy"]["value"] == parent["heldout_accuracy"]["value"]
    assert same["heldout_accuracy"]["details"]["mean_margin"] != 0

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    child = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), moved_dir)
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), parent_adapter)
    margins = []
    for pair in evaluator.pairs:
        (cc, _), (cr, _) = (manual_logps(child, tokenizer, pair["messages"], pair[k]) for k in ("chosen", "rejected"))
        (rc, _), (rr, _) = (manual_logps(reference, tokenizer, pair["messages"], pair[k])
                            for k in ("chosen", "rejected"))
        margins.append((cc - rc) - (cr - rr))
    result = rows(moved)["heldout_accuracy_vs_reference"]
    assert 0 < sum(m > 0 for m in margins) < len(margins)  # some pairs right, some wrong: the figure can move
    assert (result["value"], result["n"]) == (pytest.approx(sum(m > 0 for m in margins) / len(margins)), len(margins))
    assert result["details"]["mean_margin"] == pytest.approx(0.2 * sum(margins) / len(margins), abs=1e-4)

    pinned = rows(to_base)
    assert pinned["heldout_accuracy_vs_reference"]["details"]["reference"]["adapter_path"] is None
    assert pinned["heldout_accuracy_vs_reference"]["value"] == pinned["heldout_accuracy"]["value"]


def test_win_rate_falls_back_to_the_reward_model(store, scenario, db_path):
    s = scenario
    argv = ["--db", str(db_path), "eval", "--checkpoint", str(s["dpo"]), "--prompts", "3", "--max-new-tokens", "5",
            "--bootstrap", "100"]
    assert main(argv) == 0
    win = _results(store)[(s["dpo"], "win_rate_vs_previous")]
    assert win["details"] == {"source": "reward_model", "reward_checkpoint": s["reward"],
                              "previous_checkpoints": [s["base"]], "prompts": 3}
    assert win["n"] == 12 and 0 <= win["value"] <= 1  # 3 prompts x 4 samples of each model
    assert win["value"] * 24 == pytest.approx(round(win["value"] * 24))  # wins and half-point ties over 12
    # The mean reward of the same samples, by the same reward model, scored one at a time.
    from training.engine.reward_scoring import score_responses
    from training.loop.evaluation import EvalConfig, Evaluator, spec_of

    evaluator = Evaluator(store, EvalConfig(prompts=3, max_new_tokens=5))
    samples = evaluator.samples(spec_of(store.get_checkpoint(s["dpo"])))
    model, tokenizer = evaluator.reward_model(store.get_checkpoint(s["reward"]))
    scores = [score_responses(model, tokenizer, [prompt["messages"]], [x.text], batch_size=1)[0]
              for prompt, row in zip(evaluator.prompts, samples) for x in row]
    mean_reward = _results(store)[(s["dpo"], "heldout_reward")]
    assert mean_reward["value"] == pytest.approx(sum(scores) / 12, abs=1e-5)
    assert (mean_reward["n"], mean_reward["details"]["reward_checkpoint"]) == (12, s["reward"])
    assert {r["round_id"] for r in store.list_eval_results()} == {1}
    # Seeded sampling and bootstrap: the same command gives the same numbers.
    first = {(r["metric"]): (r["value"], r["ci_low"], r["ci_high"]) for r in store.list_eval_results()}
    assert main(argv) == 0
    assert {(r["metric"]): (r["value"], r["ci_low"], r["ci_high"]) for r in store.list_eval_results()} == first


def test_default_selection_is_latest_policy_and_reward(store, scenario):
    from training.loop.evaluation import checkpoint_round, select_checkpoints

    s = scenario
    assert [c["id"] for c in select_checkpoints(store, None, False)] == [s["dpo"], s["reward"]]
    assert [c["id"] for c in select_checkpoints(store, None, True)] == [s["base"], s["dpo"], s["reward"]]
    assert [c["id"] for c in select_checkpoints(store, s["base"], False)] == [s["base"]]
    rounds = store.list_rounds()
    # The base generates round 0, the DPO checkpoint round 1; the reward model was trained on round 0's labels.
    assert [checkpoint_round(store.get_checkpoint(i), rounds) for i in (s["base"], s["dpo"], s["reward"])] == [0, 1, 1]


def test_eval_without_checkpoints_or_data(db_path, capsys):
    assert main(["--db", str(db_path), "eval"]) == 1
    assert "no checkpoints registered" in capsys.readouterr().out
    assert main(["--db", str(db_path), "eval", "--table"]) == 0
    assert "no evaluation results yet" in capsys.readouterr().out
    assert main(["--db", str(db_path), "eval", "--max-pairs", "0"]) == 1
    assert "max_pairs must be at least 1" in capsys.readouterr().err


def chart_rows(element, column):
    """The rows a chart was drawn from (the dataset with this column): Streamlit ships each of a chart's datasets
    beside its spec as an Arrow IPC stream."""
    import pyarrow as pa

    tables = [pa.ipc.open_stream(d.data.data).read_all() for d in element.proto.datasets]
    (table,) = [t for t in tables if column in t.column_names]
    return table.to_pylist()


def _dashboard(db_path):
    from labeler.eval_charts import render_eval_section
    from store import Store

    render_eval_section(Store(db_path))


def test_eval_section_renders_empty_store(store, db_path):
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_function(_dashboard, args=(str(db_path),), default_timeout=60).run()
    assert not app.exception
    assert any("No evaluation results yet" in info.value for info in app.info)
    assert not app.get("vega_lite_chart")


def test_eval_section_renders_two_rounds(store, scenario, db_path, tmp_path):
    from streamlit.testing.v1 import AppTest
    from torch.utils.tensorboard import SummaryWriter

    from labeler.eval_charts import ACCURACY_CAVEAT, LENGTH_SPLIT, LENGTH_SPLIT_CAVEAT

    s = scenario
    judge_vs_previous(store, s)
    assert main(["--db", str(db_path), "eval", "--all", "--prompts", "2", "--max-new-tokens", "4",
                 "--bootstrap", "50"]) == 0
    run_dir = tmp_path / "runs" / "dpo"
    run = store.start_training_run("dpo", str(run_dir), {"beta": 0.2}, round_id=0, parent_checkpoint_id=s["base"])
    writer = SummaryWriter(str(run_dir / "tensorboard"))
    for step in range(5):
        writer.add_scalar("train/loss", 1.0 / (step + 1), step)
        writer.add_scalar("train/rewards/accuracies", step / 5, step)
    writer.close()
    store.finish_training_run(run, {"train_loss": 0.4}, checkpoint_id=s["dpo"])

    app = AppTest.from_function(_dashboard, args=(str(db_path),), default_timeout=60).run()
    assert not app.exception
    elements = app.get("vega_lite_chart")
    charts = [json.loads(chart.proto.spec) for chart in elements]
    titles = [chart.get("title") or chart.get("spec", {}).get("title") for chart in charts]
    assert titles == [
        "Held-out accuracy and win rate",  # left column
        "Reward-model accuracy on held-out pairs",
        "Mean response length (length hacking shows here)",
        "Held-out accuracy (summed) by which answer was preferred",  # right column
        "KL to the base model",
        "Reward-model score of each policy's held-out samples (what RL raises)",
        "Judgments per day by annotator",
        None,  # the training curves: one facet per TensorBoard tag
    ]
    # Every chart carries its data: the accuracy chart has both rounds' points with their intervals.
    accuracy = chart_rows(elements[0], "metric")
    assert sorted({(row["round"], row["metric"]) for row in accuracy}) == [
        (0, "heldout_accuracy"), (0, "heldout_accuracy_per_token"), (0, "heldout_accuracy_vs_reference"),
        (1, "heldout_accuracy"), (1, "heldout_accuracy_per_token"), (1, "heldout_accuracy_vs_reference"),
        (1, "win_rate_vs_previous")
    ]
    assert all(row["ci_low"] <= row["value"] <= row["ci_high"] for row in accuracy)
    assert [c.value for c in app.caption].count(ACCURACY_CAVEAT) == 1  # under the accuracy chart only
    # Beside it, the same accuracy split by whether the preferred answer is the longer or the shorter: the stored
    # parts of each round's figure, with their n.
    stored = {(r["round_id"], LENGTH_SPLIT[side]): (part["value"], part["n"])
              for r in store.list_eval_results() if r["metric"] == "heldout_accuracy"
              for side, part in r["details"]["by_length"].items() if side in LENGTH_SPLIT}
    split = chart_rows(elements[3], "metric")
    assert {row["round"] for row in split} == {0, 1}
    assert {(row["round"], row["metric"]): (row["value"], row["n"]) for row in split} == stored
    assert [c.value for c in app.caption].count(LENGTH_SPLIT_CAVEAT) == 1
    assert sorted(row["round"] for row in chart_rows(elements[5], "metric")) == [0, 1]  # base and DPO samples
    # In words, for the lead: the human vs-previous pairs say round 1 won 0.625 of 4, an interval that includes 50%.
    assert any("Round 1 is not measurably better than round 0" in m.value and "judged by human" in m.value
               for m in app.markdown)
    curves = chart_rows(elements[7], "tag")
    assert len(curves) == 10 and {row["tag"] for row in curves} == {"train/loss", "train/rewards/accuracies"}
    assert [m.label for m in app.metric] == ["Cohen's kappa", "Krippendorff's alpha"]
    assert app.selectbox[0].value == run
    assert app.multiselect[0].value == ["train/loss", "train/rewards/accuracies"]
    annotators = app.dataframe[1].value
    assert list(annotators["annotator"]) == ["ann", "bob"]
