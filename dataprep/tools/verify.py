"""`dataprep verify-tokenizer`: each engine against the reference tokenizer on the user's records.

The start-up probe of `dataprep pretrain` checks a few hundred records; this checks as many as
asked, reports every engine's mismatches (file:line and first differing token) and speed, and
fails when an engine the run would use differs.
"""

from __future__ import annotations

import itertools
import time

from dataprep.io.records import valid_texts
from dataprep.errors import DataprepError
from dataprep.runs.pool import single_thread_engines
from dataprep.io.sources import expand_inputs
from dataprep.tokenization.tokenizers import ENGINES, build_engine, first_difference, load_tokenizer


def verify_tokenizer(*, name: str, path: str | None, inputs: list[str], json_keys: tuple[str, ...],
                     limit: int, backend: str, trust_remote_code: bool) -> tuple[bool, list[str]]:
    single_thread_engines()
    tok = load_tokenizer(name, path, trust_remote_code)
    found = valid_texts(expand_inputs(inputs), json_keys)
    records = [(f"{path}:{line}", text) for path, line, text in itertools.islice(found, limit)]
    if not records:
        raise DataprepError("no valid records found in --input to verify against")
    texts = [t for _, t in records]
    size = sum(len(t.encode("utf-8")) for t in texts)
    t0 = time.perf_counter()
    reference = tok.reference(texts)
    ref_secs = time.perf_counter() - t0
    out = [f"tokenizer {tok.name} from {tok.path}: {len(texts):,} texts, {size / 1e6:.2f} MB",
           f"  reference (transformers AutoTokenizer): {size / ref_secs / 1e6:.2f} MB/s"]
    engines = [e for e in ENGINES if e != "transformers"] if backend == "auto" else [backend]
    ok = True
    for engine_name in engines:
        if engine_name == "transformers":
            out.append("  transformers: is the reference")
            continue
        if tok.tokenizer_json is None:
            out.append(f"  {engine_name}: unavailable (no tokenizer.json form)")
            continue
        try:
            engine = build_engine(tok.engine_spec(engine_name))
        except ImportError as exc:
            out.append(f"  {engine_name}: not installed ({exc})")
            continue
        t0 = time.perf_counter()
        ids, offsets = engine.encode_batch(texts)
        secs = time.perf_counter() - t0
        bad = [i for i, ref in enumerate(reference) if ids[offsets[i]:offsets[i + 1]].tolist() != ref]
        speed = f"{size / secs / 1e6:.1f} MB/s ({ref_secs / secs:.0f}x the reference)"
        if bad:
            ok = False
            first = bad[0]
            got = ids[offsets[first]:offsets[first + 1]].tolist()
            out.append(f"  {engine_name}: DIFFERS on {len(bad):,} of {len(texts):,} texts; first at "
                       f"{records[first][0]} token {first_difference(got, reference[first])}; {speed}")
        else:
            out.append(f"  {engine_name}: exact on all {len(texts):,} texts; {speed}")
    return ok, out
