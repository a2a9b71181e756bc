"""Browsing what was labeled (admin pages Browse and Review): pairs and judgments filtered by round, annotator, choice,
agreement and text, and an annotator's recent pace.

    rows, total = store.browse_pairs(BrowseFilter(round="latest", agreement="disagree"), limit=100)
    rows, total = store.browse_judgments(BrowseFilter(annotator="alice", text="units"))

A pair's agreement is one of AGREEMENTS, from its judgments: none ('unjudged'), one ('single'), several with one choice
('agree') or several choices ('disagree'); an adjudication (final label) is a separate filter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from store.db import StoreError
from store.labels import CHOICES
from store.store import rows_as_dicts

AGREEMENTS = ("unjudged", "single", "agree", "disagree")
PROMPT_PREVIEW = 160  # characters of a pair's last prompt turn in a listing

# One row per pair with its judgment counts and agreement; both listings filter it.
_PAIR_VIEW = """
WITH stats AS (
    SELECT j.pair_id, count(*) AS judgments, count(DISTINCT j.choice) AS choices,
           count(*) FILTER (WHERE j.choice = 'a') AS a, count(*) FILTER (WHERE j.choice = 'b') AS b,
           count(*) FILTER (WHERE j.choice = 'tie') AS tie, count(*) FILTER (WHERE j.choice = 'both_bad') AS both_bad,
           string_agg(an.name, ', ' ORDER BY j.id) AS annotators, max(j.updated_at) AS last_judged_at
    FROM judgments j JOIN annotators an ON an.id = j.annotator_id
    GROUP BY j.pair_id
), v AS (
    SELECT p.id AS pair_id, p.round_id AS round, p.status, p.overlap_target, pr.messages,
           ra.text AS response_a, rb.text AS response_b,
           coalesce(s.judgments, 0) AS judgments, coalesce(s.a, 0) AS a, coalesce(s.b, 0) AS b,
           coalesce(s.tie, 0) AS tie, coalesce(s.both_bad, 0) AS both_bad,
           CASE WHEN s.judgments IS NULL THEN 'unjudged' WHEN s.judgments = 1 THEN 'single'
                WHEN s.choices = 1 THEN 'agree' ELSE 'disagree' END AS agreement,
           adj.choice AS final_choice, adj.note AS final_note, s.annotators, s.last_judged_at
    FROM pairs p JOIN prompts pr ON pr.id = p.prompt_id
    JOIN responses ra ON ra.id = p.response_a_id JOIN responses rb ON rb.id = p.response_b_id
    LEFT JOIN stats s ON s.pair_id = p.id LEFT JOIN adjudications adj ON adj.pair_id = p.id
)
"""
# A pair's texts, for the text filter (the prompt as stored: JSON, so a quote or a newline is matched escaped).
_PAIR_TEXT = "(contains(lower(v.messages), ?) OR contains(lower(v.response_a), ?) OR contains(lower(v.response_b), ?)" \
             " OR contains(lower(coalesce(v.final_note, '')), ?))"


@dataclass
class BrowseFilter:
    round: int | str | None = None  # a round number, "latest", "imported" (pairs of no round) or None: all
    annotator: str | None = None  # pairs this annotator judged / this annotator's judgments
    choice: str | None = None  # pairs with a judgment of this stored choice / judgments of it
    agreement: str | None = None  # one of AGREEMENTS
    adjudicated: bool | None = None  # True: only pairs with a final label; False: only pairs without
    judged: bool | None = None  # True: only pairs with a judgment; False: only pairs without
    text: str | None = None  # case-insensitive, in the prompt, either response, rationales or the final label's note


class BrowseMixin:
    def browse_pairs(self, filters: BrowseFilter, limit: int = 200, offset: int = 0) -> tuple[list[dict], int]:
        """(one page of matching pairs, most recently judged first, and how many match in all). Each row has the
        pair's round, status, last prompt turn (`prompt`, cut to PROMPT_PREVIEW), judgment counts per choice,
        agreement, final label and the names of its judges."""
        with self.transaction("browse pairs") as con:
            where, params = self._pair_conditions(con, filters)
            if filters.annotator is not None or filters.choice is not None:
                where.append("EXISTS (SELECT 1 FROM judgments j JOIN annotators an ON an.id = j.annotator_id "
                             "WHERE j.pair_id = v.pair_id AND (? IS NULL OR an.name = ?) "
                             "AND (? IS NULL OR j.choice = ?))")
                params += [filters.annotator, filters.annotator, filters.choice, filters.choice]
            if filters.text:
                needle = filters.text.lower()
                where.append(f"({_PAIR_TEXT} OR EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = v.pair_id "
                             "AND contains(lower(coalesce(j.rationale, '')), ?)))")
                params += [needle] * 5
            condition = " AND ".join(where) or "true"
            (total,) = con.execute(f"{_PAIR_VIEW} SELECT count(*) FROM v WHERE {condition}", params).fetchone()
            rows = rows_as_dicts(con.execute(
                f"""{_PAIR_VIEW}
                SELECT pair_id, round, status, messages AS prompt, judgments, a, b, tie, both_bad, agreement,
                       final_choice, annotators, last_judged_at
                FROM v WHERE {condition}
                ORDER BY last_judged_at DESC NULLS LAST, pair_id DESC LIMIT ? OFFSET ?""",
                params + [limit, offset],
            ))
        for row in rows:
            row["prompt"] = _prompt_preview(row["prompt"])
        return rows, total

    def browse_judgments(self, filters: BrowseFilter, limit: int = 500, offset: int = 0) -> tuple[list[dict], int]:
        """(one page of matching judgments, newest first, and how many match in all), each with its pair's round,
        last prompt turn, agreement and final label. The text filter matches the pair's texts or this judgment's
        rationale."""
        with self.transaction("browse judgments") as con:
            where, params = self._pair_conditions(con, filters)
            where += ["(? IS NULL OR an.name = ?)", "(? IS NULL OR j.choice = ?)"]
            params += [filters.annotator, filters.annotator, filters.choice, filters.choice]
            if filters.text:
                needle = filters.text.lower()
                where.append(f"({_PAIR_TEXT} OR contains(lower(coalesce(j.rationale, '')), ?))")
                params += [needle] * 5
            joined = "FROM judgments j JOIN annotators an ON an.id = j.annotator_id JOIN v ON v.pair_id = j.pair_id " \
                     f"WHERE {' AND '.join(where)}"
            (total,) = con.execute(f"{_PAIR_VIEW} SELECT count(*) {joined}", params).fetchone()
            rows = rows_as_dicts(con.execute(
                f"""{_PAIR_VIEW}
                SELECT j.id AS judgment_id, j.pair_id, v.round, an.name AS annotator, an.role, j.choice, j.strength,
                       j.rationale, j.seconds_spent, j.updated_at AS judged_at, v.agreement, v.final_choice,
                       v.messages AS prompt
                {joined}
                ORDER BY j.updated_at DESC, j.id DESC LIMIT ? OFFSET ?""",
                params + [limit, offset],
            ))
        for row in rows:
            row["prompt"] = _prompt_preview(row["prompt"])
        return rows, total

    def _pair_conditions(self, con, filters: BrowseFilter) -> tuple[list[str], list]:
        """SQL conditions on the pair view `v` for the round, agreement and adjudication filters, checked first."""
        if filters.agreement is not None and filters.agreement not in AGREEMENTS:
            raise StoreError(f"agreement must be one of {', '.join(AGREEMENTS)}, not {filters.agreement!r}")
        if filters.choice is not None and filters.choice not in CHOICES:
            raise StoreError(f"choice must be one of {', '.join(CHOICES)}, not {filters.choice!r}")
        where, params = [], []
        if filters.round == "imported":
            where.append("v.round IS NULL")
        elif filters.round is not None:
            if filters.round == "latest":
                round_id = con.execute("SELECT max(id) FROM rounds").fetchone()[0]
            elif isinstance(filters.round, int) or str(filters.round).isdigit():
                round_id = int(filters.round)
            else:
                raise StoreError(f"round must be a number, 'latest', 'imported' or empty, not {filters.round!r}")
            where.append("v.round = ?")
            params.append(round_id)
        if filters.agreement is not None:
            where.append("v.agreement = ?")
            params.append(filters.agreement)
        if filters.adjudicated is not None:
            where.append(f"v.final_choice IS {'NOT ' if filters.adjudicated else ''}NULL")
        if filters.judged is not None:
            where.append(f"v.judgments {'>' if filters.judged else '='} 0")
        return where, params

    def annotator_pace(self, annotator_id: int, last: int = 50) -> dict:
        """This annotator's judgments in all and the median seconds spent on their `last` most recent ones (None
        before the first): the pace the Label page shows."""
        with self.transaction("annotator pace") as con:
            total, median = con.execute(
                """
                SELECT (SELECT count(*) FROM judgments WHERE annotator_id = ?),
                       (SELECT median(seconds_spent) FROM (SELECT seconds_spent FROM judgments
                        WHERE annotator_id = ? AND seconds_spent IS NOT NULL ORDER BY updated_at DESC LIMIT ?))
                """,
                [annotator_id, annotator_id, last],
            ).fetchone()
        return {"judgments": total, "median_seconds": median}


def _prompt_preview(messages_json: str) -> str:
    """The last user turn of a prompt (its last turn when none is the user's), on one line, cut to PROMPT_PREVIEW."""
    messages = json.loads(messages_json)
    turn = next((m for m in reversed(messages) if m.get("role") == "user"), messages[-1] if messages else {})
    text = " ".join(str(turn.get("content", "")).split())
    return text if len(text) <= PROMPT_PREVIEW else text[: PROMPT_PREVIEW - 1] + "…"
