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

from dataclasses import dataclass
from typing import Callable

from dataprep.documents import encode_probe, init_worker
from dataprep.errors import DataprepError
from dataprep.executor import OrderedExecutor, single_thread_engines
from dataprep.tokenizers import (LoadedTokenizer, engine_order, file_engine_spec, load_tokenizer,
                                 probe_mismatch, probe_texts, tokenizer_dir)


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    tokenizer: str
    """A tokenizer name from the registry."""
    tokenizer_path: str | None
    """Local Hugging Face directory; None for the bundled one."""
    backend: str
    """auto, fastokens, gigatoken, hf or transformers."""
    workers: int
    """Worker processes."""
    trust_remote_code: bool = False


@dataclass
class TrustedWorkers:
    executor: OrderedExecutor
    tokenizer: LoadedTokenizer
    engine: str
    notes: list[str]
    """Why faster engines were not used (one line each)."""


def start_trusted_workers(config: WorkerConfig,
                          probe_sample: Callable[[LoadedTokenizer], list[str]],
                          check: Callable[[LoadedTokenizer], None] = lambda tok: None) -> TrustedWorkers:
    """Workers with a trusted engine; `probe_sample(tok)` gives the input's own probe texts and
    `check(tok)` may refuse the tokenizer (raising DataprepError) before any probing."""
    single_thread_engines()
    path = tokenizer_dir(config.tokenizer, config.tokenizer_path)
    early_spec = file_engine_spec(path, engine_order(config.backend)[0][0])
    early = OrderedExecutor(config.workers, init_worker, (early_spec,)).start() if early_spec else None
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
                OrderedExecutor(config.workers, init_worker, (tok.engine_spec(name),)).start()
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
