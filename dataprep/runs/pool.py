"""The worker pool: runs a function over items in worker processes and yields the results in
item order; plus the writer thread the main process hands its disk writes to.

At most `window` chunks are in flight, so memory stays bounded whatever the input size. Workers
are spawned (not forked): they import only dataprep, numpy and the engine, never transformers,
and a fork after Rust thread pools have started can deadlock. With one worker everything runs
in this process, through the same code, so the single-process result is the reference.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable, Iterable, Iterator

from dataprep.errors import DataprepError

# Engines parallelise inside a process unless told not to; our parallelism is the processes.
SINGLE_THREAD_ENV = {"FASTOKENS_BPE_THREADS": "1", "RAYON_NUM_THREADS": "1",
                     "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def available_cores() -> int:
    """Cores this process may run on (a container or `taskset` may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_workers(workers: int) -> None:
    if workers < 1:
        raise DataprepError(f"--workers must be at least 1, got {workers}")


def single_thread_engines() -> None:
    for key, value in SINGLE_THREAD_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while workers are spawned: they inherit it through exec and keep it until
    `_child_init` makes it explicit, so only the main process handles Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _noop() -> None:
    return None


def _exit_with_parent() -> None:
    """A worker whose parent died (kill -9, OOM killer) would wait for tasks forever, holding
    memory and the terminal's pipes: a daemon thread ends it within a second."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="dataprep-parent-watch", daemon=True).start()


def _child_init(initializer: Callable[..., None], *args: Any) -> None:
    # Ctrl-C reaches the whole process group; the main process alone handles it (it removes
    # the temporary outputs), so workers do not each print a KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    initializer(*args)


class OrderedExecutor:
    """Worker processes that each run `initializer(*initargs)` once, then tasks.

    `start()` (or entering it as a context manager) starts the workers, so they warm up while
    the caller does other work; `close()` (or leaving the context) shuts them down.
    """

    def __init__(self, workers: int, initializer: Callable[..., None], initargs: tuple,
                 window_per_worker: int = 3) -> None:
        check_workers(workers)
        self.workers = workers
        self.initializer = initializer
        self.initargs = initargs
        self.window = workers * window_per_worker
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> "OrderedExecutor":
        if self.workers == 1:
            self.initializer(*self.initargs)
        else:
            context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_child_init,
                                             initargs=(self.initializer, *self.initargs))
            with _sigint_ignored():  # a Ctrl-C while a worker still imports would print its traceback
                for _ in range(self.workers):  # processes start on demand: ask for all of them now
                    self._pool.submit(_noop)
        return self

    def __enter__(self) -> "OrderedExecutor":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def terminate(self) -> None:
        """Stop the workers now, in the middle of their tasks (a run being abandoned: a task may
        be a whole shard, and its files must not appear after the run has cleaned up)."""
        if self._pool is not None:
            for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                try:
                    proc.terminate()
                except Exception:  # already gone
                    pass
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def call(self, fn: Callable[[Any], Any], item: Any) -> Any:
        """fn(item) in one worker."""
        if self._pool is None:
            return fn(item)
        try:
            return self._pool.submit(fn, item).result()
        except BrokenProcessPool as exc:
            raise DataprepError("a worker process died while starting") from exc

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        """Yield (item, fn(item)) in the order of items, at most `window` in flight."""
        if self._pool is None:
            for item in items:
                yield item, fn(item)
            return
        pending: deque = deque()
        try:
            for item in items:
                pending.append((item, self._pool.submit(fn, item)))
                if len(pending) >= self.window:
                    item0, future = pending.popleft()
                    yield item0, future.result()
            while pending:
                item0, future = pending.popleft()
                yield item0, future.result()
        except BrokenProcessPool as exc:
            raise DataprepError("a worker process died (out of memory, or killed); "
                                "nothing was written") from exc
        finally:
            for _, future in pending:
                future.cancel()


class BackgroundCalls:
    """Runs calls one after another in one thread, in submission order.

    The main process uses it for disk writes: a write can block for a while when the kernel
    throttles dirty pages, and meanwhile the next results should keep arriving. At most `depth`
    calls are pending (bounded memory); an error surfaces on a later submit or on drain.
    """

    def __init__(self, depth: int = 4) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dataprep-writer")
        self._pending: deque = deque()
        self.depth = depth

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._pending.append(self._pool.submit(fn, *args))
        while len(self._pending) > self.depth:
            self._pending.popleft().result()

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Stop after the call in progress; pending calls are dropped."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
