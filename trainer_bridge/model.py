"""The model a run trains: the default process group, and megatron-core's GPTModel built from a
`ModelConfig` (an architecture preset with its precision, parallel layout and recomputation),
never from a whole TrainConfig, so conversion builds the same model without a command line.

megatron-core is imported inside the functions: it takes seconds to load, and ``--help`` and
argument errors should not wait for it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass

import torch

from trainer_bridge.config import TrainConfig
from trainer_bridge.presets import ModelPreset, gpt_model_kwargs, layer_spec, transformer_config_kwargs


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """What `build_model` reads. The names (besides `preset`) are TrainConfig's, so `of` copies them."""

    preset: ModelPreset
    """The architecture."""
    seq_length: int
    """The longest sequence the model sees: RoPE positions reach at least this far."""
    precision: str = "fp32"
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    decoder_first_pipeline_num_layers: int | None = None
    context_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: int = 1
    sequence_parallel: bool = False
    recompute: str = "none"
    recompute_num_layers: int = 1

    @classmethod
    def of(cls, config: TrainConfig) -> ModelConfig:
        """The model part of a run's settings (the architecture from `config.preset()`)."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "preset"]
        return cls(preset=config.preset(), **{name: getattr(config, name) for name in names})


def init_distributed(backend: str | None = None) -> None:
    """The default process group (one process without torchrun); nccl on GPUs unless `backend`."""
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:  # one process without torchrun: any free port (runs side by side)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    torch.distributed.init_process_group(backend)


def uses_transformer_engine() -> bool:
    """GPU runs use TransformerEngine layers when it is installed; otherwise megatron-core's local
    layers, where packed rows get a block-diagonal causal mask instead of THD attention."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine  # noqa: F401  (optional: only whether it is installed)
    except ImportError:
        return False
    return True


def _params_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def _recompute_kwargs(model: ModelConfig) -> dict:
    if model.recompute == "sel":
        return {"recompute_granularity": "selective"}
    if model.recompute in ("full", "offload"):
        return {"recompute_granularity": "full", "recompute_method": "uniform",
                "recompute_num_layers": model.recompute_num_layers}
    return {}


def transformer_config(model: ModelConfig, cpu: bool):
    """megatron-core's TransformerConfig: the architecture, its layout, precision and recomputation."""
    from megatron.core.transformer.transformer_config import TransformerConfig

    dtype = _params_dtype(model.precision)
    return TransformerConfig(
        **transformer_config_kwargs(model.preset), **_recompute_kwargs(model),
        hidden_dropout=0.0, attention_dropout=0.0,  # Qwen models train without dropout
        tensor_model_parallel_size=model.tensor_model_parallel_size,
        pipeline_model_parallel_size=model.pipeline_model_parallel_size,
        num_layers_in_first_pipeline_stage=model.decoder_first_pipeline_num_layers,
        context_parallel_size=model.context_parallel_size,
        expert_model_parallel_size=model.expert_model_parallel_size,
        expert_tensor_parallel_size=model.expert_tensor_parallel_size,
        sequence_parallel=model.sequence_parallel,
        bf16=model.precision == "bf16", fp16=model.precision == "fp16",
        params_dtype=dtype, pipeline_dtype=dtype,  # pipeline_dtype: what stages send each other
        use_cpu_initialization=cpu, perform_initialization=True,
        calculate_per_token_loss=True, batch_p2p_comm=not cpu,
        moe_token_dispatcher_type="allgather" if cpu else "alltoall",
    )


def _layer_spec(preset: ModelPreset, local_spec: bool):
    if local_spec or not uses_transformer_engine():
        return layer_spec(preset)
    # GPU with TransformerEngine: fused kernels and THD packed attention
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(num_experts=preset.num_experts, moe_grouped_gemm=preset.is_moe,
                                                      qk_layernorm=preset.qk_layernorm)


def build_model(model: ModelConfig, cpu: bool, local_spec: bool = False):
    """(the GPTModel, its TransformerConfig) in the current parallel layout; `local_spec` keeps
    megatron-core's local layers even where TransformerEngine is installed."""
    from megatron.core import parallel_state
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.module import Float16Module

    tconfig = transformer_config(model, cpu)
    gpt = gpt_model_kwargs(model.preset)
    gpt["max_sequence_length"] = max(gpt["max_sequence_length"], model.seq_length)
    staged = parallel_state.model_parallel_is_initialized()  # a pipeline stage holds only its part
    module = GPTModel(config=tconfig, transformer_layer_spec=_layer_spec(model.preset, local_spec), **gpt,
                      pre_process=not staged or parallel_state.is_pipeline_first_stage(ignore_virtual=True),
                      post_process=not staged or parallel_state.is_pipeline_last_stage(ignore_virtual=True))
    if model.precision in ("bf16", "fp16"):
        module = Float16Module(tconfig, module)
    return module, tconfig
