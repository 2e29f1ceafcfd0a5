"""Raw mode (``MP_DATASET_TYPE=raw``): records read straight from json / jsonl files, by index.

Pai's raw mode tokenizes the whole file on every rank at start-up. Here a file is indexed once:
the byte span and line of every record, found by vectorised scans (numpy over 16 MiB blocks):

* jsonl: the newlines; blank lines are skipped;
* a JSON array (Pai's ``alpaca_zh-train-general.json``): the commas and brackets at depth 1,
  outside strings. A quote is escaped when an odd run of backslashes precedes it (checked one
  by one: only quotes right after a backslash, which are rare); string state and depth are
  carried across blocks.

The index is cached (``.npz``, no pickle) under the file's content digest (`cache.file_digest`),
so later starts skip the scan and a rewritten file is indexed again. `RawRecords` reads a
record's json value by index; tokenizing it is the preprocessor's work (`dataprep.sft.raw.RawSFT`
builds on this class), so this package needs no tokenizer.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from dataset_engine.cache import cache_key, file_digest, file_stamp, known_digest

DATASET_TYPES = ("idxmap", "raw")  # what MP_DATASET_TYPE / --dataset-type take
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
    """The records of a jsonl file or JSON array, cached in ``cache_dir`` when given.

    The cache is keyed by the file's content digest. Looking it up reads no file bytes: the
    digest is taken only when already known for the file's current stamp (`known_digest`);
    otherwise the file is scanned, and its digest taken and the index saved in the background
    while the caller goes on to its first sample."""
    stamp = file_stamp(path)
    if cache_dir:
        digest = known_digest(path)
        cached = os.path.join(cache_dir, _index_name(digest)) if digest else None
        if cached and os.path.exists(cached):
            with np.load(cached, allow_pickle=False) as z:
                return RecordIndex(z["starts"], z["ends"], z["lines"] if "lines" in z.files else None)
    if stamp["size"] == 0:
        return RecordIndex(*(np.zeros(0, np.int64),) * 3)
    data = np.memmap(path, np.uint8, mode="r")  # unmapped when the last view goes
    skip = 3 if data[:3].tobytes() == b"\xef\xbb\xbf" else 0
    head = data[skip:skip + 4096].tobytes().lstrip()
    index = _array_index(data, path) if head[:1] == b"[" else _jsonl_index(data, skip)
    del data
    if cache_dir:
        threading.Thread(target=_save_index, args=(index, path, stamp, cache_dir), name="raw-index-cache").start()
    return index


def _index_name(digest: str) -> str:
    return f"raw-index-{cache_key({'raw_index': INDEX_VERSION, 'file': digest})}.npz"


def _save_index(index: RecordIndex, path: str, stamp: dict, cache_dir: str) -> None:
    """Under the digest of the bytes that were scanned: a file rewritten meanwhile is not saved.
    Written under a temporary name and renamed, so a reader never sees half a file."""
    digest = file_digest(path)
    if file_stamp(path) != stamp:
        return
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, _index_name(digest))
    tmp = f"{target}.{os.getpid()}.{threading.get_ident()}.tmp.npz"
    lines = {} if index.lines is None else {"lines": index.lines}
    np.savez(tmp, starts=index.starts, ends=index.ends, **lines)
    os.replace(tmp, target)


class RawRecords:
    """The json values of the records of json/jsonl files, by index: ``value(i)``.

    Picklable for DataLoader workers: each process maps the files again. Subclasses add what
    they keep per process to ``_reset`` and ``_per_process``.
    """

    _per_process: tuple[str, ...] = ("_maps",)

    def __init__(self, paths: list[str], cache_dir: str | None = None) -> None:
        self.paths = list(paths)
        self.cache_dir = cache_dir
        self._indexes = [index_records(p, cache_dir) for p in self.paths]
        self._first = np.cumsum([0] + [len(ix.starts) for ix in self._indexes])  # first record of each file
        self._reset()

    def _reset(self) -> None:
        self._maps: dict[int, mmap.mmap] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in self._per_process:
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

    def value(self, i: int):
        """Record ``i``'s json value (a bad one raises ValueError naming FILE:LINE)."""
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
