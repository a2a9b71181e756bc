"""Figures the app's pages read: an annotator's and a round's progress, one pair with all its judgments for review,
per-annotator pace and per-day counts for the dashboard."""

from __future__ import annotations

from datetime import datetime, timedelta

import duckdb

from store.labels import pair_with_texts
from store.store import rows_as_dicts, utcnow


class ReportsMixin:

    def label_progress(self, annotator_id: int, round_id: int | None, since: datetime) -> dict:
        """The label page's progress bar: this annotator's judgments since `since`, and how many judgments the
        round's pairs still need (`round_id` None: every round)."""
        with self.transaction("label progress") as con:
            (judged_since,) = con.execute(
                "SELECT count(*) FROM judgments WHERE annotator_id = ? AND updated_at >= ?", [annotator_id, since]
            ).fetchone()
            rounds = _round_progress(con, round_id)
        needed, done = sum(r["needed"] for r in rounds), sum(r["done"] for r in rounds)
        return {"judged_since": judged_since, "needed": needed, "done": done, "left": needed - done}

    def round_progress(self, round_id: int | None = None) -> list[dict]:
        """Per round: pairs, judgments their overlap targets ask for (`needed`) and judgments made toward those."""
        with self.transaction("round progress") as con:
            return _round_progress(con, round_id)

    def pair_review(self, pair_id: int) -> dict | None:
        """A pair with its texts, every judgment on it (with the annotator's name) and its final label, if any."""
        with self.transaction("read pair for review") as con:
            pair = pair_with_texts(con, pair_id)
            if pair is None:
                return None
            pair["judgments"] = rows_as_dicts(
                con.execute(
                    """
                    SELECT a.name AS annotator, j.choice, j.strength, j.rationale, j.shown_left, j.seconds_spent,
                           j.updated_at
                    FROM judgments j JOIN annotators a ON a.id = j.annotator_id
                    WHERE j.pair_id = ? ORDER BY j.id
                    """,
                    [pair_id],
                )
            )
            found = rows_as_dicts(
                con.execute(
                    "SELECT adj.choice, adj.note, a.name AS admin, adj.created_at FROM adjudications adj "
                    "LEFT JOIN annotators a ON a.id = adj.admin_id WHERE adj.pair_id = ?",
                    [pair_id],
                )
            )
            pair["adjudication"] = found[0] if found else None
            return pair

    def annotator_stats(self, since: datetime, now: datetime | None = None) -> list[dict]:
        """Per annotator: judgments in all, since `since` and in the last hour, skips, median seconds per judgment
        and the pace that median implies (judgments per hour of labeling)."""
        last_hour = (now or utcnow()) - timedelta(hours=1)
        with self.transaction("annotator stats") as con:
            return rows_as_dicts(
                con.execute(
                    """
                    SELECT a.name, a.role, a.disabled, a.created_at,
                           count(j.id) AS judgments,
                           count(j.id) FILTER (WHERE j.updated_at >= ?) AS judged_today,
                           count(j.id) FILTER (WHERE j.updated_at >= ?) AS last_hour,
                           (SELECT count(*) FROM skips s WHERE s.annotator_id = a.id) AS skips,
                           round(median(j.seconds_spent), 1) AS median_seconds,
                           round(3600 / nullif(median(j.seconds_spent), 0)) AS per_hour,
                           max(j.updated_at) AS last_judgment_at
                    FROM annotators a LEFT JOIN judgments j ON j.annotator_id = a.id
                    GROUP BY a.id, a.name, a.role, a.disabled, a.created_at ORDER BY a.name
                    """,
                    [since, last_hour],
                )
            )

    def judgments_per_day(self, days: int = 14, now: datetime | None = None) -> list[dict]:
        """Judgments per UTC day for the last `days` days (days without any are left out)."""
        start = (now or utcnow()) - timedelta(days=days)
        with self.transaction("judgments per day") as con:
            return rows_as_dicts(
                con.execute(
                    "SELECT CAST(updated_at AS DATE) AS day, count(*) AS judgments FROM judgments "
                    "WHERE updated_at >= ? GROUP BY day ORDER BY day",
                    [start],
                )
            )

    def choice_counts(self, round_id: int | None = None) -> dict[str, int]:
        """How often each choice was made (by people and simulated judges; imports left out)."""
        with self.transaction("choice counts") as con:
            return dict(
                con.execute(
                    """
                    SELECT j.choice, count(*) FROM judgments j JOIN pairs p ON p.id = j.pair_id
                    JOIN annotators a ON a.id = j.annotator_id
                    WHERE a.role <> 'import' AND (? IS NULL OR p.round_id = ?)
                    GROUP BY j.choice ORDER BY j.choice
                    """,
                    [round_id, round_id],
                ).fetchall()
            )


def _round_progress(con: duckdb.DuckDBPyConnection, round_id: int | None) -> list[dict]:
    """Judgments beyond a pair's overlap target (an expired lease judged late) count once; retired pairs not at all."""
    return rows_as_dicts(
        con.execute(
            """
            SELECT p.round_id AS round, count(*) AS pairs, CAST(sum(p.overlap_target) AS BIGINT) AS needed,
                   CAST(sum(least(coalesce(j.n, 0), p.overlap_target)) AS BIGINT) AS done
            FROM pairs p LEFT JOIN (SELECT pair_id, count(*) AS n FROM judgments GROUP BY pair_id) j
                ON j.pair_id = p.id
            WHERE p.status <> 'retired' AND p.round_id IS NOT NULL AND (? IS NULL OR p.round_id = ?)
            GROUP BY p.round_id ORDER BY p.round_id
            """,
            [round_id, round_id],
        )
    )
