"""Reader and writer for Megatron's mmap indexed dataset ("MMIDIDX" version 1), numpy only.

A dataset is a pair of files sharing a prefix: ``{prefix}.bin`` holds the raw tokens of every
sequence back to back (no header, no padding), ``{prefix}.idx`` says where each sequence starts.
All integers are little-endian. ``.idx`` layout (see docs/FORMAT.md):

    offset        size  type          field
    0             9     bytes         magic b"MMIDIDX\\x00\\x00"
    9             8     <u8           version, always 1
    17            1     <u1           dtype code of the tokens (DTYPE_CODES)
    18            8     <u8           S = sequence_count
    26            8     <u8           D = document_count (number of documents + 1)
    34            4*S   <i4[S]        sequence_lengths, in tokens
    34+4S         8*S   <i8[S]        sequence_pointers, byte offsets into .bin
    34+12S        8*D   <i8[D]        document_indices: 0, then the cumulative sequence count
                                      after each document (document d = sequences
                                      document_indices[d] .. document_indices[d+1]-1)

This is exactly what ``megatron.core.datasets.indexed_dataset.IndexedDataset`` reads when
``multimodal=False`` (the multimodal variant appends int8 modes[S]; not supported here).

Costs: the writer keeps 4 bytes per sequence and 8 per document in RAM (numpy buffers that
double when full, so up to twice that while growing) and streams tokens to disk; pointers are derived at finalize, chunk by chunk. ``add_index`` appends a whole
idxmap by copying its ``.bin`` in 64 MiB pieces (merging). The reader maps
both files and validates them with chunked vectorised checks: O(S + D) time, O(chunk) memory.
Files are written as ``*.tmp`` and renamed when complete, ``.bin`` before ``.idx``, so an
``.idx`` never exists without its complete ``.bin``.
"""
from __future__ import annotations

import contextlib
import json
import mmap
import operator
import os
import struct
from collections.abc import Sequence

import numpy as np

__all__ = ["IdxmapError", "DTYPE_CODES", "optimal_dtype", "idx_path", "bin_path", "AtomicFile",
           "LOCAL_FILES", "SCRATCH_FILES", "IdxmapWriter", "IdxmapReader", "read_sidecar", "write_sidecar"]

_MAGIC = b"MMIDIDX\x00\x00"
_VERSION = 1
_HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequence_count, document_count
_CHUNK = 1 << 22  # elements per vectorised step: bounds temporaries to ~32 MiB
_BIN_BUFFER = 16 << 20  # large write buffer: documents are often only a few hundred bytes
_COPY_CHUNK = 64 << 20  # bytes per read when add_index copies another idxmap's .bin
_MAX_LEN = 2**31 - 1  # sequence lengths are stored as int32

DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype("u1"), 2: np.dtype("i1"), 3: np.dtype("<i2"), 4: np.dtype("<i4"),
    5: np.dtype("<i8"), 6: np.dtype("<f8"), 7: np.dtype("<f4"), 8: np.dtype("<u2"),
}
_CODE_OF = {dt: code for code, dt in DTYPE_CODES.items()}


class IdxmapError(ValueError):
    """A corrupt, truncated or inconsistent idxmap; message names the file and the problem."""


def optimal_dtype(vocab_size: int) -> np.dtype:
    """Megatron's rule (DType.optimal_dtype): uint16 if vocab_size < 65500, else int32."""
    return DTYPE_CODES[8] if vocab_size < 65500 else DTYPE_CODES[4]


def idx_path(prefix: str) -> str:
    return prefix + ".idx"


def bin_path(prefix: str) -> str:
    return prefix + ".bin"


def _dtype_code(dtype, where: str) -> tuple[np.dtype, int]:
    dt = np.dtype(dtype).newbyteorder("<")
    if dt not in _CODE_OF:
        raise IdxmapError(f"{where}: unsupported token dtype {dt}; use one of "
                          f"{sorted(str(d) for d in _CODE_OF)}")
    return DTYPE_CODES[_CODE_OF[dt]], _CODE_OF[dt]


def _int_array(values, name: str, where: str, hi: int) -> np.ndarray:
    """1-D int64 copy of `values`, refusing non-integers and values outside [0, hi]."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise IdxmapError(f"{where}: {name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iub":
        raise IdxmapError(f"{where}: {name} must be integers, got {arr.dtype}")
    lo, top = int(arr.min()), int(arr.max())
    if lo < 0 or top > hi:
        raise IdxmapError(f"{where}: {name} value {lo if lo < 0 else top} outside [0, {hi}]")
    return arr.astype(np.int64)


class _Growable:
    """Append-only numpy buffer with amortised doubling (no per-item Python objects)."""

    def __init__(self, dtype, capacity: int = 1024) -> None:
        self.data = np.empty(capacity, dtype)
        self.size = 0

    def _reserve(self, end: int) -> None:
        if end > len(self.data):
            grown = np.empty(max(end, 2 * len(self.data)), self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown

    def append(self, value: int) -> None:
        self._reserve(self.size + 1)
        self.data[self.size] = value
        self.size += 1

    def extend(self, values: np.ndarray) -> None:
        end = self.size + len(values)
        self._reserve(end)
        self.data[self.size:end] = values
        self.size = end

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class AtomicFile:
    """A local file written as ``{path}.tmp``; ``commit()`` fsyncs (when `durable`) and renames it
    into place, ``abort()`` removes it."""

    def __init__(self, path: str, mode: str = "wb", buffering: int = _BIN_BUFFER, durable: bool = True) -> None:
        self.path, self._tmp, self.durable = path, path + ".tmp", durable
        self._file = open(self._tmp, mode, buffering=buffering,
                          **({} if "b" in mode else {"encoding": "utf-8"}))

    def write(self, data) -> int:
        return self._file.write(data)

    def append_file(self, path: str, chunk_bytes: int = _COPY_CHUNK) -> None:
        """Append another file's bytes; in the kernel (copy_file_range) where the OS offers it,
        several times faster than reading and writing them here."""
        self._file.flush()
        with open(path, "rb") as src:
            remaining = os.fstat(src.fileno()).st_size
            with contextlib.suppress(AttributeError, OSError):  # no copy_file_range: copy below
                while remaining:
                    n = os.copy_file_range(src.fileno(), self._file.fileno(), min(remaining, 1 << 30))
                    if n == 0:
                        break
                    remaining -= n
            self._file.seek(0, os.SEEK_END)  # the buffered writer's position after the kernel's writes
            while remaining and (block := src.read(min(remaining, chunk_bytes))):
                self._file.write(block)
                remaining -= len(block)

    def commit(self) -> None:
        self._file.flush()
        if self.durable:
            os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self.path)
        if self.durable:
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._tmp)


class _LocalFiles:
    """Where IdxmapWriter puts its files; dataprep passes one that also takes URLs."""

    def __init__(self, durable: bool) -> None:
        self.durable = durable

    def output(self, path: str) -> AtomicFile:
        return AtomicFile(path, durable=self.durable)

    @staticmethod
    def remove(path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


LOCAL_FILES = _LocalFiles(durable=True)
SCRATCH_FILES = _LocalFiles(durable=False)
"""Intermediate files (e.g. a shard's outputs, checked by size before reuse): no fsync."""


class IdxmapWriter:
    """Streams documents into ``{prefix}.bin.tmp``; ``finalize()`` publishes the pair.

    `files` opens the outputs (``files.output(path)`` → write/commit/abort) and removes a stale
    ``.idx`` (``files.remove(path)``); the default writes local files."""

    def __init__(self, prefix: str, dtype, files=LOCAL_FILES) -> None:
        self.prefix = prefix
        self.dtype, self._code = _dtype_code(dtype, prefix)
        self._files = files
        self._lengths = _Growable(np.int32)
        self._doc_idx = _Growable(np.int64)
        self._doc_idx.append(0)
        # Integer range of the token dtype, looked up once: add_document is a hot path.
        info = np.iinfo(self.dtype) if self.dtype.kind in "iu" else None
        self._range = (int(info.min), int(info.max)) if info else None
        self._num_tokens = 0
        self._state = "open"
        self._bin = files.output(bin_path(prefix))
        self._idx = None

    @property
    def num_documents(self) -> int:
        return self._doc_idx.size - 1

    @property
    def num_sequences(self) -> int:
        return self._lengths.size

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def _check_open(self) -> None:
        if self._state != "open":
            raise IdxmapError(f"{self.prefix}: writer is already {self._state}")

    def _cast(self, tokens) -> np.ndarray:
        arr = np.asarray(tokens)
        if arr.ndim != 1:
            raise IdxmapError(f"{self.prefix}: tokens must be 1-D, got shape {arr.shape}")
        if arr.size and self._range and not np.can_cast(arr.dtype, self.dtype):
            # An unchecked cast would silently wrap ids, e.g. 70000 -> 4464 in uint16.
            if arr.dtype.kind not in "iub":
                raise IdxmapError(f"{self.prefix}: tokens must be integers, got {arr.dtype}")
            (lo_ok, hi_ok), lo, hi = self._range, int(arr.min()), int(arr.max())
            if lo < lo_ok or hi > hi_ok:
                raise IdxmapError(f"{self.prefix}: token {lo if lo < lo_ok else hi} does not "
                                  f"fit {self.dtype} [{lo_ok}, {hi_ok}]")
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def _write(self, tokens: np.ndarray, lengths: np.ndarray | None) -> None:
        """Append tokens and their sequence lengths (None: one sequence) once all is checked."""
        if lengths is None:
            if tokens.size > _MAX_LEN:
                raise IdxmapError(f"{self.prefix}: sequence of {tokens.size} tokens exceeds "
                                  f"the int32 length field")
        elif int(lengths.sum()) != tokens.size:
            raise IdxmapError(f"{self.prefix}: sequence lengths sum to {int(lengths.sum())} "
                              f"but {tokens.size} tokens were given")
        self._bin.write(memoryview(tokens).cast("B"))
        if lengths is None:
            self._lengths.append(tokens.size)
        else:
            self._lengths.extend(lengths)
        self._num_tokens += tokens.size

    def add_document(self, tokens: np.ndarray,
                     sequence_lengths: Sequence[int] | None = None) -> None:
        """Append one document; its sequences default to a single one of len(tokens)."""
        self._check_open()
        toks = self._cast(tokens)
        if sequence_lengths is not None:
            sequence_lengths = _int_array(sequence_lengths, "sequence_lengths", self.prefix,
                                          _MAX_LEN)
        self._write(toks, sequence_lengths)
        self._doc_idx.append(self._lengths.size)

    def add_documents(self, tokens: np.ndarray, sequence_lengths: np.ndarray,
                      sequences_per_document: np.ndarray) -> None:
        """Append many documents at once: tokens concatenated, vectorised bookkeeping."""
        self._check_open()
        toks = self._cast(tokens)
        lengths = _int_array(sequence_lengths, "sequence_lengths", self.prefix, _MAX_LEN)
        spd = _int_array(sequences_per_document, "sequences_per_document", self.prefix, 2**62)
        if int(spd.sum()) != lengths.size:
            raise IdxmapError(f"{self.prefix}: sequences_per_document sums to "
                              f"{int(spd.sum())} but {lengths.size} lengths were given")
        base = self._lengths.size
        self._write(toks, lengths)
        self._doc_idx.extend(base + np.cumsum(spd))

    def add_index(self, reader: IdxmapReader, chunk_bytes: int = _COPY_CHUNK) -> None:
        """Append every document of an open idxmap, as megatron-core's
        ``IndexedDatasetBuilder.add_index`` does: its ``.bin`` is copied in ``chunk_bytes``
        pieces (never whole in memory), its lengths appended, its document indices shifted by
        the sequences already written. Same dtype only: tokens are copied, not converted."""
        self._check_open()
        if reader.dtype != self.dtype:
            raise IdxmapError(f"{reader.prefix}: token dtype {reader.dtype.name} differs from "
                              f"{self.prefix}'s {self.dtype.name}")
        base = self._lengths.size
        # Bookkeeping first: a reader's arrays are already validated, so only I/O can fail below.
        for start in range(0, len(reader), _CHUNK):
            self._lengths.extend(reader.sequence_lengths[start:start + _CHUNK])
        docs = reader.document_indices
        for start in range(1, len(docs), _CHUNK):
            self._doc_idx.extend(docs[start:start + _CHUNK] + base)
        append = getattr(self._bin, "append_file", None)
        if append is not None:
            append(reader.bin_path, chunk_bytes)
        else:
            with open(reader.bin_path, "rb") as src:
                while block := src.read(chunk_bytes):
                    self._bin.write(block)
        self._num_tokens += reader.num_tokens

    def finalize(self) -> None:
        """Publish .bin, then .idx (each fsynced under a .tmp name and renamed, when local)."""
        self._check_open()
        try:
            # A stale .idx from an earlier run must not pair with the new .bin between renames.
            self._files.remove(idx_path(self.prefix))
            self._bin.commit()
            self._write_idx()
        except BaseException:
            self.abort()
            raise
        self._state = "finalized"

    def _write_idx(self) -> None:
        lengths, docs = self._lengths.view(), self._doc_idx.view()
        f = self._idx = self._files.output(idx_path(self.prefix))
        # 34-byte header: magic, version, dtype code, sequence_count, document_count.
        f.write(_HEADER.pack(_MAGIC, _VERSION, self._code, lengths.size, docs.size))
        f.write(memoryview(lengths).cast("B"))  # int32 sequence_lengths[S]
        # int64 sequence_pointers[S]: exclusive running sum of bytes, chunk by chunk.
        offset = 0
        for start in range(0, lengths.size, _CHUNK):
            nbytes = lengths[start:start + _CHUNK].astype(np.int64) * self.dtype.itemsize
            ends = np.cumsum(nbytes) + offset
            f.write(memoryview(ends - nbytes).cast("B"))
            offset = int(ends[-1])
        f.write(memoryview(docs).cast("B"))  # int64 document_indices[D]
        f.commit()

    def abort(self) -> None:
        """Discard everything written so far (no-op after finalize)."""
        if self._state == "finalized":
            return
        self._state = "aborted"
        for f in (self._bin, self._idx):
            if f is not None:
                f.abort()

    def __enter__(self) -> IdxmapWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.abort()
        elif self._state == "open":
            self.finalize()


def _fsync_dir(path: str) -> None:
    """Make the renames durable; best effort (not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class IdxmapReader:
    """Validated, memory-mapped view of ``{prefix}.idx`` / ``{prefix}.bin``."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.idx_path, self.bin_path = prefix, idx_path(prefix), bin_path(prefix)
        self._maps: list[mmap.mmap] = []
        for path in (self.idx_path, self.bin_path):
            if not os.path.isfile(path):
                raise IdxmapError(f"{path}: missing")
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _map(self, path: str) -> mmap.mmap | bytes:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return b""  # mmap refuses empty files (megatron's reader crashes on them)
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._maps.append(mm)
        return mm

    def _open(self) -> None:
        p = self.idx_path
        idx = self._map(p)
        if len(idx) < _HEADER.size:
            raise IdxmapError(f"{p}: truncated: {len(idx)} bytes, header needs {_HEADER.size}")
        magic, version, code, S, D = _HEADER.unpack_from(idx, 0)
        if magic != _MAGIC:
            raise IdxmapError(f"{p}: bad magic {magic!r}, expected {_MAGIC!r}")
        if version != _VERSION:
            raise IdxmapError(f"{p}: unsupported version {version}, expected {_VERSION}")
        if code not in DTYPE_CODES:
            raise IdxmapError(f"{p}: unknown dtype code {code}, expected one of "
                              f"{sorted(DTYPE_CODES)}")
        self.dtype = DTYPE_CODES[code]
        expected = _HEADER.size + 12 * S + 8 * D
        if len(idx) != expected:
            problem = "truncated" if len(idx) < expected else "trailing bytes"
            raise IdxmapError(f"{p}: {problem}: expected {expected} bytes from its counts "
                              f"(sequence_count={S}, document_count={D}), found {len(idx)}")
        if D < 1:
            raise IdxmapError(f"{p}: document_count is 0; document_indices needs a leading 0")
        self.sequence_lengths = np.frombuffer(idx, np.int32, S, _HEADER.size)
        self.sequence_pointers = np.frombuffer(idx, np.int64, S, _HEADER.size + 4 * S)
        self.document_indices = np.frombuffer(idx, np.int64, D, _HEADER.size + 12 * S)
        total = self._validate(S)
        bin_size = os.path.getsize(self.bin_path)
        if bin_size != total:
            problem = "truncated" if bin_size < total else "too long"
            raise IdxmapError(f"{self.bin_path}: {problem}: {p} implies {total} bytes, "
                              f"found {bin_size}")
        self._tokens = np.frombuffer(self._map(self.bin_path), self.dtype)

    def _validate(self, S: int) -> int:
        """Chunked vectorised consistency checks; returns the total token bytes."""
        p, di = self.idx_path, self.document_indices
        if di[0] != 0 or di[-1] != S:
            raise IdxmapError(f"{p}: document_indices must run from 0 to sequence_count={S}, "
                              f"found {int(di[0])} .. {int(di[-1])}")
        for start in range(0, len(di) - 1, _CHUNK):
            step = np.diff(di[start:start + _CHUNK + 1])
            if step.min() < 0:
                k = start + int(np.argmax(step < 0)) + 1
                raise IdxmapError(f"{p}: document_indices decrease at {k}: "
                                  f"{int(di[k - 1])} -> {int(di[k])}")
        offset = 0
        for start in range(0, S, _CHUNK):
            lens = self.sequence_lengths[start:start + _CHUNK].astype(np.int64)
            if lens.min() < 0:
                k = start + int(np.argmax(lens < 0))
                raise IdxmapError(f"{p}: sequence_lengths[{k}] is negative: "
                                  f"{int(lens[k - start])}")
            nbytes = lens * self.dtype.itemsize
            ends = np.cumsum(nbytes) + offset
            bad = np.flatnonzero(self.sequence_pointers[start:start + _CHUNK] != ends - nbytes)
            if bad.size:
                k = int(bad[0])
                raise IdxmapError(f"{p}: sequence_pointers[{start + k}] is "
                                  f"{int(self.sequence_pointers[start + k])}, expected "
                                  f"{int(ends[k] - nbytes[k])} (running byte offset)")
            offset = int(ends[-1])
        return offset

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> np.ndarray:
        """Every token of ``.bin`` as one read-only, memory-mapped array (no copy)."""
        return self._tokens

    def __len__(self) -> int:
        return len(self.sequence_lengths)

    def _start(self, seq: int) -> int:
        """Token offset of sequence `seq` (== num_tokens one past the end)."""
        if seq == len(self):
            return len(self._tokens)
        return int(self.sequence_pointers[seq]) // self.dtype.itemsize

    def __getitem__(self, i: int) -> np.ndarray:
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sequence {i} out of range for {n} sequences")
        i %= n
        start = self._start(i)
        return self._tokens[start:start + int(self.sequence_lengths[i])]

    def get_document(self, d: int) -> np.ndarray:
        d = operator.index(d)
        n = self.num_documents
        if not -n <= d < n:
            raise IndexError(f"document {d} out of range for {n} documents")
        d %= n
        # Validation guarantees a document's sequences are contiguous in .bin.
        lo, hi = int(self.document_indices[d]), int(self.document_indices[d + 1])
        return self._tokens[self._start(lo):self._start(hi)]

    def close(self) -> None:
        """Drop the maps; any views still held by callers keep theirs alive until released."""
        for name in ("sequence_lengths", "sequence_pointers", "document_indices", "_tokens"):
            self.__dict__.pop(name, None)
        for mm in self._maps:
            try:
                mm.close()
            except BufferError:
                pass  # a caller still holds a view; the map is freed when it is released
        self._maps = []

    def __enter__(self) -> IdxmapReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def write_sidecar(prefix: str, data: dict) -> None:
    """``{prefix}.json`` beside an idxmap, written under a temporary name and renamed."""
    tmp = prefix + ".json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, prefix + ".json")


def read_sidecar(prefix: str) -> dict | None:
    """``{prefix}.json``, or None when there is none."""
    path = prefix + ".json"
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as exc:
            raise IdxmapError(f"{path}: not valid JSON ({exc})") from exc
