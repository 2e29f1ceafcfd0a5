"""dataset_engine: the on-disk formats and the datasets over them. The bottom layer.

Owns the Megatron idxmap format (`idxmap`), the SFT layouts (`sft_format`), packing rows
(`packing`), the content-keyed cache (`cache`), the pretrain (`gpt`) and SFT (`sft`) PyTorch
datasets, raw json records by index (`raw`) and batching (`batch`). It imports only numpy,
torch and megatron-core: never `dataprep` or `trainer_bridge`, and it tokenizes nothing
(raw mode's tokenizing source lives in `dataprep.sft.raw`).
"""
