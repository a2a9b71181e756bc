"""Rounds, checkpoints, exports, training runs and evaluation results: the lineage of every model."""

from __future__ import annotations

import json

from store.db import StoreError
from store.store import canonical_json, rows_as_dicts, utcnow

CHECKPOINT_KINDS = ("base", "sft", "dpo", "reward", "ppo", "rloo", "merged")
_JSON_COLUMNS = ("config", "metrics", "policy", "counts", "details", "sampling")


def decode_json_columns(rows: list[dict]) -> list[dict]:
    for row in rows:
        for key in _JSON_COLUMNS:
            if isinstance(row.get(key), str):
                row[key] = json.loads(row[key])
    return rows


class RunsMixin:
    # --- checkpoints ------------------------------------------------------------------------------------------
    def register_checkpoint(
        self,
        kind: str,
        base_model: str,
        adapter_path: str | None = None,
        round_id: int | None = None,
        parent_id: int | None = None,
        export_id: int | None = None,
        config: dict | None = None,
    ) -> int:
        if kind not in CHECKPOINT_KINDS:
            raise StoreError(f"checkpoint kind must be one of {', '.join(CHECKPOINT_KINDS)}, not {kind!r}")
        with self.transaction("register checkpoint") as con:
            if parent_id is not None and not con.execute(
                "SELECT 1 FROM checkpoints WHERE id = ?", [parent_id]
            ).fetchone():
                raise StoreError(f"parent checkpoint {parent_id} does not exist")
            return con.execute(
                "INSERT INTO checkpoints (round_id, kind, base_model, adapter_path, parent_id, export_id, config, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [round_id, kind, base_model, adapter_path, parent_id, export_id, canonical_json(config or {}), utcnow()],
            ).fetchone()[0]

    def get_checkpoint(self, checkpoint_id: int) -> dict:
        with self.transaction("read checkpoint") as con:
            rows = decode_json_columns(rows_as_dicts(con.execute("SELECT * FROM checkpoints WHERE id = ?", [checkpoint_id])))
        if not rows:
            raise StoreError(f"checkpoint {checkpoint_id} does not exist")
        return rows[0]

    def list_checkpoints(self, kind: str | None = None) -> list[dict]:
        with self.transaction("list checkpoints") as con:
            return decode_json_columns(
                rows_as_dicts(
                    con.execute("SELECT * FROM checkpoints WHERE (? IS NULL OR kind = ?) ORDER BY id", [kind, kind])
                )
            )

    def latest_checkpoint(self, kinds: tuple[str, ...] | None = None) -> dict | None:
        """The newest checkpoint of one of these kinds (any kind when None)."""
        found = [c for c in self.list_checkpoints() if kinds is None or c["kind"] in kinds]
        return found[-1] if found else None

    # --- rounds -----------------------------------------------------------------------------------------------
    def new_round(self, checkpoint_id: int, overlap_target: int = 1) -> int:
        """Start the next round (0 when none exists) generating with this checkpoint. Returns the round number."""
        if overlap_target < 1:
            raise StoreError("overlap target must be at least 1")
        with self.transaction("new round") as con:
            if not con.execute("SELECT 1 FROM checkpoints WHERE id = ?", [checkpoint_id]).fetchone():
                raise StoreError(f"checkpoint {checkpoint_id} does not exist")
            (round_id,) = con.execute("SELECT coalesce(max(id) + 1, 0) FROM rounds").fetchone()
            con.execute(
                "INSERT INTO rounds VALUES (?, ?, ?, ?)", [round_id, checkpoint_id, overlap_target, utcnow()]
            )
            return round_id

    def get_round(self, round_id: int | None = None) -> dict | None:
        """The round with this number, or the latest round when None; None if there is no such round."""
        with self.transaction("read round") as con:
            rows = rows_as_dicts(
                con.execute(
                    "SELECT * FROM rounds WHERE (? IS NULL OR id = ?) ORDER BY id DESC LIMIT 1", [round_id, round_id]
                )
            )
        return rows[0] if rows else None

    def list_rounds(self) -> list[dict]:
        with self.transaction("list rounds") as con:
            return rows_as_dicts(con.execute("SELECT * FROM rounds ORDER BY id"))

    def start_training_run(
        self,
        kind: str,
        output_dir: str,
        config: dict,
        round_id: int | None = None,
        export_id: int | None = None,
        parent_checkpoint_id: int | None = None,
    ) -> int:
        with self.transaction("start training run") as con:
            return con.execute(
                "INSERT INTO training_runs (kind, round_id, export_id, parent_checkpoint_id, output_dir, config, "
                "status, started_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?) RETURNING id",
                [kind, round_id, export_id, parent_checkpoint_id, output_dir, canonical_json(config), utcnow()],
            ).fetchone()[0]

    def finish_training_run(
        self, run_id: int, metrics: dict, checkpoint_id: int | None = None, error: str | None = None
    ) -> None:
        with self.transaction("finish training run") as con:
            con.execute(
                "UPDATE training_runs SET status = ?, metrics = ?, checkpoint_id = ?, error = ?, finished_at = ? "
                "WHERE id = ?",
                ["failed" if error else "finished", canonical_json(metrics), checkpoint_id, error, utcnow(), run_id],
            )

    def list_training_runs(self) -> list[dict]:
        with self.transaction("list training runs") as con:
            return decode_json_columns(rows_as_dicts(con.execute("SELECT * FROM training_runs ORDER BY id")))

    def add_eval_results(self, checkpoint_id: int, round_id: int | None, results: list[dict]) -> None:
        """Store metric rows (metric, value, ci_low, ci_high, n, details) for a checkpoint, replacing earlier ones."""
        now = utcnow()
        with self.transaction("add eval results") as con:
            for r in results:
                con.execute(
                    "DELETE FROM eval_results WHERE checkpoint_id = ? AND metric = ?", [checkpoint_id, r["metric"]]
                )
                con.execute(
                    "INSERT INTO eval_results (checkpoint_id, round_id, metric, value, ci_low, ci_high, n, details, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        checkpoint_id,
                        round_id,
                        r["metric"],
                        r.get("value"),
                        r.get("ci_low"),
                        r.get("ci_high"),
                        r.get("n"),
                        canonical_json(r.get("details", {})),
                        now,
                    ],
                )

    def list_eval_results(self) -> list[dict]:
        """Every stored metric row, with the kind of checkpoint it measures as `checkpoint_kind`."""
        with self.transaction("list eval results") as con:
            return decode_json_columns(
                rows_as_dicts(
                    con.execute(
                        "SELECT e.*, coalesce(c.kind, '?') AS checkpoint_kind FROM eval_results e "
                        "LEFT JOIN checkpoints c ON c.id = e.checkpoint_id ORDER BY e.round_id, e.checkpoint_id, e.metric"
                    )
                )
            )

    # --- status -----------------------------------------------------------------------------------------------
    def status(self) -> dict:
        """Counts for `prefloop status` and the dashboard: prompts per split, per round, per annotator."""
        with self.transaction("status") as con:
            prompts = dict(con.execute("SELECT split, count(*) FROM prompts GROUP BY split ORDER BY split").fetchall())
            rounds = rows_as_dicts(
                con.execute(
                    """
                    SELECT r.id AS round, r.checkpoint_id, c.kind AS checkpoint_kind, r.overlap_target,
                           (SELECT count(DISTINCT p.prompt_id) FROM pairs p WHERE p.round_id = r.id) AS prompts_used,
                           (SELECT count(*) FROM pairs p WHERE p.round_id = r.id) AS pairs,
                           (SELECT count(*) FROM pairs p WHERE p.round_id = r.id AND p.status = 'complete') AS complete,
                           (SELECT count(*) FROM judgments j JOIN pairs p ON p.id = j.pair_id
                            WHERE p.round_id = r.id) AS judgments,
                           (SELECT count(*) FROM pairs p WHERE p.round_id = r.id AND p.overlap_target > 1
                            AND p.status = 'open'
                            AND EXISTS (SELECT 1 FROM judgments j WHERE j.pair_id = p.id)) AS agreement_pending
                    FROM rounds r LEFT JOIN checkpoints c ON c.id = r.checkpoint_id ORDER BY r.id
                    """
                )
            )
            imported = con.execute(
                "SELECT count(*) FROM pairs WHERE round_id IS NULL"
            ).fetchone()[0]
            annotators = rows_as_dicts(
                con.execute(
                    """
                    SELECT a.name, a.role, a.disabled, count(j.id) AS judgments
                    FROM annotators a LEFT JOIN judgments j ON j.annotator_id = a.id
                    GROUP BY ALL ORDER BY a.name
                    """
                )
            )
        return {"prompts": prompts, "rounds": rounds, "imported_pairs": imported, "annotators": annotators}
