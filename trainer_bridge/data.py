"""Train and valid data for the bundled trainer, from this toolkit's datasets only.

* pretrain (SFT=false): idxmap prefixes (a Megatron blend) through `dataset_engine.gpt`, the
  samples megatron-core's GPTDataset gives; the valid set is the valid split, or VALID_DATASET_PATH;
* SFT idxmap (native or Pai layout; packed rows or one record padded to PAD_LEN) and raw json
  (``MP_DATASET_TYPE=raw``) through `dataset_engine.sft.build_sft_dataset`.

Batches are cut by `ResumableBatchSampler`: global batches in dataset order from a consumed-sample
count, each data-parallel rank taking its micro-batches, so a resumed run reads exactly the
samples an uninterrupted one would (the count is saved in checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from dataprep.sft.raw import build_sft_dataset
from dataprep.tokenization.tokenizers import load_tokenizer
from dataset_engine.batch import collate
from dataset_engine.gpt import GPTDataConfig, build_gpt_datasets
from dataset_engine.idxmap import read_sidecar
from dataset_engine.sft import SFTDatasetConfig


class ResumableBatchSampler:
    """Micro-batches of this data-parallel rank, global batch after global batch, in index order
    from ``consumed`` samples on (Megatron's pretraining sampler, wrapping around at the end)."""

    def __init__(self, total: int, consumed: int, micro_batch_size: int, dp_rank: int, dp_size: int) -> None:
        if total <= 0:
            raise ValueError("the dataset has no samples")
        self.total, self.consumed = total, consumed
        self.micro_batch_size, self.dp_rank, self.dp_size = micro_batch_size, dp_rank, dp_size

    def __iter__(self) -> Iterator[list[int]]:
        step = self.micro_batch_size * self.dp_size
        start = self.consumed
        while True:
            lo = start + self.dp_rank * self.micro_batch_size
            yield [(lo + k) % self.total for k in range(self.micro_batch_size)]
            start += step


@dataclass(frozen=True, kw_only=True)
class DataSettings:
    data_path: tuple[str, ...]
    valid_data_path: tuple[str, ...] | None
    sft: bool
    dataset_type: str
    """idxmap or raw (MP_DATASET_TYPE)."""
    seq_length: int
    pad_length: int
    sft_packing: bool
    tokenizer: str | None
    tokenizer_path: str | None
    seed: int
    num_workers: int = 0


def _eod(settings: DataSettings, prefixes: list[str]) -> int:
    """The EOD id: from the idxmap's sidecar (dataprep writes it), else the tokenizer."""
    for prefix in prefixes:
        sidecar = read_sidecar(prefix)
        if sidecar and sidecar.get("tokenizer", {}).get("eod") is not None:
            return int(sidecar["tokenizer"]["eod"])
    if settings.tokenizer is None:
        raise ValueError(f"{prefixes[0]}: no sidecar names the EOD id; pass --tokenizer and --tokenizer-path")
    return int(load_tokenizer(settings.tokenizer, settings.tokenizer_path).eod)


def build_datasets(settings: DataSettings, num_samples: list[int]):
    """(train, valid) datasets; valid may be None."""
    if not settings.sft:
        from megatron.core.datasets.utils import get_blend_from_list

        prefixes = get_blend_from_list(list(settings.data_path))[0]
        eod = _eod(settings, prefixes)
        split = "99,1,0" if settings.valid_data_path is None else "100,0,0"
        common = dict(seq_length=settings.seq_length, eod=eod, seed=settings.seed, create_attention_mask=False)
        train, valid, _ = build_gpt_datasets(GPTDataConfig(data_path=settings.data_path, split=split, **common),
                                             [num_samples[0], num_samples[1], None])
        if settings.valid_data_path is not None:
            valid = build_gpt_datasets(GPTDataConfig(data_path=settings.valid_data_path, split="100,0,0", **common),
                                       [num_samples[1], None, None])[0]
        return train, valid
    config = SFTDatasetConfig(seq_length=settings.seq_length, packing=settings.sft_packing,
                              pad_length=None if settings.sft_packing else settings.pad_length, seed=settings.seed)

    def sft(paths: tuple[str, ...]):
        path = list(paths) if settings.dataset_type == "raw" else paths[0]
        return build_sft_dataset(path, config, dataset_type=settings.dataset_type, tokenizer=settings.tokenizer,
                                 tokenizer_path=settings.tokenizer_path)

    return sft(settings.data_path), sft(settings.valid_data_path) if settings.valid_data_path else None


def loader(dataset, consumed: int, micro_batch_size: int, dp_rank: int, dp_size: int, num_workers: int = 0):
    sampler = ResumableBatchSampler(len(dataset), consumed, micro_batch_size, dp_rank, dp_size)
    return iter(torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                            num_workers=num_workers, persistent_workers=num_workers > 0))
