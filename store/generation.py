"""Generated candidates and export reads: the two ends of a round around the labeling.

Generation asks for prompts a round has not used yet and writes each few prompts' responses and pairs in one short
transaction (`add_candidates`), so the labeling UI keeps getting the database while a long generation runs. Export
reads every labeled pair of its scope in short transactions (`export_rows`) and builds the dataset after closing them.

A generated response records in its `sampling` JSON the round and strategy it was sampled for (besides temperature,
top-p, token limit and seed); that marks its prompt as used by that round and strategy even when its samples formed no
pair (all empty or identical), so a prompt that yields nothing is not picked again and again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pyarrow as pa

from store.db import StoreError
from store.final_labels import FINAL_LABELS
from store.labels import Judgment, _validate
from store.prompts import ResponseIn, insert_rows, next_ids, pair_hash, response_row
from store.sessions import Actor, authorize
from store.store import rows_as_dicts, utcnow

EXPORT_CHUNK_PAIRS = 500  # pairs read per transaction by export_rows (about 10 ms each on 2 busy cores)


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

    def prompts_used_in_round(self, round_id: int, strategy: str, split: str) -> int:
        """How many `split` prompts this round has generated for with this strategy (paired or not)."""
        with self.transaction("count used prompts") as con:
            return con.execute(
                """
                SELECT count(DISTINCT r.prompt_id) FROM responses r JOIN prompts p ON p.id = r.prompt_id
                WHERE p.split = ? AND r.sampling->>'$.round' = CAST(? AS VARCHAR) AND r.sampling->>'$.strategy' = ?
                """,
                [split, round_id, strategy],
            ).fetchone()[0]

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

            response_rows, pair_rows, seen = [], [], set()
            ids = iter(next_ids(con, "responses_id_seq", sum(len(item.responses) for item in items)))
            for item in items:
                item_ids = []
                for r in item.responses:
                    item_ids.append(next(ids))
                    response_rows.append({"id": item_ids[-1], **response_row(r, now), "prompt_id": item.prompt_id})
                for a, b in item.pairs:
                    key = pair_hash(prompt_hashes[item.prompt_id], item.responses[a].text, item.responses[b].text)
                    if key in seen:
                        summary.duplicates += 1
                        continue
                    seen.add(key)
                    pair_rows.append(
                        dict(
                            prompt_id=item.prompt_id,
                            response_a_id=item_ids[a],
                            response_b_id=item_ids[b],
                            round_id=round_id,
                            strategy=strategy,
                            overlap_target=overlap_target,
                            content_hash=key,
                            created_at=now,
                        )
                    )
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

    # --- export -----------------------------------------------------------------------------------------------
    def export_rows(self, round_id: int | None = None, actor: Actor | None = None) -> pa.Table:
        """Every pair with at least one judgment or a final label (an adjudication or a gold answer), in one round or
        everywhere (None), by pair id.

        An Arrow table (the texts never become Python objects, which keeps 100k judgments fast): pair_id, round_id,
        status, overlap_target, the prompt's split, `prompt` (its messages), `response_a` and `response_b` (each a
        one-message assistant list), the judgments' `choices` and `strengths` in judgment order, `adjudication`
        (null when there is none), and the final label's `final_choice`, `label_source` and `complete`
        (store/final_labels.py). The caller applies its policies after the reads.

        Read in short transactions of EXPORT_CHUNK_PAIRS pairs each, so labelers waiting for the database wait for one
        chunk (milliseconds), not for the whole read: each pair's row is consistent (its judgments and adjudication as
        of one moment), while judgments made during the export land in it or not depending on their pair's chunk, as
        they would had the export started a moment earlier or later. An `actor` must be a live admin (checked first).
        """
        with self.transaction("list pairs to export") as con:
            authorize(con, actor, ("admin",))
            pair_ids = [r[0] for r in con.execute(
                """
                SELECT p.id FROM pairs p
                WHERE ($round_id IS NULL OR p.round_id = $round_id)
                  AND (EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = p.id)
                       OR EXISTS (SELECT 1 FROM adjudications a WHERE a.pair_id = p.id) OR p.gold_choice IS NOT NULL)
                ORDER BY p.id
                """,
                {"round_id": round_id},
            ).fetchall()]
        chunks = [(pair_ids[i], pair_ids[min(i + EXPORT_CHUNK_PAIRS, len(pair_ids)) - 1])
                  for i in range(0, len(pair_ids), EXPORT_CHUNK_PAIRS)]
        tables = []
        for first, last in chunks or [(0, -1)]:  # an empty scope still yields the table's columns
            with self.transaction("read judgments for export") as con:
                tables.append(_export_chunk(con, round_id, first, last))
        return pa.concat_tables(tables)

    def add_judgments_bulk(self, items: list[Judgment]) -> int:
        """Insert many judgments in one statement, for simulations and benchmarks (the UI uses submit_judgment).

        Every pair and annotator must exist and each (pair, annotator) must be new; pair statuses are refreshed once.
        """
        for judgment in items:
            _validate(judgment)
        now = utcnow()
        pair_ids = sorted({j.pair_id for j in items})
        annotator_ids = sorted({j.annotator_id for j in items})
        with self.transaction("add judgments in bulk") as con:
            for table, ids in (("pairs", pair_ids), ("annotators", annotator_ids)):
                missing = con.execute(
                    f"SELECT unnest(?) AS id EXCEPT SELECT id FROM {table} ORDER BY id LIMIT 5", [ids]
                ).fetchall()
                if missing:
                    raise StoreError(f"{table} {[m[0] for m in missing]} do not exist")
            insert_rows(
                con,
                "judgments",
                [
                    dict(
                        pair_id=j.pair_id,
                        annotator_id=j.annotator_id,
                        choice=j.choice,
                        strength=j.strength,
                        rationale=j.rationale,
                        shown_left=j.shown_left,
                        seconds_spent=j.seconds_spent,
                        created_at=now,
                        updated_at=now,
                    )
                    for j in items
                ],
            )
            con.execute(
                """
                UPDATE pairs SET status = CASE WHEN c.n >= pairs.overlap_target THEN 'complete' ELSE 'open' END
                FROM (SELECT pair_id, count(*) AS n FROM judgments WHERE pair_id IN (SELECT unnest(?)) GROUP BY pair_id) c
                WHERE c.pair_id = pairs.id AND pairs.status <> 'retired'
                """,
                [pair_ids],
            )
        return len(items)


def _export_chunk(con, round_id: int | None, first: int, last: int) -> pa.Table:
    """export_rows' columns for the labeled pairs of the scope whose ids lie in [first, last]."""
    return con.sql(
        "WITH " + FINAL_LABELS + """, j AS (
            SELECT pair_id, list(choice ORDER BY id) AS choices, list(strength ORDER BY id) AS strengths
            FROM judgments WHERE pair_id BETWEEN $first AND $last GROUP BY pair_id
        )
        SELECT p.id AS pair_id, p.round_id, p.status, p.overlap_target, pr.split,
               from_json(pr.messages, '[{"role": "VARCHAR", "content": "VARCHAR"}]') AS prompt,
               [{'role': 'assistant', 'content': ra.text}] AS response_a,
               [{'role': 'assistant', 'content': rb.text}] AS response_b,
               coalesce(j.choices, []::VARCHAR[]) AS choices, coalesce(j.strengths, []::VARCHAR[]) AS strengths,
               adj.choice AS adjudication, fl.final_choice, fl.label_source, fl.complete
        FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id JOIN final_labels fl ON fl.pair_id = p.id
        JOIN responses ra ON ra.id = p.response_a_id JOIN responses rb ON rb.id = p.response_b_id
        LEFT JOIN j ON j.pair_id = p.id LEFT JOIN adjudications adj ON adj.pair_id = p.id
        WHERE ($round_id IS NULL OR p.round_id = $round_id) AND p.id BETWEEN $first AND $last
          AND (j.pair_id IS NOT NULL OR fl.final_choice IS NOT NULL)
        ORDER BY p.id
        """,
        params={"round_id": round_id, "first": first, "last": last},
    ).to_arrow_table()
