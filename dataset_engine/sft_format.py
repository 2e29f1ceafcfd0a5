"""SFT data on disk: the native layout and Pai-Megatron-Patch's layout, written and read (numpy only).

An SFT *record* is one conversation as token ids plus a loss mask (True where the token is a
trained target: each assistant answer and its end-of-turn token). Two layouts (docs/FORMAT.md):

* **native** (default of `dataprep sft`): one document per record, not packed, so the same
  files serve any training sequence length.
  ``{P}_text_document.bin/.idx``       the ids (megatron-core's IndexedDataset reads them);
  ``{P}_loss_mask_document.bin/.idx``  the mask, uint8 0/1, same sequence lengths;
  ``{P}_text_document.json``           sidecar: layout, tokenizer (pad id), template, counts.
* **pai** (`--layout pai`): Pai's rows, exactly as its `build_idxmap_sft_dataset.py` writes them:
  ``{P}_text_document.bin/.idx``, one sequence of ``2 * seq_len`` per row:
  ``tokens[seq_len] ++ labels[seq_len]``. Labels are pre-shifted (``labels[i]`` is the target
  of position i), -100 where not trained and at the last position of each record; the last
  token of each record is stored as ``-1 - id`` (the boundary marker Pai's reader uses to reset
  position ids); rows are padded with the pad id (labels -100). Always int32 (Pai picks uint16
  for small vocabularies, which cannot hold the negative markers).

Rules shared by the writer and the datasets (so idxmap and raw mode yield the same samples):
a record longer than ``seq_len`` is truncated to its first ``seq_len`` tokens (or dropped with
``drop_long``); a record whose first prompt fills ``seq_len`` (no answer token would fit) is
dropped. These are Pai's rules: it drops when ``len(prompt) >= seq_len`` and cuts at ``seq_len``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dataset_engine.idxmap import LOCAL_FILES, IdxmapError, IdxmapReader, IdxmapWriter, read_sidecar

IGNORE_INDEX = -100
NATIVE_LAYOUT = "dataprep-sft-native/1"
PAI_LAYOUT = "pai-sft-idxmap"

FIT_OK, FIT_TRUNCATED, FIT_DROPPED_PROMPT, FIT_DROPPED_LONG = "ok", "truncated", "dropped_prompt", "dropped_long"


def tokens_prefix(prefix: str) -> str:
    return f"{prefix}_text_document"


def mask_prefix(prefix: str) -> str:
    return f"{prefix}_loss_mask_document"


def fit_record(ids: np.ndarray, mask: np.ndarray, seq_len: int | None, drop_long: bool = False
               ) -> tuple[np.ndarray, np.ndarray, str]:
    """(ids, mask, status) of a record fitted to ``seq_len`` (None: no limit); status is one of
    ok, truncated, dropped_prompt (the first prompt fills seq_len) or dropped_long."""
    if seq_len is None or len(ids) <= seq_len:
        return ids, mask, FIT_OK
    trained = np.flatnonzero(mask[:seq_len])
    if trained.size == 0:
        return ids[:0], mask[:0], FIT_DROPPED_PROMPT
    if drop_long:
        return ids[:0], mask[:0], FIT_DROPPED_LONG
    return ids[:seq_len], mask[:seq_len], FIT_TRUNCATED


def shifted_labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """labels[i] = ids[i+1] where that token is trained, else -100; the last position is -100."""
    labels = np.full(len(ids), IGNORE_INDEX, np.int64)
    labels[:-1] = np.where(mask[1:], ids[1:], IGNORE_INDEX)
    return labels


# -- native layout -----------------------------------------------------------------------------
class NativeSFTWriter:
    """The two idxmaps of the native layout, written record by record under temporary names."""

    def __init__(self, prefix: str, dtype, files=LOCAL_FILES) -> None:
        self.prefix = prefix
        self.tokens = IdxmapWriter(tokens_prefix(prefix), dtype, files)
        self.mask = IdxmapWriter(mask_prefix(prefix), np.uint8, files)

    def add_records(self, ids: np.ndarray, mask: np.ndarray, lengths: np.ndarray) -> None:
        """Records concatenated: ``ids`` and ``mask`` split by ``lengths`` (one document each)."""
        ones = np.ones(len(lengths), np.int64)
        self.tokens.add_documents(ids, lengths, ones)
        self.mask.add_documents(mask.astype(np.uint8), lengths, ones)

    def finalize(self) -> None:
        self.mask.finalize()  # the tokens' .idx last: it is what marks the dataset as present
        self.tokens.finalize()

    def abort(self) -> None:
        self.tokens.abort()
        self.mask.abort()


@dataclass
class NativeSFT:
    """Records of a native-layout dataset: ``record(i) -> (ids, mask)``."""

    prefix: str
    """The token idxmap's prefix (``{P}_text_document``)."""
    sidecar: dict

    def __post_init__(self) -> None:
        self.tokens = IdxmapReader(self.prefix)
        mask_path = os.path.join(os.path.dirname(self.prefix), self.sidecar["loss_mask"])
        self.mask = IdxmapReader(mask_path)
        if not np.array_equal(self.tokens.sequence_lengths, self.mask.sequence_lengths):
            raise IdxmapError(f"{mask_path}: loss-mask lengths differ from {self.prefix}'s tokens")
        self.lengths = self.tokens.sequence_lengths.astype(np.int64)
        self.pad_id = int(self.sidecar["tokenizer"]["pad"])

    def __getstate__(self) -> dict:  # DataLoader workers reopen the maps
        return {"prefix": self.prefix, "sidecar": self.sidecar}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __len__(self) -> int:
        return len(self.lengths)

    def record(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tokens[i].astype(np.int64), self.mask[i].astype(bool)

    def records(self, indices) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.record(i) for i in indices]


# -- Pai layout --------------------------------------------------------------------------------
def pai_row(records: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int) -> np.ndarray:
    """One Pai row (int32, 2 * seq_len) from records whose lengths sum to at most seq_len."""
    tokens = np.full(seq_len, pad_id, np.int64)
    labels = np.full(seq_len, IGNORE_INDEX, np.int64)
    at = 0
    for ids, mask in records:
        n = len(ids)
        tokens[at:at + n] = ids
        tokens[at + n - 1] = -1 - ids[-1]
        labels[at:at + n] = shifted_labels(ids, mask)
        at += n
    if at > seq_len:
        raise ValueError(f"records of {at} tokens do not fit a row of {seq_len}")
    return np.concatenate([tokens, labels]).astype(np.int32)


def write_pai(prefix: str, rows, files=LOCAL_FILES) -> int:
    """Write an iterable of Pai rows as ``{prefix}_text_document``; returns the row count."""
    writer = IdxmapWriter(tokens_prefix(prefix), np.int32, files)
    n = 0
    try:
        for row in rows:
            writer.add_document(row)
            n += 1
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    return n


@dataclass
class PaiSFT:
    """Rows of a Pai-layout dataset (ours or Pai's own): ``row(r) -> (tokens, labels, starts)``,
    tokens with the markers restored and ``starts`` the offsets where each record begins."""

    prefix: str
    sidecar: dict | None = None

    def __post_init__(self) -> None:
        self.rows = IdxmapReader(self.prefix)
        lengths = self.rows.sequence_lengths
        if len(lengths) == 0:
            raise IdxmapError(f"{self.prefix}: no rows")
        if np.any(lengths != lengths[0]) or lengths[0] % 2:
            raise IdxmapError(f"{self.prefix}: not a Pai SFT idxmap: rows must all hold 2 x seq_len "
                              f"values (found lengths {sorted(set(lengths[:1000].tolist()))[:5]})")
        self.seq_len = int(lengths[0]) // 2

    def __getstate__(self) -> dict:  # DataLoader workers reopen the map
        return {"prefix": self.prefix, "sidecar": self.sidecar}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        values = self.rows[r].astype(np.int64)
        tokens, labels = values[:self.seq_len].copy(), values[self.seq_len:]
        ends = np.flatnonzero(tokens < 0) + 1
        tokens[ends - 1] = -1 - tokens[ends - 1]
        starts = np.concatenate([[0], ends[:-1]]) if ends.size else np.zeros(0, np.int64)
        return tokens, labels, np.stack([starts, ends], 1) if ends.size else np.zeros((0, 2), np.int64)


def open_sft(prefix: str) -> NativeSFT | PaiSFT:
    """The SFT dataset at ``prefix`` (the ``..._text_document`` prefix, or the output prefix given
    to `dataprep sft`). Its sidecar names the layout; an idxmap without one is taken for a Pai
    file (Pai's own tool writes no sidecar) and checked as such."""
    prefix = prefix.removesuffix(".bin").removesuffix(".idx")
    if not os.path.exists(prefix + ".idx") and os.path.exists(tokens_prefix(prefix) + ".idx"):
        prefix = tokens_prefix(prefix)
    sidecar = read_sidecar(prefix)
    layout = (sidecar or {}).get("layout", PAI_LAYOUT)
    if layout == NATIVE_LAYOUT:
        return NativeSFT(prefix, sidecar)
    if layout == PAI_LAYOUT:
        return PaiSFT(prefix, sidecar)
    raise IdxmapError(f"{prefix}.json: unknown SFT layout {layout!r} "
                      f"(expected {NATIVE_LAYOUT!r} or {PAI_LAYOUT!r})")
