"""``--engine ray``: the shards of a run as Ray tasks, on one machine or a whole Ray cluster.

Each task produces one shard (a byte range or a whole file) exactly as a local worker does,
with the engine the driver trusted after its probe (the engine spec carries the tokenizer.json
text, so nodes need no copy of the tokenizer directory for the fast engines), in a temporary
directory of its node. The shard's files come back through Ray's object store; the driver writes
them into the work directory and merges the shards in order as the local engine does, so the
bytes are the same.

Inputs must be readable from every node at the same path: a shared filesystem or URLs
(``s3://…``). Ray is an optional dependency: ``pip install 'megatron-dataprep[ray]'``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from typing import Iterator

from dataprep.errors import DataprepError
from dataprep.io.sources import Piece
from dataprep.runs.pool import single_thread_engines
from dataprep.runs.shards import ShardDone, produce_shard
from dataprep.tokenization.worker_engine import init_worker

_SPEC = None  # the engine spec this Ray worker process has built


def _produce_remote(spec, job, piece: Piece) -> tuple[ShardDone, dict[str, bytes]]:
    """Runs inside a Ray worker: one shard produced in a temporary directory of that node, its
    files returned as bytes (the driver writes them into the work directory)."""
    global _SPEC
    if _SPEC != spec:
        single_thread_engines()
        init_worker(spec)
        _SPEC = spec
    with tempfile.TemporaryDirectory(prefix="dataprep-ray-shard-") as tmp:
        done = produce_shard(job, piece, os.path.join(tmp, f"shard-{piece.shard:06d}"))
        blobs = {}
        for name in done.files:
            with open(os.path.join(tmp, name), "rb") as f:
                blobs[name] = f.read()
    return done, blobs


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise DataprepError("--engine ray needs Ray: pip install 'megatron-dataprep[ray]' "
                            "(or pip install ray)") from exc
    return ray


def _check_reachable(address: str) -> None:
    """Ray waits minutes for a head node that is not there: try its port first."""
    import socket

    if address == "auto" or ":" not in address:
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise DataprepError(f"cannot start or join Ray at {address}: {exc}") from None


def produced_shards(job, items: list[tuple[Piece, str]], spec, address: str | None,
                    cpus: int) -> Iterator[ShardDone]:
    """Each (piece, local prefix) produced by a Ray task, in order; the shard's files are written
    at the prefix on this machine. One task per cluster CPU runs at a time, plus two whose results
    wait, so memory stays bounded."""
    ray = _ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            _check_reachable(address)
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
            else:  # a private local instance with as many CPUs as --workers
                ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING,
                         log_to_driver=False)
        except Exception as exc:  # connection refused, bad address…
            raise DataprepError(f"cannot start or join Ray{f' at {address}' if address else ''}: {exc}") from exc
    pending: deque = deque()
    try:
        task = ray.remote(num_cpus=1, max_retries=3)(_produce_remote)
        spec_ref, job_ref = ray.put(spec), ray.put(job)
        window = int(ray.cluster_resources().get("CPU", cpus)) + 2
        todo = iter(items)
        for piece, prefix in todo:
            pending.append((prefix, task.remote(spec_ref, job_ref, piece)))
            if len(pending) >= window:
                break
        while pending:
            prefix, ref = pending.popleft()
            try:
                done, blobs = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, DataprepError):
                    raise DataprepError(str(cause)) from None
                raise DataprepError(f"a Ray task failed: {cause or exc}") from exc
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt[1], task.remote(spec_ref, job_ref, nxt[0])))
            for name, data in blobs.items():
                with open(os.path.join(os.path.dirname(prefix), name), "wb") as f:
                    f.write(data)
            yield done
    finally:
        for _, ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
