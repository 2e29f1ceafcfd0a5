"""Samples → a micro-batch, for SFT and pretrain datasets alike.

Every tensor of a sample is stacked into ``[B, ...]`` (ints such as ``dataset_id`` become a
tensor). Samples that carry ``cu_seqlens`` (packed SFT rows; pretrain samples with
reset_attention_mask) get batch-level boundaries over the flattened batch, as packed-sequence
(THD) attention takes them: row b's boundaries shifted by ``b * L``, the last one ``B * L``;
``max_seqlen`` is the longest segment in the batch. So packing never forces micro-batch 1.
"""

from __future__ import annotations

import torch


def collate(samples: list[dict]) -> dict:
    if not samples:
        raise ValueError("collate needs at least one sample")
    batch = {}
    for key, first in samples[0].items():
        if key in ("cu_seqlens", "max_seqlen"):
            continue
        values = [s[key] for s in samples]
        batch[key] = torch.stack(values) if torch.is_tensor(first) else torch.tensor(values)
    if "cu_seqlens" in samples[0]:
        length = samples[0]["tokens"].numel()
        parts = [s["cu_seqlens"][:-1].to(torch.int32) + b * length for b, s in enumerate(samples)]
        batch["cu_seqlens"] = torch.cat(parts + [torch.tensor([len(samples) * length], dtype=torch.int32)])
        batch["max_seqlen"] = max(int(torch.diff(s["cu_seqlens"]).max()) for s in samples)
    return batch
