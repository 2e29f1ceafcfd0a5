"""The bundled Megatron-Core training entry: ``torchrun -m trainer_bridge.train --model-size ... --data-path ...``.

One loop on megatron-core: GPTModel from a preset, `parallel_state` (TP/PP/CP/EP), megatron DDP and
optimizer (distributed optimizer optional), the forward-backward schedule, LR warmup then cosine
decay to min_lr, weight decay, gradient clipping, periodic evaluation, logging of loss, LR, grad
norm, tokens/s and data-wait time. Without CUDA it runs on CPU with gloo (`cpu_compat`), where
packed rows use a block-diagonal causal mask instead of THD attention.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
RECOMPUTE = ("none", "sel", "full", "offload")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    model_size: str
    micro_batch_size: int
    global_batch_size: int
    lr: float
    min_lr: float
    seq_length: int
    pad_length: int | None
    precision: str
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int
    context_parallel_size: int
    expert_tensor_parallel_size: int
    expert_model_parallel_size: int
    sequence_parallel: bool
    use_distributed_optimizer: bool
    use_flash_attn: bool
    sft: bool
    recompute: str
    recompute_num_layers: int
    optimizer_offload_fraction: float
    save_interval: int
    save: str | None
    data_path: tuple[str, ...]
    valid_data_path: tuple[str, ...] | None
    load: str | None
    train_iters: int
    lr_warmup_iters: int
    lr_decay_iters: int | None
    dataset_type: str
    sft_packing: bool
    decoder_first_pipeline_num_layers: int | None
    virtual_pipeline_model_parallel_size: int | None
    tokenizer: str | None
    tokenizer_path: str | None
    tensorboard_dir: str | None
    log_interval: int
    eval_interval: int
    eval_iters: int
    seed: int
    weight_decay: float
    clip_grad: float
    num_workers: int
    exit_interval: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"--recompute {self.recompute!r}: expected one of {', '.join(RECOMPUTE)}")
        if self.dataset_type not in ("idxmap", "raw"):
            raise ValueError(f"--dataset-type {self.dataset_type!r}: expected idxmap or raw")
        if self.dataset_type == "raw" and not self.sft:
            raise ValueError("--dataset-type raw is for SFT data (alpaca/messages/ShareGPT json): add --sft")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"--global-batch-size {self.global_batch_size} is not a multiple of "
                             f"--micro-batch-size {self.micro_batch_size}")
        decay = self.lr_decay_iters or self.train_iters
        if self.lr_warmup_iters and self.lr_warmup_iters >= decay:
            raise ValueError(f"--lr-warmup-iters {self.lr_warmup_iters} must be below the decay iterations "
                             f"{decay} (--lr-decay-iters, else --train-iters)")
        if self.pad_length is not None and self.pad_length > self.seq_length:
            raise ValueError(f"--pad-length {self.pad_length} exceeds --seq-length {self.seq_length}")
        if self.model_size.lower() == "hf":
            self.preset()  # the --load directory must say what the architecture is
        if self.context_parallel_size != 1:
            # each CP rank must get its slice of every sequence (and of packed boundaries); training
            # whole sequences on every CP rank would be silently wrong, so refuse until that exists
            raise ValueError(f"--context-parallel-size {self.context_parallel_size} (CP): context parallelism is "
                             "not supported by the bundled trainer yet; use CP=1")

    def preset(self):
        """The architecture: a named preset, or (`--model-size hf`) the --load directory's config.json
        (an HF directory) or hf_config.json (an hf2mcore checkpoint)."""
        from trainer_bridge.presets import get_preset, preset_from_directory

        if self.model_size.lower() != "hf":
            return get_preset(self.model_size)
        return preset_from_directory(self.load)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m trainer_bridge.train", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--model-size", required=True, help="tiny, 0.6B, 1.7B, 4B, 8B, 14B, 32B, A3B, A22B, or hf (the "
                                          "architecture of the Hugging Face directory given as --load)")
    a("--micro-batch-size", type=int, default=1)
    a("--global-batch-size", type=int, default=8)
    a("--lr", type=float, default=1e-5)
    a("--min-lr", type=float, default=1e-6)
    a("--seq-length", type=int, default=1024)
    a("--pad-length", type=int, default=None, help="SFT without packing: samples padded to this (Pai's PAD_LEN)")
    a("--precision", default="bf16" if torch.cuda.is_available() else "fp32", choices=PRECISIONS)
    a("--tensor-model-parallel-size", type=int, default=1)
    a("--pipeline-model-parallel-size", type=int, default=1)
    a("--context-parallel-size", type=int, default=1)
    a("--expert-tensor-parallel-size", type=int, default=1)
    a("--expert-model-parallel-size", type=int, default=1)
    a("--sequence-parallel", action="store_true")
    a("--use-distributed-optimizer", action="store_true")
    a("--use-flash-attn", action="store_true")
    a("--sft", action="store_true", help="fine-tuning: loss only on trained tokens, per-token averaging")
    a("--recompute", default="none", choices=RECOMPUTE)
    a("--recompute-num-layers", type=int, default=1)
    a("--optimizer-offload-fraction", type=float, default=0.0)
    a("--save-interval", type=int, default=0)
    a("--save", default=None, help="checkpoint directory (resumes from the latest checkpoint in it)")
    a("--data-path", nargs="+", required=True)
    a("--valid-data-path", nargs="+", default=None)
    a("--load", default=None, help="starting weights (a checkpoint directory)")
    a("--train-iters", type=int, required=True)
    a("--lr-warmup-iters", type=int, default=0)
    a("--lr-decay-iters", type=int, default=None)
    a("--dataset-type", default=os.environ.get("MP_DATASET_TYPE", "idxmap"), choices=["idxmap", "raw"])
    a("--sft-packing", action="store_true")
    a("--decoder-first-pipeline-num-layers", type=int, default=None)
    a("--virtual-pipeline-model-parallel-size", type=int, default=None)
    a("--tokenizer", default=None)
    a("--tokenizer-path", default=None)
    a("--tensorboard-dir", default=None)
    a("--log-interval", type=int, default=1)
    a("--eval-interval", type=int, default=1000)
    a("--eval-iters", type=int, default=10)
    a("--seed", type=int, default=1234)
    a("--weight-decay", type=float, default=0.1)
    a("--clip-grad", type=float, default=1.0)
    a("--num-workers", type=int, default=0)
    a("--exit-interval", type=int, default=0, help="stop (after saving) when the iteration is a multiple of this")
    args = p.parse_args(argv)
    kw = vars(args)
    kw["data_path"] = tuple(kw["data_path"])
    kw["valid_data_path"] = tuple(kw["valid_data_path"]) if kw["valid_data_path"] else None
    return TrainConfig(**kw)


def init_distributed(backend: str | None = None) -> None:
    """The default process group (one process without torchrun); nccl on GPUs unless `backend`."""
    if torch.distributed.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:  # one process without torchrun: any free port (runs side by side)
        import socket

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
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def build_model(config: TrainConfig, cpu: bool, preset=None, local_spec: bool = False):
    """The GPTModel of `preset` (default: config.model_size's) in the current parallel layout;
    `local_spec` keeps megatron-core's local layers even where TransformerEngine is installed."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    from trainer_bridge.presets import gpt_model_kwargs, layer_spec, transformer_config_kwargs

    preset = preset or config.preset()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision, torch.float32)
    recompute = {}
    if config.recompute == "sel":
        recompute = {"recompute_granularity": "selective"}
    elif config.recompute in ("full", "offload"):
        recompute = {"recompute_granularity": "full", "recompute_method": "uniform",
                     "recompute_num_layers": config.recompute_num_layers}
    tconfig = TransformerConfig(
        **transformer_config_kwargs(preset), **recompute,
        hidden_dropout=0.0, attention_dropout=0.0,  # Qwen models train without dropout
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.pipeline_model_parallel_size,
        num_layers_in_first_pipeline_stage=config.decoder_first_pipeline_num_layers,
        context_parallel_size=config.context_parallel_size,
        expert_model_parallel_size=config.expert_model_parallel_size,
        expert_tensor_parallel_size=config.expert_tensor_parallel_size,
        sequence_parallel=config.sequence_parallel,
        bf16=config.precision == "bf16", fp16=config.precision == "fp16",
        params_dtype=dtype, pipeline_dtype=dtype,  # pipeline_dtype: what stages send each other
        use_cpu_initialization=cpu, perform_initialization=True,
        calculate_per_token_loss=True, batch_p2p_comm=not cpu,
        moe_token_dispatcher_type="allgather" if cpu else "alltoall",
    )
    gpt = gpt_model_kwargs(preset)
    gpt["max_sequence_length"] = max(gpt["max_sequence_length"], config.seq_length)
    if not local_spec and uses_transformer_engine():  # GPU with TransformerEngine: fused kernels and THD packed attention
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec(num_experts=preset.num_experts,
                                                          moe_grouped_gemm=preset.is_moe, qk_layernorm=preset.qk_layernorm)
    else:
        spec = layer_spec(preset)
    from megatron.core import parallel_state

    staged = parallel_state.model_parallel_is_initialized()  # a pipeline stage holds only its part
    model = GPTModel(config=tconfig, transformer_layer_spec=spec, **gpt,
                     pre_process=not staged or parallel_state.is_pipeline_first_stage(ignore_virtual=True),
                     post_process=not staged or parallel_state.is_pipeline_last_stage(ignore_virtual=True))
    if config.precision in ("bf16", "fp16"):
        from megatron.core.transformer.module import Float16Module

        model = Float16Module(tconfig, model)
    return model, tconfig


def forward_step_factory(thd: bool | None = None):
    """The schedule's forward step; ``thd``: packed rows as THD attention (default: with TransformerEngine)."""
    thd = uses_transformer_engine() if thd is None else thd
    from functools import partial

    from megatron.core.packed_seq_params import PackedSeqParams

    from trainer_bridge.cpu_compat import block_causal_mask

    def loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
        losses = output.float().view(-1)
        mask = loss_mask.view(-1).float()
        total = torch.sum(losses * mask)
        count = mask.sum().to(torch.int)
        return total, count, {"lm loss": torch.stack([total.detach().clone(), count.detach().float()])}

    def forward_step(data_iterator, model):
        started = time.perf_counter()
        batch = next(data_iterator)
        forward_step.data_seconds += time.perf_counter() - started
        tokens, labels = batch["tokens"], batch["labels"]
        position_ids = batch["position_ids"]
        if torch.cuda.is_available():
            tokens, labels, position_ids = tokens.cuda(), labels.cuda(), position_ids.cuda()
        packed = None
        if "cu_seqlens" in batch and thd:  # THD attention with TransformerEngine
            cu = batch["cu_seqlens"].cuda()
            packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                     max_seqlen_q=batch["max_seqlen"], max_seqlen_kv=batch["max_seqlen"])
            mask = None
        else:  # causal within each document (positions restart at 0 at each packed record)
            mask = block_causal_mask(position_ids)
        labels = labels.masked_fill(labels < 0, 0)  # ignored positions (-100) carry loss mask 0
        output = model(tokens, position_ids, mask, labels=labels, packed_seq_params=packed)
        return output, partial(loss_func, batch["loss_mask"].to(output.device))

    forward_step.data_seconds = 0.0
    return forward_step


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from trainer_bridge.loop import train

    try:
        return train(config)
    except ValueError as exc:  # a setting this machine or the data cannot serve: one line
        if os.environ.get("DATAPREP_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
