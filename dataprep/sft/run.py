"""The SFT pipeline: alpaca / messages / ShareGPT files → token ids + loss masks → SFT idxmaps.

    source files ─ shards ─ ChunkReader ─▶ chunks ─ workers (or Ray tasks): SFTEncoder ─▶ records
        (ids, mask) ─ in chunk order ─▶ per shard: NativeSFTWriter + marker ({PREFIX}.work/)
        ─ merge in shard order ─▶ {PREFIX}_text_document + _loss_mask_document
        └ --layout pai: the merged records (in a temporary directory) ─ packing plan ─▶ Pai rows

Every record read is written, rejected (file:line and reason) or dropped as too long (counted).
Outputs go to temporary names and are renamed when complete; the bytes do not depend on the
worker count or engine, and a crashed run resumes from its finished shards (`shards.py`). Layouts: dataset_engine/sft_format.py and docs/FORMAT.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from dataprep import __version__
from dataprep.io import storage
from dataprep.sft.chat_template import TemplateError, get_renderer
from dataprep.sft.conversations import FORMATS, RecordError, to_conversation
from dataprep.io.records import load_line
from dataprep.errors import DataprepError
from dataprep.runs.pool import BackgroundCalls
from dataprep.runs.progress import human_size
from dataset_engine.packing import ALGORITHMS, PackingPlan, pack
from dataprep.runs.executors import shard_executor
from dataprep.runs.shards import JoinedRejects, ShardJob, produce_shards
from dataprep.sft.records import SFTOptions, encode_sft_chunk
from dataprep.io.sources import ChunkReader, expand_inputs, read_chunk_lines
from dataprep.io.storage import FILES
from dataprep.tokenization.tokenizers import LoadedTokenizer, get_spec
from dataprep.runs.workers import RunConfig, TrustedWorkers, start_trusted_workers
from dataset_engine.idxmap import LOCAL_FILES, SCRATCH_FILES, IdxmapReader, optimal_dtype
from dataset_engine.sft_format import (NATIVE_LAYOUT, PAI_LAYOUT, NativeSFT, NativeSFTWriter, mask_prefix,
                                       pai_row, tokens_prefix, write_pai)

SIDECAR_FORMAT = "dataprep-sft-sidecar/1"
LAYOUTS = ("native", "pai")


@dataclass(frozen=True, kw_only=True)
class SFTConfig(RunConfig):
    """Outputs are {output_prefix}_text_document.bin/.idx/.json (+ _loss_mask_document for native)."""

    seq_length: int | None = None
    """Truncate (or drop) records to this length; required for the pai layout (its row length)."""
    fmt: str = "auto"
    """Record format: auto (per record), alpaca, messages or sharegpt."""
    template: str = "auto"
    """auto (the tokenizer's own chat template, else its family's), tokenizer, or a named template."""
    system: str | None = None
    """System prompt for records that have none."""
    layout: str = "native"
    """native (records + loss masks, packed at load time) or pai (Pai-Megatron-Patch's rows)."""
    packing: bool = False
    """pai: pack records into rows; native: report the packing at seq_length (packing happens at load)."""
    packing_algorithm: str = "bfd"
    """bfd (best-fit-decreasing) or next-fit (Pai's: file order)."""
    seed: int = 1234
    """Order of packed rows (bfd); which records share a row does not depend on it."""
    drop_long: bool = False
    """Drop records longer than seq_length instead of truncating them."""
    chunk_bytes: int = 1 << 20
    """Input bytes per unit of work (SFT records cost more per byte than pretraining text)."""
    probe_records: int = 64
    """Records of the input whose rendered segments check the engine against the reference."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layout not in LAYOUTS:
            raise DataprepError(f"unknown --layout {self.layout!r}; known: {', '.join(LAYOUTS)}")
        if self.fmt not in ("auto", *FORMATS):
            raise DataprepError(f"unknown --format {self.fmt!r}; known: auto, {', '.join(FORMATS)}")
        if self.packing_algorithm not in ALGORITHMS:
            raise DataprepError(f"unknown --packing-algorithm {self.packing_algorithm!r}; known: "
                                f"{', '.join(ALGORITHMS)}")
        if self.seq_length is not None and self.seq_length < 2:
            raise DataprepError(f"--seq-length must be at least 2, got {self.seq_length}")
        if self.layout == "pai" and self.seq_length is None:
            raise DataprepError("--layout pai needs --seq-length (Pai's rows hold 2 x seq_length values)")
        if self.packing and self.seq_length is None:
            raise DataprepError("--packing needs --seq-length (the row length to pack into)")
        if self.drop_long and self.seq_length is None:
            raise DataprepError("--drop-long needs --seq-length")


@dataclass
class SFTSummary:
    read: int = 0
    written: int = 0
    rejected: int = 0
    dropped_prompt: int = 0
    dropped_long: int = 0
    truncated: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    max_length: int = 0
    rows: int | None = None
    packing: dict | None = None
    bytes_in: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    engine: str = ""
    workers: int = 1
    template: str = ""
    notes: list[str] = field(default_factory=list)
    output: str = ""
    rejects_path: str | None = None

    @property
    def dropped(self) -> int:
        return self.dropped_prompt + self.dropped_long

    def counts(self) -> dict:
        return {"records_read": self.read, "records_written": self.written,
                "records_rejected": self.rejected, "records_dropped_prompt": self.dropped_prompt,
                "records_dropped_long": self.dropped_long, "records_truncated": self.truncated,
                "tokens": self.tokens, "trained_tokens": self.trained_tokens, "max_length": self.max_length}

    def lines(self) -> list[str]:
        secs = max(self.seconds, 1e-9)
        out = [f"done in {self.seconds:.1f} s with the {self.engine} engine on {self.workers} worker(s), "
               f"template {self.template}",
               f"  records    read {self.read:,} = written {self.written:,} + rejected {self.rejected:,}"
               f" + dropped {self.dropped:,} (prompt fills seq_length {self.dropped_prompt:,}, "
               f"too long {self.dropped_long:,})",
               f"  truncated  {self.truncated:,} records cut to seq_length",
               f"  tokens     {self.tokens:,} ({self.trained_tokens:,} trained, "
               f"{self.trained_tokens / max(self.tokens, 1):.1%}), {self.tokens / max(self.written, 1):,.1f} "
               f"per record, longest {self.max_length:,}"]
        if self.packing:
            p = self.packing
            out.append(f"  packing    {p['algorithm']} at {p['seq_length']:,}: {p['rows']:,} rows, lower bound "
                       f"{p['lower_bound']:,} ({p['rows'] / max(p['lower_bound'], 1):.4f}x), "
                       f"efficiency {p['efficiency']:.2%}")
        out.append(f"  speed      {human_size(self.bytes_in)} in, {self.read / secs:,.0f} records/s, "
                   f"{self.tokens / secs / 1e6:,.2f} M tokens/s (start-up {self.startup_seconds:.1f} s)")
        out.append(f"  output     {self.output}.bin/.idx/.json")
        if self.rejects_path:
            out.append(f"  rejects    {self.rejects_path} ({self.rejected:,} records)")
        return out


def resolve_template(name: str, tok: LoadedTokenizer) -> str:
    """`auto` → `tokenizer` when it has its own chat template, else its family's named one."""
    try:
        renderer = get_renderer(name, tok.hf, default=get_spec(tok.name).chat_template)
    except TemplateError as exc:
        raise DataprepError(str(exc)) from exc
    return renderer.name


def sft_options(tok: LoadedTokenizer, *, fmt: str, template: str, system: str | None,
                trust_remote_code: bool, **rest) -> SFTOptions:
    """The record options for this tokenizer (template resolved, its eos text): the same for
    `dataprep sft` and raw mode, so both encode records alike."""
    return SFTOptions(fmt=fmt, template=resolve_template(template, tok), eos_text=tok.hf.eos_token or "",
                      tokenizer_path=tok.path, system=system, trust_remote_code=trust_remote_code, **rest)


def pad_id(tok: LoadedTokenizer) -> int:
    """The tokenizer's pad id, else its eos (labels never use it: they use -100)."""
    pad = getattr(tok.hf, "pad_token_id", None)
    if pad is None:
        pad = tok.eod
    if pad is None:
        raise DataprepError(f"the tokenizer in {tok.path} has neither a pad nor an eos token")
    return int(pad)


def probe_segments(files: list[str], options: SFTOptions, tok: LoadedTokenizer, limit: int,
                   max_chars: int = 256_000) -> list[str]:
    """The chat segments of the first valid records (skipping bad ones and parquet): the texts the
    engine must tokenize exactly like the reference."""
    renderer = get_renderer(options.template, tok.hf)
    texts: list[str] = []
    records = chars = 0
    for chunk in ChunkReader(files, [], chunk_bytes=1 << 16):
        if chunk.kind == "parquet":
            continue
        for line in read_chunk_lines(chunk):
            if records >= limit or chars >= max_chars:
                return texts
            obj, reason = load_line(line) if line.strip() else (None, "blank")
            if reason is not None:
                continue
            try:
                segments = renderer.segments(to_conversation(obj, options.fmt, options.system), options.eos_text)
            except (RecordError, TemplateError):
                continue
            records += 1
            for text, _ in segments:
                texts.append(text)
                chars += len(text)
    return texts


def run_sft(config: SFTConfig, log=print) -> SFTSummary:
    started = time.perf_counter()
    files = expand_inputs(list(config.inputs))

    def options_for(tok: LoadedTokenizer) -> SFTOptions:
        return sft_options(tok, fmt=config.fmt, template=config.template, system=config.system,
                           trust_remote_code=config.trust_remote_code, seq_length=config.seq_length,
                           drop_long=config.drop_long, stop_at_first_reject=not config.skip_bad_records,
                           dtype="int32" if config.layout == "pai" else optimal_dtype(tok.vocab_size).name)

    trusted = start_trusted_workers(
        config, probe_sample=lambda tok: probe_segments(files, options_for(tok), tok, config.probe_records),
        check=options_for, workers=config.local_workers)
    try:
        for note in trusted.notes:
            log(f"note: tokenizer engine {note}")
        return _run(config, files, trusted, options_for(trusted.tokenizer), started, log)
    finally:
        trusted.executor.close()


class SFTShard:
    """One shard's records (native layout: ids + loss masks), written by the worker that
    tokenizes it; a writer thread overlaps the disk writes with the tokenizing."""

    COUNTS = ("read", "written", "rejected", "dropped_prompt", "dropped_long", "truncated", "tokens",
              "trained_tokens", "max_length")

    def __init__(self, prefix: str, *, dtype: str) -> None:
        self.prefix = prefix
        self.writer = NativeSFTWriter(prefix, dtype, SCRATCH_FILES)
        self.counts = dict.fromkeys(self.COUNTS, 0)
        self.writes = BackgroundCalls()

    def add(self, result) -> tuple[int, int]:
        if result.written:
            self.writes.submit(self.writer.add_records, result.ids, result.mask, result.lengths)
        c = self.counts
        c["read"] += result.records
        c["written"] += result.written
        c["rejected"] += len(result.rejected)
        c["dropped_prompt"] += result.dropped_prompt
        c["dropped_long"] += result.dropped_long
        c["truncated"] += result.truncated
        c["tokens"] += len(result.ids)
        c["trained_tokens"] += int(result.mask.sum())
        if len(result.lengths):
            c["max_length"] = max(c["max_length"], int(result.lengths.max()))
        return result.written, len(result.ids)

    def finalize(self) -> tuple[dict, list[str]]:
        self.writes.drain()
        self.writes.close()
        self.writer.finalize()
        files = [os.path.basename(p) + ext for p in (tokens_prefix(self.prefix), mask_prefix(self.prefix))
                 for ext in (".bin", ".idx")]
        return self.counts, files

    def abort(self) -> None:
        self.writes.close()
        self.writer.abort()


def _run(config: SFTConfig, files: list[str], trusted: TrustedWorkers, options: SFTOptions,
         started: float, log) -> SFTSummary:
    tok = trusted.tokenizer
    summary = SFTSummary(engine=trusted.engine, workers=config.workers, notes=trusted.notes,
                         template=options.template, startup_seconds=time.perf_counter() - started,
                         output=tokens_prefix(config.output_prefix))
    if not storage.is_url(config.output_prefix):
        os.makedirs(os.path.dirname(os.path.abspath(config.output_prefix)), exist_ok=True)
    what = {"command": "sft", "tokenizer": tok.identity(),
            "options": {"format": config.fmt, "template": options.template, "system": config.system,
                        "seq_length": config.seq_length, "drop_long": config.drop_long,
                        "dtype": options.dtype, "skip_bad_records": config.skip_bad_records}}
    # pai: the rows need every record: the merged records go to a local temporary directory first
    records_dir = tempfile.mkdtemp(prefix="dataprep-sft-records-") if config.layout == "pai" else None
    records_prefix = os.path.join(records_dir, "records") if records_dir else config.output_prefix
    merger = SFTMerger(records_prefix, options.dtype, LOCAL_FILES if records_dir else FILES,
                       f"{config.output_prefix}.rejects.jsonl" if config.skip_bad_records else None)
    try:
        job = ShardJob(encode=partial(encode_sft_chunk, options),
                       open_output=partial(SFTShard, dtype=options.dtype), json_keys=(),
                       chunk_bytes=config.chunk_bytes, stop_at_first_reject=not config.skip_bad_records,
                       driver_pid=os.getpid())
        work, markers = produce_shards(config, files, shard_executor(config, trusted), job, merger, what, desc="sft", log=log)
    except BaseException:
        if records_dir:
            shutil.rmtree(records_dir, ignore_errors=True)
        raise
    try:
        for marker in markers:
            for name, value in marker["counts"].items():
                setattr(summary, name, max(summary.max_length, value) if name == "max_length"
                        else getattr(summary, name) + value)
        if summary.written == 0:
            raise DataprepError(f"no records to write: read {summary.read:,} (rejected {summary.rejected:,}, "
                                f"dropped {summary.dropped:,}); nothing was written")
        lengths = merger.finalize()
        plan = _plan(config, lengths)
        if records_dir:
            records = NativeSFT(tokens_prefix(records_prefix), {"loss_mask": os.path.basename(
                mask_prefix(records_prefix)), "tokenizer": {"pad": pad_id(tok)}})
            summary.rows = write_pai(config.output_prefix, _pai_rows(records, plan, config.seq_length,
                                                                     pad_id(tok)), FILES)
        if plan is not None:
            summary.packing = {"algorithm": config.packing_algorithm, "seq_length": config.seq_length,
                               "seed": config.seed, "rows": plan.rows, "lower_bound": plan.lower_bound,
                               "efficiency": round(plan.efficiency, 6)}
        summary.rejects_path = merger.rejects.path
        inputs = storage.describe_inputs(files)
        summary.bytes_in = sum(i["bytes"] for i in inputs)
        storage.write_json(tokens_prefix(config.output_prefix) + ".json",
                           _sidecar(config, options, tok, inputs, summary))
    except BaseException:
        merger.abort()
        work.abandon()
        raise
    finally:
        if records_dir:
            shutil.rmtree(records_dir, ignore_errors=True)
    work.close(remove=not config.keep_work)
    summary.seconds = time.perf_counter() - started
    return summary


class SFTMerger:
    """The shards' records concatenated into one native-layout pair (and their rejects joined),
    keeping every record's length for packing."""

    def __init__(self, prefix: str, dtype: str, files, rejects_path: str | None) -> None:
        self.writer = NativeSFTWriter(prefix, dtype, files)
        self.rejects = JoinedRejects(rejects_path)
        self.lengths: list[np.ndarray] = []

    def add(self, prefix: str) -> None:
        with IdxmapReader(tokens_prefix(prefix)) as tokens, IdxmapReader(mask_prefix(prefix)) as mask:
            self.writer.tokens.add_index(tokens)
            self.writer.mask.add_index(mask)
            self.lengths.append(tokens.sequence_lengths.astype(np.int64))
        self.rejects.add(prefix)

    def finalize(self) -> np.ndarray:
        self.rejects.commit()
        self.writer.finalize()
        return np.concatenate(self.lengths)

    def abort(self) -> None:
        self.rejects.abort()
        self.writer.abort()


def _plan(config: SFTConfig, lengths: np.ndarray) -> PackingPlan | None:
    """The rows: packed when asked, else one record per row (pai); None when there are no rows."""
    if config.packing:
        return pack(lengths, config.seq_length, config.packing_algorithm, config.seed)
    if config.layout == "pai":
        n = len(lengths)
        return PackingPlan(seq_len=config.seq_length, row_offsets=np.arange(n + 1), order=np.arange(n),
                           lengths=lengths)
    return None


def _pai_rows(records: NativeSFT, plan: PackingPlan, seq_len: int, pad: int):
    for r in range(plan.rows):
        yield pai_row([records.record(i) for i in plan.row(r)], seq_len, pad)


def _sidecar(config: SFTConfig, options: SFTOptions, tok: LoadedTokenizer, inputs: list[dict],
             summary: SFTSummary) -> dict:
    """Deterministic (no times, no worker count): the same input and options give the same bytes."""
    sidecar = {
        "format": SIDECAR_FORMAT,
        "layout": NATIVE_LAYOUT if config.layout == "native" else PAI_LAYOUT,
        "tool": {"name": "dataprep", "version": __version__, "command": "sft"},
        "tokenizer": {"name": tok.name, "path": tok.path, "vocab_size": tok.vocab_size, "eod": tok.eod,
                      "pad": pad_id(tok), "engine": summary.engine},
        "template": options.template,
        "record_format": config.fmt,
        "system": config.system,
        "seq_length": config.seq_length,
        "drop_long": config.drop_long,
        "dtype": options.dtype,
        "inputs": inputs,
        "counts": summary.counts(),
        "packing": summary.packing,
    }
    if config.layout == "native":
        sidecar["loss_mask"] = os.path.basename(mask_prefix(config.output_prefix))
    else:
        sidecar["rows"] = summary.rows
    return sidecar
