"""Raw mode's SFT records (``MP_DATASET_TYPE=raw``): json/jsonl records tokenized when asked for,
and the trainer's choice between them and an SFT idxmap (`build_sft_dataset`).

`dataset_engine.raw.RawRecords` finds and reads the records; a record is tokenized when first
asked for, by the very code of `dataprep sft` (`records.SFTEncoder`: the same formats, template
and engine), so for the same files and options raw mode yields exactly the samples of the
idxmap path. Packing needs every record's length: computed on first use by `dataprep sft`'s
workers (all cores, with a progress bar) and cached under the files' content digests.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from dataclasses import replace
from functools import partial

import numpy as np

from dataprep.io.sources import ChunkReader, LineNumbers, expand_inputs
from dataprep.runs.pool import OrderedExecutor, available_cores, single_thread_engines
from dataprep.runs.progress import Progress
from dataprep.runs.workers import WorkerConfig, start_trusted_workers
from dataprep.sft.records import SFTEncoder, SFTOptions, encode_sft_chunk
from dataprep.sft.run import pad_id, probe_segments, sft_options
from dataprep.tokenization.tokenizers import build_engine
from dataprep.tokenization.worker_engine import init_worker, worker_engine
from dataset_engine.cache import cache_key, file_digest
from dataset_engine.raw import DATASET_TYPES, RawRecords
from dataset_engine.sft import SFTDataset, SFTDatasetConfig, open_sft_dataset


class RawSFT(RawRecords):
    """SFT records of json/jsonl files, tokenized on access: ``record(i) -> (ids, mask)``.

    Picklable for DataLoader workers: the engine is rebuilt in each process from its spec.
    """

    _per_process = ("_maps", "_encoder", "_cache")

    def __init__(self, paths: list[str], encoder_spec, options: SFTOptions, pad_id: int,
                 cache_dir: str | None = None, cache_records: int = 4096, encoder: SFTEncoder | None = None,
                 progress: bool = True) -> None:
        self.encoder_spec = encoder_spec
        self.options = options
        self.pad_id = pad_id
        self.cache_records = cache_records
        self.progress = progress
        self._lengths: np.ndarray | None = None
        super().__init__(paths, cache_dir)
        self._encoder = encoder  # the one already checked against the reference, in this process

    def _reset(self) -> None:
        super()._reset()
        self._encoder = None
        self._cache: OrderedDict = OrderedDict()

    def _encoder_(self) -> SFTEncoder:
        if self._encoder is None:
            self._encoder = SFTEncoder(build_engine(self.encoder_spec), self.options)
        return self._encoder

    def _encode(self, indices: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for i, outcome in zip(indices, self._encoder_().encode_objects([self.value(i) for i in indices])):
            if isinstance(outcome, str):
                raise ValueError(f"{self.where(i)}: {outcome}")
            out.append(outcome[:2])
        return out

    def record(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.records([i])[0]

    def records(self, indices) -> list[tuple[np.ndarray, np.ndarray]]:
        """Several records, those not cached tokenized in one engine call (a packed row's)."""
        indices = [int(i) for i in indices]
        missing = [i for i in dict.fromkeys(indices) if i not in self._cache]
        if missing:
            for i, encoded in zip(missing, self._encode(missing)):
                self._cache[i] = encoded
        out = [self._cache[i] for i in indices]
        while len(self._cache) > self.cache_records:
            self._cache.popitem(last=False)
        return out

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per record; tokenizes every record once (batches of 1024), then cached."""
        if self._lengths is None:
            self._lengths = self._cached_lengths()
        return self._lengths

    def _cached_lengths(self) -> np.ndarray:
        path = None
        if self.cache_dir:
            key = cache_key({
                "raw_lengths": 1, "engine": self.encoder_spec.engine,
                "tokenizer": hashlib.sha256((self.encoder_spec.tokenizer_json or self.encoder_spec.path).encode()).hexdigest(),
                "options": repr(self.options), "files": [file_digest(p) for p in self.paths]})
            path = os.path.join(self.cache_dir, f"raw-lengths-{key}.npy")
            if os.path.exists(path):
                return np.load(path, allow_pickle=False)
        lengths = self._compute_lengths()
        if path:
            os.makedirs(self.cache_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            np.save(tmp, lengths)
            os.replace(tmp, path)
        return lengths


    def _compute_lengths(self) -> np.ndarray:
        """Every record tokenized once by `dataprep sft`'s own workers (all cores), with a
        progress bar; the first bad record stops it with FILE:LINE."""
        single_thread_engines()
        options = replace(self.options, stop_at_first_reject=True)
        reader = ChunkReader(self.paths, [], chunk_bytes=1 << 20)
        progress = Progress(reader.total_bytes(), enabled=self.progress, desc="raw SFT lengths")
        numbers, parts = LineNumbers(), []
        try:
            with OrderedExecutor(available_cores(), init_worker, (self.encoder_spec,)) as executor:
                for chunk, result in executor.map(partial(encode_sft_chunk, options), reader):
                    where = numbers.resolver(chunk, result.n_lines)
                    if result.rejected:
                        bad = result.rejected[0]
                        raise ValueError(f"{chunk.path}:{where(bad.local)}: {bad.reason}")
                    parts.append(result.lengths)
                    progress.update(chunk.source_bytes, result.written, len(result.ids))
        finally:
            progress.close()
        lengths = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if len(lengths) != len(self):
            raise ValueError(f"{self.paths}: the index found {len(self)} records but the reader "
                             f"{len(lengths)}; the files changed while in use?")
        return lengths


def open_raw_sft(paths: list[str], *, tokenizer: str, tokenizer_path: str | None = None,
                 template: str = "auto", fmt: str = "auto", system: str | None = None,
                 backend: str = "auto", trust_remote_code: bool = False,
                 cache_dir: str | None = None) -> RawSFT:
    """Raw records with `dataprep sft`'s formatting and the fastest engine that reproduces the
    reference tokenizer on this input (the same start-up check as `dataprep sft`, in-process)."""
    files = expand_inputs(list(paths))

    def options_for(tok) -> SFTOptions:
        return sft_options(tok, fmt=fmt, template=template, system=system, trust_remote_code=trust_remote_code)

    trusted = start_trusted_workers(
        WorkerConfig(tokenizer=tokenizer, tokenizer_path=tokenizer_path, backend=backend, workers=1,
                     trust_remote_code=trust_remote_code),
        probe_sample=lambda tok: probe_segments(files, options_for(tok), tok, limit=64),
        check=options_for)
    trusted.executor.close()  # one worker: the engine was built in this process, and stays
    tok = trusted.tokenizer
    options = options_for(tok)
    return RawSFT(files, tok.engine_spec(trusted.engine), options, pad_id(tok), cache_dir,
                  encoder=SFTEncoder(worker_engine(), options, hf_tokenizer=tok.hf))


def build_sft_dataset(data_path: str | list[str], config: SFTDatasetConfig, *, dataset_type: str | None = None,
                      tokenizer: str | None = None, tokenizer_path: str | None = None, template: str = "auto",
                      fmt: str = "auto", system: str | None = None) -> SFTDataset:
    """The SFT dataset the trainer uses: ``dataset_type`` (default: ``$MP_DATASET_TYPE``, else
    idxmap) picks an idxmap prefix (native or Pai layout) or raw json/jsonl files (which need
    the tokenizer name, and its path unless bundled)."""
    kind = (dataset_type or os.environ.get("MP_DATASET_TYPE") or "idxmap").lower()
    if kind not in DATASET_TYPES:
        raise ValueError(f"MP_DATASET_TYPE must be one of {', '.join(DATASET_TYPES)}, got {kind!r}")
    paths = [data_path] if isinstance(data_path, str) else list(data_path)
    if kind == "idxmap":
        return open_sft_dataset(paths, config)
    if tokenizer is None:
        raise ValueError("raw SFT data needs a tokenizer name (e.g. Qwen3Tokenizer) to tokenize it")
    source = open_raw_sft(paths, tokenizer=tokenizer, tokenizer_path=tokenizer_path, template=template,
                          fmt=fmt, system=system, cache_dir=config.cache_dir)
    return SFTDataset(source, config)
