"""Exports from the Data page: written next to the database, summarised in words, downloaded as a zip.

The labeler reaches the export code through `export_dataset` alone (today it runs `training.loop.export.export`; when the
export moves to a layer the labeler and training share, only that function changes). Its folders go to
`<the database's folder>/exports/<name>`, whatever directory the server was started from.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from store import Actor, Store

EXPORTS_FOLDER = "exports"  # under the database's folder
ROW_SPLITS = ("train", "test", "train_negatives", "test_negatives")
DROPPED = {"disagreement": "disagreements", "low_agreement": "low agreement", "tie": "ties", "both_bad": "both bad",
           "truncated_chosen": "preferred answers cut off"}


def exports_dir(store: Store) -> Path:
    return store.path.parent / EXPORTS_FOLDER


def export_dataset(store: Store, scope: str, name: str | None, both_bad: str, actor: Actor | None = None) -> dict:
    """Build, write and register one export of `scope` (a round number, 'latest' or 'all') as `actor` (the signed-in
    admin, checked by the store); returns its id, name, path and counts. Raises StoreError or ValueError (a bad name,
    nothing to export) with a message to show."""
    from training.loop.export import ExportConfig, export

    config = ExportConfig(name=name, round=scope, both_bad=both_bad, output_dir=str(exports_dir(store)))
    return export(store, config, actor=actor)


def summary(counts: dict) -> str:
    """An export's counts in words, e.g. "12 train rows and 3 test rows, from 20 judged pairs (40 judgments); left
    out: 2 ties, 3 disagreements." (markdown; numbers and the export's reasons only, no text anyone typed)."""
    rows = [f"**{counts[s]:,}** {s.replace('_', ' ')} row{'' if counts[s] == 1 else 's'}"
            for s in ROW_SPLITS if s in counts]
    rows_text = ", ".join(rows[:-1]) + f" and {rows[-1]}" if len(rows) > 1 else "".join(rows)
    judged = ""
    if "judged_pairs" in counts:
        judged = f", from {counts['judged_pairs']:,} judged pairs ({counts.get('judgments', 0):,} judgments)"
    dropped = [f"{n:,} {DROPPED.get(reason, reason)}" for reason, n in counts.get("dropped", {}).items() if n]
    return f"{rows_text}{judged}; left out: {', '.join(dropped) if dropped else 'none'}."


def zip_folder(folder: Path) -> bytes:
    """The export folder as a zip (every file under a top folder of the export's name), built in memory."""
    folder = Path(folder)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(path, Path(folder.name) / path.relative_to(folder))
    return buffer.getvalue()
