"""`dataprep verify`: a full integrity check of idxmaps, reported as problems rather than tracebacks.

Per prefix, in order (a failed step that leaves nothing to check ends the list):

1. structure: `IdxmapReader` validates the header, the ``.idx`` size, document indices,
   sequence lengths, pointers against the running offset and the ``.bin`` size
   (docs/FORMAT.md, "What the reader validates"); a missing or corrupt file is one problem;
2. the sidecar ``{PREFIX}.json``, when there is one: valid JSON, its dtype and (pretrain and
   merge sidecars) its document/sequence/token counts match the files;
3. every token id in ``[0, vocab_size)``, vocab_size from ``--vocab-size`` or the sidecar's
   ``tokenizer.vocab_size`` (without either only negative ids are caught);
4. SFT native layout (``dataprep-sft-native/1``): the loss-mask idxmap named in the sidecar opens,
   has the same sequence lengths and document indices as the tokens, and holds only 0 and 1;
5. Pai layout (``pai-sft-idxmap``): every row holds ``2 * seq_length`` values; in the tokens half
   a negative value is a record's last token stored as ``-1 - id`` and ``id`` must be in the
   vocabulary; labels are -100 or in the vocabulary.

Cost: one sequential pass over each ``.bin`` through its memory map, ``CHUNK_TOKENS`` (64 Mi)
values at a time; a chunk whose min/max are in range costs two reductions and no temporary, only
a chunk that fails them (or a Pai chunk, whose labels mix -100 with ids) builds boolean masks of
its size. Index checks are O(S + D) in chunks. The first offending value is located by binary
search of the pointers and document indices, so reporting it costs O(log S).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from dataprep.errors import DataprepError
from dataset_engine.idxmap import IdxmapError, IdxmapReader, read_sidecar
from dataset_engine.sft_format import IGNORE_INDEX, NATIVE_LAYOUT, PAI_LAYOUT, tokens_prefix

CHUNK_TOKENS = 64 << 20  # values per scanned chunk of a .bin


@dataclass
class VerifyResult:
    prefix: str
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        if self.ok:
            return [f"{self.prefix}: OK: " + "; ".join(self.facts)]
        return [f"{self.prefix}: FAILED: {p}" for p in self.problems]


def resolve_prefix(prefix: str) -> str:
    """The idxmap prefix: ``.bin``/``.idx`` suffixes dropped; an SFT output prefix (``P`` for
    ``P_text_document``) accepted as `dataset_engine.sft_format.open_sft` accepts it."""
    prefix = prefix.removesuffix(".bin").removesuffix(".idx")
    if not os.path.exists(prefix + ".idx") and os.path.exists(tokens_prefix(prefix) + ".idx"):
        return tokens_prefix(prefix)
    return prefix


def verify_idxmaps(prefixes: list[str], vocab_size: int | None = None,
                   chunk_tokens: int = CHUNK_TOKENS) -> list[VerifyResult]:
    return [verify_idxmap(p, vocab_size, chunk_tokens) for p in prefixes]


def verify_idxmap(prefix: str, vocab_size: int | None = None,
                  chunk_tokens: int = CHUNK_TOKENS) -> VerifyResult:
    """Every check in the module docstring on one idxmap; never raises for a bad file."""
    if vocab_size is not None and vocab_size < 1:
        raise DataprepError(f"--vocab-size must be positive, got {vocab_size}")
    if chunk_tokens < 1:
        raise DataprepError(f"chunk_tokens must be positive, got {chunk_tokens}")
    prefix = resolve_prefix(prefix)
    result = VerifyResult(prefix)
    try:
        sidecar = read_sidecar(prefix)
    except (IdxmapError, OSError) as exc:
        result.problems.append(str(exc))
        sidecar = None
    try:
        reader = IdxmapReader(prefix)
    except (IdxmapError, OSError) as exc:
        result.problems.append(str(exc))
        return result
    with reader:
        _check(reader, sidecar, vocab_size, chunk_tokens, result)
    return result


def _check(reader: IdxmapReader, sidecar: dict | None, vocab_size: int | None,
           chunk: int, result: VerifyResult) -> None:
    result.facts.append(f"{reader.num_documents:,} documents, {len(reader):,} sequences, "
                        f"{reader.num_tokens:,} tokens ({reader.dtype.name})")
    sidecar = sidecar if isinstance(sidecar, dict) else None
    layout = (sidecar or {}).get("layout")
    if sidecar is not None:
        _check_sidecar(reader, sidecar, layout, result)
    vocab, source = vocab_size, "--vocab-size"
    if vocab is None:
        vocab, source = _sidecar_vocab(sidecar), "sidecar"

    if layout == PAI_LAYOUT:
        _check_pai(reader, sidecar, vocab, chunk, result)
    else:
        if layout not in (None, NATIVE_LAYOUT):
            result.problems.append(f"{reader.prefix}.json: unknown SFT layout {layout!r} "
                                   f"(expected {NATIVE_LAYOUT!r} or {PAI_LAYOUT!r})")
        problem = _scan_range(reader, 0, vocab, chunk, "token")
        if problem:
            result.problems.append(problem)
        if layout == NATIVE_LAYOUT:
            _check_native_mask(reader, sidecar, chunk, result)
    if vocab is None:
        result.facts.append("token ids not checked against a vocabulary (no --vocab-size, no "
                            "tokenizer.vocab_size in a sidecar); none is negative")
    else:
        result.facts.append(f"token ids in [0, {vocab:,}) (vocab from {source})")


def _sidecar_vocab(sidecar: dict | None) -> int | None:
    tok = (sidecar or {}).get("tokenizer")
    value = tok.get("vocab_size") if isinstance(tok, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _check_sidecar(reader: IdxmapReader, sidecar: dict, layout: str | None,
                   result: VerifyResult) -> None:
    where = reader.prefix + ".json"
    dtype = sidecar.get("dtype")
    if dtype is not None and dtype != reader.dtype.name:
        result.problems.append(f"{where}: dtype {dtype} but {reader.idx_path} says {reader.dtype.name}")
    if layout is not None:
        return  # SFT counts are of records, not of this idxmap's documents
    counts = sidecar.get("counts")
    if not isinstance(counts, dict):
        return
    actual = {"documents": reader.num_documents, "sequences": len(reader), "tokens": reader.num_tokens}
    for key, value in actual.items():
        if key in counts and counts[key] != value:
            result.problems.append(f"{where}: counts.{key} is {counts[key]} but the idxmap holds {value}")


def _locate(reader: IdxmapReader, token: int) -> tuple[int, int, int]:
    """(document, sequence, offset in the document) of the token at flat offset ``token``.

    searchsorted(..., 'right') - 1 picks the last sequence starting at or before the token,
    which skips zero-length sequences sharing its start; likewise for empty documents."""
    item = reader.dtype.itemsize
    seq = int(np.searchsorted(reader.sequence_pointers, token * item, side="right")) - 1
    doc = int(np.searchsorted(reader.document_indices, seq, side="right")) - 1
    first_seq = int(reader.document_indices[doc])
    return doc, seq, token - int(reader.sequence_pointers[first_seq]) // item


def _scan_range(reader: IdxmapReader, lo: int, hi: int | None, chunk: int, what: str) -> str | None:
    """None if every value of the ``.bin`` is in [lo, hi) (hi None: no upper bound), else one
    line naming the first offending value, where it is and how many there are."""
    values = reader.tokens
    first, count = None, 0
    for start in range(0, values.size, chunk):
        block = values[start:start + chunk]
        if block.min() >= lo and (hi is None or block.max() < hi):
            continue
        bad = block < lo
        if hi is not None:
            bad |= block >= hi
        where = np.flatnonzero(bad)
        count += where.size
        if first is None:
            first = start + int(where[0])
    if first is None:
        return None
    doc, seq, pos = _locate(reader, first)
    bound = f"[{lo}, {hi:,})" if hi is not None else f">= {lo}"
    return (f"{reader.bin_path}: {what} {values[first].item()} is outside {bound} in document {doc} "
            f"(sequence {seq}, position {pos}); {count:,} such value(s) in all")


def _first_difference(a: np.ndarray, b: np.ndarray) -> int | None:
    """Index of the first differing element of two equally long arrays, chunk by chunk."""
    step = 1 << 22
    for start in range(0, len(a), step):
        diff = np.flatnonzero(a[start:start + step] != b[start:start + step])
        if diff.size:
            return start + int(diff[0])
    return None


def _check_native_mask(reader: IdxmapReader, sidecar: dict, chunk: int, result: VerifyResult) -> None:
    name = sidecar.get("loss_mask")
    if not isinstance(name, str) or not name:
        result.problems.append(f"{reader.prefix}.json: layout {NATIVE_LAYOUT} but no \"loss_mask\" "
                               "names the mask idxmap")
        return
    mask_prefix = os.path.join(os.path.dirname(reader.prefix), name)
    try:
        mask = IdxmapReader(mask_prefix)
    except (IdxmapError, OSError) as exc:
        result.problems.append(f"loss mask: {exc}")
        return
    with mask:
        if len(mask) != len(reader):
            result.problems.append(f"{mask.idx_path}: {len(mask):,} sequences but the tokens have "
                                   f"{len(reader):,}")
            return
        k = _first_difference(mask.sequence_lengths, reader.sequence_lengths)
        if k is not None:
            result.problems.append(f"{mask.idx_path}: sequence {k} has {int(mask.sequence_lengths[k])} "
                                   f"mask values but {int(reader.sequence_lengths[k])} tokens")
            return
        if len(mask.document_indices) != len(reader.document_indices) or \
                _first_difference(mask.document_indices, reader.document_indices) is not None:
            result.problems.append(f"{mask.idx_path}: document indices differ from the tokens'")
        problem = _scan_range(mask, 0, 2, chunk, "loss-mask value")
        if problem:
            result.problems.append(problem)
        else:
            result.facts.append(f"loss mask {name}: 0/1, same lengths")


def _check_pai(reader: IdxmapReader, sidecar: dict | None, vocab: int | None, chunk: int,
               result: VerifyResult) -> None:
    lengths = reader.sequence_lengths
    seq_len = (sidecar or {}).get("seq_length")
    if not isinstance(seq_len, int) or seq_len < 1:
        if len(lengths) == 0:
            result.problems.append(f"{reader.idx_path}: a Pai SFT idxmap without rows")
            return
        seq_len = int(lengths[0]) // 2
    row = 2 * seq_len
    for start in range(0, len(lengths), 1 << 22):
        bad = np.flatnonzero(lengths[start:start + (1 << 22)] != row)
        if bad.size:
            k = start + int(bad[0])
            result.problems.append(f"{reader.idx_path}: row {k} holds {int(lengths[k])} values, a Pai "
                                   f"row holds 2 x seq_length = {row}")
            return
    if reader.dtype.kind != "i":
        result.problems.append(f"{reader.idx_path}: Pai rows need a signed dtype for the -1-id "
                               f"markers and -100 labels, found {reader.dtype.name}")
        return
    rows = reader.tokens.reshape(-1, row)
    per_chunk = max(1, chunk // row)
    first_token = first_label = None
    bad_tokens = bad_labels = 0
    for start in range(0, len(rows), per_chunk):
        block = rows[start:start + per_chunk]
        tokens, labels = block[:, :seq_len], block[:, seq_len:]
        # A marker -1-id restores to id, so ids < vocab <=> -vocab <= value < vocab.
        if vocab is not None and (tokens.max() >= vocab or tokens.min() < -vocab):
            bad = (tokens >= vocab) | (tokens < -vocab)
            bad_tokens += int(bad.sum())
            if first_token is None:
                r, j = np.argwhere(bad)[0]
                first_token = (start + int(r), int(j), int(tokens[r, j]))
        bad = (labels != IGNORE_INDEX) & (labels < 0)
        if vocab is not None:
            bad |= labels >= vocab
        n = int(bad.sum())
        if n:
            bad_labels += n
            if first_label is None:
                r, j = np.argwhere(bad)[0]
                first_label = (start + int(r), int(j), int(labels[r, j]))
    def doc_of(r: int) -> int:
        return int(np.searchsorted(reader.document_indices, r, side="right")) - 1

    if first_token:
        r, j, v = first_token
        shown = f"{v} (marker for id {-1 - v})" if v < 0 else str(v)
        result.problems.append(f"{reader.bin_path}: token {shown} is outside [0, {vocab:,}) in row {r} "
                               f"(document {doc_of(r)}), tokens[{j}]; {bad_tokens:,} such value(s) in all")
    if first_label:
        r, j, v = first_label
        bound = f"[0, {vocab:,})" if vocab is not None else ">= 0"
        result.problems.append(f"{reader.bin_path}: label {v} is neither -100 nor in {bound} in row {r} "
                               f"(document {doc_of(r)}), labels[{j}]; {bad_labels:,} such value(s) in all")
    if not first_token and not first_label:
        result.facts.append(f"{len(rows):,} Pai rows of 2 x {seq_len}, markers and labels in range")
