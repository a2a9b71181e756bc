"""Prompts, responses and pairs: what gets labeled."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from store.store import canonical_json, rows_as_dicts, sha256_hex, utcnow

Messages = list[dict]


def prompt_hash(messages: Messages) -> str:
    return sha256_hex(canonical_json([{"role": m["role"], "content": m["content"]} for m in messages]))


SPLITS = ("train", "heldout")


def split_for(content_hash: str, heldout_fraction: float) -> str:
    """The split of a prompt stored without an explicit one: a pure function of its content, so it is the same in
    every database. Whichever way it was chosen, a stored prompt's split never changes."""
    return "heldout" if int(content_hash[:8], 16) / 0x1_0000_0000 < heldout_fraction else "train"


def pair_hash(prompt_content_hash: str, text_1: str, text_2: str) -> str:
    """Order-independent: the same two texts for the same prompt are one pair, whichever is called a."""
    first, second = sorted([text_1, text_2])
    return sha256_hex(canonical_json([prompt_content_hash, first, second]))


@dataclass
class PromptIn:
    messages: Messages
    source: str
    split: str | None = None  # 'train' or 'heldout' as the file says; None: the content hash decides (split_for)


@dataclass
class PairIn:
    """A labeled pair from outside (an import): the prompt, the preferred and the other response."""

    messages: Messages
    chosen: str
    rejected: str
    source: str


@dataclass
class ResponseIn:
    prompt_id: int
    checkpoint_id: int | None
    text: str
    sampling: dict
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str  # 'stop', 'length' or 'imported'


@dataclass
class AddSummary:
    inserted: int = 0
    duplicates: int = 0
    ids: list[int] = field(default_factory=list)
    inserted_by_split: dict[str, int] = field(default_factory=dict)  # the new prompts per split
    split_conflicts: int = 0  # items whose explicit split lost to the split their prompt already has


def response_row(response: ResponseIn, created_at) -> dict:
    """The `responses` row of a generated response (the id comes from the sequence unless the caller sets one)."""
    return dict(
        prompt_id=response.prompt_id,
        checkpoint_id=response.checkpoint_id,
        text=response.text,
        sampling=canonical_json(response.sampling),
        prompt_tokens=response.prompt_tokens,
        completion_tokens=response.completion_tokens,
        finish_reason=response.finish_reason,
        created_at=created_at,
    )


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict], returning: str = "id") -> list:
    """Bulk insert through an Arrow table (one statement, however many rows); returns the `returning` column."""
    if not rows:
        return []
    batch = pa.Table.from_pylist(rows)  # noqa: F841 - referenced by name in the SQL below
    columns = ", ".join(rows[0].keys())
    # Table and column names come from this module, never from input; values travel as Arrow data.
    result = con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM batch RETURNING {returning}")
    return [r[0] for r in result.fetchall()]


def next_ids(con: duckdb.DuckDBPyConnection, sequence: str, n: int) -> list[int]:
    """Reserve n ids, so rows and the rows that reference them are linked without relying on RETURNING order."""
    return [r[0] for r in con.execute(f"SELECT nextval('{sequence}') FROM range(?)", [n]).fetchall()]


class PromptsMixin:
    heldout_fraction: float = 0.1

    def add_prompts(self, items: list[PromptIn]) -> AddSummary:
        """Insert new prompts in one transaction; prompts already stored (same messages) are counted, not added, and
        keep their split (an item asking for another one is counted in split_conflicts)."""
        with self.transaction("add prompts") as con:
            return _add_prompts(con, items, self.heldout_fraction)

    def add_imported_pairs(self, items: list[PairIn], source: str) -> AddSummary:
        """Store labeled pairs as prompts, responses, a pair and a judgment by the annotator `import:<source>`.

        One transaction: either every new pair is stored or none. Pairs already stored are counted as duplicates.
        """
        with self.transaction(f"import pairs from {source}") as con:
            annotator_id = self._ensure_annotator(con, f"import:{source}", "import")
            _add_prompts(con, [PromptIn(i.messages, source) for i in items], self.heldout_fraction)
            hashes = [prompt_hash(i.messages) for i in items]
            prompt_ids = dict(
                con.execute(
                    "SELECT content_hash, id FROM prompts WHERE content_hash IN (SELECT unnest(?))", [hashes]
                ).fetchall()
            )
            unique: dict[str, tuple[PairIn, str]] = {}
            for item, p_hash in zip(items, hashes):
                unique.setdefault(pair_hash(p_hash, item.chosen, item.rejected), (item, p_hash))
            existing = {
                r[0]
                for r in con.execute(
                    "SELECT content_hash FROM pairs WHERE content_hash IN (SELECT unnest(?))", [list(unique)]
                ).fetchall()
            }
            wanted = [(key, item, prompt_ids[p_hash]) for key, (item, p_hash) in unique.items() if key not in existing]
            summary = AddSummary(duplicates=len(items) - len(wanted))
            if wanted:
                summary.ids = _insert_imported_pairs(con, wanted, annotator_id)
                summary.inserted = len(wanted)
            return summary

    def get_prompts(self, ids: list[int]) -> list[dict]:
        with self.transaction("read prompts") as con:
            rows = rows_as_dicts(
                con.execute("SELECT * FROM prompts WHERE id IN (SELECT unnest(?)) ORDER BY id", [list(ids)])
            )
        for row in rows:
            row["messages"] = json.loads(row["messages"])
        return rows

    def list_prompts(self, split: str | None = None, limit: int | None = None) -> list[dict]:
        with self.transaction("list prompts") as con:
            rows = rows_as_dicts(
                con.execute(
                    "SELECT * FROM prompts WHERE (? IS NULL OR split = ?) ORDER BY id LIMIT ?",
                    [split, split, limit if limit is not None else 2**62],
                )
            )
        for row in rows:
            row["messages"] = json.loads(row["messages"])
        return rows

    def add_responses(self, items: list[ResponseIn]) -> list[int]:
        now = utcnow()
        with self.transaction("add responses") as con:
            return insert_rows(
                con,
                "responses",
                [
                    response_row(r, now)
                    for r in items
                ],
            )


def _add_prompts(con: duckdb.DuckDBPyConnection, items: list[PromptIn], heldout_fraction: float) -> AddSummary:
    """Insert the new prompts. A prompt's split is the one it is stored with, else the first item's explicit split,
    else split_for; an item asking for another split than that is counted in split_conflicts, never applied."""
    summary = AddSummary()
    if not items:
        return summary
    keys = [prompt_hash(item.messages) for item in items]
    by_hash: dict[str, PromptIn] = {}
    for key, item in zip(keys, items):
        if key in by_hash:
            summary.duplicates += 1
        else:
            by_hash[key] = item
    existing = dict(
        con.execute(
            "SELECT content_hash, split FROM prompts WHERE content_hash IN (SELECT unnest(?))", [list(by_hash)]
        ).fetchall()
    )
    summary.duplicates += len(existing)
    splits = {key: existing.get(key) or item.split or split_for(key, heldout_fraction) for key, item in by_hash.items()}
    summary.split_conflicts = sum(item.split not in (None, splits[key]) for key, item in zip(keys, items))
    new = [(key, item) for key, item in by_hash.items() if key not in existing]
    now = utcnow()
    summary.ids = insert_rows(
        con,
        "prompts",
        [
            dict(
                messages=canonical_json([{"role": m["role"], "content": m["content"]} for m in item.messages]),
                source=item.source,
                content_hash=key,
                split=splits[key],
                created_at=now,
            )
            for key, item in new
        ],
    )
    summary.inserted = len(summary.ids)
    summary.inserted_by_split = dict(Counter(splits[key] for key, _ in new))
    return summary


def _insert_imported_pairs(con, wanted: list[tuple[str, PairIn, int]], annotator_id: int) -> list[int]:
    """Insert (pair hash, pair, prompt id) rows as two responses, a complete pair (a = chosen) and the importer's
    judgment "a" each; returns the new pair ids. Ids are drawn up front so that a few bulk inserts (not three
    statements per pair) can link the rows: a large file holds the database for seconds, not minutes."""
    now = utcnow()
    chosen_ids = next_ids(con, "responses_id_seq", len(wanted))
    rejected_ids = next_ids(con, "responses_id_seq", len(wanted))
    pair_ids = next_ids(con, "pairs_id_seq", len(wanted))
    insert_rows(
        con,
        "responses",
        [
            dict(id=r_id, prompt_id=prompt_id, text=text, finish_reason="imported", created_at=now)
            for (_, item, prompt_id), chosen_id, rejected_id in zip(wanted, chosen_ids, rejected_ids)
            for r_id, text in ((chosen_id, item.chosen), (rejected_id, item.rejected))
        ],
    )
    insert_rows(
        con,
        "pairs",
        [
            dict(id=pair_id, prompt_id=prompt_id, response_a_id=chosen_id, response_b_id=rejected_id,
                 strategy="import", status="complete", content_hash=key, created_at=now)
            for pair_id, (key, _, prompt_id), chosen_id, rejected_id in zip(pair_ids, wanted, chosen_ids, rejected_ids)
        ],
    )
    insert_rows(
        con,
        "judgments",
        [dict(pair_id=pair_id, annotator_id=annotator_id, choice="a", created_at=now, updated_at=now)
         for pair_id in pair_ids],
    )
    return pair_ids
