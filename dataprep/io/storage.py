"""Where inputs and outputs live: local paths, or fsspec URLs (``s3://``, ``gs://``, ``file://``).

Local paths (and ``file://`` URLs) take the plain ``os`` route, so nothing changes for them and
fsspec is imported only when a URL is used. Remote filesystems are configured the fsspec way:
credentials and endpoints from the usual environment (``AWS_*``, ``FSSPEC_S3_ENDPOINT_URL``,
``GOOGLE_APPLICATION_CREDENTIALS``…).

Outputs are written through `Output`: a local file goes to ``{path}.tmp``, is fsynced and
renamed when committed; a remote object is uploaded (multipart for large ones) and becomes
visible only when the upload completes, so in both cases a crash never leaves a complete-looking
file. An aborted remote upload is discarded.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from typing import Any, BinaryIO

from dataprep.errors import DataprepError
from dataset_engine.idxmap import AtomicFile


def is_url(path: str) -> bool:
    """True for remote URLs; ``file://`` counts as local."""
    return "://" in path and not path.startswith("file://")


def local(path: str) -> str:
    """A ``file://`` URL as a plain path; other paths unchanged."""
    return path[len("file://"):] if path.startswith("file://") else path


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a remote URL."""
    try:
        from fsspec.core import url_to_fs
    except ImportError as exc:  # pragma: no cover - fsspec comes with datasets
        raise DataprepError(f"{url}: reading URLs needs fsspec (pip install fsspec)") from exc
    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as exc:
        protocol = url.split("://", 1)[0]
        hint = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "oss": "ossfs"}.get(protocol)
        extra = f" (pip install {hint})" if hint else ""
        raise DataprepError(f"{url}: cannot open {protocol}:// URLs: {exc}{extra}") from exc


def _url(fs, path: str) -> str:
    """A path from an fsspec listing back as a full URL."""
    return fs.unstrip_protocol(path)


def open_read(path: str) -> BinaryIO:
    if is_url(path):
        fs, p = filesystem(path)
        try:
            return fs.open(p, "rb")
        except FileNotFoundError:
            raise DataprepError(f"input not found: {path!r}") from None
    return open(local(path), "rb")


def size(path: str) -> int:
    if is_url(path):
        fs, p = filesystem(path)
        return int(fs.size(p))
    return os.path.getsize(local(path))


def signature(path: str) -> dict:
    """What identifies a file's content without reading it: size and modification time
    (local), size and ETag or modification time (object stores)."""
    if is_url(path):
        fs, p = filesystem(path)
        info = fs.info(p)
        tag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("mtime") \
            or info.get("LastModified") or info.get("updated")
        return {"bytes": int(info["size"]), "version": str(tag)}
    st = os.stat(local(path))
    return {"bytes": st.st_size, "version": str(st.st_mtime_ns)}


def absolute(path: str) -> str:
    """How inputs are named in sidecars and manifests."""
    return path if is_url(path) else os.path.abspath(local(path))


def describe_inputs(files: list[str]) -> list[dict]:
    """[{"path", "bytes"}] of the inputs, as sidecars list them (one size lookup per file)."""
    return [{"path": absolute(p), "bytes": size(p)} for p in files]


def expand_url(spec: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files behind a URL: a glob pattern, a "directory" (prefix) or one object."""
    import glob as _glob

    fs, p = filesystem(spec)
    if _glob.has_magic(p):
        found = sorted(x for x in fs.glob(p) if fs.isfile(x))
        if not found:
            raise DataprepError(f"pattern matched no files: {spec!r}")
        return [_url(fs, x) for x in found]
    if fs.isdir(p):
        found = sorted(x for x in fs.find(p) if x.endswith(suffixes)
                       and not os.path.basename(x).startswith("."))
        if not found:
            raise DataprepError(f"directory has no input files ({', '.join(suffixes)}): {spec!r}")
        return [_url(fs, x) for x in found]
    if fs.isfile(p):
        return [spec]
    raise DataprepError(f"input not found: {spec!r}")


class Output:
    """A file written whole or not at all: ``commit()`` publishes it, ``abort()`` discards it.
    Local paths use dataset_engine's AtomicFile (temporary name, fsync, rename)."""

    def __init__(self, path: str, mode: str = "wb") -> None:
        self.path = path
        if not is_url(path):
            self._local: AtomicFile | None = AtomicFile(local(path), mode)
            return
        self._local = None
        fs, p = filesystem(path)
        fs.makedirs(fs._parent(p), exist_ok=True)
        self._raw = fs.open(p, "wb")
        self._file: Any = self._raw if "b" in mode else io.TextIOWrapper(self._raw, encoding="utf-8")

    def write(self, data) -> int:
        return (self._local or self._file).write(data)

    def append_file(self, path: str, chunk_bytes: int = 64 << 20) -> None:
        """Append a local file's bytes (in the kernel when both are local)."""
        if self._local is not None:
            self._local.append_file(path, chunk_bytes)
            return
        with open(path, "rb") as src:
            while block := src.read(chunk_bytes):
                self._file.write(block)

    def commit(self) -> None:
        if self._local is not None:
            self._local.commit()
        else:
            self._file.close()  # completes the (multipart) upload: the object appears now

    def abort(self) -> None:
        if self._local is not None:
            self._local.abort()
            return
        with contextlib.suppress(Exception):
            self._raw.discard()  # abandons the multipart upload; nothing becomes visible
        self._raw.closed = True


class Files:
    """`IdxmapWriter`'s file access (``files=FILES``) for local paths and URLs alike."""

    output = Output

    @staticmethod
    def remove(path: str) -> None:
        remove(path)


FILES = Files()


def remove(path: str) -> None:
    """Remove a file if it exists."""
    if is_url(path):
        fs, p = filesystem(path)
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(p)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(local(path))


def write_json(path: str, data: dict) -> None:
    """A small JSON file, published whole (temporary name + rename, or one PUT)."""
    out = Output(path, "w")
    try:
        out.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    except BaseException:
        out.abort()
        raise
    out.commit()


def read_json(path: str) -> dict | None:
    """The JSON object at `path`, or None when there is none (or it is not complete JSON)."""
    try:
        with open_read(path) as f:
            return json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, DataprepError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def listdir(path: str) -> list[str]:
    """Names (not paths) in a directory; empty when it does not exist."""
    if is_url(path):
        fs, p = filesystem(path)
        try:
            return sorted(os.path.basename(x.rstrip("/")) for x in fs.ls(p, detail=False))
        except FileNotFoundError:
            return []
    try:
        return sorted(os.listdir(local(path)))
    except FileNotFoundError:
        return []


def list_sizes(path: str) -> dict[str, int]:
    """{name: size} of the files in a directory (one listing); empty when it does not exist."""
    if is_url(path):
        fs, p = filesystem(path)
        try:
            return {os.path.basename(e["name"].rstrip("/")): int(e["size"])
                    for e in fs.ls(p, detail=True) if e.get("type") == "file"}
        except FileNotFoundError:
            return {}
    try:
        return {e.name: e.stat().st_size for e in os.scandir(local(path)) if e.is_file()}
    except FileNotFoundError:
        return {}


def makedirs(path: str) -> None:
    if is_url(path):
        fs, p = filesystem(path)
        fs.makedirs(p, exist_ok=True)
    else:
        os.makedirs(local(path), exist_ok=True)


def remove_tree(path: str) -> None:
    if is_url(path):
        fs, p = filesystem(path)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(p, recursive=True)
    else:
        shutil.rmtree(local(path), ignore_errors=True)


def upload(local_path: str, url: str) -> None:
    """Copy a local file to a remote URL (multipart for large files; visible when complete)."""
    fs, p = filesystem(url)
    fs.put_file(local_path, p)


def download(url: str, local_path: str) -> None:
    fs, p = filesystem(url)
    fs.get_file(p, local_path)


def join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}" if is_url(base) else os.path.join(local(base), name)
