"""Export: turn judgments into a Hugging Face preference dataset for TRL (DPO, reward model, KTO).

    prefloop export                                  # every round plus imported pairs, name all-<UTC time>
    prefloop export --round 2 --name round-2-final   # one round
    prefloop export --both-bad negatives --min-agreement 0.6
    make export ARGS="--round latest"

Output, under `data/exports/<name>/` (written to a temporary folder, then renamed: it appears whole or not at all):
    dataset_dict.json, train/, test/      `datasets.load_from_disk(path)`
    train.parquet, test.parquet           the same rows as Parquet; byte-identical for the same database
    README.md                             dataset card: scope, source, policies, counts

Rows are in TRL's conversational preference format: `prompt` (the message list), `chosen` and `rejected` (a list
holding one assistant message), plus `pair_id`, `round` (null for imported pairs), `num_judgments`, `agreement` (share
of judgments that agree with the final label; null when only an adjudication labels the pair) and `margin`.
The split comes from the prompt's fixed split: held-out prompts go to `test` and never to `train`, in any round.

Policies, applied per pair in this order:
  1. retired pairs are dropped;
  2. the label is the pair's final label (store/final_labels.py: adjudication, else gold answer, else the strict
     majority of its judgments, the rule evaluation uses too); a pair labeled by its judgments alone that has fewer
     than its overlap target is dropped as incomplete (--include-incomplete keeps it, with the majority so far), and
     one without a strict majority (1 vs 1, a 1-1-1 split, [a, a, b, tie]) is dropped as a disagreement;
  3. pairs labeled by their judgments whose agreement is below --min-agreement are dropped;
  4. ties are dropped (no preference to learn); both-bad pairs are dropped, or with --both-bad negatives both
     responses become unpaired negatives (`prompt`, `completion`, `label` False, as TRL's KTO reads them) in the
     splits train_negatives / test_negatives;
  5. a pair whose preferred response was cut off at the token limit (finish_reason 'length') is dropped
     (--truncated-chosen keep keeps it): DPO would raise the unfinished answer and lower a finished one, end of
     sequence included, which teaches the model not to stop. Measured on the GPU loop: answers that never end took
     over by the third round (docs/loop.md).
  margin: the mean over the judgments that agree with the label of slight = 0.5, clear = 1.0, no strength given = 1.0
  (a plain preference, as imported pairs state it); 1.0 for a pair labeled by adjudication alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from store import Actor, Store, StoreError
from training.config import ConfigError, opt

STRENGTH_MARGIN = {"slight": 0.5, "clear": 1.0, None: 1.0}
BOTH_BAD_POLICIES = ("drop", "negatives")
DROP_REASONS = ("retired", "incomplete", "disagreement", "low_agreement", "tie", "both_bad", "truncated_chosen")
TRUNCATED_CHOSEN_POLICIES = ("drop", "keep")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class ExportConfig:
    name: str | None = opt(
        None, "export name, its folder under output_dir (default: round-<n>-<UTC time> or all-<UTC time>)"
    )
    round: str = opt("all", "round number, 'latest', or 'all' (every round and the imported pairs)")
    output_dir: str = opt("data/exports", "folder holding one folder per export")
    both_bad: str = opt("drop", "drop both-bad pairs, or 'negatives': keep their responses as unpaired KTO negatives")
    min_agreement: float = opt(
        0.0, "drop unadjudicated pairs whose judgments agree with the label less than this share"
    )
    include_incomplete: bool = opt(
        False, "keep pairs with fewer judgments than their overlap target (agreement pending)"
    )
    truncated_chosen: str = opt(
        "drop", "drop pairs whose preferred response was cut off at the token limit (it teaches not stopping), or keep"
    )

    def validate(self) -> None:
        if self.both_bad not in BOTH_BAD_POLICIES:
            raise ConfigError(f"both_bad must be one of {', '.join(BOTH_BAD_POLICIES)}, not {self.both_bad!r}")
        if not 0 <= self.min_agreement <= 1:
            raise ConfigError(f"min_agreement must be in [0, 1], not {self.min_agreement!r}")
        if self.truncated_chosen not in TRUNCATED_CHOSEN_POLICIES:
            raise ConfigError(f"truncated_chosen must be drop or keep, not {self.truncated_chosen!r}")
        if self.round not in ("all", "latest") and not self.round.isdigit():
            raise ConfigError(f"round must be a round number, 'latest' or 'all', not {self.round!r}")
        if self.name is not None and not _NAME.match(self.name):
            raise ConfigError(
                f"name must be letters, digits, '.', '_' or '-' (not starting with a symbol): {self.name!r}"
            )

    def policy(self) -> dict:
        """The fields that decide which rows are exported (recorded with the export)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("name", "output_dir")}


@dataclass
class Resolution:
    label: str | None  # 'a' or 'b' preferred, 'both_bad' kept as negatives; None when dropped
    dropped: str | None  # one of DROP_REASONS when dropped
    agreement: float | None
    margin: float


def resolve(row: dict, config: ExportConfig) -> Resolution:
    """The label one pair (a row of `Store.export_rows`) is exported with, under the policies of the module docstring."""
    choices, strengths, label = row["choices"], row["strengths"], row["final_choice"]
    if row["status"] == "retired":
        return Resolution(None, "retired", None, 0.0)
    by_judgments = row["label_source"] in ("majority", None)
    if by_judgments and not row["complete"] and not config.include_incomplete:
        return Resolution(None, "incomplete", None, 0.0)
    if label is None:
        return Resolution(None, "disagreement", None, 0.0)
    agreeing = [s for c, s in zip(choices, strengths) if c == label]
    agreement = len(agreeing) / len(choices) if choices else None
    margin = sum(STRENGTH_MARGIN[s] for s in agreeing) / len(agreeing) if agreeing else 1.0
    if by_judgments and agreement < config.min_agreement:
        return Resolution(None, "low_agreement", agreement, margin)
    if label == "tie" or (label == "both_bad" and config.both_bad == "drop"):
        return Resolution(None, label, agreement, margin)
    if label in ("a", "b") and row[f"{label}_finish_reason"] == "length" and config.truncated_chosen == "drop":
        return Resolution(None, "truncated_chosen", agreement, margin)
    return Resolution(label, None, agreement, margin)


def build_splits(table: pa.Table, config: ExportConfig) -> tuple[dict[str, pa.Table], dict[str, int]]:
    """Arrow tables per split (train, test and, with negatives, train_negatives, test_negatives) and drop counts.

    Labels are resolved in Python over the small columns; the texts are only ever moved by Arrow `take`.
    """
    small = table.select(["status", "choices", "strengths", "final_choice", "label_source", "complete",
                          "a_finish_reason", "b_finish_reason"]).to_pylist()
    split_of = ["test" if s == "heldout" else "train" for s in table["split"].to_pylist()]
    picks: dict[str, list[tuple[int, Resolution]]] = {"train": [], "test": []}
    negatives: dict[str, list[tuple[int, Resolution]]] = {"train": [], "test": []}
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for i, row in enumerate(small):
        r = resolve(row, config)
        if r.dropped:
            dropped[r.dropped] += 1
        else:
            (negatives if r.label == "both_bad" else picks)[split_of[i]].append((i, r))
    n = table.num_rows
    # Response a of row i is entry i of `responses`, response b is entry n + i.
    responses = pa.concat_arrays([table["response_a"].combine_chunks(), table["response_b"].combine_chunks()])
    num_judgments = pa.array([len(row["choices"]) for row in small], pa.int64())

    def columns(rows: list[int], chosen: list[int], resolutions: list[Resolution]) -> dict:
        return {
            "prompt": _take(table["prompt"], rows),
            "chosen": _take(responses, chosen),
            "pair_id": _take(table["pair_id"], rows),
            "round": _take(table["round_id"], rows),
            "num_judgments": _take(num_judgments, rows),
            "agreement": pa.array([r.agreement for r in resolutions], pa.float64()),
        }

    splits = {}
    for split, kept in picks.items():
        rows, resolutions = [i for i, _ in kept], [r for _, r in kept]
        part = columns(rows, [i if r.label == "a" else n + i for i, r in kept], resolutions)
        part["rejected"] = _take(responses, [n + i if r.label == "a" else i for i, r in kept])
        part["margin"] = pa.array([r.margin for r in resolutions], pa.float64())
        splits[split] = _table(part, split)
    if config.both_bad == "negatives":
        for split, kept in negatives.items():
            twice = [(i, r) for i, r in kept for _ in range(2)]  # both responses are negatives: rows a, b
            part = columns([i for i, _ in twice], [i + n * k for i, _ in kept for k in range(2)], [r for _, r in twice])
            part["completion"] = part.pop("chosen")
            part["label"] = pa.array([False] * len(twice))
            splits[f"{split}_negatives"] = _table(part, f"{split}_negatives")
    return splits, dropped


def _take(array, indices: list[int]):
    return array.take(pa.array(indices, pa.int64()))  # typed: an empty list of indices is still an index array


def _features(split: str):
    from datasets import Features, List, Value

    messages = List({"role": Value("string"), "content": Value("string")})
    meta = {name: Value("int64") for name in ("pair_id", "round", "num_judgments")} | {"agreement": Value("float64")}
    if split.endswith("_negatives"):
        return Features({"prompt": messages, "completion": messages, "label": Value("bool"), **meta})
    return Features({"prompt": messages, "chosen": messages, "rejected": messages, **meta, "margin": Value("float64")})


def _table(columns: dict, split: str) -> pa.Table:
    """The split's columns in the order and Arrow types of its datasets Features."""
    schema = _features(split).arrow_schema
    return pa.table([columns[name].cast(schema.field(name).type) for name in schema.names], schema=schema)


def export(store: Store, config: ExportConfig, actor: Actor | None = None) -> dict:
    """Build, write and register one export; returns its summary (name, path, counts). Raises if nothing to export.

    `actor`: the admin exporting from the app, checked when the rows are read and when the export is registered."""
    from datasets import Dataset, DatasetDict, DatasetInfo

    config.validate()
    round_id = _round_scope(store, config.round)
    scope = "all rounds and imported pairs" if round_id is None else f"round {round_id}"
    name = config.name or f"{'all' if round_id is None else f'round-{round_id}'}-{_utc_stamp()}"
    output_dir = Path(config.output_dir).resolve()
    final = output_dir / name
    if final.exists() or any(e["name"] == name for e in store.list_exports()):
        raise StoreError(f"an export named {name!r} already exists ({final})")

    table = store.export_rows(round_id, actor=actor)  # short transactions; all below runs with the database closed
    if table.num_rows == 0:
        raise StoreError(f"nothing to export from {scope}: no pair has a judgment or an adjudication")
    splits, dropped = build_splits(table, config)
    counts = {split: part.num_rows for split, part in splits.items()}
    if not any(counts.values()):
        reasons = ", ".join(f"{n} {reason}" for reason, n in dropped.items() if n)
        raise StoreError(f"nothing to export from {scope}: all {table.num_rows} judged pairs were dropped ({reasons})")
    judgments = pc.sum(pc.list_value_length(table["choices"])).as_py()
    counts |= {"judged_pairs": table.num_rows, "judgments": judgments, "dropped": dropped}
    rounds = sorted(set(table["round_id"].to_pylist()), key=lambda r: (r is None, r))

    dataset = DatasetDict(
        # A fingerprint of our own spares datasets from hashing the tables (it is only a cache key).
        {
            split: Dataset(part, info=DatasetInfo(features=_features(split)), fingerprint=f"{name}-{split}")
            for split, part in splits.items()
        }
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        # One shard per split: datasets writes an empty split as zero shards, which load_from_disk cannot read.
        dataset.save_to_disk(str(staging), num_shards=dict.fromkeys(dataset, 1))
        for split, part in dataset.items():
            part.to_parquet(str(staging / f"{split}.parquet"))
        card = dataset_card(name, store.path, scope, rounds, config, counts)
        (staging / "README.md").write_text(card)
        staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        export_id = store.register_export(name, str(final), round_id, config.policy(), counts, actor=actor)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)  # an unregistered export is not left behind
        raise
    return {"id": export_id, "name": name, "path": str(final), "counts": counts}


def _round_scope(store: Store, round_arg: str) -> int | None:
    if round_arg == "all":
        return None
    found = store.get_round(None if round_arg == "latest" else int(round_arg))
    if found is None:
        raise StoreError(
            "no round yet: export --round all" if round_arg == "latest" else f"round {round_arg} does not exist"
        )
    return found["id"]


def _utc_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def dataset_card(name: str, db_path: Path, scope: str, rounds: list, config: ExportConfig, counts: dict) -> str:
    """README.md: a Hugging Face dataset card (the YAML header lets `load_dataset(path)` find the Parquet files)."""
    splits = [s for s in counts if s in ("train", "test", "train_negatives", "test_negatives")]
    # load_dataset cannot read an empty Parquet split, so the header lists only splits (and configs) with rows.
    header = ["---", "configs:"]
    for config_name, suffix in (("default", ""), ("negatives", "_negatives")):
        files = [s for s in ("train" + suffix, "test" + suffix) if counts.get(s)]
        if files:
            header += [f"- config_name: {config_name}", "  data_files:"]
            header += [f"  - split: {s.removesuffix(suffix)}\n    path: {s}.parquet" for s in files]
    header += ["---", ""]
    round_names = ", ".join("imported" if r is None else str(r) for r in rounds)
    dropped = ", ".join(f"{reason} {n}" for reason, n in counts["dropped"].items())
    body = f"""# prefloop export `{name}`

Preference pairs labeled with prefloop, in TRL's conversational preference format (`prompt`, `chosen`, `rejected`
as message lists). Load with `datasets.load_from_disk("<this folder>")` or `datasets.load_dataset("<this folder>")`.

- Source database: `{db_path}`
- Scope: {scope}; rounds present: {round_names}
- Judged pairs read: {counts["judged_pairs"]} ({counts["judgments"]} judgments)
- Rows: {", ".join(f"{s} {counts[s]}" for s in splits)}
- Dropped pairs: {dropped}

## Split

`train` and `test` follow the prompt's split, fixed when the prompt entered the database (a hash of its content):
held-out prompts are only ever in `test`, in every export of every round.

## Policies

- Policy settings: `{json.dumps(config.policy(), sort_keys=True)}`
- The final label is the adjudication, else the gold answer, else the strict majority (more than half) of the
  judgments; a pair without one is dropped (disagreement). Pairs labeled by their judgments that have fewer than their
  overlap target are dropped as incomplete unless `include_incomplete` is set, and those with agreement below
  `min_agreement` are dropped.
- Ties are dropped. Both-bad pairs are dropped, or with `both_bad: negatives` both responses become unpaired negatives
  (`prompt`, `completion`, `label` = false) in the `negatives` config, for KTO-style training.
- A pair whose preferred response was cut off at the generation token limit is dropped unless `truncated_chosen` is
  `keep`: learning to prefer an unfinished answer teaches a model not to stop.

## Columns

- `prompt`: the conversation up to the user's last turn; `chosen`, `rejected`: one assistant message each
- `pair_id`: the pair in the source database; `round`: the round that generated it (null: imported)
- `num_judgments`: judgments of the pair; `agreement`: share of them that agree with the final label (null when an
  adjudication alone labels it)
- `margin`: mean strength of the agreeing judgments, slight = 0.5, clear = 1.0, not given = 1.0 (1.0 when only an
  adjudication labels the pair)
"""
    return "\n".join(header) + body
