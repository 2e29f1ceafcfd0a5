"""dataprep: a parallel, exact tokenizer pipeline that writes Megatron idxmaps. The middle layer:
it imports `dataset_engine` (formats), never `trainer_bridge`.

The pipeline in sub-packages, in the order data flows: `io` (sources, records, storage) →
`tokenization` (tokenizer registry and engines) → `pretrain` / `sft` (records → tokens →
idxmaps) run by `runs` (workers, shards, local and Ray executors); `tools` read finished
idxmaps. `cli` is the `dataprep` command; `errors` the error and exit convention of every CLI.

Nothing in this package imports torch or megatron-core on the preprocessing path, so worker
processes start fast (only `sft.raw`, which builds a PyTorch dataset, does).
"""

__version__ = "0.1.0"
