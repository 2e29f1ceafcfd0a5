"""Pretrain samples over idxmaps: megatron-core's GPTDataset semantics, with a better index cache.

For the same prefixes, weights, split, seq_length, seed and sample counts this yields exactly the
samples megatron-core's ``BlendedMegatronDatasetBuilder(GPTDataset, ...)`` yields (tested sample
by sample). It is built on megatron-core where that is the right tool: its split parsing, its
C++ ``build_sample_idx`` / ``build_blending_indices`` helpers and its mask/position function.
What differs is around them:

* **Index cache** (`index_cache.py`): the key covers every field that changes the indices and a
  digest of the ``.idx`` (megatron's misses the data itself, so a regenerated file at the same
  path reuses stale indices); entries are published atomically; concurrent builders wait on a
  lock or race harmlessly; no rank 0, no barrier, no shared disk needed.
* **Building**: the document index is built with ``np.tile`` over int32 (megatron builds an
  int64 ``mgrid`` of epochs x documents first: 16 bytes per entry), token counts from a slice
  rather than a fancy index; the C++ helper builds the sample index.

Indices (megatron's): ``document_index`` (the split's sequence ids, repeated per epoch and
shuffled with ``RandomState(seed)``), ``sample_index`` ([i] = (position in document_index,
token offset) where sample i starts) and ``shuffle_index`` (a permutation of the samples; a short
final epoch is shuffled separately). A sample is ``seq_length + 1`` tokens crossing document
boundaries; ``tokens``/``labels`` are its shifted views.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from dataset_engine.idxmap import IdxmapReader
from dataset_engine.cache import cached_arrays, default_cache_dir, file_digest, load_entry

SPLITS = ("train", "valid", "test")
GPT_ARRAYS = ("document_index", "sample_index", "shuffle_index")
BLEND_ARRAYS = ("dataset_index", "dataset_sample_index")
PAD_NONE = -1  # megatron's _PAD_TOKEN_ID: no pad token (or one that collides with eod)


@dataclass(frozen=True, kw_only=True)
class GPTDataConfig:
    data_path: tuple[str, ...]
    """Megatron's ``--data-path``: prefixes, or weights and prefixes ("0.3", "a", "0.7", "b")."""
    seq_length: int
    """Tokens per sample (each sample reads seq_length + 1)."""
    eod: int
    """The end-of-document id (the tokenizer's eos)."""
    split: str = "969,30,1"
    """Train, valid, test shares of each prefix's sequences (Megatron's ``--split``)."""
    seed: int = 1234
    pad: int | None = None
    """The tokenizer's pad id; None (or one equal to eod) means none, as in megatron-core."""
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    """Documents do not attend to each other: with create_attention_mask a block mask, and
    always ``cu_seqlens`` (document boundaries in the sample) for packed-sequence attention."""
    eod_mask_loss: bool = False
    create_attention_mask: bool = True
    add_extra_token: bool = True
    """Read seq_length + 1 tokens so tokens and labels are both seq_length long."""
    drop_last_partial_validation_sequence: bool = True
    surplus: float = 0.005
    """Extra samples built per blended dataset (megatron's mid_level_dataset_surplus)."""
    cache_dir: str | None = field(default_factory=lambda: os.path.join(default_cache_dir(), "gpt"))
    """Where indices are cached (None: built every time)."""

    def __post_init__(self) -> None:
        if self.seq_length < 1:
            raise ValueError(f"seq_length must be positive, got {self.seq_length}")
        if not self.data_path:
            raise ValueError("data_path names no dataset")
        self.blend()  # validates

    def blend(self) -> tuple[list[str], list[float] | None]:
        from megatron.core.datasets.utils import get_blend_from_list

        prefixes, weights = get_blend_from_list(list(self.data_path))
        if weights is not None and any(w <= 0 for w in weights):
            raise ValueError(f"blend weights must be positive, got {weights}")
        return prefixes, weights

    def split_matrix(self) -> list[tuple[float, float] | None]:
        from megatron.core.datasets.blended_megatron_dataset_config import (
            convert_split_vector_to_split_matrix, parse_and_normalize_split)

        return convert_split_vector_to_split_matrix(parse_and_normalize_split(self.split))

    @property
    def pad_id(self) -> int:
        return PAD_NONE if self.pad is None or self.pad == self.eod else self.pad


def document_index(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState,
                   separate_final_epoch: bool) -> np.ndarray:
    """megatron-core's _build_document_index, without its int64 epochs x documents grid."""
    if not separate_final_epoch or num_epochs == 1:
        index = np.tile(documents.astype(np.int32), num_epochs)
        rng.shuffle(index)
        return index
    first = document_index(documents, num_epochs - 1, rng, False)
    return np.concatenate((first, document_index(documents, 1, rng, False)))


def build_gpt_indices(lengths: np.ndarray, beg: int, end: int, num_samples: int | None, *,
                      seq_length: int, seed: int, add_extra_token: bool, drop_last_partial: bool
                      ) -> dict[str, np.ndarray]:
    """megatron-core's GPTDataset indices for sequences [beg, end) of an idxmap."""
    from megatron.core.datasets import helpers
    from megatron.core.datasets.gpt_dataset import _build_shuffle_index

    extra = int(add_extra_token)
    tokens_per_epoch = int(lengths[beg:end].sum(dtype=np.int64))
    num_epochs = 1
    if num_samples is not None:
        wanted = num_samples * seq_length + extra
        num_epochs = max(1, -(-wanted // tokens_per_epoch)) if tokens_per_epoch else 1
    separate_final_epoch = False
    if num_epochs > 1:
        sans_final = ((num_epochs - 1) * tokens_per_epoch - extra) // seq_length
        per_epoch = (tokens_per_epoch - extra) // seq_length
        separate_final_epoch = num_samples - sans_final < int(0.80 * per_epoch)
    rng = np.random.RandomState(seed)
    documents = np.arange(beg, end, dtype=np.int32)
    doc_index = document_index(documents, num_epochs, rng, separate_final_epoch)
    lengths32 = np.ascontiguousarray(lengths, dtype=np.int32)
    sample_index = helpers.build_sample_idx(lengths32, doc_index, seq_length, num_epochs,
                                            tokens_per_epoch, drop_last_partial, extra)
    n = sample_index.shape[0] - 1
    first = ((num_epochs - 1) * tokens_per_epoch - extra) // seq_length if separate_final_epoch else n
    return {"document_index": doc_index, "sample_index": sample_index,
            "shuffle_index": _build_shuffle_index(first, n, rng)}


class _Tokens:
    """An idxmap's sequences, reopened after pickling (DataLoader workers)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.reader = IdxmapReader(prefix)
        self.lengths = self.reader.sequence_lengths

    def __getstate__(self) -> dict:
        return {"prefix": self.prefix}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prefix"])

    def get(self, seq: int, offset: int = 0, length: int | None = None) -> np.ndarray:
        tokens = self.reader[int(seq)]
        return tokens[offset:] if length is None else tokens[offset:offset + length]


class GPTSamples(torch.utils.data.Dataset):
    """One split of one idxmap: megatron-core's GPTDataset samples."""

    def __init__(self, tokens: _Tokens, beg: int, end: int, num_samples: int | None, split: str,
                 config: GPTDataConfig) -> None:
        self.tokens, self.split, self.config = tokens, split, config
        self.num_samples = num_samples
        drop_last = config.drop_last_partial_validation_sequence if split == "valid" else True
        self.description = {
            "kind": "gpt", "idx": {"path": os.path.abspath(tokens.reader.idx_path),
                                   "digest": file_digest(tokens.reader.idx_path)},
            "sequences": [beg, end], "num_samples": num_samples, "seq_length": config.seq_length,
            "seed": config.seed, "add_extra_token": config.add_extra_token, "drop_last_partial": drop_last}
        arrays, self.cache_hit = cached_arrays(config.cache_dir, self.description, lambda: build_gpt_indices(
            tokens.lengths, beg, end, num_samples, seq_length=config.seq_length, seed=config.seed,
            add_extra_token=config.add_extra_token, drop_last_partial=drop_last), GPT_ARRAYS)
        self._set(arrays)

    def _set(self, arrays: dict[str, np.ndarray]) -> None:
        self.document_index = arrays["document_index"]
        self.sample_index = arrays["sample_index"]
        self.shuffle_index = arrays["shuffle_index"]

    def __getstate__(self) -> dict:
        # cached indices are memory maps: workers map the same files instead of receiving copies
        state = dict(self.__dict__)
        if self.config.cache_dir is not None:
            for name in GPT_ARRAYS:
                state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "shuffle_index" not in state:
            self._set(load_entry(self.config.cache_dir, self.description, GPT_ARRAYS))

    def __len__(self) -> int:
        return self.sample_index.shape[0] - 1

    def text(self, idx: int) -> np.ndarray:
        """The sample's seq_length (+1) token ids, padded with the pad id at the very end."""
        c = self.config
        i = self.shuffle_index[idx]
        (beg, beg_off), (end, end_off) = self.sample_index[i], self.sample_index[i + 1]
        extra = int(c.add_extra_token)
        if beg == end:
            parts = [self.tokens.get(self.document_index[beg], int(beg_off), int(end_off - beg_off + extra))]
        else:
            parts = [self.tokens.get(self.document_index[d], int(beg_off) if d == beg else 0,
                                     None if d < end else int(end_off + extra)) for d in range(beg, end + 1)]
        text = np.concatenate(parts).astype(np.int64)
        missing = c.seq_length + extra - len(text)
        return np.concatenate([text, np.full(missing, c.pad_id, np.int64)]) if missing > 0 else text

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        from megatron.core.datasets.gpt_dataset import _get_ltor_masks_and_position_ids

        c = self.config
        text = torch.from_numpy(self.text(int(idx)))
        if c.add_extra_token:
            tokens, labels = text[:-1].contiguous(), text[1:].contiguous()
        else:
            tokens, labels = text, torch.roll(text, shifts=-1, dims=0)
            labels[-1] = c.pad_id
        # document ends, before pad positions are overwritten below (they may become eod-like ids)
        eod_at = torch.nonzero(tokens == c.eod).flatten() + 1 if c.reset_attention_mask else None
        attention_mask, loss_mask, position_ids = _get_ltor_masks_and_position_ids(
            tokens, c.eod, c.reset_position_ids, c.reset_attention_mask, c.eod_mask_loss,
            c.create_attention_mask)
        loss_mask[labels == c.pad_id] = 0.0
        tokens[tokens == c.pad_id] = 0
        labels[labels == c.pad_id] = 0
        sample = {"tokens": tokens, "labels": labels}
        if attention_mask is not None:
            sample["attention_mask"] = attention_mask
        sample.update(loss_mask=loss_mask, position_ids=position_ids)
        if eod_at is not None:  # document boundaries for packed-sequence (THD) attention
            cuts = [0] + [e for e in eod_at.tolist() if e < len(tokens)] + [len(tokens)]
            sample["cu_seqlens"] = torch.tensor(cuts, dtype=torch.int32)
        return sample


class BlendedSamples(torch.utils.data.Dataset):
    """Samples drawn from several datasets in proportion to weights (megatron's BlendedDataset)."""

    def __init__(self, datasets: list[GPTSamples], weights: list[float], size: int | None,
                 config: GPTDataConfig) -> None:
        from megatron.core.datasets.utils import normalize

        self.datasets = datasets
        self.weights = normalize(weights) if size is not None else weights
        self.size = size
        self.config = config
        self.description = {"kind": "blend", "datasets": [d.description for d in datasets],
                            "weights": self.weights, "size": size}
        arrays, self.cache_hit = cached_arrays(config.cache_dir, self.description, self._build, BLEND_ARRAYS)
        self.dataset_index, self.dataset_sample_index = arrays["dataset_index"], arrays["dataset_sample_index"]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.config.cache_dir is not None:
            state.pop("dataset_index")
            state.pop("dataset_sample_index")
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "dataset_index" not in state:
            arrays = load_entry(self.config.cache_dir, self.description, BLEND_ARRAYS)
            self.dataset_index, self.dataset_sample_index = arrays["dataset_index"], arrays["dataset_sample_index"]

    def _build(self) -> dict[str, np.ndarray]:
        from megatron.core.datasets import helpers

        n = self.size if self.size is not None else int(sum(self.weights))
        dataset_index = np.zeros(n, dtype=np.int16)
        sample_index = np.zeros(n, dtype=np.int64)
        if self.size is not None:
            helpers.build_blending_indices(dataset_index, sample_index, self.weights, len(self.datasets),
                                           self.size, False)
        else:
            helpers.build_exhaustive_blending_indices(dataset_index, sample_index, self.weights,
                                                      len(self.datasets))
        used = np.bincount(dataset_index, minlength=len(self.datasets))
        for k, (dataset, count) in enumerate(zip(self.datasets, used)):
            if len(dataset) < count:
                raise ValueError(f"{dataset.tokens.prefix}: the blend needs {count} samples from its "
                                 f"{dataset.split} split, which has {len(dataset)}")
        return {"dataset_index": dataset_index, "dataset_sample_index": sample_index}

    def __len__(self) -> int:
        return self.dataset_index.shape[0]

    def __getitem__(self, idx: int) -> dict:
        k = int(self.dataset_index[idx])
        return {"dataset_id": k, **self.datasets[k][int(self.dataset_sample_index[idx])]}


def build_gpt_datasets(config: GPTDataConfig, num_samples: list[int | None]
                       ) -> list[GPTSamples | BlendedSamples | None]:
    """Train, valid and test datasets for ``num_samples`` [train, valid, test] (None: one epoch),
    as megatron-core's BlendedMegatronDatasetBuilder builds them from a single blend."""
    from megatron.core.datasets.utils import normalize

    if len(num_samples) != 3:
        raise ValueError(f"num_samples needs [train, valid, test], got {num_samples}")
    prefixes, weights = config.blend()
    matrix = config.split_matrix()

    def splits_of(prefix: str, sizes: list[int | None]) -> list[GPTSamples | None]:
        tokens = _Tokens(prefix)
        n = len(tokens.lengths)
        out = []
        for i, bounds in enumerate(matrix):
            if bounds is None:
                out.append(None)
                continue
            beg, end = int(round(bounds[0] * float(n))), int(round(bounds[1] * float(n)))
            out.append(GPTSamples(tokens, beg, end, sizes[i], SPLITS[i], config))
        return out

    if len(prefixes) == 1 and weights is None:
        return splits_of(prefixes[0], list(num_samples))
    if weights is not None:
        weights = normalize(weights)
        target = [[int(np.ceil(np.ceil(s * w))) if s is not None else None for s in num_samples] for w in weights]
        buffer = [[int(np.ceil(np.ceil(s * w) * (1 + config.surplus))) if s is not None else None
                   for s in num_samples] for w in weights]
    else:
        target = buffer = [[None] * 3 for _ in prefixes]
    per_prefix = [splits_of(p, b) for p, b in zip(prefixes, buffer)]
    out: list = []
    for i in range(3):
        if matrix[i] is None:
            out.append(None)
            continue
        datasets = [splits[i] for splits in per_prefix]
        if weights is not None:
            if num_samples[i] is None:
                raise ValueError("blend weights need a sample count for every split used")
            out.append(BlendedSamples(datasets, weights, sum(t[i] for t in target), config))
        else:
            sizes = [len(d) for d in datasets]
            size = min(num_samples[i], sum(sizes)) if num_samples[i] is not None else None
            out.append(BlendedSamples(datasets, sizes, size, config))
    return out


def megatron_num_samples(train_iters: int, global_batch_size: int, eval_interval: int,
                         eval_iters: int) -> list[int]:
    """[train, valid, test] sample counts as Megatron-LM's pretraining loop asks for them."""
    evaluations = (train_iters // eval_interval + 1) * eval_iters
    return [train_iters * global_batch_size, evaluations * global_batch_size, eval_iters * global_batch_size]


def build_index_cache(config: GPTDataConfig, num_samples: list[int | None]) -> list[str]:
    """Build (or check) every index the training run will load; one line per split."""
    lines = []
    for name, dataset in zip(SPLITS, build_gpt_datasets(config, num_samples)):
        if dataset is None:
            lines.append(f"  {name:<5} none (split {config.split!r} gives it no share)")
            continue
        parts = dataset.datasets if isinstance(dataset, BlendedSamples) else [dataset]
        hits = sum(p.cache_hit for p in parts) + (dataset.cache_hit if isinstance(dataset, BlendedSamples) else 0)
        total = len(parts) + isinstance(dataset, BlendedSamples)
        lines.append(f"  {name:<5} {len(dataset):,} samples from {len(parts)} dataset(s); "
                     f"{total - hits} index(es) built, {hits} already cached")
    return lines
