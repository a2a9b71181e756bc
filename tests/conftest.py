"""Shared fixtures: a fresh DuckDB file per test and a tiny random chat model (seconds to build, no hub)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from store import Store
from tests.tiny_model import build_chat_model, build_stopping_model, build_tiny_model


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "test.duckdb"


@pytest.fixture
def store(db_path):
    return Store(db_path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer Llama with a byte-level BPE tokenizer and a ChatML template, saved as an HF checkpoint."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def stopping_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model biased towards its end-of-turn token: responses of many lengths, some cut at the limit."""
    return build_stopping_model(tiny_model_dir, tmp_path_factory.mktemp("stopping-model"))


@pytest.fixture(scope="session")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model fine-tuned to answer in 1 to 16 words and end its turn (a learned end-of-turn token)."""
    return build_chat_model(tiny_model_dir, tmp_path_factory.mktemp("chat-model"))
