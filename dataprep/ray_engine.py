"""``--engine ray``: the shards of a run as Ray tasks, on one machine or a whole Ray cluster.

Each task reads one shard (a byte range or a whole file) and tokenizes it with the engine the
driver trusted after its probe (the engine spec carries the tokenizer.json text, so nodes need
no copy of the tokenizer directory for the fast engines). Tasks return their chunk results
through Ray's object store; the driver consumes them in shard order and writes the shards'
outputs, markers and the final merge exactly as the local engine does, so the bytes are the same.

Inputs must be readable from every node at the same path: a shared filesystem or URLs
(``s3://…``). Ray is an optional dependency: ``pip install 'megatron-dataprep[ray]'``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import replace
from typing import Callable, Iterator

from dataprep.errors import DataprepError
from dataprep.sources import Chunk, ChunkReader, Piece

_SPEC = None  # the engine spec this Ray worker process has built


def _encode_piece(spec, encode: Callable[[Chunk], object], piece: Piece, json_keys: list[str],
                  chunk_bytes: int) -> list[tuple[Chunk, object]]:
    """Runs inside a Ray worker: every chunk of one shard, encoded."""
    global _SPEC
    from dataprep.documents import init_worker
    from dataprep.executor import single_thread_engines

    if _SPEC != spec:
        single_thread_engines()
        init_worker(spec)
        _SPEC = spec
    return [(replace(chunk, data=None), encode(chunk))  # the driver needs no copy of the input
            for chunk in ChunkReader([], json_keys, chunk_bytes, pieces=[piece])]


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


def shard_results(pieces: list[Piece], encode: Callable[[Chunk], object], spec, json_keys: list[str],
                  chunk_bytes: int, address: str | None, cpus: int) -> Iterator[tuple[Chunk, object]]:
    """(chunk, result) of every piece, in order, computed by Ray tasks (one per cluster CPU in
    flight, plus two, so memory stays bounded)."""
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
    try:
        task = ray.remote(num_cpus=1, max_retries=3)(_encode_piece)
        spec_ref, encode_ref = ray.put(spec), ray.put(encode)
        # a task holds its shard's tokens until the driver takes them, in order: one per CPU
        # running plus two ready keeps the cluster busy and the object store small
        window = int(ray.cluster_resources().get("CPU", cpus)) + 2
        pending: deque = deque()
        todo = iter(pieces)
        for piece in todo:
            pending.append(task.remote(spec_ref, encode_ref, piece, json_keys, chunk_bytes))
            if len(pending) >= window:
                break
        while pending:
            try:
                results = ray.get(pending.popleft())
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, DataprepError):
                    raise DataprepError(str(cause)) from None
                raise DataprepError(f"a Ray task failed: {cause or exc}") from exc
            piece = next(todo, None)
            if piece is not None:
                pending.append(task.remote(spec_ref, encode_ref, piece, json_keys, chunk_bytes))
            yield from results
    finally:
        for ref in pending if "pending" in locals() else ():
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()
