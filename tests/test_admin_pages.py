"""The admin pages Review, Browse and Data (export) through Streamlit's AppTest, against a real DuckDB file.

    .venv/bin/python -m pytest tests/test_admin_pages.py -q
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from labeler.exporting import summary
from store import Judgment
from tests.labeling_data import make_round, simple_items

APP = Path(__file__).resolve().parent.parent / "streamlit_app.py"


@pytest.fixture(autouse=True)
def app_db(db_path, monkeypatch):
    monkeypatch.setenv("PREFLOOP_DB", str(db_path))


def admin_app(store, page: str) -> AppTest:
    _, token = store.add_annotator("root", "admin")
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    at.text_input[0].input(token)
    next(b for b in at.button if b.label == "Sign in").click().run()
    return at.switch_page(page).run()


def judge(store, pair_id: int, annotator_id: int, choice: str, **fields) -> None:
    store.hold_pair(annotator_id, pair_id)
    store.submit_judgment(Judgment(pair_id, annotator_id, choice, shown_left="a", **fields))


def test_review_lists_agreements_and_single_judgments_not_only_disagreements(store):
    _, (single, agreed, split) = make_round(store, simple_items(3, "show"), overlap=2)
    bob, carol = store.ensure_annotator("bob", "simulated"), store.ensure_annotator("carol", "simulated")
    judge(store, single, bob.id, "tie")
    for annotator, choice in ((bob, "a"), (carol, "a")):
        judge(store, agreed, annotator.id, choice)
    for annotator, choice in ((bob, "a"), (carol, "b")):
        judge(store, split, annotator.id, choice)
    at = admin_app(store, "labeler/pages/review.py")
    assert len(at.button_group) == 1  # "Show"
    assert at.selectbox[0].options == [f"pair {split}"]  # disagreements first, as before
    for mode, listed in (("Agreements", [agreed]), ("Single judgment", [single]), ("All judged", [split, agreed,
                                                                                                 single])):
        at.button_group[0].set_value(mode).run()
        assert at.selectbox[0].options == [f"pair {p}" for p in listed], mode
    at.selectbox[0].set_value(single).run()
    assert "show answer 0a: it is 0." in [m.value for m in at.markdown]  # the chosen pair, shown in full


def test_browse_searches_and_filters_pairs_and_judgments(store):
    _, pair_ids = make_round(store, simple_items(4, "browse"), overlap=2)
    bob, carol = store.ensure_annotator("bob", "simulated"), store.ensure_annotator("carol", "simulated")
    judge(store, pair_ids[0], bob.id, "a", rationale="shows the UNITS")
    judge(store, pair_ids[0], carol.id, "b")
    judge(store, pair_ids[1], carol.id, "tie")
    at = admin_app(store, "labeler/pages/browse.py")
    table = at.dataframe[0].value
    assert sorted(table["pair_id"]) == pair_ids and "4 matching pairs" in at.caption[0].value

    at.text_input(key="browse-text").input("units").run()
    assert at.dataframe[0].value["pair_id"].tolist() == [pair_ids[0]]
    at.text_input(key="browse-text").input("").run()
    at.selectbox(key="browse-agreement").select("unjudged").run()
    assert sorted(at.dataframe[0].value["pair_id"]) == pair_ids[2:]
    at.selectbox(key="browse-agreement").select("any").run()

    at.button_group[0].set_value("Judgments").run()
    rows = at.dataframe[0].value
    assert len(rows) == 3 and set(rows["annotator"]) == {"bob", "carol"}
    at.selectbox(key="browse-annotator").select("carol").run()
    at.selectbox(key="browse-choice").select("tie").run()
    rows = at.dataframe[0].value
    assert rows[["pair_id", "annotator", "choice"]].values.tolist() == [[pair_ids[1], "carol", "tie"]]
    at.text_input(key="browse-text").input("nothing like this").run()
    assert "No judgment matches these filters." in [i.value for i in at.info]


def test_export_is_written_next_to_the_database_whatever_the_working_directory(store, tmp_path, monkeypatch):
    _, pair_ids = make_round(store, simple_items(4, "export"))
    judges = [store.ensure_annotator(f"judge-{i}", "simulated") for i in range(4)]
    for pair_id, annotator in zip(pair_ids, judges):
        judge(store, pair_id, annotator.id, "a")
    elsewhere = tmp_path / "server-working-directory"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    at = admin_app(store, "labeler/pages/data.py")
    at.text_input[1].input("from-elsewhere")
    next(b for b in at.button if b.label == "Export").click().run(timeout=120)
    assert not at.error, [e.value for e in at.error]
    [export] = store.list_exports()
    assert Path(export["path"]) == store.path.parent / "exports" / "from-elsewhere"
    assert Path(export["path"], "dataset_dict.json").is_file() and not any(elsewhere.iterdir())
    [message] = [s.value for s in at.success]
    assert message == f"Exported **from-elsewhere**: {summary(export['counts'])}"
    assert "train row" in message and "{" not in message  # words, not a Python dict
    at.run()
    assert [b.label for b in at.get("download_button")] == ["Download zip"]


def test_export_summary_reads_as_words():
    counts = {"train": 12, "test": 1, "judged_pairs": 20, "judgments": 40,
              "dropped": {"retired": 0, "incomplete": 1, "tie": 2, "disagreement": 3, "both_bad": 0}}
    assert summary(counts) == ("**12** train rows and **1** test row, from 20 judged pairs (40 judgments); "
                               "left out: 1 incomplete, 2 ties, 3 disagreements.")
    assert summary({"train": 3, "test": 0, "dropped": {"tie": 0}}).endswith("left out: none.")
