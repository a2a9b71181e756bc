"""Export: label policies on constructed judgments, round trip against the database, split safety, determinism."""

from __future__ import annotations

import pytest

from store import Candidates, Judgment, PromptIn, ResponseIn, Store, StoreError
from training.cli import main
from training.config import ConfigError
from training.loop.export import ExportConfig, export, resolve


class Fixture:
    """A database with prompts, a base checkpoint and helpers to make pairs and judge them through the store API."""

    def __init__(self, store: Store, tmp_path):
        self.store = store
        self.output_dir = tmp_path / "exports"
        store.add_prompts([PromptIn([{"role": "user", "content": f"Prompt {i}"}], "test") for i in range(60)])
        prompts = store.list_prompts()
        self.train = [p["id"] for p in prompts if p["split"] == "train"]
        self.heldout = [p["id"] for p in prompts if p["split"] == "heldout"]
        assert len(self.heldout) >= 3, "the fixture needs held-out prompts"
        self.checkpoint = store.register_checkpoint("base", "tiny")
        self.annotators = [store.add_annotator(f"annotator-{i}")[0].id for i in range(3)]
        self.admin = store.add_annotator("admin", role="admin")[0].id
        self.made = 0

    def pair(self, round_id: int, prompt_id: int | None = None, cut: str = "") -> int:
        """A new pair with distinct texts on the next unused train prompt (or the given one); the sides named in
        `cut` ("a", "b") were cut off at the token limit."""
        self.made += 1
        prompt_id = prompt_id if prompt_id is not None else self.train[self.made]
        texts = [f"answer {self.made} A", f"answer {self.made} B"]
        reasons = ["length" if side in cut else "stop" for side in "ab"]
        responses = [ResponseIn(prompt_id, self.checkpoint, t, {}, 3, 3, r) for t, r in zip(texts, reasons)]
        summary = self.store.add_candidates(round_id, "samples", [Candidates(prompt_id, responses, [(0, 1)])])
        return summary.pair_ids[0]

    def judge(self, pair_id: int, *choices: str, strengths: tuple = ()) -> int:
        """Judgments in bulk: constructed states include more judgments than the overlap target (an older database
        or an import can hold them; `submit_judgment` refuses them)."""
        self.store.add_judgments_bulk([
            Judgment(pair_id, annotator, choice, strength=strength)
            for annotator, choice, strength in zip(self.annotators, choices, strengths or (None,) * len(choices))
        ])
        return pair_id

    def export(self, **overrides) -> dict:
        return export(self.store, ExportConfig(output_dir=str(self.output_dir), **overrides))


@pytest.fixture
def fx(store, tmp_path):
    return Fixture(store, tmp_path)


def load(result: dict) -> dict[str, list[dict]]:
    from datasets import load_from_disk

    return {split: list(part) for split, part in load_from_disk(result["path"]).items()}


def test_policies_on_constructed_judgments(fx):
    r = fx.store.new_round(fx.checkpoint, overlap_target=2)
    agree = fx.judge(fx.pair(r), "a", "a", strengths=("clear", "slight"))
    majority = fx.judge(fx.pair(r), "b", "b", "a", strengths=("clear", "clear", "slight"))
    disagree = fx.judge(fx.pair(r), "a", "b")
    three_way = fx.judge(fx.pair(r), "a", "b", "tie")
    tie = fx.judge(fx.pair(r), "tie", "tie")
    both_bad = fx.judge(fx.pair(r), "both_bad", "both_bad")
    incomplete = fx.judge(fx.pair(r), "a")
    adjudicated = fx.judge(fx.pair(r), "a", "b")
    fx.store.adjudicate(adjudicated, fx.admin, "b")
    overruled = fx.judge(fx.pair(r), "a", "a")
    fx.store.adjudicate(overruled, fx.admin, "tie")
    adjudication_only = fx.pair(r)
    fx.store.adjudicate(adjudication_only, fx.admin, "a")
    retired = fx.judge(fx.pair(r), "a", "a")
    with fx.store.transaction("retire a pair") as con:  # no API retires pairs yet; the export must honour the status
        con.execute("UPDATE pairs SET status = 'retired' WHERE id = ?", [retired])
    fx.pair(r)  # never judged: not read at all

    result = fx.export(name="default")
    rows = {row["pair_id"]: row for row in load(result)["train"]}
    assert sorted(rows) == [agree, majority, adjudicated, adjudication_only]
    assert result["counts"]["dropped"] == dict(
        retired=1, incomplete=1, disagreement=2, low_agreement=0, tie=2, both_bad=1, truncated_chosen=0
    )
    assert result["counts"]["judged_pairs"] == 11 and result["counts"]["train"] == 4
    reasons = {row["pair_id"]: resolve(row, ExportConfig()).dropped for row in fx.store.export_rows(r).to_pylist()}
    assert {pair: reason for pair, reason in reasons.items() if reason} == {
        disagree: "disagreement",
        three_way: "disagreement",
        tie: "tie",
        both_bad: "both_bad",
        incomplete: "incomplete",
        overruled: "tie",
        retired: "retired",
    }

    def side(pair_id: int, label: str) -> list[dict]:
        pair = fx.store.get_pair(pair_id)
        return [{"role": "assistant", "content": pair[f"response_{label}"]}]

    expected = {  # pair: (label, num_judgments, agreement, margin)
        agree: ("a", 2, 1.0, 0.75),
        majority: ("b", 3, 2 / 3, 1.0),
        adjudicated: ("b", 2, 0.5, 1.0),
        adjudication_only: ("a", 0, None, 1.0),
    }
    for pair_id, (label, n, agreement, margin) in expected.items():
        row = rows[pair_id]
        assert row["chosen"] == side(pair_id, label) and row["rejected"] == side(pair_id, "b" if label == "a" else "a")
        assert (row["round"], row["num_judgments"], row["margin"]) == (r, n, margin)
        assert row["agreement"] == pytest.approx(agreement) if agreement is not None else row["agreement"] is None

    strict = fx.export(name="strict", min_agreement=0.7, include_incomplete=True)
    assert sorted(row["pair_id"] for row in load(strict)["train"]) == sorted(
        [agree, incomplete, adjudicated, adjudication_only]
    )
    assert strict["counts"]["dropped"]["low_agreement"] == 1

    kto = load(fx.export(name="kto", both_bad="negatives"))
    assert [row["pair_id"] for row in kto["train_negatives"]] == [both_bad, both_bad]
    pair = fx.store.get_pair(both_bad)
    assert [row["completion"][0]["content"] for row in kto["train_negatives"]] == [
        pair["response_a"],
        pair["response_b"],
    ]
    assert not any(row["label"] for row in kto["train_negatives"]) and kto["test_negatives"] == []
    assert len(kto["train"]) == 4


def test_a_pair_whose_preferred_answer_was_cut_off_is_dropped_unless_kept(fx):
    r = fx.store.new_round(fx.checkpoint, overlap_target=1)
    cut_chosen = fx.judge(fx.pair(r, cut="a"), "a")
    cut_rejected = fx.judge(fx.pair(r, cut="b"), "a")
    cut_b_chosen = fx.judge(fx.pair(r, cut="b"), "b")
    finished = fx.judge(fx.pair(r), "b")
    result = fx.export(name="default")
    assert sorted(row["pair_id"] for row in load(result)["train"]) == [cut_rejected, finished]
    assert result["counts"]["dropped"]["truncated_chosen"] == 2
    reasons = {row["pair_id"]: resolve(row, ExportConfig()).dropped for row in fx.store.export_rows(r).to_pylist()}
    assert reasons[cut_chosen] == reasons[cut_b_chosen] == "truncated_chosen"
    kept = fx.export(name="kept", truncated_chosen="keep")
    assert sorted(row["pair_id"] for row in load(kept)["train"]) == [cut_chosen, cut_rejected, cut_b_chosen, finished]
    with pytest.raises(ConfigError, match="truncated_chosen must be drop or keep"):
        ExportConfig(truncated_chosen="maybe").validate()


def test_round_trip_and_split_safety_across_rounds(fx):
    import pyarrow.parquet as pq

    for _ in range(2):
        r = fx.store.new_round(fx.checkpoint)
        for prompt_id in fx.train[r * 5 + 20 : r * 5 + 25] + fx.heldout[:2]:
            fx.judge(fx.pair(r, prompt_id), "a" if prompt_id % 2 else "b", strengths=("clear",))
    for config in (dict(round="all"), dict(round="0"), dict(round="latest")):
        result = fx.export(**config)
        dataset = load(result)
        scope = {0, 1} if config["round"] == "all" else {0} if config["round"] == "0" else {1}
        assert {row["round"] for split in ("train", "test") for row in dataset[split]} == scope
        assert len(dataset["test"]) == 2 * len(scope) and len(dataset["train"]) == 5 * len(scope)
        assert not {row["prompt"][0]["content"] for row in dataset["train"]} & {
            row["prompt"][0]["content"] for row in dataset["test"]
        }
        for split, rows in dataset.items():
            assert pq.read_table(f"{result['path']}/{split}.parquet").to_pylist() == rows
            for row in rows:
                pair = fx.store.get_pair(row["pair_id"])
                (prompt,) = fx.store.get_prompts([pair["prompt_id"]])
                assert (prompt["split"] == "heldout") == (split == "test")
                assert row["prompt"] == prompt["messages"]
                (judgment,) = fx.store.judgments(pair_id=row["pair_id"])
                label = judgment["choice"]
                assert row["chosen"][0]["content"] == pair[f"response_{label}"]
                assert row["rejected"][0]["content"] == pair[f"response_{'b' if label == 'a' else 'a'}"]
                assert (row["round"], row["num_judgments"], row["agreement"]) == (pair["round_id"], 1, 1.0)
    # The dataset card's header lets load_dataset find the same rows in the Parquet files.
    from datasets import load_dataset

    loaded = load_dataset(result["path"], cache_dir=str(fx.output_dir.parent / "hf-cache"))
    assert {split: list(part) for split, part in loaded.items()} == load(result)
    (registered,) = [e for e in fx.store.list_exports() if e["path"] == result["path"]]
    assert registered["round_id"] == 1 and registered["counts"]["train"] == 5
    assert registered["policy"]["both_bad"] == "drop"
    card = (fx.output_dir / registered["name"] / "README.md").read_text()
    assert "train 5" in card and "test 2" in card and str(fx.store.path) in card


def test_export_is_deterministic(fx):
    r = fx.store.new_round(fx.checkpoint, overlap_target=1)
    for i, prompt_id in enumerate(fx.train[:15] + fx.heldout[:2]):
        fx.judge(fx.pair(r, prompt_id), "ab"[i % 2], strengths=(("slight", "clear", None)[i % 3],))
    first, second = fx.export(name="first"), fx.export(name="second")
    for split in ("train", "test"):
        one = (fx.output_dir / "first" / f"{split}.parquet").read_bytes()
        assert one == (fx.output_dir / "second" / f"{split}.parquet").read_bytes()
    assert first["counts"] == second["counts"]


def test_nothing_to_export_leaves_nothing_behind(fx, db_path, capsys):
    r = fx.store.new_round(fx.checkpoint)
    with pytest.raises(StoreError, match="no pair has a judgment"):
        fx.export()
    fx.judge(fx.pair(r), "tie")
    fx.judge(fx.pair(r), "both_bad")
    with pytest.raises(StoreError, match=r"all 2 judged pairs were dropped \(1 tie, 1 both_bad\)"):
        fx.export(name="empty")
    with pytest.raises(StoreError, match="round 7 does not exist"):
        fx.export(round="7")
    assert fx.store.list_exports() == []
    assert not fx.output_dir.exists() or list(fx.output_dir.iterdir()) == []

    cli = ["--db", str(db_path), "export", "--output-dir", str(fx.output_dir)]
    assert main(cli) == 1
    assert "nothing to export" in capsys.readouterr().err
    fx.judge(fx.pair(r), "a")
    assert main(cli + ["--name", "cli"]) == 0
    assert "export cli" in capsys.readouterr().out
    assert main(cli + ["--name", "cli"]) == 1  # names are unique
    assert "already exists" in capsys.readouterr().err
    assert [e["name"] for e in fx.store.list_exports()] == ["cli"]
    assert sorted(p.name for p in fx.output_dir.iterdir()) == ["cli"]
