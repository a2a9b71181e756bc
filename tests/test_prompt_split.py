"""A prompt record's explicit `split` field, the rule that a stored prompt keeps its split, and the shipped seeds.

.venv/bin/python -m pytest tests/test_prompt_split.py -q
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import Store
from store.importers import ImportFileError, import_file, read_file
from store.prompts import prompt_hash, split_for
from tests.test_importers import run_cli

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "store" / "seeds" / "prompts.jsonl"
CATEGORIES = {
    "question", "code", "writing", "instruction", "reasoning", "math", "rewriting", "safety", "advice", "multi-turn",
    "system-prompt",
}  # fmt: skip


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def hash_split(text: str) -> str:
    return split_for(prompt_hash(user(text)), Store.heldout_fraction)


def texts_the_hash_puts_in(split: str, n: int, tag: str = "") -> list[str]:
    """n prompt texts whose content hash alone gives `split`, so an explicit split can be seen to override it."""
    candidates = (f"Question {tag}{i}: why?" for i in itertools.count())
    return list(itertools.islice((t for t in candidates if hash_split(t) == split), n))


def stored_splits(s: Store) -> dict[str, str]:
    return {p["messages"][0]["content"]: p["split"] for p in s.list_prompts()}


def prompt_count(s: Store) -> int:
    return len(s.list_prompts())


def write(path: Path, records: list[dict]) -> Path:
    """The records as a file of path's format; None leaves the field out (JSONL), empty (CSV) or null (Parquet)."""
    if path.suffix == ".jsonl":
        lines = [json.dumps({k: v for k, v in r.items() if v is not None}) for r in records]
        path.write_text("".join(line + "\n" for line in lines))
    elif path.suffix == ".csv":
        rows = "".join(f'"{r["prompt"]}",{r.get("split") or ""}\n' for r in records)
        path.write_text("prompt,split\n" + rows, newline="")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


# --- the explicit split ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_explicit_split_wins_over_the_hash(store, tmp_path, suffix):
    train_by_hash = texts_the_hash_puts_in("train", 3)
    heldout_by_hash = texts_the_hash_puts_in("heldout", 3)
    records = [
        {"prompt": train_by_hash[0], "split": "heldout"},
        {"prompt": train_by_hash[1], "split": "train"},
        {"prompt": train_by_hash[2], "split": None},  # no split: the hash decides, as before the field existed
        {"prompt": heldout_by_hash[0], "split": "train"},
        {"prompt": heldout_by_hash[1], "split": "heldout"},
        {"prompt": heldout_by_hash[2], "split": None},
    ]
    summary = import_file(store, write(tmp_path / f"prompts{suffix}", records))
    assert (summary.inserted, summary.duplicates, summary.split_conflicts) == (6, 0, 0)
    assert stored_splits(store) == {
        train_by_hash[0]: "heldout",
        train_by_hash[1]: "train",
        train_by_hash[2]: "train",
        heldout_by_hash[0]: "train",
        heldout_by_hash[1]: "heldout",
        heldout_by_hash[2]: "heldout",
    }
    assert summary.inserted_by_split == {"train": 3, "heldout": 3}


BAD_SPLITS = [
    ("test", "'test'"),
    ("validation", "'validation'"),
    ("Heldout", "'Heldout'"),
    (" train", "' train'"),
    ("   ", "'   '"),
    (1, "1"),
    (True, "True"),
    (["train"], "['train']"),
    ({"name": "train"}, "{'name': 'train'}"),
]


@pytest.mark.parametrize("value,shown", BAD_SPLITS, ids=[repr(v) for v, _ in BAD_SPLITS])
def test_a_bad_split_names_file_line_and_field_and_imports_nothing(store, tmp_path, value, shown):
    import_file(store, write(tmp_path / "before.jsonl", [{"prompt": "already here"}]))
    records = [{"prompt": "first", "split": "train"}, {"prompt": "second"}, {"prompt": "third", "split": value}]
    path = write(tmp_path / "bad.jsonl", records)
    with pytest.raises(ImportFileError) as raised:
        import_file(store, path)
    assert str(raised.value) == (
        f"{path}:3: field 'split': expected 'train' or 'heldout' (or no value: the content hash decides), got {shown}"
    )
    assert prompt_count(store) == 1


def test_a_bad_split_in_csv_names_its_line(store, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('prompt,split\n"ok, fine",train\n"two\nlines",\nthird,eval\n', newline="")
    with pytest.raises(ImportFileError, match=re.escape(f"{path}:5: field 'split': expected 'train' or 'heldout'")):
        import_file(store, path)
    assert prompt_count(store) == 0


def test_skip_invalid_leaves_out_a_record_with_a_bad_split(store, tmp_path):
    path = write(tmp_path / "mixed.jsonl", [{"prompt": "good", "split": "heldout"}, {"prompt": "bad", "split": "dev"}])
    summary = import_file(store, path, skip_invalid=True)
    assert summary.inserted == 1 and stored_splits(store) == {"good": "heldout"}
    assert len(summary.invalid) == 1
    assert summary.invalid[0].startswith(f"{path}:2: field 'split': expected 'train' or 'heldout'")


def test_pairs_ignore_the_split_field_only_prompt_records_use_it(store, tmp_path):
    """Pair records keep the hash's split; with kind=prompts the same records' split is used."""
    text = texts_the_hash_puts_in("train", 1, tag="pair")[0]
    path = write(tmp_path / "pairs.jsonl", [{"prompt": text, "chosen": "yes", "rejected": "no", "split": "heldout"}])
    assert import_file(store, path).kind == "pairs"
    assert stored_splits(store) == {text: "train"}


# --- a stored prompt keeps its split --------------------------------------------------------------------------------


def test_a_stored_prompt_keeps_its_split_and_conflicts_are_counted(store, tmp_path):
    train_by_hash = texts_the_hash_puts_in("train", 3)
    heldout_by_hash = texts_the_hash_puts_in("heldout", 1)
    first = write(
        tmp_path / "first.jsonl",
        [
            {"prompt": train_by_hash[0]},  # stored as train (by hash)
            {"prompt": train_by_hash[1], "split": "heldout"},  # stored as heldout (explicit)
            {"prompt": heldout_by_hash[0]},  # stored as heldout (by hash)
        ],
    )
    assert import_file(store, first).inserted_by_split == {"train": 1, "heldout": 2}
    before = stored_splits(store)

    second = write(
        tmp_path / "second.jsonl",
        [
            {"prompt": train_by_hash[0], "split": "heldout"},  # conflict: stays train
            {"prompt": train_by_hash[1], "split": "train"},  # conflict: stays heldout
            {"prompt": train_by_hash[1]},  # no split asked: a duplicate, not a conflict
            {"prompt": heldout_by_hash[0], "split": "heldout"},  # agrees: no conflict
            {"prompt": train_by_hash[2], "split": "heldout"},  # new: the file decides
            {"prompt": train_by_hash[2], "split": "train"},  # the same new prompt again: the first record won
        ],
    )
    summary = import_file(store, second)
    assert (summary.inserted, summary.duplicates, summary.split_conflicts) == (1, 5, 3)
    assert summary.inserted_by_split == {"heldout": 1}
    assert stored_splits(store) == before | {train_by_hash[2]: "heldout"}


def test_a_prompt_stored_by_a_pair_import_keeps_its_split(store, tmp_path):
    text = texts_the_hash_puts_in("heldout", 1, tag="pair")[0]
    import_file(store, write(tmp_path / "pairs.jsonl", [{"prompt": text, "chosen": "a", "rejected": "b"}]))
    summary = import_file(store, write(tmp_path / "prompts.jsonl", [{"prompt": text, "split": "train"}]))
    assert (summary.inserted, summary.duplicates, summary.split_conflicts) == (0, 1, 1)
    assert stored_splits(store) == {text: "heldout"}


def test_cli_prints_counts_per_split_and_conflicts(tmp_path):
    db = tmp_path / "cli.duckdb"
    train_by_hash = texts_the_hash_puts_in("train", 2)
    records = [{"prompt": train_by_hash[0]}, {"prompt": train_by_hash[1], "split": "heldout"}]
    first = write(tmp_path / "first.jsonl", records)
    done = run_cli(db, str(first), "--kind", "prompts")
    assert done.returncode == 0, done.stderr
    assert f"{first}: imported 2 prompts (train 1, held-out 1), skipped 0 duplicates" in done.stdout
    assert "another split" not in done.stdout
    second = write(tmp_path / "second.jsonl", [{"prompt": train_by_hash[0], "split": "heldout"}])
    done = run_cli(db, str(second), "--kind", "prompts")
    assert done.returncode == 0, done.stderr
    assert f"{second}: imported 0 prompts, skipped 1 duplicates" in done.stdout
    assert "1 records asked for another split than the one their prompt already has" in done.stdout
    assert stored_splits(Store(db))[train_by_hash[0]] == "train"


# --- the shipped seed prompts ---------------------------------------------------------------------------------------


def seed_records() -> list[dict]:
    return [json.loads(line) for line in SEEDS.read_text().splitlines()]


def normalised(record: dict) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", " ".join(m["content"] for m in record["messages"]).lower()))


def test_seed_prompts_give_enough_heldout_and_train_prompts(store):
    invalid: list[str] = []
    kind, items = read_file(SEEDS, "prompts", "seed", invalid)
    assert (kind, invalid) == ("prompts", [])
    summary = import_file(store, SEEDS, kind="prompts", source="seed")
    assert (summary.inserted, summary.duplicates, summary.split_conflicts) == (len(items), 0, 0)
    stored = store.list_prompts()
    splits = Counter(p["split"] for p in stored)
    assert splits["heldout"] >= 200 and splits["train"] >= 450, splits
    assert summary.inserted_by_split == dict(splits)
    assert {p["source"] for p in stored} == {"seed"}
    again = import_file(store, SEEDS, kind="prompts", source="seed")
    assert (again.inserted, again.duplicates, again.split_conflicts) == (0, len(items), 0)


def test_seed_prompts_are_distinct_categorised_and_balanced():
    records = seed_records()
    assert SEEDS.stat().st_size < 500_000
    texts = Counter(normalised(r) for r in records)
    assert [t for t, n in texts.items() if n > 1] == []
    words = [set(normalised(r).split()) for r in records]
    similar = [
        (normalised(records[i]), normalised(records[j]))
        for i, j in itertools.combinations(range(len(records)), 2)
        if len(words[i] & words[j]) / len(words[i] | words[j]) >= 0.75
    ]
    assert similar == []  # near-duplicates: three quarters of the words in common
    assert {r["category"] for r in records} == CATEGORIES
    assert {r.get("split", "hash") for r in records} <= {"heldout", "hash"}
    by_split = {
        split: Counter(r["category"] for r in records if split_of(r) == split) for split in ("train", "heldout")
    }
    for category in CATEGORIES:  # every category on both sides, so held-out scores cover what training saw
        assert by_split["train"][category] >= 5 and by_split["heldout"][category] >= 5, category
    assert any(len(r["messages"]) > 3 for r in records) and any(r["messages"][0]["role"] == "system" for r in records)


def split_of(record: dict) -> str:
    return record.get("split") or split_for(prompt_hash(record["messages"]), Store.heldout_fraction)
