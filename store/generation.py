"""Generated candidates: the prompts a round samples, and the responses and pairs generation writes.

Generation asks for prompts a round has not used yet and writes each few prompts' responses and pairs in one short
transaction (`add_candidates`), so the labeling UI keeps getting the database while a long generation runs.

A generated response records in its `sampling` JSON the round and strategy it was sampled for (besides temperature,
top-p, token limit and seed); that marks its prompt as used by that round and strategy even when its samples formed no
pair (all empty or identical), so a prompt that yields nothing is not picked again and again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from store.db import StoreError
from store.prompts import ResponseIn, insert_rows, next_ids, pair_hash, response_row
from store.store import rows_as_dicts, utcnow


@dataclass
class Candidates:
    """One prompt's generated responses and the pairs to form from them (index pairs into `responses`, a first)."""

    prompt_id: int
    responses: list[ResponseIn]
    pairs: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class CandidatesSummary:
    responses: int = 0
    pairs: int = 0
    duplicates: int = 0  # pairs already stored (same prompt and texts) or repeated within the batch
    pair_ids: list[int] = field(default_factory=list)


class GenerationMixin:
    # --- generation -------------------------------------------------------------------------------------------
    def prompts_for_generation(self, round_id: int, strategy: str, split: str, limit: int) -> list[dict]:
        """Up to `limit` prompts of `split` that this round has not used with this strategy yet.

        Ordered by a hash of content hash and round: a reproducible shuffle of its own for each round, so a round
        does not take prompts in the order of import, nor the same ones as the round before it.
        """
        with self.transaction("pick prompts for generation") as con:
            rows = rows_as_dicts(
                con.execute(
                    """
                    SELECT p.id, p.messages, p.content_hash, p.split FROM prompts p
                    WHERE p.split = ?
                      AND NOT EXISTS (SELECT 1 FROM pairs q
                                      WHERE q.prompt_id = p.id AND q.round_id = ? AND q.strategy = ?)
                      AND NOT EXISTS (SELECT 1 FROM responses r
                                      WHERE r.prompt_id = p.id AND r.sampling->>'$.round' = CAST(? AS VARCHAR)
                                        AND r.sampling->>'$.strategy' = ?)
                    ORDER BY md5(p.content_hash || ':' || CAST(? AS VARCHAR)), p.id LIMIT ?
                    """,
                    [split, round_id, strategy, round_id, strategy, round_id, limit],
                )
            )
        for row in rows:
            row["messages"] = json.loads(row["messages"])
        return rows

    def add_candidates(self, round_id: int, strategy: str, items: list[Candidates]) -> CandidatesSummary:
        """Store generated responses and their pairs for a round in one transaction.

        Pairs get the round's overlap target. A pair whose prompt and texts are already stored (in any order) is
        skipped and counted as a duplicate; its responses are still stored, they are what the model generated.
        """
        summary = CandidatesSummary()
        if not items:
            return summary
        now = utcnow()
        with self.transaction(f"write candidates for round {round_id}") as con:
            found = con.execute("SELECT overlap_target FROM rounds WHERE id = ?", [round_id]).fetchone()
            if found is None:
                raise StoreError(f"round {round_id} does not exist")
            overlap_target = found[0]
            prompt_ids = sorted({item.prompt_id for item in items})
            prompt_hashes = dict(
                con.execute(
                    "SELECT id, content_hash FROM prompts WHERE id IN (SELECT unnest(?))", [prompt_ids]
                ).fetchall()
            )
            missing = [i for i in prompt_ids if i not in prompt_hashes]
            if missing:
                raise StoreError(f"prompts {missing} do not exist")
            response_ids = next_ids(con, "responses_id_seq", sum(len(item.responses) for item in items))
            response_rows, pair_rows = _candidate_rows(items, response_ids, prompt_hashes, now)
            summary.duplicates += sum(len(item.pairs) for item in items) - len(pair_rows)
            for row in pair_rows:
                row |= dict(round_id=round_id, strategy=strategy, overlap_target=overlap_target)
            stored = {
                r[0]
                for r in con.execute(
                    "SELECT content_hash FROM pairs WHERE content_hash IN (SELECT unnest(?))",
                    [[p["content_hash"] for p in pair_rows]],
                ).fetchall()
            }
            summary.duplicates += len(stored)
            pair_rows = [p for p in pair_rows if p["content_hash"] not in stored]
            insert_rows(con, "responses", response_rows)
            pair_ids = next_ids(con, "pairs_id_seq", len(pair_rows))
            insert_rows(con, "pairs", [dict(id=i, **p) for i, p in zip(pair_ids, pair_rows)])
        summary.responses = len(response_rows)
        summary.pairs = len(pair_rows)
        summary.pair_ids = pair_ids
        return summary

    def previous_round(self, round_id: int) -> dict | None:
        """The round just before this one, or None for the first round."""
        with self.transaction("read previous round") as con:
            rows = rows_as_dicts(con.execute("SELECT * FROM rounds WHERE id < ? ORDER BY id DESC LIMIT 1", [round_id]))
        return rows[0] if rows else None

    def count_pairs(self, round_id: int | None = None, split: str | None = None, strategy: str | None = None) -> int:
        """Pairs of one round (None: the whole database, imported ones included), of one prompt split and one
        generation strategy when given."""
        with self.transaction("count pairs") as con:
            return con.execute(
                """
                SELECT count(*) FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id
                WHERE (? IS NULL OR p.round_id = ?) AND (? IS NULL OR pr.split = ?) AND (? IS NULL OR p.strategy = ?)
                """,
                [round_id, round_id, split, split, strategy, strategy],
            ).fetchone()[0]

    def generated_pairs(self, round_id: int, strategy: str | None = None) -> list[dict]:
        """A round's pairs with the lineage of both responses (checkpoint, sampling, tokens, finish reason)."""
        with self.transaction("read generated pairs") as con:
            rows = rows_as_dicts(
                con.execute(
                    """
                    SELECT p.id, p.prompt_id, p.round_id, p.strategy, p.overlap_target, p.status, p.content_hash,
                           pr.split,
                           ra.id AS a_id, ra.text AS a_text, ra.checkpoint_id AS a_checkpoint_id,
                           ra.sampling AS a_sampling, ra.prompt_tokens AS a_prompt_tokens,
                           ra.completion_tokens AS a_completion_tokens, ra.finish_reason AS a_finish_reason,
                           rb.id AS b_id, rb.text AS b_text, rb.checkpoint_id AS b_checkpoint_id,
                           rb.sampling AS b_sampling, rb.prompt_tokens AS b_prompt_tokens,
                           rb.completion_tokens AS b_completion_tokens, rb.finish_reason AS b_finish_reason
                    FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id
                    JOIN responses ra ON ra.id = p.response_a_id JOIN responses rb ON rb.id = p.response_b_id
                    WHERE p.round_id = ? AND (? IS NULL OR p.strategy = ?)
                    ORDER BY p.id
                    """,
                    [round_id, strategy, strategy],
                )
            )
        for row in rows:
            row["a_sampling"] = json.loads(row["a_sampling"])
            row["b_sampling"] = json.loads(row["b_sampling"])
        return rows


def _candidate_rows(items: list[Candidates], response_ids: list[int], prompt_hashes: dict[int, str], now):
    """(response rows with the given ids, pair rows linking them), a pair repeated within `items` kept once."""
    ids = iter(response_ids)
    response_rows, pair_rows, seen = [], [], set()
    for item in items:
        item_ids = []
        for r in item.responses:
            item_ids.append(next(ids))
            response_rows.append({"id": item_ids[-1], **response_row(r, now), "prompt_id": item.prompt_id})
        for a, b in item.pairs:
            key = pair_hash(prompt_hashes[item.prompt_id], item.responses[a].text, item.responses[b].text)
            if key not in seen:
                seen.add(key)
                pair_rows.append(dict(prompt_id=item.prompt_id, response_a_id=item_ids[a], response_b_id=item_ids[b],
                                      content_hash=key, created_at=now))
    return response_rows, pair_rows
