"""What evaluation and the label-quality dashboard read: held-out pairs with final labels, vs-previous outcomes,
judgment rows for agreement and bias, and gold pairs.

A pair's final label comes from the one rule in store/final_labels.py; pairs without an accepted one (`DECIDED`) are
left out of evaluation.
"""

from __future__ import annotations

import json

from store.db import StoreError
from store.final_labels import DECIDED, FINAL_LABELS
from store.labels import CHOICES
from store.store import rows_as_dicts


class EvaluationMixin:
    def heldout_preference_pairs(self, limit: int | None = None) -> list[dict]:
        """Held-out pairs whose final label prefers one response: messages, chosen and rejected text and ids.

        Ordered by content hash (a reproducible shuffle), so `limit` takes the same sample every time.
        """
        with self.transaction("read held-out preference pairs") as con:
            rows = rows_as_dicts(
                con.execute(
                    f"""
                    WITH {FINAL_LABELS}
                    SELECT p.id AS pair_id, p.round_id, p.strategy, fl.final_choice, pr.messages,
                           CASE WHEN fl.final_choice = 'a' THEN ra.id ELSE rb.id END AS chosen_id,
                           CASE WHEN fl.final_choice = 'a' THEN ra.text ELSE rb.text END AS chosen,
                           CASE WHEN fl.final_choice = 'a' THEN rb.id ELSE ra.id END AS rejected_id,
                           CASE WHEN fl.final_choice = 'a' THEN rb.text ELSE ra.text END AS rejected
                    FROM final_labels fl JOIN pairs p ON p.id = fl.pair_id JOIN prompts pr ON pr.id = p.prompt_id
                    JOIN responses ra ON ra.id = p.response_a_id JOIN responses rb ON rb.id = p.response_b_id
                    WHERE pr.split = 'heldout' AND p.status <> 'retired' AND {DECIDED}
                      AND fl.final_choice IN ('a', 'b')
                    ORDER BY p.content_hash LIMIT ?
                    """,
                    [limit if limit is not None else 2**62],
                )
            )
        for row in rows:
            row["messages"] = json.loads(row["messages"])
        return rows

    def vs_previous_outcomes(self, checkpoint_id: int) -> list[dict]:
        """Final labels of the held-out 'vs-previous' pairs of the rounds this checkpoint generates (its response
        against the previous round's model's).

        Each row: pair_id, round_id, final_choice, new_side ('a' or 'b': where this checkpoint's response is) and
        previous_checkpoint_id (the other response's checkpoint).
        """
        with self.transaction("read vs-previous outcomes") as con:
            return rows_as_dicts(
                con.execute(
                    f"""
                    WITH {FINAL_LABELS}
                    SELECT p.id AS pair_id, p.round_id, fl.final_choice,
                           CASE WHEN ra.checkpoint_id = ? THEN 'a' ELSE 'b' END AS new_side,
                           CASE WHEN ra.checkpoint_id = ? THEN rb.checkpoint_id ELSE ra.checkpoint_id END
                               AS previous_checkpoint_id
                    FROM final_labels fl JOIN pairs p ON p.id = fl.pair_id JOIN prompts pr ON pr.id = p.prompt_id
                    JOIN rounds r ON r.id = p.round_id
                    JOIN responses ra ON ra.id = p.response_a_id JOIN responses rb ON rb.id = p.response_b_id
                    WHERE p.strategy = 'vs-previous' AND pr.split = 'heldout' AND p.status <> 'retired' AND {DECIDED}
                      AND r.checkpoint_id = ? AND (ra.checkpoint_id = ?) <> (rb.checkpoint_id = ?)
                    ORDER BY p.id
                    """,
                    [checkpoint_id] * 5,
                )
            )

    def label_rows(self, round_id: int | None = None) -> list[dict]:
        """Every judgment by a person or simulated judge (imports left out), oldest first, with what agreement and
        bias metrics need: annotator name, pair, choice, shown_left, seconds, both responses' lengths in characters
        and the pair's gold answer (None unless gold). `round_id` None means every round."""
        with self.transaction("read judgments for label quality") as con:
            return rows_as_dicts(
                con.execute(
                    """
                    SELECT j.id, a.name AS annotator, a.role, j.pair_id, p.round_id, j.choice, j.shown_left,
                           j.seconds_spent, length(ra.text) AS len_a, length(rb.text) AS len_b, p.gold_choice,
                           j.updated_at
                    FROM judgments j JOIN annotators a ON a.id = j.annotator_id JOIN pairs p ON p.id = j.pair_id
                    JOIN responses ra ON ra.id = p.response_a_id JOIN responses rb ON rb.id = p.response_b_id
                    WHERE a.role <> 'import' AND (? IS NULL OR p.round_id = ?)
                    ORDER BY j.id
                    """,
                    [round_id, round_id],
                )
            )

    def set_gold(self, pair_id: int, choice: str | None) -> None:
        """Mark a pair as gold with its known answer (None unmarks it). Gold pairs stay in the queues like any other
        pair, so annotators cannot tell them apart; their answers measure annotator accuracy."""
        if choice is not None and choice not in CHOICES:
            raise StoreError(f"gold choice must be one of {', '.join(CHOICES)}, not {choice!r}")
        with self.transaction("set gold answer") as con:
            found = con.execute("UPDATE pairs SET gold_choice = ? WHERE id = ? RETURNING id", [choice, pair_id]).fetchone()
        if not found:
            raise StoreError(f"pair {pair_id} does not exist")

    def gold_pairs(self) -> list[dict]:
        """Gold pairs with their answer and how many judgments they have."""
        with self.transaction("list gold pairs") as con:
            return rows_as_dicts(
                con.execute(
                    """
                    SELECT p.id AS pair_id, p.round_id, p.gold_choice, count(j.id) AS judgments,
                           count(j.id) FILTER (WHERE j.choice = p.gold_choice) AS correct
                    FROM pairs p LEFT JOIN judgments j ON j.pair_id = p.id
                    WHERE p.gold_choice IS NOT NULL GROUP BY p.id, p.round_id, p.gold_choice ORDER BY p.id
                    """
                )
            )
