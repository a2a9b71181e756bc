"""The labeling app through Streamlit's AppTest: every page, run in-process against a real DuckDB file.

    .venv/bin/python -m pytest tests/test_labeler_apptest.py -q
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from labeler import labeling, session
from labeler.guidelines import SETTING
from labeler.render import inert_markdown, shown_left
from store import BrowseFilter, Judgment
from tests.labeling_data import judge, make_round, simple_items
from training.cli import main as prefloop

APP = Path(__file__).resolve().parent.parent / "streamlit_app.py"
ADMIN_PAGES = ["labeler/pages/data.py", "labeler/pages/review.py", "labeler/pages/annotators.py",
               "labeler/pages/dashboard.py"]


@pytest.fixture(autouse=True)
def app_db(db_path, tmp_path, monkeypatch):
    """The app opens PREFLOOP_DB; exports land under the working directory, so it is the test's folder."""
    monkeypatch.setenv("PREFLOOP_DB", str(db_path))
    monkeypatch.chdir(tmp_path)
    # Presses right after a pair appears are ignored as double clicks (tested on its own below).
    monkeypatch.setattr(labeling, "REPEAT_GUARD_SECONDS", 0.0)


def open_app(token: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    if token is not None:
        at.text_input[0].input(token)
        button(at, "Sign in").click().run()
    return at


def button(at: AppTest, label: str):
    found = [b for b in at.button if b.label == label]
    assert found, f"no button {label!r} among {[b.label for b in at.button]}"
    return found[0]


def texts(at: AppTest) -> str:
    """Everything the page says, one string, for `in` checks."""
    parts = [e.value for kind in ("markdown", "caption", "title", "error", "success", "info", "warning", "toast")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts) + "\n" + "\n".join(p.text for p in at.get("progress"))


def screen_pair(at: AppTest) -> int:
    return at.session_state["pair"]["id"]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error] + [str(e.value) for e in at.exception]


def stored_b(pair_id: int, annotator_id: int) -> str:
    return "b" if shown_left(pair_id, annotator_id) == "a" else "a"


def stored_a(pair_id: int, annotator_id: int) -> str:
    return shown_left(pair_id, annotator_id)


# --- sign-in and roles --------------------------------------------------------------------------------------------
def test_sign_in_refuses_bad_and_disabled_tokens(store):
    make_round(store, simple_items(2, "signin"))
    _, token = store.add_annotator("alice")
    at = open_app("not-a-real-token")
    assert "That token is not valid" in errors(at)[0]
    assert "annotator" not in at.session_state and "signin question" not in texts(at)

    store.set_annotator_disabled("alice", True)
    at = open_app(token)
    assert "'alice' is disabled" in errors(at)[0]
    assert "annotator" not in at.session_state and "signin question" not in texts(at)

    store.set_annotator_disabled("alice", False)
    at = open_app(token)
    assert not errors(at)
    assert at.session_state["annotator"].name == "alice" and "signin question 0" in texts(at)


def test_annotator_is_refused_on_every_admin_page(store):
    store.add_annotator("root", "admin")
    _, token = store.add_annotator("alice")
    at = open_app(token)
    for page in ADMIN_PAGES:
        at.switch_page(page).run()
        assert errors(at) == ["This page is for admins only. Ask an admin if you need something from it."], page
        assert not at.title and not at.dataframe and not at.metric, page  # nothing of the page itself ran


def test_admin_reaches_every_admin_page(store):
    _, token = store.add_annotator("root", "admin")
    at = open_app(token)
    for page, title in zip(ADMIN_PAGES, ["Data", "Review", "Annotators", "Dashboard"]):
        at.switch_page(page).run()
        assert not errors(at), (page, errors(at))
        assert at.title[0].value == title


def test_disabling_signs_a_session_out(store):
    make_round(store, simple_items(2, "disable"))
    alice, token = store.add_annotator("alice")
    at = open_app(token)
    store.set_annotator_disabled("alice", True)
    button(at, "A better").click().run()  # the store refuses the judgment in the submit's own transaction
    assert store.judgments(annotator_id=alice.id) == []
    assert "annotator" not in at.session_state and at.text_input[0].label == "Sign-in token"  # signed out at once
    assert "'alice' is disabled" in "\n".join(w.value for w in at.warning)


def test_oidc_sign_in_maps_the_email_to_an_annotator(store):
    make_round(store, simple_items(1, "oidc"))
    store.add_annotator("alice@example.com")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.secrets = {"auth": {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x",
                           "client_id": "id", "client_secret": "secret",
                           "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration"}}
    at.user = {"is_logged_in": True, "email": "alice@example.com", "email_verified": True}
    at.run()
    assert at.session_state["annotator"].name == "alice@example.com" and "oidc question 0" in texts(at)

    at = AppTest.from_file(str(APP), default_timeout=60)
    at.secrets = {"auth": {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x"}}
    at.user = {"is_logged_in": True, "email": "mallory@example.com", "email_verified": True}
    at.run()
    assert "annotator" not in at.session_state
    assert "mallory@example.com signed in with the identity provider, but is not an enabled annotator" in errors(at)[0]


# --- label page ---------------------------------------------------------------------------------------------------
def test_label_page_records_a_judgment_in_stored_terms(store):
    _, pair_ids = make_round(store, simple_items(3, "label"))
    alice, token = store.add_annotator("alice")
    at = open_app(token)
    first = screen_pair(at)
    assert first == pair_ids[0]
    left = shown_left(first, alice.id)
    pair = store.get_pair(first)
    box_texts = [m.value for m in at.markdown]
    left_text, right_text = (pair["response_a"], pair["response_b"]) if left == "a" else (pair["response_b"],
                                                                                         pair["response_a"])
    assert box_texts.index(left_text) < box_texts.index(right_text)  # what the page shows on the left is recorded
    assert "You judged 0 today · 3 judgments left in round 0" in texts(at)

    time.sleep(0.2)
    button(at, "Clear").click().run()
    at.text_input(key=f"rationale-{first}").input("B gets the sum right")
    button(at, "B better").click().run()
    [row] = store.judgments(annotator_id=alice.id)
    assert row["pair_id"] == first and row["shown_left"] == left
    assert row["choice"] == ("b" if left == "a" else "a")  # "B" on screen is the right response, whichever it is
    assert row["strength"] == "clear" and row["rationale"] == "B gets the sum right"
    assert row["seconds_spent"] >= 0.2
    assert screen_pair(at) == pair_ids[1]
    assert "You judged 1 today · 2 judgments left in round 0" in texts(at)

    button(at, "Tie").click().run()
    button(at, "Both bad").click().run()
    rows = store.judgments(annotator_id=alice.id)
    assert [(r["pair_id"], r["choice"], r["strength"]) for r in rows[1:]] == [
        (pair_ids[1], "tie", None), (pair_ids[2], "both_bad", None)]
    assert at.session_state["pair"] is None and "Nothing left for you to label in round 0" in texts(at)


def test_a_second_tab_and_a_double_press_leave_one_judgment(store, monkeypatch):
    _, pair_ids = make_round(store, simple_items(2, "twice"))
    alice, token = store.add_annotator("alice")
    first_tab, second_tab = open_app(token), open_app(token)
    assert screen_pair(first_tab) == screen_pair(second_tab) == pair_ids[0]  # the same lease, served again
    button(first_tab, "A better").click().run()
    button(second_tab, "B better").click().run()  # the same pair, judged again from the other tab
    [row] = store.judgments(annotator_id=alice.id)
    assert row["pair_id"] == pair_ids[0] and row["choice"] == stored_b(pair_ids[0], alice.id)
    assert screen_pair(first_tab) == screen_pair(second_tab) == pair_ids[1]

    monkeypatch.setattr(labeling, "REPEAT_GUARD_SECONDS", 5.0)
    button(first_tab, "A better").click().run()  # pressed right after the pair appeared: a double click's echo
    assert len(store.judgments(annotator_id=alice.id)) == 1 and screen_pair(first_tab) == pair_ids[1]
    assert "Ignored a second press" in texts(first_tab)


def test_skip_passes_the_pair_on(store):
    _, pair_ids = make_round(store, simple_items(2, "skip"))
    alice, token = store.add_annotator("alice")
    bob, _ = store.add_annotator("bob")
    at = open_app(token)
    button(at, "Skip").click().run()
    assert screen_pair(at) == pair_ids[1] and store.judgments() == []
    button(at, "A better").click().run()
    assert at.session_state["pair"] is None  # the skipped pair is never served to alice again
    assert store.next_pair(bob.id)["id"] == pair_ids[0]  # ... but is to someone else


def test_undo_takes_back_the_last_judgment_and_shows_its_pair(store):
    _, pair_ids = make_round(store, simple_items(3, "undo"))
    alice, token = store.add_annotator("alice")
    at = open_app(token)
    button(at, "A better").click().run()
    button(at, "Tie").click().run()
    assert screen_pair(at) == pair_ids[2]
    button(at, "Undo last").click().run()
    assert [r["pair_id"] for r in store.judgments(annotator_id=alice.id)] == [pair_ids[0]]
    assert screen_pair(at) == pair_ids[1] and "Took back your last judgment" in texts(at)
    button(at, "Both bad").click().run()
    assert screen_pair(at) == pair_ids[2]  # then back to the pair that was on screen before the undo
    button(at, "A better").click().run()
    rows = store.judgments(annotator_id=alice.id)
    assert [(r["pair_id"], r["choice"]) for r in rows] == [
        (pair_ids[0], stored_a(pair_ids[0], alice.id)), (pair_ids[1], "both_bad"),
        (pair_ids[2], stored_a(pair_ids[2], alice.id))]


def test_undo_restores_choice_strength_and_rationale(store):
    _, pair_ids = make_round(store, simple_items(3, "restore"))
    alice, token = store.add_annotator("alice")
    at = open_app(token)
    button(at, "Clear").click().run()
    at.text_input(key=f"rationale-{pair_ids[0]}").input("B adds the numbers right")
    button(at, "B better").click().run()
    assert screen_pair(at) == pair_ids[1]
    button(at, "Undo last").click().run()
    assert screen_pair(at) == pair_ids[0] and store.judgments(annotator_id=alice.id) == []
    assert at.session_state["strength"] == "clear"  # the Clear button shows as selected again
    assert at.text_input(key=f"rationale-{pair_ids[0]}").value == "B adds the numbers right"
    assert "Before the undo you chose **B better** (clear) for this pair." in texts(at)
    button(at, "B better").click().run()  # confirmed as it was, with one press
    [row] = store.judgments(annotator_id=alice.id)
    assert (row["choice"], row["strength"], row["rationale"]) == (stored_b(pair_ids[0], alice.id), "clear",
                                                                  "B adds the numbers right")
    assert screen_pair(at) == pair_ids[1] and "Before the undo" not in texts(at)


def test_undo_takes_back_a_skip(store):
    _, pair_ids = make_round(store, simple_items(3, "unskip"))
    alice, token = store.add_annotator("alice")
    bob, _ = store.add_annotator("bob")
    at = open_app(token)
    button(at, "A better").click().run()
    button(at, "Skip").click().run()
    assert screen_pair(at) == pair_ids[2]
    button(at, "Undo last").click().run()  # the skip, not the judgment before it
    assert screen_pair(at) == pair_ids[1] and "Took back your skip" in texts(at)
    assert [r["pair_id"] for r in store.judgments(annotator_id=alice.id)] == [pair_ids[0]]
    assert store.next_pair(bob.id)["id"] == pair_ids[2]  # the pair alice had on screen went back to the pool
    button(at, "Tie").click().run()
    assert [(r["pair_id"], r["choice"]) for r in store.judgments(annotator_id=alice.id)] == [
        (pair_ids[0], stored_a(pair_ids[0], alice.id)), (pair_ids[1], "tie")]
    assert at.session_state["pair"] is None  # pair 3 is bob's now


def test_history_changes_a_past_judgment(store):
    _, pair_ids = make_round(store, simple_items(3, "history"))
    alice, token = store.add_annotator("alice")
    at = open_app(token)
    at.text_input(key=f"rationale-{pair_ids[0]}").input("first thought")
    button(at, "A better").click().run()
    button(at, "Tie").click().run()
    at.session_state["history"] = True  # the expander, opened
    at.run()
    shown = [t.value for t in at.text]
    assert shown[0].startswith(f"Pair {pair_ids[1]} · Tie · history question 1") and \
        shown[1].startswith(f"Pair {pair_ids[0]} · A better · history question 0") and "first thought" in shown[1]
    at.button(key=f"edit-{pair_ids[0]}").click().run()
    assert screen_pair(at) == pair_ids[2] and at.session_state["editing"]["pair"]["id"] == pair_ids[0]
    assert "You chose **A better** for this pair." in texts(at)
    assert at.text_input(key=f"rationale-{pair_ids[0]}").value == "first thought"
    button(at, "Both bad").click().run()  # saves the change, then back to the pair being labeled
    assert "editing" not in at.session_state and "Changed your judgment of pair" in texts(at)
    rows = {r["pair_id"]: r for r in store.judgments(annotator_id=alice.id)}
    assert (rows[pair_ids[0]]["choice"], rows[pair_ids[0]]["rationale"]) == ("both_bad", "first thought")
    assert len(rows) == 2 and store.get_pair(pair_ids[2])["status"] == "open"
    button(at, "A better").click().run()  # the pair that was on screen before the edit, still held
    assert sorted(store.judgments(annotator_id=alice.id), key=lambda r: r["pair_id"])[-1]["pair_id"] == pair_ids[2]

    make_round(store, simple_items(1, "next round"))  # a newer round: the old judgments no longer change
    at.run()
    assert all(b.disabled for b in at.button if b.key and b.key.startswith("edit-"))


def test_a_pair_taken_over_while_away_is_said_and_the_next_one_shown(store):
    _, pair_ids = make_round(store, simple_items(3, "away"))
    alice, token = store.add_annotator("alice")
    bob, _ = store.add_annotator("bob")
    at = open_app(token)
    assert screen_pair(at) == pair_ids[0]
    store.release_lease(alice.id)  # the tab was closed, say, and bob took the pair and judged it
    judge(store, Judgment(pair_ids[0], bob.id, "b"))
    button(at, "A better").click().run()
    assert "This pair was reassigned" in errors(at)[0] and screen_pair(at) == pair_ids[1]
    assert store.judgments(annotator_id=alice.id) == []

    store.release_lease(alice.id)  # lapsed again, but this time nobody needed the pair: the choice is recorded
    button(at, "A better").click().run()
    assert [r["pair_id"] for r in store.judgments(annotator_id=alice.id)] == [pair_ids[1]] and not errors(at)


def test_an_admin_disabled_while_on_the_annotators_page_cannot_act(store):
    _, token = store.add_annotator("root", "admin")
    other, _ = store.add_annotator("other-root", "admin")
    at = open_app(token).switch_page("labeler/pages/annotators.py").run()
    store.set_annotator_disabled("root", True, actor=store.start_session(other.id)[0])
    at.text_input[0].input("mallory")
    at.selectbox[0].select("admin")
    button(at, "Create").click().run()
    assert store.get_annotator("mallory") is None
    assert "annotator" not in at.session_state and "'root' is disabled" in "\n".join(w.value for w in at.warning)


def test_a_lowered_role_loses_the_admin_pages_at_the_next_run(store):
    _, token = store.add_annotator("root", "admin")
    at = open_app(token).switch_page("labeler/pages/annotators.py").run()
    assert at.title[0].value == "Annotators"
    store.set_annotator_role("root", "annotator")
    at.run()
    assert errors(at) == ["This page is for admins only. Ask an admin if you need something from it."]
    assert at.session_state["annotator"].role == "annotator"


def test_an_idle_tab_notices_an_ended_session_within_the_recheck_time(store, monkeypatch):
    make_round(store, simple_items(1, "idle"))
    _, token = store.add_annotator("alice")
    at = open_app(token)
    store.reset_token("alice")
    at.run()
    assert at.session_state["annotator"].name == "alice"  # nothing asked the store yet
    monkeypatch.setattr(session, "RECHECK_SECONDS", 0.0)
    at.run()
    assert "annotator" not in at.session_state and "Sign in again" in "\n".join(w.value for w in at.warning)


def test_guidelines_are_edited_by_admins_only(store):
    make_round(store, simple_items(1, "guide"))
    _, admin_token = store.add_annotator("root", "admin")
    _, token = store.add_annotator("alice")
    annotator_view = open_app(token)
    assert "Your task." in texts(annotator_view) and not annotator_view.text_area  # default text, no editor
    admin_view = open_app(admin_token)
    admin_view.text_area[0].input("**Always prefer the answer in French.**")
    button(admin_view, "Save guidelines").click().run()
    assert store.get_setting(SETTING) == "**Always prefer the answer in French.**"
    assert "**Always prefer the answer in French.**" in texts(open_app(token))


# --- admin pages --------------------------------------------------------------------------------------------------
def test_annotators_page_creates_shows_token_once_and_disables(store):
    _, token = store.add_annotator("root", "admin")
    at = open_app(token).switch_page("labeler/pages/annotators.py").run()
    at.text_input[0].input("carol")
    at.selectbox[0].select("admin")
    button(at, "Create").click().run()
    [shown] = [c.value for c in at.code]
    assert store.authenticate(shown).name == "carol" and store.get_annotator("carol").role == "admin"
    at.run()
    assert not at.code  # shown once

    at.selectbox[1].select("carol").run()
    button(at, "Disable").click().run()
    assert store.get_annotator("carol").disabled and store.authenticate(shown) is None
    button(at, "Enable").click().run()
    button(at, "Issue a new token").click().run()
    [new_token] = [c.value for c in at.code]
    assert store.authenticate(new_token).name == "carol" and store.authenticate(shown) is None


def test_review_page_adjudicates_a_disagreement(store):
    _, pair_ids = make_round(store, simple_items(2, "review"), overlap=2)
    admin, token = store.add_annotator("root", "admin")
    bob, _ = store.add_annotator("bob")
    carol, _ = store.add_annotator("carol")
    for annotator, choice in ((bob, "a"), (carol, "b")):
        judge(store, Judgment(pair_ids[1], annotator.id, choice, shown_left="a"))
    judge(store, Judgment(pair_ids[0], bob.id, "a", shown_left="a"))  # one judgment: nothing to review
    at = open_app(token).switch_page("labeler/pages/review.py").run()
    assert at.selectbox[0].options == [f"pair {pair_ids[1]}"]
    assert "review question 1: what is 1 + 1?" in texts(at)
    at.radio[0].set_value("b")
    at.text_input[0].input("b shows its working")
    button(at, "Save final label").click().run()
    final = store.pair_review(pair_ids[1])["adjudication"]
    assert final["choice"] == "b" and final["admin"] == admin.name and final["note"] == "b shows its working"
    assert f"Pair {pair_ids[1]}: final label 'b better' saved." in texts(at)
    assert "No disagreements to review" in texts(at)  # settled pairs leave the list


def test_data_page_imports_and_exports(store, tmp_path):
    _, pair_ids = make_round(store, simple_items(4, "data"))
    _, token = store.add_annotator("root", "admin")
    alice, _ = store.add_annotator("alice")
    for pair_id in pair_ids:
        judge(store, Judgment(pair_id, alice.id, "a", shown_left="a"))
    at = open_app(token).switch_page("labeler/pages/data.py").run()
    assert int(at.metric[0].value) + int(at.metric[1].value) == 4  # prompts, train + held-out

    at.file_uploader[0].set_value(("new-prompts.jsonl", b'{"prompt": "Name three rivers."}\nnot json\n',
                                   "application/json"))
    button(at, "Import").click().run()
    [message] = errors(at)
    assert message.startswith("Nothing imported. new-prompts.jsonl:2:")  # the upload's name, not a temp path
    assert len(store.list_prompts()) == 4  # a broken file imports nothing

    at.file_uploader[0].set_value(("new-prompts.jsonl", b'{"prompt": "Name three rivers."}\n', "application/json"))
    button(at, "Import").click().run()
    assert "new-prompts.jsonl: imported 1 prompts, skipped 0 duplicates." in texts(at)
    assert len(store.list_prompts()) == 5

    at.text_input[1].input("from-the-ui")
    button(at, "Export").click().run(timeout=120)
    assert not errors(at), errors(at)
    [export] = store.list_exports()
    assert export["name"] == "from-the-ui" and Path(export["path"]).is_dir()
    assert Path(export["path"]).resolve().is_relative_to(tmp_path.resolve())
    at.run()
    assert not errors(at) and "from-the-ui" in at.dataframe[1].value["name"].tolist()  # listed with the others


def test_dashboard_counts(store):
    _, pair_ids = make_round(store, simple_items(3, "dash"), overlap=2)
    _, token = store.add_annotator("root", "admin")
    alice, _ = store.add_annotator("alice")
    judge(store, Judgment(pair_ids[0], alice.id, "tie", shown_left="a"))
    at = open_app(token).switch_page("labeler/pages/dashboard.py").run()
    assert not errors(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Prompts"] == "3" and metrics["Judgments"] == "1" and metrics["Active annotators today"] == "1"
    assert "Round 0 (base checkpoint): 1 of 6 judgments" in texts(at)


# --- pieces -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "[x](javascript:alert(1)) ![i](https://tracker.example/p.png) [r][e] ![s][e]\n\n[e]: data:text/html,x",
        "<data:text/html,x> <file:///etc/passwd> and [a]( http://a.example ) and [b]\n(c)",
        "```cpp\nstd::vector<std::string> v; f[0](x);\n```\n`a[1](2)` plain https://ok.example stays a link",
    ],
)
def test_inert_markdown_breaks_link_syntax_and_nothing_else(text):
    shown = inert_markdown(text)
    assert shown.replace("\u2060", "") == text  # the same characters on screen, code included
    for construct in ("](", "]:", "<data:", "<file:", "<std:"):
        assert construct not in shown


def test_demo_admin_command_prints_a_fresh_admin_token(db_path, capsys, store):
    tokens = []
    for _ in range(2):
        assert prefloop(["--db", str(db_path), "demo-admin"]) == 0
        tokens.append(capsys.readouterr().out.split()[-1])
    assert store.authenticate(tokens[0]) is None  # a new token replaces the old one
    demo = store.authenticate(tokens[1])
    assert demo.name == "demo" and demo.is_admin
    store.set_annotator_disabled("demo", True)
    assert prefloop(["--db", str(db_path), "demo-admin"]) == 0  # re-enabled, so `make run` always signs in
    assert store.authenticate(capsys.readouterr().out.split()[-1]).name == "demo"


def test_review_queries_count_progress_and_disagreements(store):
    round_id, (p0, p1, p2) = make_round(store, simple_items(3, "queries"), overlap=2)
    admin, _ = store.add_annotator("root", "admin")
    bob, carol, dave = (store.add_annotator(name)[0] for name in ("bob", "carol", "dave"))
    for pair_id, annotator, choice in ((p0, bob, "a"), (p0, carol, "b"), (p1, bob, "a"), (p1, carol, "a"),
                                       (p1, dave, "tie"), (p2, bob, "both_bad")):
        made = Judgment(pair_id, annotator.id, choice, shown_left="a", seconds_spent=10.0)
        if annotator is dave:  # beyond p1's target: the store refuses it now, but an older database can hold it
            store.add_judgments_bulk([made])
        else:
            judge(store, made)
    store.skip_pair(p2, carol.id)
    midnight = store.judgments()[0]["updated_at"].replace(hour=0, minute=0, second=0, microsecond=0)

    progress = store.label_progress(bob.id, round_id, midnight)
    # p1's third judgment counts toward its target only once
    assert progress == {"judged_since": 3, "needed": 6, "done": 5, "left": 1}
    assert store.round_progress() == [{"round": round_id, "pairs": 3, "needed": 6, "done": 5}]

    def disagreements(**only) -> dict:  # what the Review page lists by default
        rows, _ = store.browse_pairs(BrowseFilter(agreement="disagree", judged=True, **only))
        return {d["pair_id"]: (d["a"], d["b"], d["tie"], d["final_choice"]) for d in rows}

    assert disagreements(adjudicated=False) == {p1: (2, 0, 1, None), p0: (1, 1, 0, None)}
    store.adjudicate(p0, admin.id, "b", "b is right")
    assert list(disagreements(adjudicated=False)) == [p1]
    assert {pair: row[3] for pair, row in disagreements().items()} == {p1: None, p0: "b"}
    review = store.pair_review(p0)
    assert [(j["annotator"], j["choice"]) for j in review["judgments"]] == [("bob", "a"), ("carol", "b")]
    assert review["adjudication"]["admin"] == "root" and review["adjudication"]["note"] == "b is right"

    stats = {s["name"]: s for s in store.annotator_stats(since=midnight)}
    assert (stats["bob"]["judgments"], stats["bob"]["judged_today"], stats["bob"]["median_seconds"]) == (3, 3, 10.0)
    assert stats["bob"]["per_hour"] == 360 and stats["carol"]["skips"] == 1 and stats["root"]["judgments"] == 0
    assert store.choice_counts(round_id) == {"a": 3, "b": 1, "tie": 1, "both_bad": 1}


def test_an_ended_session_while_nothing_is_leased_signs_out_on_the_next_page_view(store):
    make_round(store, simple_items(1, "ended"))
    _, token = store.add_annotator("alice")
    at = open_app(token)
    button(at, "A better").click().run()
    store.reset_token("alice")
    button(at, "Check again").click().run()  # the page leases anew: the store refuses the ended session
    assert not at.exception and "annotator" not in at.session_state
    assert "Sign in again" in "\n".join(w.value for w in at.warning)


def test_a_submit_run_is_one_store_transaction(store, monkeypatch):
    """Submit and the next pair's lease share one transaction, and the page's periodic reads (session recheck,
    progress counts) stay off runs that carry an action, even when both are due."""
    from store.db import Gate

    _, pair_ids = make_round(store, simple_items(3, "one"))
    _, token = store.add_annotator("alice")
    at = open_app(token)
    purposes = []
    held = Gate.held

    def counted(gate, purpose):
        purposes.append(purpose)
        return held(gate, purpose)

    monkeypatch.setattr(Gate, "held", counted)
    monkeypatch.setattr(session, "RECHECK_SECONDS", 1.0)
    monkeypatch.setattr(labeling, "PROGRESS_REFRESH_SECONDS", 1.0)
    time.sleep(1.1)  # both due
    button(at, "A better").click().run()
    assert screen_pair(at) == pair_ids[1] and purposes == ["submit judgment and lease next"]
    purposes.clear()
    time.sleep(1.1)
    at.run()  # a page view without an action: now the due reads happen
    assert sorted(purposes) == ["check session", "label progress"]
