"""The one rule that turns a pair's judgments into its final label, used by export, evaluation and the dashboard.

A pair's final label is, in order:
  1. its adjudication (an admin's decision after a disagreement);
  2. its gold answer (an admin's known answer);
  3. the strict majority of its judgments: a choice made by more than half of them ([a, a, b, tie] has none: 2 of 4).
A label from judgments counts only once the pair is complete (it has as many judgments as its overlap target), so
the label cannot change under a reader's feet as the last annotators come in; export's --include-incomplete is the
one reader that takes the majority of an incomplete pair.

`FINAL_LABELS` is a CTE to put after `WITH`: one row per pair, with `final_choice` (None when rule 3 finds no
majority and neither 1 nor 2 applies), `label_source` ('adjudication', 'gold', 'majority' or None), `judgments`
(how many) and `complete`. `DECIDED` is the condition for a label every reader accepts.
"""

FINAL_LABELS = """
    vote_counts AS (
        SELECT pair_id, choice, count(*) AS votes, sum(count(*)) OVER (PARTITION BY pair_id) AS judgments
        FROM judgments GROUP BY pair_id, choice
    ),
    judged AS (
        SELECT pair_id, any_value(judgments) AS judgments, any_value(choice) FILTER (WHERE 2 * votes > judgments)
            AS majority
        FROM vote_counts GROUP BY pair_id
    ),
    final_labels AS (
        SELECT p.id AS pair_id,
               coalesce(adj.choice, p.gold_choice, jd.majority) AS final_choice,
               CASE WHEN adj.choice IS NOT NULL THEN 'adjudication'
                    WHEN p.gold_choice IS NOT NULL THEN 'gold'
                    WHEN jd.majority IS NOT NULL THEN 'majority' END AS label_source,
               coalesce(jd.judgments, 0) AS judgments,
               coalesce(jd.judgments, 0) >= p.overlap_target AS complete
        FROM pairs p LEFT JOIN adjudications adj ON adj.pair_id = p.id LEFT JOIN judged jd ON jd.pair_id = p.id
    )
"""

# A final label every reader accepts: set by an admin, or a majority of a complete pair.
DECIDED = "(fl.final_choice IS NOT NULL AND (fl.label_source <> 'majority' OR fl.complete))"
