"""Worker processes running the fastest tokenizer engine that reproduces the reference.

Shared by `dataprep pretrain` and `dataprep sft`: both hand chunks to workers whose engine must
give exactly the reference tokenizer's ids (`tokenizers.py`). The engine is trusted only after
it matched the reference on a probe: fixed hard texts plus texts from the user's own input
(documents for pretrain, rendered chat segments for SFT).

Start-up is overlapped: the workers start on the directory's tokenizer.json while the main
process loads transformers (~3 s); they are kept if transformers uses that file unchanged, else
restarted on the tokenizer transformers built. The probe runs in a worker, so the main process
never holds a second tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from dataprep.tokenization.worker_engine import encode_probe, init_worker
from dataprep.errors import DataprepError
from dataprep.runs.pool import OrderedExecutor, available_cores, check_workers, single_thread_engines
from dataprep.runs.shards import DEFAULT_SHARD_BYTES, check_shard_bytes

from dataprep.tokenization.tokenizers import (LoadedTokenizer, engine_order, file_engine_spec, load_tokenizer,
                                 probe_mismatch, probe_texts, tokenizer_dir)

EXECUTOR_NAMES = ("local", "ray")  # --engine: who produces the shards (runs/executors.py)


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    tokenizer: str
    """A tokenizer name from the registry (Pai's --patch-tokenizer-type names)."""
    tokenizer_path: str | None = None
    """Local Hugging Face tokenizer directory; None uses the bundled one where there is one."""
    backend: str = "auto"
    """Tokenizer engine: auto, fastokens, gigatoken, hf or transformers."""
    workers: int = field(default_factory=available_cores)
    """Worker processes; the output does not depend on it."""
    trust_remote_code: bool = False
    """Allow the tokenizer directory's own Python code (only when the user asks)."""

    def __post_init__(self) -> None:
        check_workers(self.workers)


@dataclass(frozen=True, kw_only=True)
class RunConfig(WorkerConfig):
    """What every tokenizing run (pretrain, sft) shares."""

    inputs: tuple[str, ...]
    """Files, directories or glob patterns (.jsonl, .json, .gz, .zst, .parquet)."""
    output_prefix: str
    """Where the outputs go (their names depend on the run)."""
    skip_bad_records: bool = False
    """Write bad records to {output_prefix}.rejects.jsonl and go on, instead of stopping."""
    progress: bool = True
    """Show a progress bar."""
    executor: str = "local"
    """--engine: local (worker processes on this machine) or ray (Ray tasks, on a Ray cluster)."""
    ray_address: str | None = None
    """A Ray cluster to join (ray://…, host:port or auto); None starts a local Ray instance."""
    shard_bytes: int = DEFAULT_SHARD_BYTES
    """Input bytes per shard: the unit of resuming and of Ray tasks."""
    keep_work: bool = False
    """Keep {output_prefix}.work after success."""
    restart: bool = False
    """Discard an unfinished run's work directory instead of resuming it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.inputs:
            raise DataprepError("no --input given")
        if self.executor not in EXECUTOR_NAMES:
            raise DataprepError(f"unknown --engine {self.executor!r}; known: {', '.join(EXECUTOR_NAMES)}")
        if self.ray_address and self.executor != "ray":
            raise DataprepError("--ray-address needs --engine ray")
        check_shard_bytes(self.shard_bytes)

    @property
    def local_workers(self) -> int:
        """Worker processes on this machine: with Ray they only run the engine probe."""
        return self.workers if self.executor == "local" else 1


@dataclass
class TrustedWorkers:
    executor: OrderedExecutor
    tokenizer: LoadedTokenizer
    engine: str
    notes: list[str]
    """Why faster engines were not used (one line each)."""


def start_trusted_workers(config: WorkerConfig,
                          probe_sample: Callable[[LoadedTokenizer], list[str]],
                          check: Callable[[LoadedTokenizer], None] = lambda tok: None,
                          workers: int | None = None) -> TrustedWorkers:
    """`workers` (default config.workers) processes with a trusted engine; `probe_sample(tok)`
    gives the input's own probe texts and `check(tok)` may refuse the tokenizer (raising
    DataprepError) before any probing."""
    single_thread_engines()
    workers = workers or config.workers
    path = tokenizer_dir(config.tokenizer, config.tokenizer_path)
    early_spec = file_engine_spec(path, engine_order(config.backend)[0][0])
    early = OrderedExecutor(workers, init_worker, (early_spec,)).start() if early_spec else None
    try:
        tok = load_tokenizer(config.tokenizer, path, config.trust_remote_code)
        check(tok)
        order, notes = engine_order(config.backend, tok)
        if early is not None and (order[0] != early_spec.engine or not tok.same_as_file(early_spec.tokenizer_json)):
            early.close()
            early = None
        fixed = probe_texts(tok)
        texts = fixed + probe_sample(tok)
        reference = None
        for name in order:
            executor = early if early is not None and name == order[0] else \
                OrderedExecutor(workers, init_worker, (tok.engine_spec(name),)).start()
            early = None
            if name == "transformers":  # the reference itself
                return TrustedWorkers(executor, tok, name, notes)
            try:
                if reference is None:
                    reference = tok.reference(texts)
                outcome = executor.call(encode_probe, texts)
            except BaseException:
                executor.close()
                raise
            problem = f"{name}: {outcome}" if isinstance(outcome, str) else \
                probe_mismatch(name, reference, *outcome, n_fixed=len(fixed))
            if problem is None:
                return TrustedWorkers(executor, tok, name, notes)
            notes.append(problem)
            executor.close()
    except BaseException:
        if early is not None:
            early.close()
        raise
    raise DataprepError("no tokenizer engine could be started")  # transformers is always last
