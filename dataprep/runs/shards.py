"""Shards: the resumable units of a run, and the work directory that remembers them.

A run's input is cut into shards that depend only on the input files and ``--shard-bytes``:
a byte range of an uncompressed jsonl file (cut at line ends), or a whole file when it cannot be
cut (compressed, a JSON array, parquet). A worker (or a Ray task) tokenizes a whole shard into
its own small outputs in ``{OUTPUT_PREFIX}.work/``; the main process then marks it done:

    {OUTPUT_PREFIX}.work/
        manifest.json               what the run is: command, options, tokenizer, inputs, shards
        shard-000000_*.bin/.idx     shard 0's outputs (idxmaps, named like the final ones)
        shard-000000.rejects.jsonl  its bad records (--skip-bad-records)
        shard-000000.done.json      its marker: written last, after its outputs are complete;
                                    lists them with their sizes (checked before reuse)
        .lock                       held while a run uses the directory (local directories)

The final outputs are the shards' outputs concatenated in shard order (a `Merger` appends each
finished shard as it is marked), so they are byte-identical to an uninterrupted run however often the run was interrupted, and whichever
engine produced the shards. A rerun of the same command skips the marked shards; a rerun with
other options or changed inputs is refused (``--restart`` discards the directory). The
directory is removed once the final outputs are complete, unless ``--keep-work``.

Shards are taken in order, so a shard's first line number is known from the line counts of the
shards before it, and errors name absolute FILE:LINE positions even across resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from dataprep.io import storage
from dataprep.errors import DataprepError
from dataprep.runs.pool import BackgroundCalls
from dataprep.runs.progress import Progress
from dataprep.io.rejects import Rejects
from dataprep.io.sources import Chunk, ChunkReader, LineNumbers, Piece, next_line_start, splittable

WORK_FORMAT = "dataprep-work/1"


@dataclass(frozen=True)
class Shard:
    index: int
    path: str
    file_index: int
    start: int
    end: int | None
    """None: the whole file."""
    bytes: int
    """Input bytes it covers (progress)."""

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"

    def piece(self) -> Piece:
        return Piece(self.path, self.file_index, self.start, self.end, self.index)


DEFAULT_SHARD_BYTES = 256 << 20


def check_shard_bytes(shard_bytes: int) -> None:
    if shard_bytes < 1024:
        raise DataprepError(f"--shard-bytes must be at least 1024, got {shard_bytes}")


def plan_shards(files: list[str], shard_bytes: int = DEFAULT_SHARD_BYTES) -> list[Shard]:
    """Shards of the inputs, in input order; the cuts depend only on the bytes and `shard_bytes`."""
    check_shard_bytes(shard_bytes)
    shards: list[Shard] = []
    for file_index, path in enumerate(files):
        size = storage.size(path)
        if not splittable(path):
            shards.append(Shard(len(shards), path, file_index, 0, None, size))
            continue
        cuts = [0]
        with storage.open_read(path) as f:
            for position in range(shard_bytes, size, shard_bytes):
                cut = next_line_start(f, max(position, cuts[-1]), size)
                if cut > cuts[-1]:
                    cuts.append(cut)
        cuts.append(size)
        for start, end in zip(cuts, cuts[1:]):
            if end > start:
                shards.append(Shard(len(shards), path, file_index, start, end, end - start))
    return shards


class ShardOutput(Protocol):
    """A shard's outputs while a worker writes them (one class per command)."""

    def add(self, result) -> tuple[int, int]:
        """Count one chunk's results and write them; returns (records written, tokens)."""

    def finalize(self) -> tuple[dict, list[str]]:
        """Complete the outputs; returns (counts for the marker, names of the files written)."""

    def abort(self) -> None: ...


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs to produce any shard of a run (picklable)."""

    encode: Callable[[Chunk], object]
    """chunk → result (`ids`/`keys`, `rejected`, `n_lines`…), with the worker's engine."""
    open_output: Callable[[str], ShardOutput]
    """local prefix → the shard's writer."""
    json_keys: tuple[str, ...]
    chunk_bytes: int
    stop_at_first_reject: bool
    driver_pid: int
    """The process that merges (killed by the ``mid-shard`` test fault)."""


@dataclass
class ShardDone:
    """A produced shard, as the worker reports it to the driver."""

    counts: dict
    files: list[str]
    lines: int
    written: int
    tokens: int
    rejected: list[tuple[int, str, str]]
    """(line within the shard, 1-based; reason; record)."""
    complete: bool = True
    """False when it stopped at a bad record (without --skip-bad-records)."""


def produce_shard(job: ShardJob, piece: Piece, prefix: str) -> ShardDone:
    """In a worker: read, tokenize and write one shard's outputs under the local `prefix`."""
    output = job.open_output(prefix)
    numbers = LineNumbers()
    done = ShardDone(counts={}, files=[], lines=0, written=0, tokens=0, rejected=[])
    try:
        for chunk in ChunkReader([], list(job.json_keys), job.chunk_bytes, pieces=[piece]):
            result = job.encode(chunk)
            where = numbers.resolver(chunk, result.n_lines)
            done.rejected += [(where(bad.local), bad.reason, bad.record) for bad in result.rejected]
            written, tokens = output.add(result)
            done.lines += result.n_lines
            done.written += written
            done.tokens += tokens
            fault(f"mid-shard:{piece.shard}", job.driver_pid)
            if done.rejected and job.stop_at_first_reject:
                output.abort()
                done.complete = False
                return done
        done.counts, done.files = output.finalize()
    except BaseException:
        output.abort()
        raise
    return done


class Merger(Protocol):
    """The final outputs, built from the finished shards in shard order (one per command)."""

    def add(self, prefix: str) -> None:
        """Append one finished shard's outputs (a local prefix)."""

    def abort(self) -> None: ...


class JoinedRejects:
    """The final rejects file: every shard's rejects, in shard order (None path: no file)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._out = storage.Output(path) if path else None

    def add(self, prefix: str) -> None:
        if self._out is not None:
            self._out.append_file(f"{prefix}.rejects.jsonl")

    def commit(self) -> None:
        if self._out is not None:
            self._out.commit()

    def abort(self) -> None:
        if self._out is not None:
            self._out.abort()


def _diff(old: dict, new: dict) -> str:
    """What differs between two manifests, in one line."""
    for key in ("command", "tokenizer", "options"):
        if old.get(key) != new.get(key):
            a, b = old.get(key) or {}, new.get(key) or {}
            if isinstance(a, dict) and isinstance(b, dict):
                changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                return f"other {key} ({', '.join(f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in changed)})"
            return f"other {key} ({a!r} -> {b!r})"
    old_inputs = {i["path"]: i for i in old.get("inputs", [])}
    for item in new.get("inputs", []):
        before = old_inputs.get(item["path"])
        if before is None:
            return f"other inputs ({item['path']} is new)"
        if before != item:
            return (f"changed input {item['path']} (bytes {before['bytes']:,} -> {item['bytes']:,}, "
                    f"version {before['version']} -> {item['version']})")
    if len(old.get("inputs", [])) != len(new.get("inputs", [])) or old.get("inputs") != new.get("inputs"):
        return "other inputs (files removed or reordered)"
    return "another shard plan (--shard-bytes)"


class WorkDir:
    """``{output_prefix}.work``: the manifest, the shards' outputs and their markers.

    Shard outputs are written to local files: in the directory itself when it is local, else
    in a local staging directory from which they are uploaded before the marker is written.
    """

    def __init__(self, output_prefix: str, manifest: dict, restart: bool = False) -> None:
        self.root = output_prefix.rstrip("/") + ".work"
        self.manifest = {"format": WORK_FORMAT, **manifest}
        self.restart = restart
        self.remote = storage.is_url(self.root)
        self.markers: dict[int, dict] = {}
        self._lock = None
        self._staging: str | None = None

    def open(self) -> WorkDir:
        storage.makedirs(self.root)
        if not self.remote:
            self._take_lock()
        found = storage.read_json(self.path("manifest.json"))
        if found is not None and found != self.manifest:
            if not self.restart:
                raise DataprepError(
                    f"{self.root} holds an unfinished run with {_diff(found, self.manifest)}; rerun the "
                    f"same command to resume it, or pass --restart to discard it")
        if found != self.manifest:
            self._clear()
            storage.write_json(self.path("manifest.json"), self.manifest)
        else:
            sizes = storage.list_sizes(self.root)
            for name in sizes:
                if name.endswith(".done.json"):
                    marker = storage.read_json(self.path(name))
                    # Shard files are not fsynced (a crash of the machine may cut them short):
                    # a marker counts only when every file it lists has the size it recorded.
                    if marker is not None and marker.get("format") == WORK_FORMAT and all(
                            sizes.get(f) == n for f, n in marker["files"].items()):
                        self.markers[int(marker["shard"])] = marker
        if self.remote:
            self._staging = tempfile.mkdtemp(prefix="dataprep-staging-")
        return self

    def _take_lock(self) -> None:
        import fcntl

        self._lock = open(os.path.join(storage.local(self.root), ".lock"), "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise DataprepError(f"{self.root} is in use by another dataprep run") from None

    def _clear(self) -> None:
        for name in storage.listdir(self.root):
            if name != ".lock":
                path = self.path(name)
                if self.remote or not os.path.isdir(storage.local(path)):
                    storage.remove(path)
                else:
                    shutil.rmtree(storage.local(path), ignore_errors=True)

    def path(self, name: str) -> str:
        return storage.join(self.root, name)

    def local_prefix(self, shard: Shard) -> str:
        """Where a shard's outputs are written (a local path)."""
        base = self._staging if self.remote else storage.local(self.root)
        return os.path.join(base, shard.name)

    def publish(self, shard: Shard, files: list[str], marker: dict) -> None:
        """Upload the shard's files (remote directories), then write its marker, which lists
        them with their sizes."""
        local_dir = os.path.dirname(self.local_prefix(shard))
        sizes = {name: os.path.getsize(os.path.join(local_dir, name)) for name in files}
        if self.remote:
            for name in files:
                local_file = os.path.join(self._staging, name)
                storage.upload(local_file, self.path(name))
                os.remove(local_file)
        marker = {"format": WORK_FORMAT, "shard": shard.index, **marker, "files": sizes}
        storage.write_json(self.path(f"{shard.name}.done.json"), marker)
        self.markers[shard.index] = marker

    @contextlib.contextmanager
    def fetched(self, shard: Shard) -> Iterator[str]:
        """A local prefix of a finished shard's outputs (downloaded first when remote)."""
        if not self.remote:
            yield os.path.join(storage.local(self.root), shard.name)
            return
        names = list(self.markers[shard.index]["files"])
        for name in names:
            storage.download(self.path(name), os.path.join(self._staging, name))
        try:
            yield os.path.join(self._staging, shard.name)
        finally:
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(self._staging, name))

    def abandon(self) -> None:
        """After a failure: keep the directory only if it holds finished shards to resume from."""
        self.close(remove=not self.markers)

    def close(self, remove: bool) -> None:
        """Release the directory; remove it when the run is complete (not --keep-work)."""
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
        if remove:
            storage.remove_tree(self.root)
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def fault(point: str, pid: int | None = None) -> None:
    """Test hook: DATAPREP_FAULT=<point> kills the run (`pid`, default this process) with SIGKILL
    at that point (``shard-done:N`` after shard N's marker, ``mid-shard:N`` inside shard N,
    ``merge`` before the final files are published), so tests can check resuming after a crash
    at an exact moment."""
    if os.environ.get("DATAPREP_FAULT") == point:
        import signal

        os.kill(pid or os.getpid(), signal.SIGKILL)


def run_shards(shards: list[Shard], work: WorkDir, done_shards: Iterator[ShardDone], progress: Progress,
               merger: Merger, rejects_hint: str | None) -> list[dict]:
    """Take the produced shards (`done_shards`: one ShardDone per unmarked shard, in shard order),
    mark each done and append every shard to `merger`, in order; returns the markers.

    Bad records are reported here, in input order: the first one stops the run with FILE:LINE
    unless `rejects_hint` is None (--skip-bad-records), which writes them to the shard's rejects
    file instead. A writer thread appends each shard to the final outputs (in the kernel) and
    writes its marker, while the workers go on with the next shards."""
    progress.resume(sum(s.bytes for s in shards if s.index in work.markers),
                    sum(s.index in work.markers for s in shards), len(shards))
    writes = BackgroundCalls()
    next_line: dict[int, int] = {}  # per input file: its next absolute line
    try:
        for shard in shards:
            first = next_line.get(shard.file_index, 1) if shard.end is not None else 1
            marker = work.markers.get(shard.index)
            if marker is not None:
                writes.submit(_merge_done, work, shard, merger)
                lines = marker["lines"]
            else:
                done = next(done_shards)
                lines = done.lines
                files = done.files + _rejects_file(work, shard, first, done, rejects_hint)
                progress.update(shard.bytes, done.written, done.tokens)
                writes.submit(_finish, work, shard, merger, progress, files,
                              {"path": storage.absolute(shard.path), "start": shard.start, "end": shard.end,
                               "lines": done.lines, "counts": done.counts})
            next_line[shard.file_index] = first + lines
        writes.drain()
    except BaseException as exc:
        if isinstance(exc, Exception):  # e.g. a bad record: the shards before it still get marked
            with contextlib.suppress(Exception):
                writes.drain()
        raise
    finally:
        writes.close()
    fault("merge")
    return [work.markers[s.index] for s in shards]


def _rejects_file(work: WorkDir, shard: Shard, first_line: int, done: ShardDone,
                  rejects_hint: str | None) -> list[str]:
    """Report the shard's bad records at their absolute lines: fail on the first (no
    --skip-bad-records), or write them to the shard's rejects file (its name is returned)."""
    at = [(first_line - 1 + line, reason, record) for line, reason, record in done.rejected]
    if rejects_hint is not None:
        if at or not done.complete:
            line, reason, _ = at[0]
            raise DataprepError(f"{shard.path}:{line}: {reason} (pass --skip-bad-records to write bad "
                                f"records to {rejects_hint} and go on)")
        return []
    rejects = Rejects(work.local_prefix(shard) + ".rejects.jsonl")
    for line, reason, record in at:
        rejects.write(shard.path, line, reason, record)
    rejects.finalize()
    return [os.path.basename(rejects.path)]


def _merge_done(work: WorkDir, shard: Shard, merger: Merger) -> None:
    with work.fetched(shard) as prefix:
        merger.add(prefix)


def _finish(work: WorkDir, shard: Shard, merger: Merger, progress: Progress, files: list[str],
            marker: dict) -> None:
    merger.add(work.local_prefix(shard))
    work.publish(shard, files, marker)
    progress.shard_done()
    fault(f"shard-done:{shard.index}")


class ShardExecutor(Protocol):
    """Who produces the shards (`executors.py`: local processes or Ray tasks)."""

    def produce(self, job: ShardJob, items: list[tuple[Piece, str]]) -> Iterator[ShardDone]:
        """Each (piece, local prefix) produced, its files at the prefix, yielded in the given order."""

    def terminate(self) -> None:
        """Stop producing now: no shard file may appear after this returns."""


def produce_shards(config, files: list[str], executor: ShardExecutor, job: ShardJob, merger: Merger, what: dict,
                   desc: str, log: Callable[[str], None]) -> tuple[WorkDir, list[dict]]:
    """Plan the shards, open (or resume) the work directory, produce every shard not yet done
    with `executor` and append every shard to `merger`, in order. `what` (command,
    tokenizer, options) joins the manifest: a rerun resumes only when it and the inputs are
    unchanged. Returns the open work directory (the caller completes the merger's outputs, then
    closes it) and the shards' markers."""
    try:
        shards = plan_shards(files, config.shard_bytes)
        manifest = json.loads(json.dumps({
            **what,
            "inputs": [{"path": storage.absolute(p), **storage.signature(p)} for p in files],
            "shard_bytes": config.shard_bytes,
            "shards": [{"path": storage.absolute(s.path), "start": s.start, "end": s.end} for s in shards],
        }))
        work = WorkDir(config.output_prefix, manifest, config.restart).open()
    except BaseException:
        merger.abort()
        raise
    if work.markers:
        log(f"resuming from {work.root}: {len(work.markers)} of {len(shards)} shards already done")
    items = [(s.piece(), work.local_prefix(s)) for s in shards if s.index not in work.markers]
    done = executor.produce(job, items)
    progress = Progress(sum(s.bytes for s in shards), config.progress, desc=desc)
    try:
        markers = run_shards(shards, work, done, progress, merger,
                             None if config.skip_bad_records else f"{config.output_prefix}.rejects.jsonl")
    except BaseException:
        executor.terminate()  # no worker may write into the directory after this
        merger.abort()
        work.abandon()
        raise
    finally:
        progress.close()
    return work, markers
