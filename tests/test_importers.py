"""Importers on real DuckDB files: every format, duplicates, broken files, the CLI, and fuzzing of malformed input.

.venv/bin/python -m pytest tests/test_importers.py -q
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import store.prompts as prompts_module
from store import Store
from store.importers import ImportFileError, import_file, read_file

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("prompts", "responses", "pairs", "judgments", "annotators")


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def table_counts(s: Store) -> dict[str, int]:
    with s.transaction("test: count rows") as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def imported_pairs(s: Store, source: str) -> list[dict]:
    """The pairs judged by import:<source>, each with its judgments, in the order they were stored."""
    annotator = s.get_annotator(f"import:{source}")
    assert annotator is not None and annotator.role == "import"
    pairs = []
    for judgment in s.judgments(annotator_id=annotator.id):
        pair = s.get_pair(judgment["pair_id"])
        pair["judgments"] = s.judgments(pair_id=pair["id"])
        pairs.append(pair)
    return pairs


def assert_pairs_stored(s: Store, source: str, expected: list[tuple[list[dict], str, str]]) -> None:
    """Each (messages, chosen, rejected) is a complete imported pair whose only judgment prefers the chosen text."""
    pairs = imported_pairs(s, source)
    got = [(p["messages"], p["response_a"], p["response_b"]) for p in pairs]
    assert got == expected
    for pair in pairs:
        assert (pair["strategy"], pair["status"], pair["round_id"]) == ("import", "complete", None)
        assert [(j["choice"], j["annotator_id"]) for j in pair["judgments"]] == [
            ("a", s.get_annotator(f"import:{source}").id)
        ]


# --- valid files ------------------------------------------------------------------------------------------------

PROMPT_FORMATS = {
    "prompt-string": ({"prompt": "What is DuckDB?"}, [user("What is DuckDB?")]),
    "text": ({"text": "Name three rivers.", "id": 7}, [user("Name three rivers.")]),
    "messages": (
        {"messages": [{"role": "system", "content": "Be brief."}, user("Why is the sea salty?")]},
        [{"role": "system", "content": "Be brief."}, user("Why is the sea salty?")],
    ),
    "prompt-messages": (
        {"prompt": [user("Hi"), assistant("Hello!"), user("Tell me a joke.")]},
        [user("Hi"), assistant("Hello!"), user("Tell me a joke.")],
    ),
    "line-separator": (
        {"prompt": "Line one\nline two \u2028 with a line separator."},
        [user("Line one\nline two \u2028 with a line separator.")],
    ),
}
PROMPT_RECORDS = list(PROMPT_FORMATS.values())


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".ndjson"])
def test_prompts_from_json_lines(store, tmp_path, suffix):
    path = write_jsonl(tmp_path / f"prompts{suffix}", [r for r, _ in PROMPT_RECORDS])
    summary = import_file(store, path)
    assert (summary.kind, summary.inserted, summary.duplicates) == ("prompts", len(PROMPT_RECORDS), 0)
    stored = store.list_prompts()
    assert [p["messages"] for p in stored] == [m for _, m in PROMPT_RECORDS]
    assert {p["source"] for p in stored} == {path.name}


def test_prompts_from_json_array(store, tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([r for r, _ in PROMPT_RECORDS], indent=2))
    assert import_file(store, path).inserted == len(PROMPT_RECORDS)
    assert [p["messages"] for p in store.list_prompts()] == [m for _, m in PROMPT_RECORDS]


def test_prompts_from_csv(store, tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('id,prompt\n1,"Hello, world"\n2,"A prompt\nover two lines"\n3,Plain\n', newline="")
    summary = import_file(store, path, source="sheet")
    assert (summary.kind, summary.inserted) == ("prompts", 3)
    stored = store.list_prompts()
    assert [p["messages"] for p in stored] == [
        [user("Hello, world")],
        [user("A prompt\nover two lines")],
        [user("Plain")],
    ]
    assert {p["source"] for p in stored} == {"sheet"}


def test_prompts_from_parquet(store, tmp_path):
    path = tmp_path / "prompts.parquet"
    rows = [{"messages": m, "category": "x"} for _, m in PROMPT_RECORDS]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert import_file(store, path).inserted == len(rows)
    assert [p["messages"] for p in store.list_prompts()] == [m for _, m in PROMPT_RECORDS]


def test_prompts_from_plain_text(store, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("\ufeffFirst prompt\r\n\n   \n  Second prompt, indented  \nThird: ünïcödé\n".encode())
    summary = import_file(store, path)
    assert (summary.kind, summary.inserted) == ("prompts", 3)
    contents = [p["messages"] for p in store.list_prompts()]
    assert contents == [[user("First prompt")], [user("Second prompt, indented")], [user("Third: ünïcödé")]]


PAIR_FORMATS = {
    "trl-standard": (
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        ([user("The sky is")], " blue.", " green."),
    ),
    "trl-conversational": (
        {
            "prompt": [{"role": "system", "content": "Answer briefly."}, user("What colour is the sky?")],
            "chosen": [assistant("Blue.")],
            "rejected": [assistant("Green.")],
        },
        ([{"role": "system", "content": "Answer briefly."}, user("What colour is the sky?")], "Blue.", "Green."),
    ),
    "trl-implicit-prompt": (
        {
            "chosen": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("4")],
            "rejected": [user("Hi"), assistant("Hello!"), user("2+2?"), assistant("5")],
        },
        ([user("Hi"), assistant("Hello!"), user("2+2?")], "4", "5"),
    ),
    "openai-preference": (
        {
            "input": {"messages": [user("How cold is it in Oslo?")], "tools": [], "parallel_tool_calls": True},
            "preferred_output": [assistant("I can't see live weather; Oslo averages about -4 °C in January.")],
            "non_preferred_output": [assistant("Cold.")],
        },
        ([user("How cold is it in Oslo?")], "I can't see live weather; Oslo averages about -4 °C in January.", "Cold."),
    ),
    "anthropic-hh": (
        {
            "chosen": "\n\nHuman: Can you help me bake bread?\n\nAssistant: Sure. Do you have yeast?"
            "\n\nHuman: Yes, dried yeast.\n\nAssistant: Great: mix 500 g flour, 7 g yeast, 10 g salt and 320 ml water.",
            "rejected": "\n\nHuman: Can you help me bake bread?\n\nAssistant: Sure. Do you have yeast?"
            "\n\nHuman: Yes, dried yeast.\n\nAssistant: Buy bread instead.",
        },
        (
            [user("Can you help me bake bread?"), assistant("Sure. Do you have yeast?"), user("Yes, dried yeast.")],
            "Great: mix 500 g flour, 7 g yeast, 10 g salt and 320 ml water.",
            "Buy bread instead.",
        ),
    ),
}


@pytest.mark.parametrize("name", PAIR_FORMATS)
def test_pairs_in_every_format(store, tmp_path, name):
    record, expected = PAIR_FORMATS[name]
    path = write_jsonl(tmp_path / f"{name}.jsonl", [record])
    summary = import_file(store, path)
    assert (summary.kind, summary.inserted, summary.duplicates) == ("pairs", 1, 0)
    assert_pairs_stored(store, path.name, [expected])
    assert [p["messages"] for p in store.list_prompts()] == [expected[0]]
    assert store.status()["imported_pairs"] == 1


def test_pairs_of_every_format_in_one_file(store, tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [record for record, _ in PAIR_FORMATS.values()])
    assert import_file(store, path, kind="pairs", source="mixed").inserted == len(PAIR_FORMATS)
    assert_pairs_stored(store, "mixed", [expected for _, expected in PAIR_FORMATS.values()])
    assert table_counts(store) == {"prompts": 5, "responses": 10, "pairs": 5, "judgments": 5, "annotators": 1}


def test_pairs_from_csv_and_parquet(store, tmp_path):
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text('prompt,chosen,rejected\n"Say hi","Hi!","No."\n', newline="")
    parquet_path = tmp_path / "pairs.parquet"
    record, expected = PAIR_FORMATS["trl-conversational"]
    pq.write_table(pa.Table.from_pylist([record]), parquet_path)
    assert import_file(store, csv_path).kind == "pairs"
    assert import_file(store, parquet_path).kind == "pairs"
    assert_pairs_stored(store, "pairs.csv", [([user("Say hi")], "Hi!", "No.")])
    assert_pairs_stored(store, "pairs.parquet", [expected])


def test_duplicates_are_skipped_and_counted(store, tmp_path):
    pairs = [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad"},
        {"prompt": "Q1", "chosen": "good", "rejected": "bad"},  # repeated within the file
        {"prompt": "Q1", "chosen": "bad", "rejected": "good"},  # the same two texts: one pair, whichever is chosen
        {"prompt": "Q1", "chosen": "better", "rejected": "bad"},  # a new pair on the same prompt
        {"prompt": "Q2", "chosen": "yes", "rejected": "no"},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    first = import_file(store, path)
    assert (first.inserted, first.duplicates) == (3, 2)
    after_first = table_counts(store)
    assert after_first["prompts"] == 2 and after_first["pairs"] == 3 and after_first["judgments"] == 3
    again = import_file(store, path)
    assert (again.inserted, again.duplicates) == (0, 5)
    assert table_counts(store) == after_first

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "Q1"}, {"prompt": "Q3"}, {"prompt": "Q3"}])
    summary = import_file(store, prompts)
    assert (summary.inserted, summary.duplicates) == (1, 2)
    assert table_counts(store)["prompts"] == 3


def test_explicit_prompts_kind_takes_the_prompts_of_a_pairs_file(store, tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl", [PAIR_FORMATS["trl-standard"][0], PAIR_FORMATS["trl-conversational"][0]]
    )
    summary = import_file(store, path, kind="prompts")
    assert (summary.kind, summary.inserted) == ("prompts", 2)
    assert table_counts(store)["pairs"] == 0


def test_a_failing_transaction_stores_nothing(store, tmp_path, monkeypatch):
    """Validation catches bad files before the database; this checks the transaction itself is all or nothing."""
    import_file(store, write_jsonl(tmp_path / "before.jsonl", [{"prompt": "kept"}]))
    before = table_counts(store)
    original = prompts_module.insert_rows

    def insert_then_fail(con, table, rows, returning="id"):
        ids = original(con, table, rows, returning)
        if table == "judgments":  # the last insert: prompts, responses and pairs are written by now
            raise RuntimeError("disk full")
        return ids

    monkeypatch.setattr(prompts_module, "insert_rows", insert_then_fail)
    path = write_jsonl(tmp_path / "pairs.jsonl", [record for record, _ in PAIR_FORMATS.values()])
    with pytest.raises(RuntimeError, match="disk full"):
        import_file(store, path)
    assert table_counts(store) == before
    assert store.get_annotator(f"import:{path.name}") is None


def run_cli(db: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "training.cli", "--db", str(db), "import", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_import(tmp_path):
    db = tmp_path / "cli.duckdb"
    good = write_jsonl(tmp_path / "hh.jsonl", [PAIR_FORMATS["anthropic-hh"][0]])
    done = run_cli(db, str(good), "--source", "hh-rlhf")
    assert done.returncode == 0, done.stderr
    assert "imported 1 pairs, skipped 0 duplicates" in done.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "y", "rejected": "z"}\n{"prompt": "x", "chosen": 3, "rejected": "y"}\n')
    failed = run_cli(db, str(bad), "--kind", "pairs")
    assert failed.returncode == 1
    assert f"{bad}:2: field 'chosen': expected a string or message list, got a number" in failed.stderr
    assert "Traceback" not in failed.stderr
    counts = table_counts(Store(db))
    assert (counts["pairs"], counts["prompts"]) == (1, 1)
    assert Store(db).get_annotator("import:hh-rlhf") is not None


def test_skip_invalid_imports_the_valid_records_and_lists_the_others(tmp_path):
    db = tmp_path / "skip.duckdb"
    same = {"chosen": "\n\nHuman: q\n\nAssistant: same", "rejected": "\n\nHuman: q\n\nAssistant: same"}
    other = {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go away"}
    mixed = tmp_path / "hh-mixed.jsonl"
    mixed.write_bytes(_jsonl(HH_OK, same, other))
    refused = run_cli(db, str(mixed))
    assert refused.returncode == 1 and f"{mixed}:2: field 'rejected'" in refused.stderr
    assert table_counts(Store(db))["pairs"] == 0  # atomic: nothing from a refused file
    done = run_cli(db, str(mixed), "--skip-invalid")
    assert done.returncode == 0, done.stderr
    assert "imported 2 pairs" in done.stdout
    assert f"left out 1 invalid records:\n  {mixed}:2: field 'rejected': the same response as 'chosen'" in done.stdout
    assert table_counts(Store(db))["pairs"] == 2
    only_bad = tmp_path / "hh-bad.jsonl"
    only_bad.write_bytes(_jsonl(same))
    nothing = run_cli(db, str(only_bad), "--skip-invalid")
    assert nothing.returncode == 1 and "no valid record (1 invalid; the first:" in nothing.stderr


# --- broken files -------------------------------------------------------------------------------------------------

HH_OK = PAIR_FORMATS["anthropic-hh"][0]
OPENAI_OK = PAIR_FORMATS["openai-preference"][0]


def _jsonl(*records) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records).encode()


def _parquet_bytes(rows: list[dict]) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


# (file name, content, kind, the error after "<path>")
BROKEN = [
    ("p.jsonl", b"", "auto", ": no records (the file is empty)"),
    ("p.jsonl", b"\n  \n\n", "auto", ": no records"),
    ("p.jsonl", _jsonl({"prompt": "a"}, {"prompt": "b"}, '{"prompt": "c"'), "auto", ":3: invalid JSON"),
    ("p.jsonl", b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', "auto", ":2: not valid UTF-8 (byte 0xe9 at column 16)"),
    ("p.jsonl", _jsonl({"prompt": "a"}, [1, 2]), "auto", ":2: expected an object, got a list"),
    ("p.jsonl", _jsonl([1, 2]), "auto", ":1: expected an object with prompt or pair fields, got a list"),
    (
        "p.jsonl",
        _jsonl({"prompt": "a"}, {"question": "b"}),
        "auto",
        ":2: expected a 'prompt', 'messages' or 'text' field",
    ),
    ("p.jsonl", _jsonl({"prompt": "a"}, {"prompt": "  "}), "auto", ":2: field 'prompt': must not be empty"),
    (
        "p.jsonl",
        _jsonl({"prompt": 5}),
        "prompts",
        ":1: field 'prompt': expected a string or message list, got a number",
    ),
    (
        "p.jsonl",
        _jsonl({"messages": [user("a"), {"role": "bot", "content": "b"}]}),
        "auto",
        ":1: field 'messages[1].role': expected one of system, user, assistant, got 'bot'",
    ),
    (
        "p.jsonl",
        _jsonl({"messages": [user("a"), assistant("b")]}),
        "auto",
        ":1: field 'messages': the prompt must end with a user turn, not assistant",
    ),
    (
        "p.jsonl",
        _jsonl({"messages": [user("a"), {"role": "system", "content": "s"}, user("b")]}),
        "auto",
        ":1: field 'messages[1].role': a system message may only come first",
    ),
    (
        "p.jsonl",
        _jsonl({"messages": [{"role": "user", "content": 3}]}),
        "auto",
        ":1: field 'messages[0].content': expected a string, got a number",
    ),
    (
        "p.jsonl",
        _jsonl({"messages": [{"role": "user"}]}),
        "auto",
        ":1: field 'messages[0].content': expected a string, got nothing",
    ),
    (
        "p.jsonl",
        _jsonl({"messages": []}),
        "auto",
        ":1: field 'messages': expected a string or message list, got an empty list",
    ),
    ("p.jsonl", b'{"prompt": "bad \\ud800 surrogate"}\n', "auto", ":1: field 'prompt': contains an unpaired surrogate"),
    ("p.jsonl", b"[" * 100_000 + b"\n", "auto", ":1: invalid JSON"),
    ("p.jsonl", b'{"prompt": ' + b"1" * 5000 + b"}\n", "auto", ":1: invalid JSON"),
    ("p.json", b'[{"prompt": "a"}, {"prompt": ""}]', "auto", ": record 2: field 'prompt': must not be empty"),
    ("p.json", b'[{"prompt": "a"}, ', "auto", ": invalid JSON"),
    # pairs
    (
        "x.jsonl",
        _jsonl(HH_OK, {"prompt": "x", "chosen": 3, "rejected": "y"}),
        "auto",
        ":2: field 'chosen': expected a string or message list, got a number",
    ),
    (
        "x.jsonl",
        _jsonl({"prompt": "x", "chosen": "same", "rejected": "same"}),
        "auto",
        ":1: field 'rejected': the same response as 'chosen'",
    ),
    (
        "x.jsonl",
        _jsonl({"prompt": [user("q")], "chosen": [assistant("a"), assistant("b")], "rejected": [assistant("c")]}),
        "auto",
        ":1: field 'chosen': expected exactly one assistant message, got 2 (assistant, assistant)",
    ),
    (
        "x.jsonl",
        _jsonl({"prompt": [user("q")], "chosen": [user("a")], "rejected": [assistant("c")]}),
        "auto",
        ":1: field 'chosen': expected exactly one assistant message, got 1 (user)",
    ),
    (
        "x.jsonl",
        _jsonl({"chosen": [user("q"), assistant("a")], "rejected": [user("other q"), assistant("b")]}),
        "auto",
        ":1: field 'rejected[0]': differs from 'chosen' before the final assistant turn",
    ),
    (
        "x.jsonl",
        _jsonl({"chosen": [user("q"), assistant("a"), user("more")], "rejected": [user("q"), assistant("b")]}),
        "auto",
        ":1: field 'chosen': the conversation must end with an assistant turn",
    ),
    (
        "x.jsonl",
        _jsonl({"chosen": [assistant("a")], "rejected": [assistant("b")]}),
        "auto",
        ":1: field 'chosen': the conversation has no prompt",
    ),
    (
        "x.jsonl",
        _jsonl({"chosen": "Paris.", "rejected": "Lyon."}),
        "auto",
        ":1: field 'chosen': expected a 'prompt' field or an Anthropic HH transcript",
    ),
    (
        "x.jsonl",
        _jsonl(HH_OK, {"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant:  "}),
        "auto",
        ":2: field 'rejected (turn 2)': the Assistant turn is empty",
    ),
    (
        "x.jsonl",
        _jsonl({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: Q\n\nAssistant: b"}),
        "auto",
        ":1: field 'rejected (turn 1)': differs from 'chosen'",
    ),
    (
        "x.jsonl",
        _jsonl({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": [assistant("b")]}),
        "auto",
        ":1: field 'rejected': expected a transcript string like 'chosen', got a list",
    ),
    (
        "x.jsonl",
        _jsonl({"chosen": None, "rejected": "r"}),
        "auto",
        ":1: field 'chosen': expected a string or message list, got nothing",
    ),
    (
        "x.jsonl",
        _jsonl(OPENAI_OK, {k: v for k, v in OPENAI_OK.items() if k != "input"}),
        "auto",
        ":2: field 'input': expected an object with 'messages', got nothing",
    ),
    (
        "x.jsonl",
        _jsonl(OPENAI_OK | {"input": {"messages": "How cold is it?"}}),
        "auto",
        ":1: field 'input.messages': expected a message list, got a string",
    ),
    (
        "x.jsonl",
        _jsonl(OPENAI_OK | {"input": {"messages": [user("q"), assistant("a")]}}),
        "auto",
        ":1: field 'input.messages': the prompt must end with a user turn, not assistant",
    ),
    (
        "x.jsonl",
        _jsonl(OPENAI_OK | {"non_preferred_output": OPENAI_OK["preferred_output"]}),
        "auto",
        ":1: field 'non_preferred_output': the same response as 'preferred_output'",
    ),
    (
        "x.jsonl",
        _jsonl(OPENAI_OK | {"preferred_output": [{"role": "assistant", "content": None, "tool_calls": []}]}),
        "auto",
        ":1: field 'preferred_output[0].content': expected a string, got nothing",
    ),
    ("x.jsonl", _jsonl(HH_OK, {"prompt": "only a prompt"}), "pairs", ":2: expected 'chosen' and 'rejected'"),
    # CSV: line numbers count the physical lines of multi-line quoted fields
    ("p.csv", b'prompt\n"two\nlines"\nok\n""\n', "auto", ":5: field 'prompt': must not be empty"),
    ("p.csv", b"question\nWhat?\n", "auto", ":2: expected a 'prompt', 'messages' or 'text' field; found 'question'"),
    ("p.csv", b"prompt\nfine\na,b\n", "auto", ":3: the row has more values than the header has columns"),
    (
        "p.csv",
        b"prompt,chosen,rejected\nq,a\n",
        "auto",
        ":2: field 'rejected': expected a string or message list, got nothing",
    ),
    ("p.csv", b"prompt\nok\n\xff\n", "auto", ":3: not valid UTF-8"),
    ("p.csv", b"prompt\n", "auto", ": no records"),
    # Parquet and plain text
    ("p.parquet", b"PAR1 this is not parquet PAR1", "auto", ": not a readable Parquet file"),
    (
        "p.parquet",
        _parquet_bytes([{"prompt": "a"}, {"prompt": None}]),
        "auto",
        ": row 2: field 'prompt': expected a string or message list, got nothing",
    ),
    (
        "p.parquet",
        _parquet_bytes([{"prompt": "a", "chosen": "b", "rejected": "b"}]),
        "auto",
        ": row 1: field 'rejected': the same response",
    ),
    ("p.txt", b"fine\n\xc3(\n", "auto", ":2: not valid UTF-8"),
    ("p.txt", b"a prompt\n", "pairs", ": a plain text file holds prompts, one per line"),
    ("p.xml", b"<prompt/>", "auto", ": unknown file type '.xml'"),
]


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory):
    """A store holding prompts and pairs already, so "nothing changed" is checked against real rows."""
    directory = tmp_path_factory.mktemp("seeded")
    s = Store(directory / "seeded.duckdb")
    import_file(s, write_jsonl(directory / "pairs.jsonl", [record for record, _ in PAIR_FORMATS.values()]))
    import_file(s, write_jsonl(directory / "prompts.jsonl", [record for record, _ in PROMPT_RECORDS]))
    return s


@pytest.mark.parametrize("name,content,kind,error", BROKEN, ids=[f"{b[0]}:{b[3][:40]}" for b in BROKEN])
def test_broken_file_names_file_line_and_field_and_imports_nothing(seeded_store, tmp_path, name, content, kind, error):
    path = tmp_path / name
    path.write_bytes(content)
    before = table_counts(seeded_store)
    with pytest.raises(ImportFileError) as raised:
        import_file(seeded_store, path, kind=kind)
    assert str(raised.value).startswith(f"{path}{error}"), str(raised.value)
    assert table_counts(seeded_store) == before


def test_missing_file_and_directory(seeded_store, tmp_path):
    with pytest.raises(ImportFileError, match="no such file"):
        import_file(seeded_store, tmp_path / "absent.jsonl")
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(ImportFileError, match="not a file"):
        import_file(seeded_store, tmp_path / "dir.jsonl")



# --- judgement calls: what counts as empty, repeated keys and columns, and how files are named ---------------------

# Texts with only whitespace or invisible format characters (Unicode categories Z* and Cf) say nothing.
BLANK_TEXTS = ["\u200b", "\u00a0\u2003", "\ufeff", " \u2060\u200d ", "\u2028", "\u180e"]


@pytest.mark.parametrize("blank", BLANK_TEXTS, ids=[repr(b) for b in BLANK_TEXTS])
def test_texts_of_only_invisible_characters_are_empty(seeded_store, tmp_path, blank):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, {"prompt": blank}])
    with pytest.raises(ImportFileError, match=rf"^{prompts}:2: field 'prompt': must not be empty"):
        import_file(seeded_store, prompts)
    pairs = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "q", "chosen": "a", "rejected": blank}])
    with pytest.raises(ImportFileError, match=rf"^{pairs}:1: field 'rejected': must not be empty"):
        import_file(seeded_store, pairs)
    hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: q\n\nAssistant: a",
                                              "rejected": f"\n\nHuman: q\n\nAssistant: {blank}"}])
    with pytest.raises(ImportFileError, match=rf"^{hh}:1: field 'rejected \(turn 2\)': the Assistant turn is empty"):
        import_file(seeded_store, hh)
    text = tmp_path / "p.txt"
    text.write_text(f"first\n{blank}\nthird\n")  # a blank line of a text file is skipped, as an empty one is
    assert [item.messages for item in read_file(text)[1]] == [[user("first")], [user("third")]]


def test_a_text_with_invisible_characters_around_words_is_kept_as_written(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "\u200bhello\u00a0"}])
    assert read_file(path)[1][0].messages == [user("\u200bhello\u00a0")]


@pytest.mark.parametrize(
    "name, content, error",
    [
        ("x.jsonl", b'{"prompt": "a"}\n{"prompt": "q", "chosen": "a", "rejected": "b", "chosen": "c"}\n',
         ":2: the key 'chosen' appears more than once in one object"),
        ("p.jsonl", b'{"messages": [{"role": "user", "content": "a", "role": "system"}]}\n',
         ":1: the key 'role' appears more than once in one object"),
        ("p.json", b'[{"prompt": "a"},\n {"prompt": "b", "text": "c", "prompt": "d"}]',
         ": record 2: the key 'prompt' appears more than once in one object"),
    ],
)
def test_a_repeated_json_key_is_an_error_naming_line_and_key(seeded_store, tmp_path, name, content, error):
    path = tmp_path / name
    path.write_bytes(content)
    before = table_counts(seeded_store)
    with pytest.raises(ImportFileError) as raised:
        import_file(seeded_store, path)
    assert str(raised.value).startswith(f"{path}{error}"), str(raised.value)
    assert table_counts(seeded_store) == before


def test_a_csv_header_naming_a_column_twice_is_an_error(seeded_store, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("prompt,chosen,rejected,chosen\nq,a,b,c\n")
    with pytest.raises(ImportFileError) as raised:
        import_file(seeded_store, path)
    assert str(raised.value) == f"{path}:1: the header names the column 'chosen' twice (columns 2 and 4)"


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("p.jsonl", b"", "the file is empty"),
        ("p.jsonl", b"\n  \n\t\n", "the file holds only blank lines (3)"),
        ("p.txt", "\n\u200b\n \n".encode(), "the file holds only blank lines (3)"),
        ("p.csv", b"\n\n", "the file holds only blank lines (2)"),
        ("p.jsonl", b"   ", "the file holds only blank lines (1)"),
        ("p.csv", b"prompt\n", "the file holds a header row and no data rows"),
        ("p.json", b"[]", "the JSON array is empty"),
        ("p.parquet", _parquet_bytes([{"prompt": "a"}])[:0] or None, "the table has no rows"),
    ],
)
def test_a_file_without_records_says_what_it_holds(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is None:  # a Parquet file with a schema and no rows
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    else:
        path.write_bytes(content)
    with pytest.raises(ImportFileError) as raised:
        read_file(path)
    assert str(raised.value) == f"{path}: no records ({reason})"


def test_symlink_loops_and_broken_symlinks_are_named_as_such(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(tmp_path / "other.jsonl")
    (tmp_path / "other.jsonl").symlink_to(loop)
    with pytest.raises(ImportFileError) as raised:
        read_file(loop)
    assert str(raised.value) == f"{loop}: a symlink loop (too many levels of symbolic links)"
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(ImportFileError) as raised:
        read_file(dangling)
    assert str(raised.value) == f"{dangling}: a broken symlink (its target {tmp_path / 'gone.jsonl'} does not exist)"


# Names a terminal would act on: a newline that forges a second line, ANSI colour and title escapes, a carriage
# return that overwrites the line, a right-to-left override that reverses what follows, a bell.
HOSTILE_NAMES = ["two\nlines", "red\x1b[31mname", "title\x1b]0;pwned\x07", "over\rwrite", "rtl\u202etxt", "nul\x7f"]


@pytest.mark.parametrize("stem", HOSTILE_NAMES, ids=[repr(n) for n in HOSTILE_NAMES])
def test_file_names_are_printed_escaped(tmp_path, stem):
    bad = tmp_path / f"{stem}.jsonl"
    bad.write_text('{"prompt": "a"}\n{"prompt": 3}\n')
    good = tmp_path / f"{stem}-ok.jsonl"
    good.write_text('{"prompt": "a"}\n')
    db = tmp_path / "names.duckdb"
    failed, done = run_cli(db, str(bad)), run_cli(db, str(good))
    assert failed.returncode == 1 and done.returncode == 0, done.stderr
    for output in (failed.stderr, done.stdout):
        assert not any(ord(c) < 32 and c != "\n" or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in output), output
        assert output.count("\n") == 1, output  # one line each: the name forged no second line
    escaped = stem.encode("unicode_escape").decode()
    assert f"{tmp_path}/{escaped}.jsonl:2: field 'prompt'" in failed.stderr
    assert f"{tmp_path}/{escaped}-ok.jsonl: imported 1 prompts" in done.stdout


def test_file_names_with_bytes_that_are_not_utf8_are_printed_escaped(tmp_path):
    folder = os.fsencode(tmp_path)
    bad = os.path.join(folder, b"caf\xe9.jsonl")
    with open(bad, "wb") as f:
        f.write(b'{"prompt": 3}\n')
    failed = subprocess.run([sys.executable, "-m", "training.cli", "--db", str(tmp_path / "b.duckdb"), "import", bad],
                            cwd=ROOT, capture_output=True, timeout=120)
    assert failed.returncode == 1
    assert failed.stderr.decode("utf-8").strip().endswith(
        f": {tmp_path}/caf\\xe9.jsonl:1: field 'prompt': expected a string or message list, got a number")


# --- fuzzing --------------------------------------------------------------------------------------------------------


class CountingStore(Store):
    """A real store that counts the transactions it opens: a failed import must open none, so it cannot write."""

    transactions = 0

    def transaction(self, purpose):
        self.transactions += 1
        return super().transaction(purpose)


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz")
    return CountingStore(directory / "fuzz.duckdb"), directory


def try_import(s: CountingStore, path: Path, kind: str) -> ImportFileError | None:
    """Import and return the ImportFileError, or None on success; any other exception fails the test."""
    opened = s.transactions
    try:
        import_file(s, path, kind=kind)
    except ImportFileError as exc:
        assert s.transactions == opened, "a failed import touched the database"
        assert str(exc).startswith(str(path)), str(exc)
        event("rejected")
        return exc
    event("imported")
    return None


KINDS = st.sampled_from(["auto", "prompts", "pairs"])
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(
    content=st.binary(max_size=600) | st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet", ".txt"]),
    kind=KINDS,
)
def test_fuzz_random_bytes(fuzz, content, suffix, kind):
    s, directory = fuzz
    path = directory / f"bytes{suffix}"
    path.write_bytes(content)
    try_import(s, path, kind)


JSON_KEYS = st.sampled_from(
    ["prompt", "messages", "text", "chosen", "rejected", "input", "preferred_output", "non_preferred_output"]
    + ["role", "content"]
)
JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["user", "assistant", "system", "\n\nHuman: q\n\nAssistant: a", "\n\nHuman: q"])
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(JSON_KEYS | st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(records=st.lists(JSON_VALUES, min_size=1, max_size=3), kind=KINDS)
def test_fuzz_random_json_records(fuzz, records, kind):
    s, directory = fuzz
    path = directory / "values.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    try_import(s, path, kind)


FORMATS = {**{name: "pairs" for name in PAIR_FORMATS}, **{name: "prompts" for name in PROMPT_FORMATS}}


def record_for(fmt: str, n: int) -> dict:
    """A valid record of this format whose texts are unique to n."""
    record = (PAIR_FORMATS | PROMPT_FORMATS)[fmt][0]
    return json.loads(json.dumps(record).replace("?", f" #{n}?").replace(".", f" #{n}."))


def nodes(value, path=()):
    """Every (path, value) in a JSON value, the root included."""
    yield path, value
    if isinstance(value, dict):
        for key, child in value.items():
            yield from nodes(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from nodes(child, (*path, i))


def set_at(record, path, value):
    target = record
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value


WRONG_TYPES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
EXTRA_KEYS = {"id", "tools", "parallel_tool_calls"}  # keys the importer ignores: mutating them keeps a record valid


@st.composite
def broken_record(draw, fmt: str, n: int):
    """A record of this format broken in a way that must be rejected, as the JSONL line to write."""
    record = record_for(fmt, n)
    paths = [p for p, _ in nodes(record) if p and not EXTRA_KEYS & set(map(str, p))]
    how = draw(st.sampled_from(["delete", "wrong type", "empty string", "bad role", "same responses", "bytes"]))
    event(how)
    if how == "delete":
        keyed = [p for p in paths if isinstance(p[-1], str)]
        path = draw(st.sampled_from(keyed))
        target = record
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]
    elif how == "wrong type":
        set_at(record, draw(st.sampled_from(paths)), draw(WRONG_TYPES))
    elif how == "empty string":
        strings = [p for p, v in nodes(record) if isinstance(v, str) and p and p[-1] not in EXTRA_KEYS]
        set_at(record, draw(st.sampled_from(strings)), draw(st.sampled_from(["", " ", "\n\t"])))
    elif how == "bad role":
        roles = [p for p, _ in nodes(record) if p and p[-1] == "role"]
        if not roles:
            return broken_line(draw, record)
        role = draw(st.text(max_size=10).filter(lambda r: r not in ("system", "user", "assistant")))
        set_at(record, draw(st.sampled_from(roles)), role)
    elif how == "same responses":
        sides = [("chosen", "rejected"), ("preferred_output", "non_preferred_output")]
        for chosen, rejected in sides:
            if chosen in record:
                record[rejected] = copy.deepcopy(record[chosen])
                break
        else:
            return broken_line(draw, record)
    else:
        return broken_line(draw, record)
    return json.dumps(record).encode()


def broken_line(draw, record) -> bytes:
    """The record's JSON line, cut short or with bytes that are not UTF-8 spliced in."""
    line = json.dumps(record, ensure_ascii=False).encode()
    at = draw(st.integers(1, len(line) - 1))
    if draw(st.booleans()):
        return line[:at]
    return line[:at] + draw(st.sampled_from([b"\xff", b"\x80", b"\xc3(", b"\xed\xa0\x80", b"\xf0\x9f"])) + line[at:]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), fmt=st.sampled_from(list(FORMATS)), size=st.integers(1, 4))
def test_fuzz_mutated_valid_records(fuzz, data, fmt, size):
    """One broken record among valid ones: the import fails naming exactly that line, and stores nothing."""
    s, directory = fuzz
    broken_at = data.draw(st.integers(0, size - 1))
    lines = [
        data.draw(broken_record(fmt, n)) if n == broken_at else json.dumps(record_for(fmt, n)).encode()
        for n in range(size)
    ]
    path = directory / "mutated.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    error = try_import(s, path, FORMATS[fmt])
    assert error is not None, f"accepted a broken record: {lines[broken_at]!r}"
    assert str(error).startswith(f"{path}:{broken_at + 1}: "), str(error)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_corrupted_parquet(fuzz, data):
    s, directory = fuzz
    good = bytearray(
        _parquet_bytes([{"messages": m, "prompt": "p", "n": i} for i, (_, m) in enumerate(PROMPT_RECORDS)])
    )
    for _ in range(data.draw(st.integers(1, 4))):
        good[data.draw(st.integers(0, len(good) - 1))] = data.draw(st.integers(0, 255))
    path = directory / "corrupt.parquet"
    path.write_bytes(bytes(good))
    try_import(s, path, data.draw(KINDS))


def test_read_file_touches_no_database(tmp_path):
    """read_file is the validation half of import_file; it needs no store at all."""
    path = write_jsonl(tmp_path / "pairs.jsonl", [PAIR_FORMATS["trl-standard"][0]])
    kind, items = read_file(path)
    assert kind == "pairs" and [(i.messages, i.chosen, i.rejected, i.source) for i in items] == [
        ([user("The sky is")], " blue.", " green.", "pairs.jsonl")
    ]
    assert not list(tmp_path.glob("*.duckdb"))
