"""Export reads and the exports' registry: every labeled pair with its texts, judgments and final label, read in short
transactions so labeling goes on while a large export runs; then the export written by `training/loop/export.py`
is registered with its policy and counts."""

from __future__ import annotations

import pyarrow as pa

from store.db import StoreError
from store.final_labels import FINAL_LABELS
from store.runs import decode_json_columns
from store.sessions import Actor, authorize
from store.store import canonical_json, rows_as_dicts, utcnow

EXPORT_CHUNK_PAIRS = 500  # pairs read per transaction by export_rows (about 10 ms each on 2 busy cores)


class ExportsMixin:
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

    # --- exports, training runs, evaluation -------------------------------------------------------------------
    def register_export(self, name: str, path: str, round_id: int | None, policy: dict, counts: dict,
                        actor: Actor | None = None) -> int:
        """Record an export written to `path`; an `actor` must be a live admin."""
        with self.transaction("register export") as con:
            authorize(con, actor, ("admin",))
            if con.execute("SELECT 1 FROM exports WHERE name = ?", [name]).fetchone():
                raise StoreError(f"an export named {name!r} already exists")
            return con.execute(
                "INSERT INTO exports (name, path, round_id, policy, counts, created_at) VALUES (?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                [name, path, round_id, canonical_json(policy), canonical_json(counts), utcnow()],
            ).fetchone()[0]

    def list_exports(self) -> list[dict]:
        with self.transaction("list exports") as con:
            return decode_json_columns(rows_as_dicts(con.execute("SELECT * FROM exports ORDER BY id")))


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
               ra.finish_reason AS a_finish_reason, rb.finish_reason AS b_finish_reason,
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
