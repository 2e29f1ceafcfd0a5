"""`dataprep pretrain`: jsonl/parquet records → token documents (`documents`) → one Megatron
idxmap per json key (`run`)."""
