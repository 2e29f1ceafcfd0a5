"""trainer_bridge: the top layer of the toolkit (it imports `dataprep` and `dataset_engine`; nothing
imports it). It owns the bundled Megatron-Core trainer and what surrounds it:

* the training entry (`train`: the command; `config`: its settings and options; `model`: the
  GPTModel; `loop`: the training loop; `data`: datasets and batches; `checkpoint`: save, resume,
  starting weights);
* Pai's launcher (`launcher`: run_mcore_*.sh's 27 parameters → torchrun and the entry);
* model presets (`presets`: Qwen3 architectures → megatron-core configs);
* Hugging Face ↔ megatron-core checkpoint conversion (`convert`);
* the CPU compatibility layer for megatron-core (`cpu_compat`).
"""
