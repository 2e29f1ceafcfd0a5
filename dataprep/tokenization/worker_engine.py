"""The tokenizer engine of this process: built once per worker process, used by every task.

Worker processes (local pool, Ray tasks, raw mode's length pass) call `init_worker(spec)` once;
the pretrain and SFT encoders then take `worker_engine()`. A failure to build is kept, not
raised, so the engine probe can report it and the caller try the next engine.
"""

from __future__ import annotations

import numpy as np

from dataprep.tokenization.tokenizers import Engine, build_engine


_ENGINE: Engine | None = None
_INIT_ERROR: str | None = None


def init_worker(engine_spec) -> None:
    """Build the engine once per process (spawned workers import no transformers)."""
    global _ENGINE, _INIT_ERROR
    _ENGINE, _INIT_ERROR = None, None
    try:
        _ENGINE = build_engine(engine_spec)
    except ImportError as exc:
        _INIT_ERROR = f"not installed ({exc})"
    except Exception as exc:  # an engine that cannot load this tokenizer is not fatal
        _INIT_ERROR = f"cannot load this tokenizer ({type(exc).__name__}: {exc})"


def worker_engine() -> Engine:
    """This worker's engine (set by `init_worker`)."""
    if _ENGINE is None:
        raise RuntimeError(f"the worker has no engine: {_INIT_ERROR}")
    return _ENGINE


def encode_probe(texts: list[str]) -> tuple[np.ndarray, np.ndarray] | str:
    """The worker engine's ids for the probe texts, or why the engine is unavailable."""
    if _ENGINE is None:
        return _INIT_ERROR or "not initialised"
    try:
        return _ENGINE.encode_batch(texts)
    except Exception as exc:  # e.g. an engine bug on an odd probe text: not trusted, not fatal
        return f"failed on the probe ({type(exc).__name__}: {exc})"

