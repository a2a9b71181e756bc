"""The DuckDB store: schema, migrations and the Python API. The only place in the project where SQL lives.

    from store import Store
    store = Store("data/prefloop.duckdb")
    store.add_prompts([PromptIn([{"role": "user", "content": "Hi"}], source="seed")])
"""

from store.assignment import AssignmentMixin, PairReassigned
from store.browse import AGREEMENTS, BrowseFilter, BrowseMixin
from store.db import StoreBusy, StoreError
from store.evaluation import EvaluationMixin
from store.generation import Candidates, CandidatesSummary, GenerationMixin
from store.labels import CHOICES, Annotator, Judgment, LabelsMixin
from store.prompts import AddSummary, PairIn, PromptIn, PromptsMixin, ResponseIn
from store.review import ReviewMixin
from store.runs import RunsMixin
from store.sessions import Actor, NotAllowed, NotAuthorized, SessionEnded, SessionsMixin
from store.store import BaseStore, latest_version


class Store(PromptsMixin, LabelsMixin, AssignmentMixin, SessionsMixin, RunsMixin, GenerationMixin, ReviewMixin,
            EvaluationMixin, BrowseMixin, BaseStore):
    """All entity operations over one database file; every method is one short transaction."""


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
    "SessionEnded",
    "Store",
    "StoreBusy",
    "StoreError",
    "latest_version",
]
