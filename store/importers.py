"""Importing prompts and labeled pairs from files: read and validate the whole file, then store it in one transaction.

    from store.importers import import_file
    import_file(store, "hh-rlhf.jsonl")                   # ImportSummary(kind='pairs', inserted=..., duplicates=...)
    prefloop import store/seeds/prompts.jsonl --source seed

The file's extension picks the reader: .jsonl/.ndjson/.json (one JSON object per line; a .json file may also hold one
array), .csv (a header row), .parquet, .txt (one prompt per non-empty line). A record holds either a prompt or a pair:

prompts   {"prompt": "..."} · {"prompt": [messages]} · {"messages": [messages]} · {"text": "..."}
pairs     TRL standard           {"prompt": "...", "chosen": "...", "rejected": "..."}
          TRL conversational     {"prompt": [messages], "chosen": [assistant message], "rejected": [...]}
          implicit prompt        {"chosen": [whole conversation], "rejected": [whole conversation]}
          Anthropic HH           {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": "..."}
          OpenAI preference      {"input": {"messages": [...]}, "preferred_output": [assistant message],
                                  "non_preferred_output": [assistant message]}

With kind "auto" the first record decides: any of the fields chosen, rejected, preferred_output or non_preferred_output
makes it a pairs file. Whole conversations must differ only in their final assistant turn; what they share is the prompt.

A prompt record may carry a field "split", "train" or "heldout", which decides the prompt's split; without it (or
with it empty or null) the prompt's content hash decides (`store.prompts.split_for`). A prompt already stored keeps its
split: a record asking for another one is counted in the summary's split_conflicts, never applied.

Nothing touches the database until every record has been validated, so a malformed file imports nothing; the error
names the file, the line (or row) and the field. Duplicates (same prompt, same pair) are skipped and counted.

Judgement calls: a text of only whitespace or invisible format characters (Unicode categories Z* and Cf, such as a
zero-width space) is empty; an object that repeats a key, or a CSV header that names a column twice, is an error
rather than last-one-wins; messages print file names escaped (`printable`), so a name holding a newline, an ANSI escape
or another control character cannot forge or recolour terminal output.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from store.import_readers import READERS, ImportFileError, is_blank, not_a_file, printable, show_value, why_no_records
from store.prompts import SPLITS, Messages, PairIn, PromptIn

ROLES = ("system", "user", "assistant")
PAIR_FIELDS = ("chosen", "rejected", "preferred_output", "non_preferred_output")
KINDS = ("auto", "prompts", "pairs")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass
class ImportSummary:
    kind: str  # "prompts" or "pairs"
    inserted: int
    duplicates: int
    invalid: list[str] = dataclasses.field(default_factory=list)  # "file:line: problem" of each record skipped (skip_invalid)
    inserted_by_split: dict[str, int] = dataclasses.field(default_factory=dict)  # new prompts per split (prompts kind)
    split_conflicts: int = 0  # prompt records whose "split" differs from the split their stored prompt keeps


class _Invalid(Exception):
    """A problem with one record; the reader adds where the record is."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(f"field '{field}': {problem}" if field else problem)


def import_file(
    store, path: str | Path, kind: str = "auto", source: str | None = None, skip_invalid: bool = False
) -> ImportSummary:
    """Import every record of `path` in one transaction, or nothing (raising ImportFileError at the first invalid
    record). With skip_invalid, invalid records are left out and listed in the summary instead; the valid ones are
    still imported in one transaction (a file that cannot be read, or has no valid record, still imports nothing)."""
    path = Path(path)
    source = source or path.name
    invalid: list[str] = []
    kind, items = read_file(path, kind, source, invalid if skip_invalid else None)
    if kind == "prompts":
        added = store.add_prompts(items)
    else:
        added = store.add_imported_pairs(items, source)
    return ImportSummary(
        kind, added.inserted, added.duplicates, invalid, added.inserted_by_split, added.split_conflicts
    )


def read_file(
    path: str | Path, kind: str = "auto", source: str | None = None, invalid: list[str] | None = None
) -> tuple[str, list]:
    """Parse and validate a whole file without touching the database: ("prompts", [PromptIn]) or ("pairs", [PairIn]).
    An invalid record raises ImportFileError, or, when an `invalid` list is given, is appended to it and left out."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    path = Path(path)
    source = source or path.name
    suffix = path.suffix.lower()
    if suffix not in READERS:
        raise ImportFileError(f"{path}: unknown file type {suffix or '(no extension)'!r}; use {', '.join(READERS)}")
    if suffix == ".txt" and kind == "pairs":
        raise ImportFileError(
            f"{path}: a plain text file holds prompts, one per line; pairs need JSONL, CSV or Parquet"
        )
    if not path.is_file():
        raise ImportFileError(f"{path}: {not_a_file(path)}")
    records = READERS[suffix](path)
    if not records:
        raise ImportFileError(f"{path}: no records ({why_no_records(path)})")
    if kind == "auto":
        where, first = records[0]
        if not isinstance(first, dict):
            raise ImportFileError(f"{where}: expected an object with prompt or pair fields, got {_kind_of(first)}")
        kind = "pairs" if any(f in first for f in PAIR_FIELDS) else "prompts"
    parse = _prompt_record if kind == "prompts" else _pair_record
    items = []
    for where, record in records:
        try:
            items.append(parse(record, source))
        except _Invalid as exc:
            if invalid is None:
                raise ImportFileError(f"{where}: {exc}") from None
            invalid.append(printable(f"{where}: {exc}"))
    if not items:
        raise ImportFileError(f"{path}: no valid record ({len(records)} invalid; the first: {invalid[0]})")
    return kind, items


# --- readers: the file's records as (where, value), where is "file:line" or "file: row N" ---------------------------


# --- records: validate one record and turn it into a PromptIn or PairIn ---------------------------------------------


def _prompt_record(record, source: str) -> PromptIn:
    _require_object(record)
    for field in ("messages", "prompt", "text"):
        if field in record:
            return PromptIn(_prompt(record[field], field), source, _split(record.get("split")))
    raise _Invalid(None, f"expected a 'prompt', 'messages' or 'text' field; found {_keys(record)}")


def _split(value) -> str | None:
    """A prompt record's explicit split; None and "" (an empty CSV cell) leave it to the content hash."""
    if value is None or value == "":
        return None
    if value not in SPLITS:
        raise _Invalid(
            "split", f"expected 'train' or 'heldout' (or no value: the content hash decides), got {show_value(value)}"
        )
    return value


def _pair_record(record, source: str) -> PairIn:
    _require_object(record)
    if "preferred_output" in record or "non_preferred_output" in record:
        fields = ("preferred_output", "non_preferred_output")
        inputs = record.get("input")
        if not isinstance(inputs, dict):
            raise _Invalid("input", f"expected an object with 'messages', got {_kind_of(inputs)}")
        messages = _prompt(inputs.get("messages"), "input.messages", allow_text=False)
        chosen, rejected = (_reply(record.get(f), f) for f in fields)
    elif "chosen" in record or "rejected" in record:
        fields = ("chosen", "rejected")
        if "prompt" in record:
            messages = _prompt(record["prompt"], "prompt")
            chosen, rejected = (_reply(record.get(f), f) for f in fields)
        else:
            messages, chosen, rejected = _split_conversations(record.get("chosen"), record.get("rejected"))
    else:
        raise _Invalid(
            None,
            "expected 'chosen' and 'rejected' (TRL, Anthropic HH) or 'input', 'preferred_output' and "
            f"'non_preferred_output' (OpenAI); found {_keys(record)}",
        )
    if chosen == rejected:
        raise _Invalid(fields[1], f"the same response as '{fields[0]}'; a pair needs two different responses")
    return PairIn(messages, chosen, rejected, source)


def _prompt(value, field: str, allow_text: bool = True) -> Messages:
    """A prompt: a string (one user turn) or messages ending with a user turn."""
    if allow_text and isinstance(value, str):
        return [{"role": "user", "content": _text(value, field)}]
    messages = _messages(value, field, expected="a string or message list" if allow_text else "a message list")
    _check_prompt(messages, partial(_list_item, field), field)
    return messages


def _check_prompt(messages: Messages, turn_field, field: str) -> None:
    for i, message in enumerate(messages):
        if message["role"] == "system" and i > 0:
            raise _Invalid(f"{turn_field(i)}.role", "a system message may only come first")
    if messages[-1]["role"] != "user":
        raise _Invalid(field, f"the prompt must end with a user turn, not {messages[-1]['role']}")


def _messages(value, field: str, expected: str = "a message list") -> Messages:
    if not isinstance(value, list) or not value:
        raise _Invalid(field, f"expected {expected}, got {_kind_of(value)}")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            problem = f"expected a message object with 'role' and 'content', got {_kind_of(message)}"
            raise _Invalid(f"{field}[{i}]", problem)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise _Invalid(f"{field}[{i}].role", f"expected one of {', '.join(ROLES)}, got {show_value(role)}")
        messages.append({"role": role, "content": _text(message.get("content"), f"{field}[{i}].content")})
    return messages


def _reply(value, field: str) -> str:
    """A response: a string, or a list holding exactly one assistant message."""
    if isinstance(value, str):
        return _text(value, field)
    messages = _messages(value, field, expected="a string or message list")
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        roles = ", ".join(m["role"] for m in messages)
        raise _Invalid(field, f"expected exactly one assistant message, got {len(messages)} ({roles})")
    return messages[0]["content"]


def _split_conversations(chosen, rejected) -> tuple[Messages, str, str]:
    """Implicit prompt: two whole conversations (message lists or HH transcripts) that differ only in the last turn."""
    if isinstance(chosen, str):
        conversations = [_hh_messages(chosen, "chosen"), None]
        if not isinstance(rejected, str):
            raise _Invalid("rejected", f"expected a transcript string like 'chosen', got {_kind_of(rejected)}")
        conversations[1] = _hh_messages(rejected, "rejected")
        turn_field = _transcript_turn
    elif isinstance(chosen, list):
        if not isinstance(rejected, list):
            raise _Invalid("rejected", f"expected a message list like 'chosen', got {_kind_of(rejected)}")
        conversations = [_messages(chosen, "chosen"), _messages(rejected, "rejected")]
        turn_field = _list_item
    else:
        raise _Invalid("chosen", f"expected a string or message list, got {_kind_of(chosen)}")
    for field, conversation in zip(("chosen", "rejected"), conversations):
        if conversation[-1]["role"] != "assistant":
            raise _Invalid(field, "the conversation must end with an assistant turn (the response)")
        if len(conversation) < 2:
            raise _Invalid(field, "the conversation has no prompt before its response; add a 'prompt' field")
    (*prompt, last_chosen), (*prompt_rejected, last_rejected) = conversations
    if prompt != prompt_rejected:
        shorter = min(len(prompt), len(prompt_rejected))
        i = next((i for i in range(shorter) if prompt[i] != prompt_rejected[i]), shorter)
        raise _Invalid(
            turn_field("rejected", i),
            "differs from 'chosen' before the final assistant turn; both must share the prompt",
        )
    _check_prompt(prompt, partial(turn_field, "chosen"), "chosen")
    return prompt, last_chosen["content"], last_rejected["content"]


def _hh_messages(transcript: str, field: str) -> Messages:
    """'\\n\\nHuman: ...\\n\\nAssistant: ...' as messages; whitespace around each turn belongs to the format."""
    parts = _HH_TURN.split("\n\n" + _text(transcript, field).lstrip())
    if len(parts) < 3 or parts[0].strip():
        raise _Invalid(
            field, "expected a 'prompt' field or an Anthropic HH transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...')"
        )
    messages = []
    for i, (speaker, content) in enumerate(zip(parts[1::2], parts[2::2])):
        if is_blank(content):
            raise _Invalid(f"{field} (turn {i + 1})", f"the {speaker} turn is empty")
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def _list_item(field: str, i: int) -> str:
    return f"{field}[{i}]"


def _transcript_turn(field: str, i: int) -> str:
    return f"{field} (turn {i + 1})"


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise _Invalid(field, f"expected a string, got {_kind_of(value)}")
    if is_blank(value):
        raise _Invalid(field, "must not be empty")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # JSON can spell lone surrogates ("\ud800") that no UTF-8 text may hold
        raise _Invalid(field, "contains an unpaired surrogate, which is not valid Unicode text") from None
    return value


def _require_object(record) -> None:
    if not isinstance(record, dict):
        raise _Invalid(None, f"expected an object, got {_kind_of(record)}")


def _kind_of(value) -> str:
    if value is None:
        return "nothing (null or missing)"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    name = names.get(type(value), type(value).__name__)
    if isinstance(value, (list, str)) and not value:
        name = f"an empty {name.split()[-1]}"
    return name


def _keys(record: dict) -> str:
    keys = [str(k) for k in record][:8]
    return ", ".join(show_value(k) for k in keys) if keys else "no fields"
