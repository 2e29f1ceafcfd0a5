"""The cache: where computed indices live, and the one rule that keeps them fresh.

Everything the toolkit caches (GPT sample indices, packing plans, raw mode's record indices and
lengths, Hugging Face directories converted for the trainer) lives under `default_cache_dir()`
and is keyed by the *content* of its inputs (`file_digest`), never by path or mtime alone, so a
file rewritten in place is a new key, not a stale hit.

Entries of arrays (`cached_arrays`), safe for many builders at once:

Each entry is a directory ``{cache_dir}/{key}/`` holding ``description.json`` and one ``.npy``
per array, where ``key`` is a hash of the description: every field that changes the arrays,
including a digest of the input files themselves (so a regenerated idxmap at the same path is a
new key, not a stale hit). Writing and reading:

* an entry is built in a private temporary directory and published with one ``rename`` of the
  directory, so a reader sees a complete entry or none;
* builders on one machine (or a filesystem with working ``flock``) take a lock per key, so one
  builds and the others wait and load it; without working locks (some network filesystems) two
  builders both build, one rename wins and both use the same bytes;
* nothing needs rank 0 or a shared disk: each node (or job) builds what its cache lacks;
* on load, the stored description must equal the expected one and every array must be present
  with the shapes recorded; anything else (a foreign directory, a hash collision, a truncated
  file) is moved aside and rebuilt;
* arrays are saved and loaded with ``allow_pickle=False`` and loaded memory-mapped.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
from typing import Callable

import numpy as np

CACHE_VERSION = 1


def default_cache_dir() -> str:
    """``$DATAPREP_CACHE``, else ``~/.cache/dataprep``."""
    return os.environ.get("DATAPREP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dataprep")


def file_digest(path: str) -> str:
    """blake2b of a file's bytes: the content identity every cache key is built from. Hashing
    a 10 M-document .idx takes ~0.5 s (a GB of json ~1 s), so the digest is remembered per
    process and in ``{default_cache_dir()}/digests/`` (one memo for every cache), reused while
    the file's size, mtime, ctime and inode are unchanged (any rewrite of the file changes its
    ctime)."""
    path = os.path.abspath(path)
    stamp = file_stamp(path)
    digest = _remembered(path, stamp)
    if digest is not None:
        return digest
    digest = _DIGESTS[(path, *stamp.values())] = _hash(path)
    with contextlib.suppress(OSError):  # a read-only cache: the digest is only not remembered
        memo = _memo_path(path)
        os.makedirs(os.path.dirname(memo), exist_ok=True)
        tmp = f"{memo}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"path": path, "stamp": stamp, "digest": digest}, f)
        os.replace(tmp, memo)
    return digest


def file_stamp(path: str) -> dict:
    """What says a file was not rewritten: size, mtime, ctime and inode. ctime too: a copy over
    the file that keeps its size and sets its mtime back (cp -p) still changes the ctime, which
    no user tool can set."""
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino}


def known_digest(path: str) -> str | None:
    """The file's digest if it is already known for its current stamp, without reading the file:
    a lookup that must stay cheap (raw mode's first start) treats None as a miss."""
    path = os.path.abspath(path)
    return _remembered(path, file_stamp(path))


def _memo_path(path: str) -> str:
    return os.path.join(default_cache_dir(), "digests", hashlib.sha1(path.encode()).hexdigest() + ".json")


_DIGESTS: dict[tuple, str] = {}  # this process's digests by (path, *stamp)


def _remembered(path: str, stamp: dict) -> str | None:
    """The digest known for this path and stamp: in this process, else in the memo on disk."""
    key = (path, *stamp.values())
    if key not in _DIGESTS:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            with open(_memo_path(path), encoding="utf-8") as f:
                stored = json.load(f)
            if stored["path"] == path and stored["stamp"] == stamp:
                _DIGESTS[key] = stored["digest"]
    return _DIGESTS.get(key)


def _hash(path: str) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    return h.hexdigest()


def cache_key(description: dict) -> str:
    text = json.dumps({"cache_version": CACHE_VERSION, **description}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _load(entry: str, description: dict, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray] | None:
    """The entry's arrays, or None when it is not exactly what `description` asks for (and,
    given `names`, holds exactly those arrays)."""
    try:
        with open(os.path.join(entry, "description.json"), encoding="utf-8") as f:
            stored = json.load(f)
        if not isinstance(stored, dict) or stored.get("description") != json.loads(json.dumps(description)):
            return None
        if names is not None and sorted(stored["arrays"]) != sorted(names):
            return None
        arrays = {}
        for name, shape in stored["arrays"].items():
            array = np.load(os.path.join(entry, f"{name}.npy"), mmap_mode="r", allow_pickle=False)
            if list(array.shape) != shape:
                return None
            arrays[name] = array
        return arrays
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError):
        return None  # a truncated or foreign entry: rebuilt


def _publish(cache_dir: str, entry: str, description: dict, arrays: dict[str, np.ndarray]) -> None:
    tmp = tempfile.mkdtemp(prefix=os.path.basename(entry) + ".tmp-", dir=cache_dir)
    try:
        for name, array in arrays.items():
            with open(os.path.join(tmp, f"{name}.npy"), "wb") as f:
                np.save(f, array, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())  # durable before the rename makes the entry visible
        with open(os.path.join(tmp, "description.json"), "w", encoding="utf-8") as f:
            json.dump({"description": description,
                       "arrays": {name: list(a.shape) for name, a in arrays.items()}}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, entry)  # atomic; fails if another builder published first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(entry):
            raise


@contextlib.contextmanager
def _lock(path: str):
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError:  # read-only cache: no lock, the rename still keeps entries whole
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # no working locks here: builders may duplicate work, never corrupt it
        yield
    finally:
        os.close(fd)


def load_entry(cache_dir: str, description: dict, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The published entry for `description` (memory-mapped), e.g. again in a DataLoader worker."""
    arrays = _load(os.path.join(cache_dir, cache_key(description)), description, names)
    if arrays is None:
        raise RuntimeError(f"{cache_dir}: the index cache entry {cache_key(description)} is gone or changed")
    return arrays


def cached_arrays(cache_dir: str | None, description: dict, build: Callable[[], dict[str, np.ndarray]],
                  names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], bool]:
    """``(arrays, hit)``: the cached arrays (exactly `names`) for `description`, or ``build()``'s,
    published."""
    if cache_dir is None:
        return build(), False
    key = cache_key(description)
    entry = os.path.join(cache_dir, key)
    if os.path.isdir(entry):
        arrays = _load(entry, description, names)
        if arrays is not None:
            return arrays, True
    os.makedirs(cache_dir, exist_ok=True)
    with _lock(entry + ".lock"):
        if os.path.isdir(entry):  # built meanwhile by the holder of the lock, or bad
            arrays = _load(entry, description, names)
            if arrays is not None:
                return arrays, True
            bad = f"{entry}.bad-{os.getpid()}"
            os.rename(entry, bad)
            shutil.rmtree(bad, ignore_errors=True)
        arrays = build()
        _publish(cache_dir, entry, description, arrays)
    loaded = _load(entry, description, names)
    if loaded is None:
        raise RuntimeError(f"{entry}: the cache entry just written does not load")
    return loaded, False
