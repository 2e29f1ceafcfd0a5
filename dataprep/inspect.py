"""`dataprep inspect`: what an idxmap holds: counts, dtype, length statistics, its sidecar, and
decoded samples."""

from __future__ import annotations

import json
import os

import numpy as np

from dataprep.errors import DataprepError
from dataset_engine.idxmap import IdxmapError, IdxmapReader


def inspect_idxmap(prefix: str, samples: list[int], decode: bool,
                   tokenizer_path: str | None) -> list[str]:
    prefix = prefix.removesuffix(".bin").removesuffix(".idx")
    try:
        reader = IdxmapReader(prefix)
    except IdxmapError as exc:
        raise DataprepError(str(exc)) from exc
    sidecar_path = prefix + ".json"
    sidecar = None
    if os.path.exists(sidecar_path):
        with open(sidecar_path, encoding="utf-8") as f:
            sidecar = json.load(f)
    docs = reader.document_indices
    doc_tokens = np.add.reduceat(reader.sequence_lengths.astype(np.int64), docs[:-1]) \
        if reader.num_documents and len(reader) else np.zeros(0, dtype=np.int64)
    out = [f"{prefix}: {reader.num_documents:,} documents, {len(reader):,} sequences, "
           f"{reader.num_tokens:,} tokens, dtype {reader.dtype.name}"]
    if doc_tokens.size:
        q = np.percentile(doc_tokens, [0, 50, 90, 99, 100]).astype(int)
        out.append(f"  tokens/document: mean {doc_tokens.mean():,.1f}  min {q[0]:,}  p50 {q[1]:,}  "
                   f"p90 {q[2]:,}  p99 {q[3]:,}  max {q[4]:,}")
    if sidecar:
        tok = sidecar.get("tokenizer", {})
        out.append(f"  tokenizer {tok.get('name')} (vocab {tok.get('vocab_size')}, eod {tok.get('eod')}, "
                   f"engine {tok.get('engine')}) from {tok.get('path')}")
        out.append(f"  counts {json.dumps(sidecar.get('counts', {}))}")
        if sidecar.get("layout"):
            out.append(f"  sft layout {sidecar['layout']}, template {sidecar.get('template')}, seq_length "
                       f"{sidecar.get('seq_length')}, packing {json.dumps(sidecar.get('packing'))}"
                       + ("  (trained tokens shown in ⟦ ⟧)" if decode else ""))
    hf = None
    if decode and samples:
        path = tokenizer_path or (sidecar or {}).get("tokenizer", {}).get("path")
        if not path:
            raise DataprepError("--decode needs --tokenizer-path (no sidecar names a tokenizer)")
        from dataprep.tokenizers import auto_tokenizer

        hf = auto_tokenizer(path, trust_remote_code=False)
    trained_of = _sft_trained(prefix, sidecar, reader)
    for d in samples:
        if not 0 <= d < reader.num_documents:
            raise DataprepError(f"--sample {d} is out of range (0..{reader.num_documents - 1})")
        ids = reader.get_document(d).tolist()
        trained = None
        if trained_of is not None:
            ids, trained = trained_of(d)
        out.append(f"  document {d}: {len(ids):,} tokens: {ids[:16]}{' ...' if len(ids) > 16 else ''}")
        if hf is not None:
            text = hf.decode(ids) if trained is None else _marked(hf, ids, trained)
            out.append("    " + (text[:800] + " ..." if len(text) > 800 else text).replace("\n", "\n    "))
    reader.close()
    return out


def _sft_trained(prefix: str, sidecar: dict | None, reader: IdxmapReader):
    """For SFT idxmaps: document -> (ids, trained flags per token), else None."""
    layout = (sidecar or {}).get("layout")
    if layout is None:
        return None
    from dataset_engine.sft_format import NATIVE_LAYOUT, open_sft

    sft = open_sft(prefix)
    if layout == NATIVE_LAYOUT:
        return lambda d: (sft.record(d)[0].tolist(), sft.record(d)[1].tolist())

    def pai(d: int):  # token j is trained when it is the target of position j-1
        tokens, labels, _ = sft.row(d)
        return tokens.tolist(), [False] + (labels[:-1] != -100).tolist()
    return pai


def _marked(hf, ids: list[int], trained: list[bool]) -> str:
    """The decoded text with trained spans in ⟦ ⟧, to check a loss mask by eye."""
    parts, start = [], 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            text = hf.decode(ids[start:i])
            parts.append(f"⟦{text}⟧" if trained[start] else text)
            start = i
    return "".join(parts)
