"""Records → token documents: what each worker does to one chunk.

Per record and json key, the document is the tokenizer's ids for the value, followed by EOD
(Pai's `--append-eod`). A value that is a list of strings is a pre-split document: one sequence
per non-empty item, EOD after the last (as Megatron's preprocess_data.py). A document with no
tokens is skipped and counted as empty.

Fast path: msgspec decodes the whole chunk at once, reading only the json keys, and the engine
encodes all texts in one call; documents are assembled with numpy, no Python loop per record.
If anything in the chunk is off (invalid JSON, a missing key, a non-string, a lone surrogate),
the chunk is redone record by record with the standard json module, which names the reason for
each bad record. Costs: ~1 GB/s for decoding, then the engine's own speed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Union

import numpy as np

from dataprep.sources import (Chunk, ChunkReader, LineNumbers, parquet_file, read_chunk_data,
                              read_chunk_lines, split_lines)
from dataprep.tokenizers import Engine

MAX_REJECT_CHARS = 1 << 20  # the rejects file keeps at most this much of a bad record


@dataclass(frozen=True, kw_only=True)
class EncodeOptions:
    json_keys: tuple[str, ...]
    """Record fields to tokenize; each gets its own idxmap."""
    append_eod: bool
    """Add the EOD id after each document."""
    eod: int | None
    """The EOD id (the tokenizer's eos); required when append_eod."""
    dtype: str
    """numpy dtype name of the output tokens (uint16 or int32)."""
    stop_at_first_reject: bool
    """Fail-fast mode: stop reading a chunk at its first bad record."""

    def __post_init__(self) -> None:
        if not self.json_keys:
            raise ValueError("json_keys must name at least one key")
        if self.append_eod and self.eod is None:
            raise ValueError("append_eod needs an eod id")


@dataclass
class KeyTokens:
    """The documents of one json key in one chunk, ready for IdxmapWriter.add_documents."""

    tokens: np.ndarray
    sequence_lengths: np.ndarray
    sequences_per_document: np.ndarray
    empty: int = 0


@dataclass
class Rejected:
    local: int
    """Index of the line (record for JSON arrays, row for parquet) within the chunk."""
    reason: str
    record: str


@dataclass
class ChunkResult:
    index: int
    n_lines: int = 0
    records: int = 0
    written: int = 0
    empty: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    keys: dict[str, KeyTokens] = field(default_factory=dict)


class RecordDecoder:
    """Fast whole-chunk decoding of the json keys with msgspec."""

    def __init__(self, json_keys: tuple[str, ...]) -> None:
        import msgspec

        value = Union[str, list[str]]
        fields = [(f"f{i}", value) for i in range(len(json_keys))]
        record = msgspec.defstruct("Record", fields, rename={f"f{i}": k for i, k in enumerate(json_keys)})
        self._decoder = msgspec.json.Decoder(record)
        self._names = [f"f{i}" for i in range(len(json_keys))]

    def decode(self, data: bytes) -> list[list[Any]] | None:
        """Values per key for every record, or None if any line is not a clean record."""
        try:
            records = self._decoder.decode_lines(data)
        except Exception:  # msgspec.DecodeError / ValidationError / UnicodeDecodeError
            return None
        return [[getattr(r, n) for r in records] for n in self._names]


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


def _type_name(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "array", str: "string",
                                          bool: "boolean"}.get(type(value), type(value).__name__)


def check_value(key: str, value: Any) -> str | None:
    """Why a record's value for key cannot be tokenized, or None if it can."""
    items = value if isinstance(value, list) else [value]
    for n, item in enumerate(items):
        where = f"key {key!r}" + (f" item {n}" if isinstance(value, list) else "")
        if not isinstance(item, str):
            return f"{where} is not a string (got {_type_name(item)})"
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (f"{where} cannot be encoded as UTF-8: lone surrogate "
                    f"\\u{ord(item[exc.start]):04x} at character {exc.start}")
    return None


def check_record(obj: Any, json_keys: tuple[str, ...]) -> str | None:
    if not isinstance(obj, dict):
        return f"not a JSON object (got {_type_name(obj)})"
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


class DocumentEncoder:
    """Turns one chunk into token documents per json key."""

    def __init__(self, engine: Engine, options: EncodeOptions) -> None:
        self.engine = engine
        self.options = options
        self.dtype = np.dtype(options.dtype)
        self._decoder = RecordDecoder(options.json_keys)

    def encode(self, chunk: Chunk) -> ChunkResult:
        result = ChunkResult(index=chunk.index)
        if chunk.kind == "parquet":
            values = self._parquet_values(chunk, result)
        else:
            values = self._line_values(chunk, result)
        written = np.zeros(len(values[0]), dtype=bool)
        for key, column in zip(self.options.json_keys, values):
            result.keys[key], nonempty = self._documents(column)
            written |= nonempty
        result.written = int(written.sum())
        result.empty = result.records - result.written - len(result.rejected)
        return result

    # -- records ---------------------------------------------------------------------------
    def _line_values(self, chunk: Chunk, result: ChunkResult) -> list[list[Any]]:
        data = read_chunk_data(chunk)
        lines = split_lines(data)
        result.n_lines = len(lines)
        values = self._decoder.decode(data)
        # msgspec checked every record (lone surrogates included); it also accepts a value split
        # across lines or two on one line, so the lines must each hold exactly one object
        if values is not None and one_object_per_line(lines, len(values[0])):
            result.records = len(values[0])
            return values
        # Slow path: record by record, naming each bad one.
        keys = self.options.json_keys
        columns: list[list[Any]] = [[] for _ in keys]
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            result.records += 1
            obj, reason = parse_line(line, keys)
            if reason is not None:
                result.rejected.append(Rejected(i, reason, clip_record(line.decode("utf-8", "replace"))))
                if self.options.stop_at_first_reject:
                    break
                continue
            for col, key in zip(columns, keys):
                col.append(obj[key])
        return columns

    def _parquet_values(self, chunk: Chunk, result: ChunkResult) -> list[list[Any]]:
        table = parquet_file(chunk.path).read_row_group(chunk.start, columns=list(self.options.json_keys))
        raw = [table.column(k).to_pylist() for k in self.options.json_keys]
        n = table.num_rows
        result.n_lines = result.records = n
        columns: list[list[Any]] = [[] for _ in raw]
        for i in range(n):
            row = {k: col[i] for k, col in zip(self.options.json_keys, raw)}
            reason = check_record(row, self.options.json_keys)
            if reason is not None:
                result.rejected.append(Rejected(i, reason, clip_record(json.dumps(row, ensure_ascii=False, default=str))))
                if self.options.stop_at_first_reject:
                    break
                continue
            for col, key in zip(columns, self.options.json_keys):
                col.append(row[key])
        return columns

    # -- tokens ----------------------------------------------------------------------------
    def _documents(self, column: list[Any]) -> tuple[KeyTokens, np.ndarray]:
        """The key's documents, and which records produced one."""
        if all(type(v) is str for v in column):
            texts, doc_of_seq = column, np.arange(len(column))
        else:  # pre-split documents: one text per item, remembering whose item it is
            texts, owners = [], []
            for r, value in enumerate(column):
                items = value if isinstance(value, list) else [value]
                texts.extend(items)
                owners.extend([r] * len(items))
            doc_of_seq = np.asarray(owners, dtype=np.int64)
        ids, offsets = self.engine.encode_batch(texts)
        lengths = np.diff(offsets)
        keep = lengths > 0  # empty sequences are dropped, as Megatron does; they hold no ids
        kept_docs = doc_of_seq[keep]
        seq_lengths = lengths[keep]
        is_last = np.ones(len(kept_docs), dtype=bool)  # the last kept sequence of its document
        is_last[:-1] = kept_docs[:-1] != kept_docs[1:]
        if self.options.append_eod:
            ids = np.insert(ids, offsets[1:][keep][is_last], self.options.eod)
            seq_lengths = seq_lengths + is_last
        if ids.size and int(ids.max()) > np.iinfo(self.dtype).max:
            raise ValueError(f"token id {int(ids.max())} does not fit the output dtype {self.dtype}")
        docs, per_doc = np.unique(kept_docs, return_counts=True)
        nonempty = np.zeros(len(column), dtype=bool)
        nonempty[docs] = True
        tokens = KeyTokens(tokens=ids.astype(self.dtype), sequence_lengths=seq_lengths.astype(np.int32),
                           sequences_per_document=per_doc.astype(np.int64),
                           empty=len(column) - len(docs))
        return tokens, nonempty


# -- worker process entry points -------------------------------------------------------------
_ENGINE: Engine | None = None
_INIT_ERROR: str | None = None
_ENCODERS: dict[EncodeOptions, DocumentEncoder] = {}


def init_worker(engine_spec) -> None:
    """Build the engine once per process (spawned workers import no transformers).

    A failure is kept, not raised, so the probe can report it and the caller try another engine.
    """
    from dataprep.tokenizers import build_engine

    global _ENGINE, _INIT_ERROR
    _ENGINE, _INIT_ERROR = None, None
    _ENCODERS.clear()
    try:
        _ENGINE = build_engine(engine_spec)
    except ImportError as exc:
        _INIT_ERROR = f"not installed ({exc})"
    except Exception as exc:  # an engine that cannot load this tokenizer is not fatal
        _INIT_ERROR = f"cannot load this tokenizer ({type(exc).__name__}: {exc})"


def worker_engine() -> Engine:
    """This worker's engine (set by `init_worker`)."""
    if _ENGINE is None:
        raise RuntimeError(f"the worker has no engine: {_INIT_ERROR}")
    return _ENGINE


def encode_probe(texts: list[str]) -> tuple[np.ndarray, np.ndarray] | str:
    """The worker engine's ids for the probe texts, or why the engine is unavailable."""
    if _ENGINE is None:
        return _INIT_ERROR or "not initialised"
    try:
        return _ENGINE.encode_batch(texts)
    except Exception as exc:  # e.g. an engine bug on an odd probe text: not trusted, not fatal
        return f"failed on the probe ({type(exc).__name__}: {exc})"


def encode_chunk(options: EncodeOptions, chunk: Chunk) -> ChunkResult:
    """One chunk's documents; options travel with the task (the pool starts before they are known)."""
    encoder = _ENCODERS.get(options)
    if encoder is None:
        encoder = _ENCODERS[options] = DocumentEncoder(worker_engine(), options)
    return encoder.encode(chunk)
