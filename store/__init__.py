"""The DuckDB store: schema, migrations and the Python API. The only place in the project where SQL lives.

    from store import Store, open_store
    store = Store("data/prefloop.duckdb")
    store = open_store()            # $PREFLOOP_DB, else data/prefloop.duckdb
    store.add_prompts([PromptIn([{"role": "user", "content": "Hi"}], source="seed")])
"""

import os
from pathlib import Path

from store.annotators import AnnotatorsMixin
from store.assignment import AssignmentMixin, PairReassigned
from store.browse import AGREEMENTS, BrowseFilter, BrowseMixin
from store.db import DEFAULT_LOCK_TIMEOUT, StoreBusy, StoreError
from store.evaluation import EvaluationMixin
from store.exports import ExportsMixin
from store.generation import Candidates, CandidatesSummary, GenerationMixin
from store.labels import CHOICES, Annotator, Judgment, LabelsMixin
from store.prompts import AddSummary, PairIn, PromptIn, PromptsMixin, ResponseIn
from store.reports import ReportsMixin
from store.runs import RunsMixin
from store.sessions import Actor, NotAllowed, NotAuthorized, SessionEnded, SessionsMixin
from store.store import BaseStore, latest_version


class Store(PromptsMixin, AnnotatorsMixin, LabelsMixin, AssignmentMixin, SessionsMixin, RunsMixin, GenerationMixin,
            ExportsMixin, ReportsMixin, EvaluationMixin, BrowseMixin, BaseStore):
    """All entity operations over one database file; every method is one short transaction."""


DEFAULT_DB_PATH = "data/prefloop.duckdb"  # relative to the working directory, as the Makefile runs everything


def default_db_path() -> Path:
    """The database every command and the app use unless told otherwise: $PREFLOOP_DB, else DEFAULT_DB_PATH."""
    return Path(os.environ.get("PREFLOOP_DB") or DEFAULT_DB_PATH)


def open_store(path: str | Path | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> Store:
    """The Store of `path` (None: `default_db_path()`), migrated to the newest schema."""
    return Store(path or default_db_path(), lock_timeout=lock_timeout)


__all__ = [
    "AGREEMENTS",
    "CHOICES",
    "Actor",
    "AddSummary",
    "Annotator",
    "BrowseFilter",
    "Candidates",
    "CandidatesSummary",
    "Judgment",
    "NotAllowed",
    "NotAuthorized",
    "PairReassigned",
    "PairIn",
    "PromptIn",
    "ResponseIn",
    "DEFAULT_DB_PATH",
    "SessionEnded",
    "Store",
    "StoreBusy",
    "StoreError",
    "default_db_path",
    "latest_version",
    "open_store",
]
