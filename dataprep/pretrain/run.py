"""The pretrain pipeline: input files → token documents → Megatron idxmaps, in parallel, in order.

    source files ─ shards ─ ChunkReader ─▶ chunks ─ workers (or Ray tasks): DocumentEncoder ─▶ token
        documents ─ in chunk order ─▶ per shard: IdxmapWriter per json key + marker ({PREFIX}.work/)
        ─ merge in shard order ─▶ {PREFIX}_{key}_document.bin/.idx

Every record read is written, rejected (with file:line and reason) or counted as empty. Outputs
go to temporary names and are renamed only when the whole input is done; a crashed run resumes
from its finished shards (`shards.py`). The output bytes
depend only on the inputs, the tokenizer and the options, never on the worker count.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np

from dataprep import __version__
from dataprep.io import storage
from dataprep.io.records import valid_texts
from dataprep.pretrain.documents import EncodeOptions, encode_chunk
from dataprep.errors import DataprepError
from dataprep.runs.pool import BackgroundCalls
from dataprep.runs.progress import human_size
from dataprep.runs.executors import shard_executor
from dataprep.runs.shards import JoinedRejects, ShardJob, produce_shards
from dataprep.io.sources import expand_inputs
from dataprep.io.storage import FILES
from dataprep.tokenization.tokenizers import LoadedTokenizer
from dataprep.runs.workers import RunConfig, TrustedWorkers, start_trusted_workers
from dataset_engine.idxmap import SCRATCH_FILES, IdxmapReader, IdxmapWriter, optimal_dtype

SIDECAR_FORMAT = "dataprep-pretrain-sidecar/1"


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(RunConfig):
    """Outputs are {output_prefix}_{key}_document.bin/.idx/.json per json key."""

    json_keys: tuple[str, ...] = ("text",)
    """Record fields to tokenize, one idxmap each."""
    append_eod: bool = True
    """Add the tokenizer's eos id after each document (Pai's --append-eod)."""
    chunk_bytes: int = 4 << 20
    """Input bytes per unit of work."""
    probe_records: int = 256
    """Records of the input used to check the engine against the reference tokenizer."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.json_keys:
            raise DataprepError("--json-keys needs at least one key")
        if len(set(self.json_keys)) != len(self.json_keys):
            raise DataprepError(f"--json-keys repeats a key: {list(self.json_keys)}")


@dataclass
class KeyCounts:
    documents: int = 0
    sequences: int = 0
    tokens: int = 0
    empty: int = 0


@dataclass
class PretrainSummary:
    read: int = 0
    written: int = 0
    rejected: int = 0
    empty: int = 0
    keys: dict[str, KeyCounts] = field(default_factory=dict)
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    """Loading the tokenizer, starting workers and the probe: the fixed cost of a run."""
    engine: str = ""
    workers: int = 1
    notes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    rejects_path: str | None = None

    def lines(self) -> list[str]:
        tokens = sum(k.tokens for k in self.keys.values())
        documents = sum(k.documents for k in self.keys.values())
        secs = max(self.seconds, 1e-9)
        out = [
            f"done in {self.seconds:.1f} s with the {self.engine} engine on {self.workers} worker(s)",
            f"  records    read {self.read:,} = written {self.written:,} + rejected {self.rejected:,}"
            f" + empty {self.empty:,}",
        ]
        for key, c in self.keys.items():
            per_doc = c.tokens / c.documents if c.documents else 0.0
            out.append(f"  {key:<10} documents {c.documents:,}  tokens {c.tokens:,}  "
                       f"tokens/document {per_doc:,.1f}  empty {c.empty:,}")
        steady = max(self.seconds - self.startup_seconds, 1e-9)
        out.append(f"  bytes      in {human_size(self.bytes_in)}  out {human_size(self.bytes_out)}  "
                   f"({self.bytes_in / secs / 1e6:,.1f} MB/s, {documents / secs:,.0f} docs/s, "
                   f"{tokens / secs / 1e6:,.2f} M tokens/s)")
        out.append(f"  time       start-up {self.startup_seconds:.2f} s, then {steady:.2f} s at "
                   f"{self.bytes_in / steady / 1e6:,.1f} MB/s, {tokens / steady / 1e6:,.2f} M tokens/s")
        for path in self.outputs:
            out.append(f"  output     {path}.bin/.idx/.json")
        if self.rejects_path:
            out.append(f"  rejects    {self.rejects_path} ({self.rejected:,} records)")
        return out


def output_prefix_for(prefix: str, key: str) -> str:
    """Megatron's naming: {prefix}_{key}_document."""
    return f"{prefix}_{key}_document"


def sample_texts(files: list[str], json_keys: tuple[str, ...], limit: int,
                 max_chars: int = 256_000) -> list[str]:
    """The first `limit` texts of the input (valid records only, at most about `max_chars`), for
    the engine probe; the reference tokenizer is slow (~2 MB/s), so the probe stays small."""
    texts: list[str] = []
    chars = 0
    for _, _, text in valid_texts(files, json_keys):
        if len(texts) >= limit or chars >= max_chars:
            break
        texts.append(text)
        chars += len(text)
    return texts


def run_pretrain(config: PretrainConfig, log=print) -> PretrainSummary:
    started = time.perf_counter()
    files = expand_inputs(list(config.inputs))

    def needs_eod(tok: LoadedTokenizer) -> None:
        if config.append_eod and tok.eod is None:
            raise DataprepError(f"--append-eod needs an end-of-document token, but the tokenizer in "
                                f"{tok.path} has no eos token; pass --no-append-eod or fix its config")

    trusted = start_trusted_workers(
        config, probe_sample=lambda tok: sample_texts(files, config.json_keys, config.probe_records),
        check=needs_eod, workers=config.local_workers)
    try:
        for note in trusted.notes:
            log(f"note: tokenizer engine {note}")
        return _run(config, files, trusted, started, log)
    finally:
        trusted.executor.close()


class PretrainShard:
    """One shard's idxmaps (one per json key), written by the worker that tokenizes it; a writer
    thread overlaps the disk writes with the tokenizing."""

    def __init__(self, prefix: str, *, json_keys: tuple[str, ...], dtype: str) -> None:
        self.writers = {k: IdxmapWriter(output_prefix_for(prefix, k), dtype, SCRATCH_FILES) for k in json_keys}
        self.counts = {"read": 0, "written": 0, "rejected": 0, "empty": 0,
                       "keys": {k: asdict(KeyCounts()) for k in json_keys}}
        self.writes = BackgroundCalls()

    def add(self, result) -> tuple[int, int]:
        tokens = 0
        for key, docs in result.keys.items():
            self.writes.submit(self.writers[key].add_documents, docs.tokens, docs.sequence_lengths,
                               docs.sequences_per_document)
            counts = self.counts["keys"][key]
            counts["documents"] += len(docs.sequences_per_document)
            counts["sequences"] += len(docs.sequence_lengths)
            counts["tokens"] += len(docs.tokens)
            counts["empty"] += docs.empty
            tokens += len(docs.tokens)
        self.counts["read"] += result.records
        self.counts["written"] += result.written
        self.counts["rejected"] += len(result.rejected)
        self.counts["empty"] += result.empty
        return result.written, tokens

    def finalize(self) -> tuple[dict, list[str]]:
        self.writes.drain()
        self.writes.close()
        files = []
        for writer in self.writers.values():
            writer.finalize()
            files += [os.path.basename(writer.prefix) + ".bin", os.path.basename(writer.prefix) + ".idx"]
        return self.counts, files

    def abort(self) -> None:
        self.writes.close()
        for writer in self.writers.values():
            writer.abort()


def _run(config: PretrainConfig, files: list[str], trusted: TrustedWorkers,
         started: float, log) -> PretrainSummary:
    tok = trusted.tokenizer
    startup = time.perf_counter() - started
    dtype = optimal_dtype(tok.vocab_size)
    options = EncodeOptions(json_keys=config.json_keys, append_eod=config.append_eod, eod=tok.eod,
                            dtype=dtype.name, stop_at_first_reject=not config.skip_bad_records)
    if not storage.is_url(config.output_prefix):
        os.makedirs(os.path.dirname(os.path.abspath(config.output_prefix)), exist_ok=True)
    prefixes = {k: output_prefix_for(config.output_prefix, k) for k in config.json_keys}
    summary = PretrainSummary(engine=trusted.engine, workers=config.workers, startup_seconds=startup,
                              notes=trusted.notes, outputs=list(prefixes.values()))
    what = {"command": "pretrain", "tokenizer": tok.identity(),
            "options": {"json_keys": list(config.json_keys), "append_eod": config.append_eod,
                        "eod": tok.eod, "dtype": dtype.name, "skip_bad_records": config.skip_bad_records}}
    job = ShardJob(encode=partial(encode_chunk, options),
                   open_output=partial(PretrainShard, json_keys=config.json_keys, dtype=dtype.name),
                   json_keys=config.json_keys, chunk_bytes=config.chunk_bytes,
                   stop_at_first_reject=not config.skip_bad_records, driver_pid=os.getpid())
    merger = PretrainMerger(config, prefixes, dtype)
    work, markers = produce_shards(config, files, shard_executor(config, trusted), job, merger, what, desc="pretrain", log=log)
    try:
        for marker in markers:
            counts = marker["counts"]
            summary.read += counts["read"]
            summary.written += counts["written"]
            summary.rejected += counts["rejected"]
            summary.empty += counts["empty"]
            for key, c in counts["keys"].items():
                total = summary.keys.setdefault(key, KeyCounts())
                for name, value in c.items():
                    setattr(total, name, getattr(total, name) + value)
        empty_keys = [k for k in config.json_keys if summary.keys.get(k, KeyCounts()).tokens == 0]
        if empty_keys:
            # megatron-core cannot even open an idxmap without tokens; say so instead of writing one
            raise DataprepError(
                f"no tokens for key(s) {', '.join(map(repr, empty_keys))}: read {summary.read:,} records "
                f"(rejected {summary.rejected:,}, empty {summary.empty:,}); nothing was written")
        merger.finalize()
        if config.skip_bad_records:
            summary.rejects_path = f"{config.output_prefix}.rejects.jsonl"
        inputs = storage.describe_inputs(files)
        summary.bytes_in = sum(i["bytes"] for i in inputs)
        for key, prefix in prefixes.items():
            storage.write_json(prefix + ".json", _sidecar(key, config, tok, inputs, summary, dtype.name))
            summary.bytes_out += storage.size(prefix + ".bin") + storage.size(prefix + ".idx")
    except BaseException:
        merger.abort()
        work.abandon()
        raise
    work.close(remove=not config.keep_work)
    summary.seconds = time.perf_counter() - started
    return summary


class PretrainMerger:
    """The final idxmaps (and rejects): the shards' outputs concatenated in shard order."""

    def __init__(self, config: PretrainConfig, prefixes: dict[str, str], dtype: np.dtype) -> None:
        self.writers = {k: IdxmapWriter(p, dtype, FILES) for k, p in prefixes.items()}
        self.rejects = JoinedRejects(f"{config.output_prefix}.rejects.jsonl" if config.skip_bad_records else None)

    def add(self, prefix: str) -> None:
        for key, writer in self.writers.items():
            with IdxmapReader(output_prefix_for(prefix, key)) as reader:
                writer.add_index(reader)
        self.rejects.add(prefix)

    def finalize(self) -> None:
        self.rejects.commit()
        for writer in self.writers.values():
            writer.finalize()

    def abort(self) -> None:
        self.rejects.abort()
        for writer in self.writers.values():
            writer.abort()


def _sidecar(key: str, config: PretrainConfig, tok: LoadedTokenizer, inputs: list[dict],
             summary: PretrainSummary, dtype: str) -> dict:
    """{prefix}.json beside the idxmap; deterministic (no times, no worker count)."""
    counts = summary.keys[key]
    return {
        "format": SIDECAR_FORMAT,
        "tool": {"name": "dataprep", "version": __version__, "command": "pretrain"},
        "tokenizer": {"name": tok.name, "path": tok.path, "vocab_size": tok.vocab_size,
                      "eod": tok.eod, "engine": summary.engine},
        "json_key": key,
        "dtype": dtype,
        "inputs": inputs,
        "options": {"append_eod": config.append_eod, "skip_bad_records": config.skip_bad_records,
                    "json_keys": list(config.json_keys)},
        "counts": {"records_read": summary.read, "records_written": summary.written,
                   "records_rejected": summary.rejected, "records_empty": summary.empty,
                   "documents": counts.documents, "sequences": counts.sequences,
                   "tokens": counts.tokens, "empty_documents": counts.empty},
    }
