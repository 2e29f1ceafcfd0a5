"""Raw mode (``MP_DATASET_TYPE=raw``): SFT records read straight from json / jsonl, tokenized lazily.

Pai's raw mode tokenizes the whole file on every rank at start-up. Here a file is indexed once:
the byte span and line of every record, found by vectorised scans (numpy over 16 MiB blocks):

* jsonl: the newlines; blank lines are skipped;
* a JSON array (Pai's ``alpaca_zh-train-general.json``): the commas and brackets at depth 1,
  outside strings. A quote is escaped when an odd run of backslashes precedes it (checked one
  by one: only quotes right after a backslash, which are rare); string state and depth are
  carried across blocks.

The index is cached (``.npz``, no pickle) under a hash of the file's path, size and mtime, so
later starts skip the scan. A record is tokenized when first asked for, by the very code of
`dataprep sft` (`dataprep.sft_records.SFTEncoder`: the same formats, template and engine), so
for the same files and options raw mode yields exactly the samples of the idxmap path. Packing
needs every record's length: computed on first use by `dataprep sft`'s workers (all cores, with
a progress bar) and cached too.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

BLOCK = 16 << 20
INDEX_VERSION = 1
_WS = b" \t\r\n"

class RawIndexError(ValueError):
    """A raw json file whose records cannot be found (not jsonl, not a well-formed array)."""


@dataclass
class RecordIndex:
    """Byte spans [start, end) and 1-based lines of the records of one file."""

    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray | None
    """jsonl: stored; JSON arrays: None (`record_line` counts them when an error needs one)."""


def _blocks(data: np.ndarray):
    for offset in range(0, len(data), BLOCK):
        yield offset, data[offset:offset + BLOCK]


def _map_blocks(fn, data: np.ndarray) -> list:
    """[fn(offset, block)] over the blocks in order, on a few threads: numpy's comparisons and
    searches release the GIL, so the scan runs on every core."""
    threads = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8))
    if threads == 1 or len(data) <= BLOCK:
        return [fn(off, b) for off, b in _blocks(data)]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda block: fn(*block), _blocks(data)))


def _jsonl_index(data: np.ndarray, skip: int) -> RecordIndex:
    newlines = np.concatenate(_map_blocks(lambda off, b: np.flatnonzero(b == 10) + off, data)
                              or [np.zeros(0, np.int64)])
    starts = np.concatenate([[skip], newlines + 1]).astype(np.int64)
    ends = np.concatenate([newlines, [len(data)]]).astype(np.int64)
    lines = np.arange(1, len(starts) + 1, dtype=np.int64)
    # a line is a record unless blank: records start with '{' (checked in bulk); the rest by hand
    first = np.full(len(starts), ord(" "), np.uint8)
    has = starts < ends
    first[has] = data[starts[has]]
    keep = ~np.isin(first, np.frombuffer(_WS, np.uint8))
    for i in np.flatnonzero(~keep).tolist():
        keep[i] = bool(data[starts[i]:ends[i]].tobytes().strip())
    return RecordIndex(starts[keep], ends[keep], lines[keep])


def _escaped(data: np.ndarray, p: int) -> bool:
    """Whether the quote at ``p`` is escaped: an odd run of backslashes right before it (rare)."""
    run = 0
    while p - run - 1 >= 0 and data[p - run - 1] == 92:
        run += 1
    return run % 2 == 1


def _array_block(data: np.ndarray, off: int, b: np.ndarray):
    """One block's part of the array scan, independent of the others: its unescaped quotes, and
    its structural characters (``,[]{}``) with the parity of the quotes before each."""
    quotes = np.flatnonzero(b == 34)
    after_backslash = np.flatnonzero(data[np.maximum(quotes + off - 1, 0)] == 92)
    if after_backslash.size:  # only quotes right after a backslash can be escaped
        keep = np.ones(quotes.size, bool)
        keep[after_backslash] = [not _escaped(data, int(quotes[k]) + off) for k in after_backslash.tolist()]
        quotes = quotes[keep]
    folded = b | 32  # '[' -> '{', ']' -> '}'
    structural = np.flatnonzero((folded == 123) | (folded == 125) | (b == 44))
    kind = folded[structural]
    parity = np.searchsorted(quotes, structural) % 2
    return quotes.size, structural + off, kind, parity


def _array_index(data: np.ndarray, path: str) -> RecordIndex:
    in_string, depth = False, 0
    delimiters = []
    for n_quotes, structural, kind, parity in _map_blocks(lambda off, b: _array_block(data, off, b), data):
        outside = (parity + in_string) % 2 == 0
        structural, kind = structural[outside], kind[outside]
        delta = np.where(kind == 123, 1, np.where(kind == 125, -1, 0))
        before = depth + np.cumsum(delta) - delta
        outer = ((delta == 1) & (before == 0)) | ((delta != 1) & (before == 1))
        delimiters.append(structural[outer])
        in_string = bool((in_string + n_quotes) % 2)
        depth += int(delta.sum())
        if depth < 0:
            raise RawIndexError(f"{path}: unbalanced brackets (a ']' or '}}' closes nothing)")
    delims = np.concatenate(delimiters)
    closes = np.flatnonzero(data[delims] == ord("]")) if delims.size else delims
    if closes.size and closes[0] != delims.size - 1:
        raise RawIndexError(f"{path}: unexpected data outside the top-level JSON array")
    if in_string or depth != 0 or not closes.size or data[delims[0]] != ord("["):
        raise RawIndexError(f"{path}: not a complete JSON array (truncated, or not JSON)")
    if not data[delims[-1] + 1:].tobytes().strip() == b"" or data[:delims[0]].tobytes().strip(b" \t\r\n\xef\xbb\xbf"):
        raise RawIndexError(f"{path}: unexpected data outside the top-level JSON array")
    starts, ends = delims[:-1].astype(np.int64) + 1, delims[1:].astype(np.int64)
    if len(starts) == 1 and not data[starts[0]:ends[0]].tobytes().strip():
        starts, ends = starts[:0], ends[:0]  # "[]"
    return RecordIndex(starts, ends, None)


def record_line(path: str, index: RecordIndex, i: int) -> int:
    """1-based line where record ``i`` starts: stored for jsonl; for a JSON array counted when
    asked (only error messages need it), at the element's first non-blank byte."""
    if index.lines is not None:
        return int(index.lines[i])
    data = np.memmap(path, np.uint8, mode="r")
    at = int(index.starts[i])
    head = data[at:int(index.ends[i])].tobytes()
    at += len(head) - len(head.lstrip())
    return 1 + sum(int(np.count_nonzero(b == 10)) for _, b in _blocks(data[:at]))


def index_records(path: str, cache_dir: str | None = None) -> RecordIndex:
    """The records of a jsonl file or JSON array, cached in ``cache_dir`` when given."""
    st = os.stat(path)
    key = hashlib.sha256(f"{INDEX_VERSION}|{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]
    cached = os.path.join(cache_dir, f"raw-index-{key}.npz") if cache_dir else None
    if cached and os.path.exists(cached):
        with np.load(cached, allow_pickle=False) as z:
            return RecordIndex(z["starts"], z["ends"], z["lines"] if "lines" in z.files else None)
    if st.st_size == 0:
        return RecordIndex(*(np.zeros(0, np.int64),) * 3)
    data = np.memmap(path, np.uint8, mode="r")  # unmapped when the last view goes
    skip = 3 if data[:3].tobytes() == b"\xef\xbb\xbf" else 0
    head = data[skip:skip + 4096].tobytes().lstrip()
    index = _array_index(data, path) if head[:1] == b"[" else _jsonl_index(data, skip)
    del data
    if cached:
        # written meanwhile (the caller goes on to its first sample); under a temporary name,
        # renamed when complete, so a concurrent or later reader never sees half a file
        threading.Thread(target=_save_index, args=(index, cache_dir, cached), name="raw-index-cache").start()
    return index


def _save_index(index: RecordIndex, cache_dir: str, path: str) -> None:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp.npz"
    lines = {} if index.lines is None else {"lines": index.lines}
    np.savez(tmp, starts=index.starts, ends=index.ends, **lines)
    os.replace(tmp, path)


class RawSFT:
    """SFT records of json/jsonl files, tokenized on access: ``record(i) -> (ids, mask)``.

    Picklable for DataLoader workers: the engine is rebuilt in each process from its spec.
    """

    def __init__(self, paths: list[str], encoder_spec, options, pad_id: int,
                 cache_dir: str | None = None, cache_records: int = 4096, encoder=None,
                 progress: bool = True) -> None:
        self.paths = list(paths)
        self.encoder_spec = encoder_spec
        self.options = options
        self.pad_id = pad_id
        self.cache_dir = cache_dir
        self.cache_records = cache_records
        self.progress = progress
        self._indexes = [index_records(p, cache_dir) for p in self.paths]
        self._first = np.cumsum([0] + [len(ix.starts) for ix in self._indexes])  # first record of each file
        self._lengths: np.ndarray | None = None
        self._reset()
        self._encoder = encoder  # the one already checked against the reference, in this process

    def _reset(self) -> None:
        self._encoder = None
        self._maps: dict[int, mmap.mmap] = {}
        self._cache: OrderedDict = OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("_encoder", "_maps", "_cache"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def __len__(self) -> int:
        return int(self._first[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        """(file, record within the file) of record ``i``."""
        k = int(np.searchsorted(self._first, i, side="right")) - 1
        return k, i - int(self._first[k])

    def where(self, i: int) -> str:
        k, j = self._locate(i)
        return f"{self.paths[k]}:{record_line(self.paths[k], self._indexes[k], j)}"

    def _encoder_(self):
        if self._encoder is None:
            from dataprep.sft_records import SFTEncoder
            from dataprep.tokenizers import build_engine

            self._encoder = SFTEncoder(build_engine(self.encoder_spec), self.options)
        return self._encoder

    def _object(self, i: int):
        k, j = self._locate(i)
        if k not in self._maps:
            with open(self.paths[k], "rb") as f:
                self._maps[k] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        index = self._indexes[k]
        raw = self._maps[k][int(index.starts[j]):int(index.ends[j])]
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.where(i)}: invalid JSON: {exc}") from None

    def _encode(self, indices: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        out = []
        for i, outcome in zip(indices, self._encoder_().encode_objects([self._object(i) for i in indices])):
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
            ident = [self.encoder_spec.engine, hashlib.sha256((self.encoder_spec.tokenizer_json or self.encoder_spec.path).encode()).hexdigest(),
                     repr(self.options)] + [f"{os.path.abspath(p)}|{os.stat(p).st_size}|{os.stat(p).st_mtime_ns}" for p in self.paths]
            key = hashlib.sha256("\n".join(ident).encode()).hexdigest()[:32]
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
        from dataclasses import replace
        from functools import partial

        from dataprep.documents import init_worker
        from dataprep.executor import OrderedExecutor, Progress, available_cores, single_thread_engines
        from dataprep.sft_records import encode_sft_chunk
        from dataprep.sources import ChunkReader, LineNumbers

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
    from dataprep.sft import SFTOptions, pad_id, probe_segments, sft_options
    from dataprep.sources import expand_inputs
    from dataprep.workers import WorkerConfig, start_trusted_workers

    files = expand_inputs(list(paths))

    def options_for(tok) -> SFTOptions:
        return sft_options(tok, fmt=fmt, template=template, system=system, trust_remote_code=trust_remote_code)

    trusted = start_trusted_workers(
        WorkerConfig(tokenizer=tokenizer, tokenizer_path=tokenizer_path, backend=backend, workers=1,
                     trust_remote_code=trust_remote_code),
        probe_sample=lambda tok: probe_segments(files, options_for(tok), tok, limit=64),
        check=options_for)
    trusted.executor.close()  # one worker: the engine was built in this process, and stays
    from dataprep.documents import worker_engine
    from dataprep.sft_records import SFTEncoder

    tok = trusted.tokenizer
    options = options_for(tok)
    return RawSFT(files, tok.engine_spec(trusted.engine), options, pad_id(tok), cache_dir,
                  encoder=SFTEncoder(worker_engine(), options, hf_tokenizer=tok.hf))
