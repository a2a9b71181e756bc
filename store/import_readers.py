"""Reading an import file into records, whatever its format: each record comes with where it is ("file:line", or
"file: row N" for Parquet), and errors name the file. JSON objects that repeat a key and CSV headers that repeat a
column are errors; file names are printed escaped (`printable`). `store/importers.py` validates the records."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import unicodedata
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from store.db import StoreError


def printable(text: str) -> str:
    """`text` with every character a terminal would act on, or that would hide what follows, written as a Python
    escape: control characters (newline, carriage return, the ESC of ANSI sequences, DEL, C1), format characters
    (a right-to-left override, a zero-width space), line and paragraph separators, and the bytes of a file name that
    are not UTF-8 (which Python holds as surrogate escapes; shown as \\xNN)."""
    return "".join(_escaped(c) if unicodedata.category(c) in _UNPRINTABLE else c for c in text)


_UNPRINTABLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def _escaped(c: str) -> str:
    if 0xDC80 <= ord(c) <= 0xDCFF:  # os.fsdecode's escape of an undecodable byte
        return f"\\x{ord(c) - 0xDC00:02x}"
    return c.encode("unicode_escape").decode("ascii")


def not_a_file(path: Path) -> str:
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symlink loop (too many levels of symbolic links)"
        if exc.errno == errno.ENOENT and path.is_symlink():
            return f"a broken symlink (its target {os.readlink(path)} does not exist)"
        return "no such file" if exc.errno == errno.ENOENT else f"cannot read: {exc.strerror or exc}"
    return "not a file"


def why_no_records(path: Path) -> str:
    """What a readable file without records holds."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "the table has no rows"
    text = _read_text(path)
    if not text:
        return "the file is empty"
    if is_blank(text):
        lines = text.count("\n") + (not text.endswith("\n"))
        return f"the file holds only blank lines ({lines})"
    return "the file holds a header row and no data rows" if suffix == ".csv" else "the JSON array is empty"


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ImportFileError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at column {column})"
        ) from None
    return text.removeprefix("\ufeff")


def _json_value(text: str, where: str, array: bool = False):
    """The JSON value of `text` (a JSON array of records when `array`: an error then names the record)."""
    repeated: list[tuple[dict, str]] = []  # (object, key) of each object that repeats a key
    try:
        value = json.loads(text, object_pairs_hook=partial(_json_object, repeated))
    except json.JSONDecodeError as exc:
        raise ImportFileError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # a number with too many digits, nesting deeper than Python recurses
        raise ImportFileError(f"{where}: invalid JSON: {str(exc) or type(exc).__name__}") from None
    if repeated:  # json.loads keeps the last value of a repeated key; which one the writer meant is a guess
        holder, key = repeated[0]
        where = f"{where}: record {_record_holding(value, holder)}" if array else where
        raise ImportFileError(f"{where}: the key {show_value(key)} appears more than once in one object")
    return value


def _json_object(repeated: list, pairs: list) -> dict:
    value = dict(pairs)
    if len(value) < len(pairs):
        seen: set = set()
        repeated.append((value, next(key for key, _ in pairs if key in seen or seen.add(key))))
    return value


def _record_holding(records: list, target: dict) -> int:
    """The 1-based index of the record that holds `target` (searched without recursion: JSON nests deep)."""
    for i, record in enumerate(records, 1):
        stack = [record]
        while stack:
            item = stack.pop()
            if item is target:
                return i
            stack.extend(item.values() if isinstance(item, dict) else item if isinstance(item, list) else ())
    raise AssertionError("the object is in no record")


def _json_records(path: Path) -> list:
    text = _read_text(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        array = _json_value(text, str(path), array=True)  # text starting with "[" is a list or invalid JSON
        return [(f"{path}: record {i}", value) for i, value in enumerate(array, 1)]
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines() breaks on.
    return [
        (f"{path}:{n}", _json_value(line, f"{path}:{n}")) for n, line in enumerate(text.split("\n"), 1) if line.strip()
    ]


def _csv_records(path: Path) -> list:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    records = []
    try:
        if reader.fieldnames is None:  # reading the header here makes line_num count it below
            return []
        for column, name in enumerate(reader.fieldnames, 1):
            if name in reader.fieldnames[: column - 1]:
                first = reader.fieldnames.index(name) + 1
                raise ImportFileError(
                    f"{path}:{reader.line_num}: the header names the column {show_value(name)} twice (columns {first} and "
                    f"{column})"
                )
        start = reader.line_num + 1
        for row in reader:
            if None in row:
                raise ImportFileError(f"{path}:{start}: the row has more values than the header has columns")
            records.append((f"{path}:{start}", row))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ImportFileError(f"{path}:{reader.line_num}: malformed CSV: {exc}") from None
    return records


def _parquet_records(path: Path) -> list:
    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError, TypeError) as exc:
        raise ImportFileError(f"{path}: not a readable Parquet file: {exc}") from None
    return [(f"{path}: row {i}", row) for i, row in enumerate(rows, 1)]


def _text_records(path: Path) -> list:
    return [
        (f"{path}:{n}", {"prompt": line.strip()})
        for n, line in enumerate(_read_text(path).split("\n"), 1)
        if not is_blank(line)
    ]


READERS = {
    ".jsonl": _json_records,
    ".ndjson": _json_records,
    ".json": _json_records,
    ".csv": _csv_records,
    ".parquet": _parquet_records,
    ".txt": _text_records,
}


class ImportFileError(StoreError):
    """A file that cannot be imported; the message names the file, line or row, and field (escaped: `printable`)."""

    def __init__(self, message: str):
        super().__init__(printable(message))


def is_blank(text: str) -> bool:
    """Nothing a reader would see: only whitespace and invisible characters (Unicode categories Z* and Cf)."""
    return all(c.isspace() or unicodedata.category(c)[0] == "Z" or unicodedata.category(c) == "Cf" for c in text)


def show_value(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
