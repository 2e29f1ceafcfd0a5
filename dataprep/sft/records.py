"""SFT records → token ids and loss masks: what each worker does to one chunk, and what the raw
dataset does to one record (the same code, so both give the same ids).

Per record: JSON → `conversations.to_conversation` (alpaca, messages or ShareGPT, checked) →
the chat template's segments → the engine's ids for all segments of the chunk in one batch call
→ ids and mask per record → `sft_format.fit_record` (truncate, or drop when the first prompt
fills ``seq_length``). A record that cannot become a conversation is rejected with its reason.

Cost: JSON decoding (msgspec, ~1 GB/s) and template rendering (~2 µs per segment for named
templates, ~100 µs per record for a tokenizer's Jinja template) are small next to tokenization.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dataprep.sft.chat_template import TemplateError, encode_segments, get_renderer
from dataprep.sft.conversations import RecordError, to_conversation
from dataprep.io.records import Rejected, clip_record, load_line, one_object_per_line
from dataprep.tokenization.worker_engine import worker_engine
from dataprep.io.sources import Chunk, parquet_file, read_chunk_data, split_lines
from dataprep.tokenization.tokenizers import Engine, auto_tokenizer
from dataset_engine.sft_format import FIT_DROPPED_LONG, FIT_DROPPED_PROMPT, FIT_TRUNCATED, fit_record


@dataclass(frozen=True, kw_only=True)
class SFTOptions:
    fmt: str = "auto"
    """Record format: auto (per record), alpaca, messages or sharegpt."""
    template: str
    """A named template (dataprep.sft.chat_template.TEMPLATES) or ``tokenizer`` (its own Jinja one)."""
    eos_text: str
    """The tokenizer's eos token as text (templates that end a turn with it)."""
    tokenizer_path: str
    """Loaded in the worker only for the ``tokenizer`` template."""
    system: str | None = None
    """System prompt for records without one."""
    seq_length: int | None = None
    """Truncate (or drop) records to this many tokens; None keeps them whole."""
    drop_long: bool = False
    """Drop records longer than seq_length instead of truncating them."""
    trust_remote_code: bool = False
    dtype: str = "int32"
    """numpy dtype of the ids handed to the writer."""
    stop_at_first_reject: bool = True
    """Fail-fast mode: stop reading a chunk at its first bad record."""


@dataclass
class SFTChunkResult:
    index: int
    n_lines: int = 0
    records: int = 0
    written: int = 0
    truncated: int = 0
    dropped_prompt: int = 0
    dropped_long: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    mask: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class SFTEncoder:
    """Records → (ids, mask, fit status) or a reason, with one engine call per batch of records."""

    def __init__(self, engine: Engine, options: SFTOptions, hf_tokenizer=None) -> None:
        self.engine = engine
        self.options = options
        if options.template == "tokenizer" and hf_tokenizer is None:
            hf_tokenizer = auto_tokenizer(options.tokenizer_path, options.trust_remote_code)
        self.renderer = get_renderer(options.template, hf_tokenizer)

    def encode_objects(self, objects: list[Any]) -> list[tuple[np.ndarray, np.ndarray, str] | str]:
        """Per record: (ids int64, mask bool, fit status) or the reason it is rejected."""
        o = self.options
        rendered, reasons = [], []
        for obj in objects:
            try:
                turns = to_conversation(obj, o.fmt, o.system)
                rendered.append(self.renderer.segments(turns, o.eos_text))
                reasons.append(None)
            except (RecordError, TemplateError) as exc:
                reasons.append(str(exc))
        encoded = iter(encode_segments(rendered, self.engine.encode_batch)) if rendered else iter(())
        return [reason if reason is not None else
                fit_record(*next(encoded), o.seq_length, o.drop_long) for reason in reasons]

    def encode_chunk(self, chunk: Chunk) -> SFTChunkResult:
        result = SFTChunkResult(index=chunk.index)
        locals_, objects = self._records(chunk, result)
        ids, masks, lengths = [], [], []
        for local, obj, outcome in zip(locals_, objects, self.encode_objects(objects)):
            if isinstance(outcome, str):
                result.rejected.append(Rejected(local, outcome, clip_record(
                    json.dumps(obj, ensure_ascii=False, default=str))))
                if self.options.stop_at_first_reject:
                    break
                continue
            rec_ids, rec_mask, status = outcome
            if status in (FIT_DROPPED_PROMPT, FIT_DROPPED_LONG):
                result.dropped_prompt += status == FIT_DROPPED_PROMPT
                result.dropped_long += status == FIT_DROPPED_LONG
                continue
            result.truncated += status == FIT_TRUNCATED
            ids.append(rec_ids)
            masks.append(rec_mask)
            lengths.append(len(rec_ids))
        result.rejected.sort(key=lambda r: r.local)  # JSON and conversation rejects, in line order
        result.written = len(lengths)
        if lengths:
            result.ids = np.concatenate(ids).astype(self.options.dtype)
            result.mask = np.concatenate(masks).astype(np.uint8)
            result.lengths = np.asarray(lengths, np.int64)
        return result

    def _records(self, chunk: Chunk, result: SFTChunkResult) -> tuple[list[int], list[Any]]:
        """(local line index, JSON value) of each record of the chunk; bad JSON is rejected here."""
        if chunk.kind == "parquet":
            rows = parquet_file(chunk.path).read_row_group(chunk.start).to_pylist()
            result.n_lines = result.records = len(rows)
            return list(range(len(rows))), rows
        data = read_chunk_data(chunk)
        lines = split_lines(data)
        result.n_lines = len(lines)
        nonblank = [i for i, line in enumerate(lines) if line.strip()]
        result.records = len(nonblank)
        objects = _decode_lines(data)
        if objects is not None and one_object_per_line(lines, len(objects)):
            return nonblank, objects
        kept_locals, kept = [], []
        for i in nonblank:
            obj, reason = load_line(lines[i])
            if reason is not None:
                result.rejected.append(Rejected(i, reason, clip_record(lines[i].decode("utf-8", "replace"))))
                if self.options.stop_at_first_reject:
                    break
                continue
            kept_locals.append(i)
            kept.append(obj)
        return kept_locals, kept


def _decode_lines(data: bytes) -> list[Any] | None:
    import msgspec

    try:
        return msgspec.json.Decoder().decode_lines(data)
    except Exception:  # msgspec.DecodeError / UnicodeDecodeError: redo line by line
        return None


# -- worker process entry point ------------------------------------------------------------------
_ENCODERS: dict[SFTOptions, SFTEncoder] = {}


def encode_sft_chunk(options: SFTOptions, chunk: Chunk) -> SFTChunkResult:
    """One chunk's records, in a worker started by `worker_engine.init_worker`."""
    encoder = _ENCODERS.get(options)
    if encoder is None or encoder.engine is not worker_engine():
        encoder = _ENCODERS[options] = SFTEncoder(worker_engine(), options)
    return encoder.encode_chunk(chunk)
