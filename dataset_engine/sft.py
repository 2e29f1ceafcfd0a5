"""SFT samples for training: records (native idxmap or raw json) or Pai rows → padded or packed
samples, and a collate function that batches packed rows of any micro-batch size.

A sample is a dict of tensors of length L (L = seq_length when packed, pad_length otherwise):

    tokens        int64  input ids (padding: the pad id)
    labels        int64  next-token targets, -100 where not trained (never the pad id)
    loss_mask     float  1.0 where labels != -100
    position_ids  int64  restarting at 0 for each record (and for the padding tail)
    cu_seqlens    int32  packed rows only: record boundaries [0, e1, ..., L]; the padding
                         tail is its own segment (as Pai's reader counts it)
    max_seqlen    int    packed rows only: the longest segment

Records longer than the sample length are truncated (`sft_format.fit_record`, the writer's
rule). Unpacked, every record is one sample, in a seeded order, so nothing needs tokenizing
ahead (raw mode reads lazily); a record whose first prompt fills the sample length trains
nothing (its loss mask is all zero): `dataprep sft --seq-length` drops such records ahead and
counts them. Packed rows need every length anyway: they leave such records out, and come from
best-fit-decreasing over the fitted lengths, computed once and cached under a hash of what
decides them (lengths, seq_length, algorithm, seed). Pai-layout files are read as written;
training them with another seq_length is an error.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from dataset_engine.batch import collate
from dataset_engine.cache import default_cache_dir
from dataset_engine.packing import ALGORITHMS, PackingPlan, pack
from dataset_engine.sft_format import FIT_TRUNCATED, IGNORE_INDEX, PaiSFT, fit_record, open_sft, shifted_labels

PLAN_CACHE_VERSION = 1


class RecordSource(Protocol):
    """Records as token ids and loss masks (native idxmap or raw json)."""

    lengths: np.ndarray
    """Tokens per record (raw mode computes them on first use)."""
    pad_id: int

    def __len__(self) -> int: ...

    def record(self, i: int) -> tuple[np.ndarray, np.ndarray]: ...

    def records(self, indices) -> list[tuple[np.ndarray, np.ndarray]]:
        """Several records at once (raw mode tokenizes them in one engine call)."""


@dataclass(frozen=True, kw_only=True)
class SFTDatasetConfig:
    seq_length: int
    """Training sequence length: the row length of packed samples."""
    packing: bool = False
    """Pack records into rows of seq_length (Pai's MP_SFT_PACKING); else one record per sample."""
    pad_length: int | None = None
    """Unpacked samples are padded (and records fitted) to this length (Pai's PAD_LEN); default seq_length."""
    seed: int = 1234
    """Shuffles unpacked records and orders packed rows; which records share a row does not depend on it."""
    shuffle: bool = True
    """Unpacked: records in a seeded random order (False: file order)."""
    packing_algorithm: str = "bfd"
    """bfd (best-fit-decreasing) or next-fit (Pai's, file order)."""
    cache_dir: str | None = field(default_factory=lambda: default_cache_dir())
    """Where packing plans and raw-mode indexes are cached (None: computed every time); default
    ``$DATAPREP_CACHE``, else ``~/.cache/dataprep``: per machine, so nodes without a shared disk
    each keep their own, and concurrent ranks write under temporary names then rename."""

    def __post_init__(self) -> None:
        if self.seq_length < 2:
            raise ValueError(f"seq_length must be at least 2, got {self.seq_length}")
        if self.pad_length is not None and not 2 <= self.pad_length <= self.seq_length:
            raise ValueError(f"pad_length must be in [2, seq_length={self.seq_length}], got {self.pad_length}")
        if self.packing_algorithm not in ALGORITHMS:
            raise ValueError(f"unknown packing_algorithm {self.packing_algorithm!r}; known: {', '.join(ALGORITHMS)}")

    @property
    def sample_length(self) -> int:
        return self.seq_length if self.packing else (self.pad_length or self.seq_length)


def segment_fields(bounds: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """position_ids, cu_seqlens and max_seqlen of a row whose records span ``bounds`` [(start, end)]."""
    ends = [int(e) for _, e in bounds]
    cu = [0, *ends] + ([length] if not ends or ends[-1] < length else [])
    cu = np.asarray(cu, np.int32)
    seglens = np.diff(cu)
    positions = np.arange(length, dtype=np.int64) - np.repeat(cu[:-1].astype(np.int64), seglens)
    return positions, cu, int(seglens.max())


def _sample(tokens: np.ndarray, labels: np.ndarray, bounds: np.ndarray | None) -> dict:
    sample = {"tokens": torch.from_numpy(tokens), "labels": torch.from_numpy(labels),
              "loss_mask": torch.from_numpy((labels != IGNORE_INDEX).astype(np.float32))}
    if bounds is None:
        sample["position_ids"] = torch.arange(len(tokens), dtype=torch.int64)
    else:
        positions, cu, max_seqlen = segment_fields(bounds, len(tokens))
        sample.update(position_ids=torch.from_numpy(positions), cu_seqlens=torch.from_numpy(cu),
                      max_seqlen=max_seqlen)
    return sample


class SFTDataset(torch.utils.data.Dataset):
    """Samples over a record source (native or raw) or a Pai-layout file; picklable for DataLoader workers."""

    def __init__(self, source: RecordSource | PaiSFT, config: SFTDatasetConfig) -> None:
        self.source = source
        self.config = config
        if isinstance(source, PaiSFT):
            if source.seq_len != config.seq_length:
                raise ValueError(
                    f"{source.prefix}: built for seq_length {source.seq_len} (rows of {2 * source.seq_len} "
                    f"values), but training uses seq_length {config.seq_length}; rebuild it with "
                    f"--seq-length {config.seq_length}, or use the native layout, which fits any length")
            self._length = len(source)
            return
        if config.packing:
            self.records, self.fitted = self._valid_records(config.seq_length)
            self.plan = self._packing_plan()
            self._length = self.plan.rows
        else:
            n = len(source)
            self.order = np.random.default_rng(config.seed).permutation(n) if config.shuffle else np.arange(n)
            self._length = n

    def _valid_records(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the records that keep a trained token when fitted to ``length``, and their
        fitted lengths. Only records longer than ``length`` can lose all, so only they are read."""
        lengths = np.asarray(self.source.lengths, np.int64)
        keep = np.ones(len(lengths), bool)
        long = np.flatnonzero(lengths > length).tolist()
        for lo in range(0, len(long), 1024):  # raw mode tokenizes each batch in one engine call
            batch = long[lo:lo + 1024]
            for i, (ids, mask) in zip(batch, self.source.records(batch)):
                keep[i] = fit_record(ids, mask, length)[2] == FIT_TRUNCATED
        records = np.flatnonzero(keep)
        return records, np.minimum(lengths[records], length)

    def _packing_plan(self) -> PackingPlan:
        c = self.config
        key = hashlib.sha256(b"%d|%d|%s|%d|" % (PLAN_CACHE_VERSION, c.seq_length, c.packing_algorithm.encode(),
                                                 c.seed) + self.fitted.tobytes()).hexdigest()[:32]
        path = os.path.join(c.cache_dir, f"sft-packing-{key}.npz") if c.cache_dir else None
        if path and os.path.exists(path):
            with np.load(path, allow_pickle=False) as cached:
                return PackingPlan(seq_len=c.seq_length, row_offsets=cached["row_offsets"],
                                   order=cached["order"], lengths=self.fitted)
        plan = pack(self.fitted, c.seq_length, c.packing_algorithm, c.seed)
        if path:
            os.makedirs(c.cache_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp.npz"  # concurrent builders each write their own, then rename
            np.savez(tmp, row_offsets=plan.row_offsets, order=plan.order)
            os.replace(tmp, path)
        return plan

    def __len__(self) -> int:
        return self._length


    def __getitem__(self, idx: int) -> dict:
        if not 0 <= idx < self._length:
            raise IndexError(f"sample {idx} out of range for {self._length} samples")
        if isinstance(self.source, PaiSFT):
            tokens, labels, bounds = self.source.row(idx)
            return _sample(tokens, labels, bounds)
        length = self.config.sample_length
        tokens = np.full(length, self.source.pad_id, np.int64)
        labels = np.full(length, IGNORE_INDEX, np.int64)
        # records are truncated to the sample length (when a prompt fills it, nothing is trained)
        if not self.config.packing:
            ids, mask = self.source.record(int(self.order[idx]))
            ids, mask = ids[:length], mask[:length]
            tokens[:len(ids)] = ids
            labels[:len(ids)] = shifted_labels(ids, mask)
            return _sample(tokens, labels, None)
        bounds, at = [], 0
        for ids, mask in self.source.records(self.records[self.plan.row(idx)]):
            ids, mask = ids[:length], mask[:length]
            tokens[at:at + len(ids)] = ids
            labels[at:at + len(ids)] = shifted_labels(ids, mask)
            bounds.append((at, at + len(ids)))
            at += len(ids)
        return _sample(tokens, labels, np.asarray(bounds, np.int64))


collate_sft = collate  # the SFT name for the one collate function (dataset_engine.batch)


def open_sft_dataset(paths: str | list[str], config: SFTDatasetConfig) -> SFTDataset:
    """The SFT dataset of one idxmap prefix (native or Pai layout). Raw json goes through
    `dataprep.sft.raw.build_sft_dataset`, which tokenizes it."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    if len(paths) != 1:
        raise ValueError(f"an SFT idxmap is one prefix, got {len(paths)} paths")
    return SFTDataset(open_sft(paths[0]), config)
