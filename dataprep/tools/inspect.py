"""`dataprep inspect`: what an idxmap holds: counts, dtype, length statistics, a histogram of
tokens per document (text, and a PNG with ``--plot``), its sidecar, and decoded samples.

Tokens per document come from one vectorised pass over the index (``np.add.reduceat`` of the
sequence lengths at the document starts): O(S + D) time, 8 bytes per document of memory; the
``.bin`` is read only for the samples. The histogram's bins are log-spaced integer ranges (about
12, fewer when the lengths span a small range), so short and very long documents both show.
"""

from __future__ import annotations

import json
import os

import numpy as np

from dataprep.errors import DataprepError
from dataprep.tokenization.tokenizers import auto_tokenizer
from dataprep.tools.integrity import resolve_prefix
from dataset_engine.idxmap import IdxmapError, IdxmapReader
from dataset_engine.sft_format import NATIVE_LAYOUT, open_sft

HIST_ROWS = 12
BAR_WIDTH = 40


def inspect_idxmap(prefix: str, samples: list[int], decode: bool,
                   tokenizer_path: str | None, plot: str | None = None) -> list[str]:
    prefix = resolve_prefix(prefix)
    try:
        reader = IdxmapReader(prefix)
    except IdxmapError as exc:
        raise DataprepError(str(exc)) from exc
    sidecar_path = prefix + ".json"
    sidecar = None
    if os.path.exists(sidecar_path):
        with open(sidecar_path, encoding="utf-8") as f:
            sidecar = json.load(f)
    # Differences of the cumulative lengths at the document bounds: unlike np.add.reduceat,
    # right for documents with no sequences (repeated document indices, also at the end).
    ends = np.concatenate([[0], np.cumsum(reader.sequence_lengths, dtype=np.int64)])
    doc_tokens = ends[reader.document_indices[1:]] - ends[reader.document_indices[:-1]]
    del ends
    out = [f"{prefix}: {reader.num_documents:,} documents, {len(reader):,} sequences, "
           f"{reader.num_tokens:,} tokens, dtype {reader.dtype.name}"]
    if doc_tokens.size:
        q = np.percentile(doc_tokens, [0, 50, 90, 99, 100]).astype(int)
        out.append(f"  tokens/document: mean {doc_tokens.mean():,.1f}  min {q[0]:,}  p50 {q[1]:,}  "
                   f"p90 {q[2]:,}  p99 {q[3]:,}  max {q[4]:,}")
        out += text_histogram(doc_tokens)
    if plot:
        plot_histogram(doc_tokens, plot, title=os.path.basename(prefix))
        out.append(f"  histogram plot written to {plot}")
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


def histogram_rows(doc_tokens: np.ndarray, rows: int = HIST_ROWS) -> list[tuple[int, int, int]]:
    """(low, high, count) per bin of tokens per document, both bounds inclusive: log-spaced
    integer bins from the shortest to the longest non-empty document, plus a (0, 0, n) bin
    first when n documents are empty."""
    out: list[tuple[int, int, int]] = []
    empty = int(np.count_nonzero(doc_tokens == 0))
    if empty:
        out.append((0, 0, empty))
    positive = doc_tokens[doc_tokens > 0]
    if positive.size == 0:
        return out
    lo, hi = int(positive.min()), int(positive.max())
    # Integer edges: rounding log-spaced points and dropping repeats gives readable ranges and
    # no empty sliver bins when the span is small.
    edges = np.unique(np.ceil(np.geomspace(lo, hi + 1, rows + 1)).astype(np.int64))
    edges[0], edges[-1] = lo, hi + 1
    counts, _ = np.histogram(positive, bins=edges)
    out += [(int(a), int(b) - 1, int(c)) for a, b, c in zip(edges[:-1], edges[1:], counts)]
    return out


def text_histogram(doc_tokens: np.ndarray, rows: int = HIST_ROWS, width: int = BAR_WIDTH) -> list[str]:
    """The histogram as text lines: range, a bar of ``#`` scaled to the largest bin, count."""
    bins = histogram_rows(doc_tokens, rows)
    if not bins:
        return []
    top = max(c for _, _, c in bins)
    span = len(f"{bins[-1][1]:,}")
    out = ["  tokens/document histogram (log-spaced bins, documents per bin):"]
    for low, high, count in bins:
        label = f"{low:>{span},}" + (f" - {high:>{span},}" if high != low else " " * (span + 3))
        bar = "#" * (round(width * count / top) if count else 0)
        if count and not bar:
            bar = "#"  # a non-empty bin stays visible however small
        out.append(f"    {label}  {bar:<{width}}  {count:,}")
    return out


def plot_histogram(doc_tokens: np.ndarray, path: str, title: str) -> None:
    """A PNG histogram of tokens per document (log x axis), written under a temporary name and
    renamed, so ``path`` is either the old file or the complete new one."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter
    except ImportError as exc:
        raise DataprepError(f"--plot needs matplotlib ({exc}); pip install 'matplotlib>=3.8'") from exc
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DataprepError(f"--plot {path}: directory {directory} does not exist")
    # Figure + the Agg canvas directly: no pyplot, so no global backend or GUI state is touched.
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positive = doc_tokens[doc_tokens > 0]
    if positive.size:
        lo, hi = int(positive.min()), int(positive.max())
        bins = np.geomspace(lo, hi + 1, 41) if hi > lo else np.array([lo - 0.5, lo + 0.5])
        ax.hist(positive, bins=bins, color="#4477aa", edgecolor="white", linewidth=0.5)
        ax.set_xscale("log")
        # Plain numbers (1,000, not 10^3) on the log axis; minor ticks labelled only when few.
        plain = FuncFormatter(lambda x, _: f"{x:,.0f}")
        ax.xaxis.set_major_formatter(plain)
        if hi < 20 * lo:
            ax.xaxis.set_minor_formatter(plain)
    empty = doc_tokens.size - positive.size
    ax.set_title(f"{title}: {doc_tokens.size:,} documents" + (f" ({empty:,} empty, not shown)" if empty else ""))
    ax.set_xlabel("tokens per document (log scale)")
    ax.set_ylabel("documents")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = f"{path}.tmp"
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
