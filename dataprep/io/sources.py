"""Input files → ordered chunks of raw records, read streaming.

A chunk is the unit of parallel work:

* ``range``   a byte range of an uncompressed jsonl file, cut at line ends; the worker reads it
              itself, so the main process never touches the bytes;
* ``lines``   newline-separated records shipped as bytes: a block of a ``.gz``/``.zst`` jsonl file
              decompressed by the main process, or elements of a JSON array (one per line);
* ``parquet`` one row group of a parquet file, read by the worker.

Chunk boundaries depend only on the input bytes and ``chunk_bytes``, never on the worker count,
so the output is the same for any ``--workers``. Memory is bounded by ``chunk_bytes`` times the
number of chunks in flight, whatever the input size.

Line numbers are 1-based lines of the file (of the decompressed text for compressed files);
for parquet they are 1-based row numbers. ``range`` chunks do not know their first line: the
executor learns it from the line counts of the chunks before it, which arrive in order.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import io
import json
import os
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from dataprep.io import storage
from dataprep.errors import DataprepError

BOM = b"\xef\xbb\xbf"
COMPRESSED = (".gz", ".zst", ".zstd")
# What a directory scan picks up; an explicitly named file is read whatever its name.
SCANNED_SUFFIXES = (".jsonl", ".json", ".parquet") + tuple(
    f"{base}{comp}" for base in (".jsonl", ".json") for comp in COMPRESSED
)
# A JSON array element larger than this is taken for a broken file rather than buffered further.
MAX_ARRAY_ELEMENT = 256 << 20


@dataclass(frozen=True, kw_only=True)
class Chunk:
    """One unit of work; see the module docstring for the kinds."""

    index: int
    """Position in the global order; results are written in this order."""
    path: str
    file_index: int = 0
    """Position of the file in the input list (a file may be given twice)."""
    kind: str
    """``range``, ``lines`` or ``parquet``."""
    start: int = 0
    """range: first byte; parquet: row group index."""
    end: int = 0
    """range: end byte (exclusive)."""
    data: bytes | None = None
    """lines: the records, one per line."""
    first_line: int | None = None
    """1-based line (row for parquet) of the chunk's first line; None for range chunks."""
    line_numbers: tuple[int, ...] | None = None
    """lines from a JSON array: the source line where each record starts."""
    source_bytes: int = 0
    """Bytes of the input file this chunk accounts for (progress)."""
    shard: int = 0
    """The shard (``shards.py``) this chunk belongs to."""


def expand_inputs(specs: list[str]) -> list[str]:
    """Turn paths, directories and glob patterns into an ordered list of files."""
    files: list[str] = []
    for spec in specs:
        if storage.is_url(spec):
            files.extend(storage.expand_url(spec, SCANNED_SUFFIXES))
            continue
        spec = storage.local(spec)
        if glob.has_magic(spec):
            matches = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not matches:
                raise DataprepError(f"pattern matched no files: {spec!r}")
            files.extend(matches)
        elif os.path.isdir(spec):
            found = sorted(
                os.path.join(root, name)
                for root, dirs, names in os.walk(spec)
                for name in names
                if name.endswith(SCANNED_SUFFIXES) and not name.startswith(".")
            )
            if not found:
                raise DataprepError(
                    f"directory has no input files ({', '.join(SCANNED_SUFFIXES)}): {spec!r}"
                )
            files.extend(found)
        elif os.path.isfile(spec):
            files.append(spec)
        else:
            raise DataprepError(f"input not found: {spec!r}")
    return files


def _open_decompressed(path: str, raw: BinaryIO) -> BinaryIO:
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if path.endswith((".zst", ".zstd")):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw), 1 << 20)
    return raw


def _is_json_array(stream: io.BufferedReader) -> bool:
    head = stream.peek(4096)[:4096]
    return head.removeprefix(BOM).lstrip()[:1] == b"["


def splittable(path: str) -> bool:
    """Whether the file can be read in byte ranges cut at line ends: uncompressed jsonl (not
    parquet, not compressed, not a JSON array)."""
    if path.endswith((".parquet", *COMPRESSED)):
        return False
    with storage.open_read(path) as raw:
        head = raw.read(4096)
    return head.removeprefix(BOM).lstrip()[:1] != b"["


def next_line_start(f: BinaryIO, position: int, size: int) -> int:
    """The first line start at or after `position` (a line end found by reading on from there)."""
    if position >= size:
        return size
    f.seek(position - 1)
    return min(position - 1 + len(f.readline()), size) if position > 0 else 0


def parquet_file(path: str):
    import pyarrow.parquet as pq

    return pq.ParquetFile(storage.open_read(path) if storage.is_url(path) else storage.local(path))


@dataclass(frozen=True)
class Piece:
    """Part of the input ChunkReader reads: a whole file (end None) or a byte range of a
    splittable one; `shard` tags its chunks."""

    path: str
    file_index: int
    start: int = 0
    end: int | None = None
    shard: int = 0


class ChunkReader:
    """Iterates the chunks of a list of files (or of pieces of them), in order."""

    def __init__(self, files: list[str], json_keys: list[str], chunk_bytes: int = 4 << 20,
                 pieces: list[Piece] | None = None) -> None:
        if chunk_bytes < 1024:
            raise ValueError(f"chunk_bytes must be at least 1024, got {chunk_bytes}")
        self.pieces = pieces if pieces is not None else [Piece(p, i) for i, p in enumerate(files)]
        self.json_keys = json_keys
        self.chunk_bytes = chunk_bytes
        self._index = 0
        self._file_index = 0
        self._shard = 0

    def total_bytes(self) -> int:
        return sum(storage.size(p.path) if p.end is None else p.end - p.start for p in self.pieces)

    def __iter__(self) -> Iterator[Chunk]:
        for piece in self.pieces:
            path, self._file_index, self._shard = piece.path, piece.file_index, piece.shard
            if piece.end is not None:
                yield from self._ranges(path, piece.start, piece.end)
                continue
            if path.endswith(".parquet"):
                yield from self._parquet(path)
                continue
            with storage.open_read(path) as raw:
                stream = io.BufferedReader(_open_decompressed(path, raw), 1 << 20)
                try:
                    if _is_json_array(stream):
                        yield from self._array(path, stream, raw)
                    elif stream.raw is raw:
                        yield from self._ranges(path, 0, storage.size(path))
                    else:
                        yield from self._compressed_lines(path, stream, raw)
                except (OSError, EOFError) as exc:  # corrupt gzip/zstd streams end up here
                    if isinstance(exc, DataprepError):
                        raise
                    raise DataprepError(f"{path}: cannot read: {exc}") from exc

    def _chunk(self, path: str, **fields) -> Chunk:
        self._index += 1
        return Chunk(index=self._index - 1, path=path, file_index=self._file_index, shard=self._shard,
                     **fields)

    def _ranges(self, path: str, start: int, stop: int) -> Iterator[Chunk]:
        """Chunks of about chunk_bytes covering [start, stop), cut at line ends (`start` and
        `stop` are line starts)."""
        with storage.open_read(path) as f:
            while start < stop:
                end = min(start + self.chunk_bytes, stop)
                if end < stop:
                    f.seek(end)
                    end = min(end + len(f.readline()), stop)
                yield self._chunk(path, kind="range", start=start, end=end, source_bytes=end - start)
                start = end

    def _compressed_lines(self, path: str, stream: BinaryIO, raw: BinaryIO) -> Iterator[Chunk]:
        line, consumed, first = 1, 0, True
        while True:
            block = stream.read(self.chunk_bytes)
            if not block:
                return
            if not block.endswith(b"\n"):
                block += stream.readline()
            if first:
                block, first = block.removeprefix(BOM), False
            position = raw.tell()
            yield self._chunk(path, kind="lines", data=block, first_line=line,
                              source_bytes=position - consumed)
            consumed = position
            line += block.count(b"\n")

    def _array(self, path: str, stream: BinaryIO, raw: BinaryIO) -> Iterator[Chunk]:
        """A top-level JSON array's elements (`JsonArrayElements`) in chunks of about
        chunk_bytes, each element on one line of the chunk."""
        pending: list[bytes] = []
        numbers: list[int] = []
        size = consumed = 0
        for element, line in JsonArrayElements(path, stream):
            # raw newlines can only be whitespace between JSON tokens (inside strings they are
            # escaped), so the element with newlines made spaces is still the same JSON
            pending.append(element.replace("\r", " ").replace("\n", " ").encode("utf-8"))
            numbers.append(line)
            size += len(element)
            if size >= self.chunk_bytes:
                position = raw.tell()
                yield self._chunk(path, kind="lines", data=b"\n".join(pending),
                                  line_numbers=tuple(numbers), source_bytes=position - consumed)
                consumed, pending, numbers, size = position, [], [], 0
        if pending:
            yield self._chunk(path, kind="lines", data=b"\n".join(pending),
                              line_numbers=tuple(numbers), source_bytes=raw.tell() - consumed)

    def _parquet(self, path: str) -> Iterator[Chunk]:
        try:
            parquet = parquet_file(path)
        except Exception as exc:  # pyarrow raises several types for a broken file
            raise DataprepError(f"{path}: cannot read parquet: {exc}") from exc
        meta = parquet.metadata
        names = parquet.schema_arrow.names  # top-level columns (list<string> too)
        for key in self.json_keys:
            if key not in names:
                raise DataprepError(f"{path}: no column {key!r} (columns: {', '.join(names)})")
        row, size, total = 1, storage.size(path), max(meta.num_rows, 1)
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            yield self._chunk(path, kind="parquet", start=group, first_line=row,
                              source_bytes=size * rows // total)
            row += rows


class LineNumbers:
    """Absolute line numbers of a chunk's lines, learnt from the chunks before it in order:
    a range chunk does not know its first line, only how many lines the earlier ones had."""

    def __init__(self) -> None:
        self._next: dict[int, int] = {}

    def resolver(self, chunk: Chunk, n_lines: int):
        """line(local index) for this chunk, which holds `n_lines` lines; call once per chunk, in order."""
        if chunk.line_numbers is not None:
            numbers = chunk.line_numbers
            return lambda local: numbers[local]
        first = chunk.first_line if chunk.first_line is not None else self._next.get(chunk.file_index, 1)
        self._next[chunk.file_index] = first + n_lines
        return lambda local: first + local


def read_chunk_data(chunk: Chunk) -> bytes:
    """The bytes of a range or lines chunk: records separated by newlines."""
    if chunk.kind != "range":
        return chunk.data or b""
    with storage.open_read(chunk.path) as f:
        f.seek(chunk.start)
        data = f.read(chunk.end - chunk.start)
    return data.removeprefix(BOM) if chunk.start == 0 else data


def split_lines(data: bytes) -> list[bytes]:
    """Lines without their newline; a final newline does not start another line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def read_chunk_lines(chunk: Chunk) -> list[bytes]:
    return split_lines(read_chunk_data(chunk))


class JsonArrayElements:
    """The elements of a top-level JSON array as ``(text, first line)``, read 1 MiB at a time,
    so a file of any size is split without loading it whole. Bad input raises DataprepError
    naming FILE:LINE (not an array, invalid UTF-8 or JSON, not closed, data after it)."""

    def __init__(self, path: str, stream: BinaryIO) -> None:
        self.path, self.stream = path, stream
        self.utf8 = codecs.getincrementaldecoder("utf-8-sig")()
        self.decoder = json.JSONDecoder()
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False

    def fail(self, reason: str) -> DataprepError:
        return DataprepError(f"{self.path}:{self.line}: {reason}")

    def fill(self) -> bool:
        """Read more of the file into the buffer; False at its end."""
        if self.eof:
            return False
        data = self.stream.read(1 << 20)
        try:
            more = self.utf8.decode(data, final=not data)
        except UnicodeDecodeError as exc:
            bad_line = self.line + self.buf.count("\n", self.pos) + data.count(b"\n", 0, exc.start)
            raise DataprepError(f"{self.path}:{bad_line}: invalid UTF-8 in JSON array "
                                f"(byte 0x{data[exc.start]:02x})") from exc
        if not data:
            self.eof = True
            return False
        self.buf = self.buf[self.pos:] + more
        self.pos = 0
        return True

    def skip_ws(self) -> str:
        """Advance past whitespace (counting lines); return the next character or ''."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.line += self.buf[self.pos] == "\n"
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.fill():
                return ""

    def element(self) -> str:
        """The JSON value at the cursor (the buffer grows until it holds a whole one)."""
        while True:
            try:
                _, end = self.decoder.raw_decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as exc:
                if len(self.buf) - self.pos > MAX_ARRAY_ELEMENT or not self.fill():
                    raise self.fail(f"invalid JSON in array element: {exc.msg}") from None
        text = self.buf[self.pos:end]
        self.pos = end
        return text

    def __iter__(self) -> Iterator[tuple[str, int]]:
        if self.skip_ws() != "[":
            raise self.fail("expected a JSON array")
        self.pos += 1
        expect_element = True
        while True:
            ch = self.skip_ws()
            if ch == "":
                raise self.fail("JSON array is not closed (file truncated?)")
            if ch == "]":
                self.pos += 1
                if self.skip_ws() != "":
                    raise self.fail("unexpected data after the closing ']' of the JSON array")
                return
            if ch == ",":
                if expect_element:
                    raise self.fail("invalid JSON array: unexpected ','")
                self.pos += 1
                expect_element = True
                continue
            if not expect_element:
                raise self.fail(f"invalid JSON array: expected ',' or ']', got {ch!r}")
            line = self.line
            text = self.element()
            self.line += text.count("\n")
            expect_element = False
            yield text, line
