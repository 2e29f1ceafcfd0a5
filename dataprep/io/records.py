"""Records: one json line (or parquet row) → a checked value, or the reason it is bad.

Shared by every reader of records: the pretrain encoder, the SFT encoder, raw mode, the engine
probe and verify-tokenizer. Reasons are what the rejects file and the one-line errors say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator

from dataprep.io.sources import ChunkReader, LineNumbers, read_chunk_lines

MAX_REJECT_CHARS = 1 << 20  # the rejects file keeps at most this much of a bad record


@dataclass
class Rejected:
    local: int
    """Index of the line (record for JSON arrays, row for parquet) within the chunk."""
    reason: str
    record: str


def one_object_per_line(lines: list[bytes], decoded: int) -> bool:
    """Whether ``decoded`` values (msgspec's ``decode_lines``) came one per non-blank line.

    Equal counts are not enough: a value split across two lines and two values on another line
    cancel out. Each non-blank line starting with '{' and ending with '}' rules out a split
    value: JSON allows ``}`` followed by ``{`` only between top-level values.
    """
    nonblank = 0
    for line in lines:
        line = line.strip()
        if line:
            if line[:1] != b"{" or line[-1:] != b"}":
                return False
            nonblank += 1
    return nonblank == decoded


def type_name(value: Any) -> str:
    """A json value's type as the reasons name it (object, array, string, null…)."""
    return "null" if value is None else {dict: "object", list: "array", str: "string",
                                          bool: "boolean"}.get(type(value), type(value).__name__)


def check_value(key: str, value: Any) -> str | None:
    """Why a record's value for key cannot be tokenized, or None if it can."""
    items = value if isinstance(value, list) else [value]
    for n, item in enumerate(items):
        where = f"key {key!r}" + (f" item {n}" if isinstance(value, list) else "")
        if not isinstance(item, str):
            return f"{where} is not a string (got {type_name(item)})"
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"{where} cannot be encoded as UTF-8: lone surrogate "
                    f"\\u{ord(item[exc.start]):04x} at character {exc.start}")
    return None


def check_record(obj: Any, json_keys: tuple[str, ...]) -> str | None:
    if not isinstance(obj, dict):
        return f"not a JSON object (got {type_name(obj)})"
    for key in json_keys:
        if key not in obj:
            return f"missing key {key!r}"
        reason = check_value(key, obj[key])
        if reason:
            return reason
    return None


def load_line(line: bytes) -> tuple[Any, str | None]:
    """One line's JSON value → (value, None) or (None, reason)."""
    try:
        return json.loads(line), None
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}"
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} (column {exc.colno})"


def parse_line(line: bytes, json_keys: tuple[str, ...]) -> tuple[Any, str | None]:
    """One line → (record, None) or (None, reason)."""
    obj, reason = load_line(line)
    if reason is not None:
        return None, reason
    reason = check_record(obj, json_keys)
    return (obj, None) if reason is None else (None, reason)


def valid_texts(files: list[str], json_keys: tuple[str, ...]) -> Iterator[tuple[str, int, str]]:
    """(file, line, text) for each text of the valid records of the inputs, in order, skipping
    bad records and parquet files: the samples for the engine probe and verify-tokenizer."""
    numbers = LineNumbers()
    for chunk in ChunkReader(files, list(json_keys), chunk_bytes=1 << 16):
        if chunk.kind == "parquet":
            continue
        lines = read_chunk_lines(chunk)
        where = numbers.resolver(chunk, len(lines))
        for i, line in enumerate(lines):
            obj, reason = parse_line(line, json_keys) if line.strip() else (None, "blank")
            if reason is not None:
                continue
            for key in json_keys:
                for text in obj[key] if isinstance(obj[key], list) else [obj[key]]:
                    yield chunk.path, where(i), text


def clip_record(text: str) -> str:
    return text if len(text) <= MAX_REJECT_CHARS else text[:MAX_REJECT_CHARS] + "…[truncated]"
