"""The training loop: from a TrainConfig, the parallel state, model, optimizer, LR schedule and
data; then steps, logging, evaluation and checkpoints until --train-iters (or --exit-interval).
Also the pipeline schedule's forward step and loss (`forward_step_factory`).

megatron-core is imported inside the functions, as in `model`: the entry's ``--help`` and
argument errors should not wait seconds for it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from functools import partial

import torch

from dataset_engine.gpt import megatron_num_samples
from trainer_bridge import checkpoint, cpu_compat, data
from trainer_bridge.config import TrainConfig, global_batch_problem
from trainer_bridge.cpu_compat import block_causal_mask
from trainer_bridge.model import ModelConfig, build_model, init_distributed, uses_transformer_engine


def _log(line: str) -> None:
    if torch.distributed.get_rank() == 0:
        print(line, flush=True)


# -- the forward step -------------------------------------------------------------------------------

def _loss_func(loss_mask: torch.Tensor, output: torch.Tensor):
    """(loss sum, trained tokens, what is logged): megatron's per-token loss over the trained tokens."""
    losses = output.float().view(-1)
    mask = loss_mask.view(-1).float()
    total = torch.sum(losses * mask)
    count = mask.sum().to(torch.int)
    return total, count, {"lm loss": torch.stack([total.detach().clone(), count.detach().float()])}


def forward_step_factory(thd: bool | None = None):
    """The schedule's forward step; ``thd``: packed rows as THD attention (default: with TransformerEngine).
    Its ``data_seconds`` adds up the time spent waiting for batches."""
    from megatron.core.packed_seq_params import PackedSeqParams

    thd = uses_transformer_engine() if thd is None else thd

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
        return output, partial(_loss_func, batch["loss_mask"].to(output.device))

    forward_step.data_seconds = 0.0
    return forward_step


# -- setting up ---------------------------------------------------------------------------------------

def _check_supported(config: TrainConfig) -> None:
    """Settings Megatron has and the bundled trainer does not implement yet."""
    if config.context_parallel_size != 1:
        # each CP rank must get its slice of every sequence (and of packed boundaries); training
        # whole sequences on every CP rank would be silently wrong, so refuse until that exists
        raise ValueError(f"--context-parallel-size {config.context_parallel_size} (CP): context parallelism is "
                         "not supported by the bundled trainer yet; use CP=1")


def _fit_to_machine(config: TrainConfig, cpu: bool) -> TrainConfig:
    """The same command runs on a CPU machine: megatron-core's mixed-precision and distributed
    optimizers need CUDA tensors, so train in fp32 with the plain optimizer and say so."""
    if not cpu or (config.precision == "fp32" and not config.use_distributed_optimizer
                   and not config.optimizer_offload_fraction):
        return config
    _log(f"note: no GPU: training in fp32 with the standard optimizer (asked: {config.precision}"
         f"{', distributed optimizer' if config.use_distributed_optimizer else ''}"
         f"{', optimizer offload' if config.optimizer_offload_fraction else ''})")
    return dataclasses.replace(config, precision="fp32", use_distributed_optimizer=False,
                               optimizer_offload_fraction=0.0)


def _init_parallel(config: TrainConfig, cpu: bool) -> None:
    """megatron-core's parallel groups and its seeded random generators."""
    from megatron.core import parallel_state, tensor_parallel

    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.pipeline_model_parallel_size,
        context_parallel_size=config.context_parallel_size,
        expert_model_parallel_size=config.expert_model_parallel_size,
        expert_tensor_parallel_size=config.expert_tensor_parallel_size)
    if config.virtual_pipeline_model_parallel_size:
        # interleaving changes only the schedule's bubble, not the result: run the plain 1F1B schedule
        _log(f"note: --virtual-pipeline-model-parallel-size {config.virtual_pipeline_model_parallel_size} (MP_VP) "
             "is not supported by the bundled trainer yet; each stage runs as one chunk (same results)")
    torch.manual_seed(config.seed)
    tensor_parallel.model_parallel_cuda_manual_seed(config.seed, inference_rng_tracker=cpu, force_reset_rng=True)


@dataclass
class _Run:
    """One run's state: the model under DDP, its optimizer and LR schedule, how a global batch is
    cut (micro-batches per step, this rank's data-parallel place) and the position reached."""

    config: TrainConfig
    ddp: object
    optimizer: object
    scheduler: object
    num_microbatches: int
    dp_rank: int
    dp_size: int
    iteration: int = 0
    consumed: int = 0

    @property
    def seq_length(self) -> int:
        """The sequence length of every micro-batch (padded SFT samples: --pad-length)."""
        config = self.config
        if not config.sft or config.sft_packing:
            return config.seq_length
        return config.pad_length or config.seq_length

    def save(self) -> None:
        checkpoint.save(self.config, self.ddp, self.optimizer, self.scheduler, self.iteration, self.consumed)


def _model_and_optimizer(config: TrainConfig, cpu: bool):
    """(the model under megatron's DDP, its optimizer, the warmup-then-cosine LR schedule)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    model, tconfig = build_model(ModelConfig.of(config), cpu)
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    ddp = DistributedDataParallel(tconfig, DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, use_distributed_optimizer=config.use_distributed_optimizer), model)
    tconfig.no_sync_func = ddp.no_sync
    tconfig.finalize_model_grads_func = finalize_model_grads
    optimizer = get_megatron_optimizer(OptimizerConfig(
        optimizer="adam", lr=config.lr, min_lr=config.min_lr, weight_decay=config.weight_decay,
        clip_grad=config.clip_grad, bf16=config.precision == "bf16", fp16=config.precision == "fp16",
        params_dtype=tconfig.params_dtype, use_distributed_optimizer=config.use_distributed_optimizer,
        optimizer_cpu_offload=config.optimizer_offload_fraction > 0,
        optimizer_offload_fraction=config.optimizer_offload_fraction or 1.0), [ddp])
    gbs = config.global_batch_size
    decay = config.lr_decay_iters or config.train_iters
    scheduler = OptimizerParamScheduler(  # counted in samples, as Megatron-LM does
        optimizer, init_lr=0.0, max_lr=config.lr, min_lr=config.min_lr,
        lr_warmup_steps=config.lr_warmup_iters * gbs, lr_decay_steps=decay * gbs, lr_decay_style="cosine",
        start_wd=config.weight_decay, end_wd=config.weight_decay, wd_incr_steps=decay * gbs,
        wd_incr_style="constant")
    return ddp, optimizer, scheduler


def _setup(config: TrainConfig, cpu: bool) -> _Run:
    """The run at its start: built, then resumed from --save's latest checkpoint or --load's weights."""
    from megatron.core import parallel_state

    ddp, optimizer, scheduler = _model_and_optimizer(config, cpu)
    dp_size = parallel_state.get_data_parallel_world_size()
    problem = global_batch_problem(
        config.global_batch_size, config.micro_batch_size, dp_size, processes=torch.distributed.get_world_size(),
        model_parallel=(config.tensor_model_parallel_size * config.pipeline_model_parallel_size
                        * config.context_parallel_size))
    if problem:
        raise ValueError(problem)
    run = _Run(config, ddp, optimizer, scheduler, config.global_batch_size // (config.micro_batch_size * dp_size),
               parallel_state.get_data_parallel_rank(), dp_size)
    state = checkpoint.load(config, ddp, optimizer, scheduler) if config.save or config.load else None
    if state is not None:
        run.iteration, run.consumed = state["iteration"], state["consumed_samples"]
        _log(f"resumed at iteration {run.iteration} ({run.consumed} samples consumed)")
    return run


def _datasets(run: _Run):
    """(this rank's train batches from the resumed position, the valid dataset or None)."""
    config = run.config
    settings = data.DataSettings(
        data_path=config.data_path, valid_data_path=config.valid_data_path, sft=config.sft,
        dataset_type=config.dataset_type, seq_length=config.seq_length,
        pad_length=config.pad_length or config.seq_length, sft_packing=config.sft_packing,
        tokenizer=config.tokenizer, tokenizer_path=config.tokenizer_path, seed=config.seed,
        num_workers=config.num_workers)
    train_set, valid_set = data.build_datasets(settings, megatron_num_samples(
        config.train_iters, config.global_batch_size, config.eval_interval, config.eval_iters))
    batches = data.loader(train_set, run.consumed, config.micro_batch_size, run.dp_rank, run.dp_size,
                          config.num_workers)
    return batches, valid_set


def _tensorboard(config: TrainConfig):
    """A TensorBoard writer on rank 0 with --tensorboard-dir (None without, or without tensorboard)."""
    if not config.tensorboard_dir or torch.distributed.get_rank() != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # optional dependency
    except ImportError:
        _log("note: tensorboard is not installed; logging to stdout only")
        return None
    return SummaryWriter(config.tensorboard_dir)


# -- steps ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Step:
    """What one optimizer step reports."""

    loss: float
    grad_norm: float
    seconds: float
    data_seconds: float


def _forward_backward(run: _Run, forward_step, batches, forward_only: bool) -> list[dict]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=batches, model=[run.ddp],
        num_microbatches=run.num_microbatches, seq_length=run.seq_length,
        micro_batch_size=run.config.micro_batch_size, forward_only=forward_only)


def _train_step(run: _Run, forward_step, batches) -> _Step:
    """One global batch: forward-backward over its micro-batches, the optimizer and LR steps."""
    started = time.perf_counter()
    forward_step.data_seconds = 0.0
    run.ddp.zero_grad_buffer()
    run.optimizer.zero_grad()
    reduced = _forward_backward(run, forward_step, batches, forward_only=False)
    _, grad_norm, _ = run.optimizer.step()
    run.scheduler.step(increment=run.config.global_batch_size)
    run.iteration += 1
    run.consumed += run.config.global_batch_size
    return _Step(_mean_loss(reduced), float(grad_norm or 0.0), time.perf_counter() - started,
                 forward_step.data_seconds)


def _report(run: _Run, step: _Step, writer) -> None:
    """The log line of a step (and its TensorBoard scalars)."""
    lr = run.optimizer.param_groups[0]["lr"]
    tokens_per_second = run.config.global_batch_size * run.seq_length / step.seconds
    _log(f"iteration {run.iteration:>6}/{run.config.train_iters} | lm loss {step.loss:.6f} | lr {lr:.3e} | "
         f"grad norm {step.grad_norm:.3f} | {tokens_per_second:,.0f} tokens/s | "
         f"step {step.seconds * 1e3:.0f} ms, data {step.data_seconds * 1e3:.1f} ms")
    if writer is not None:
        for name, value in (("lm loss", step.loss), ("learning-rate", lr), ("grad-norm", step.grad_norm),
                            ("tokens-per-second", tokens_per_second), ("data-seconds", step.data_seconds)):
            writer.add_scalar(name, value, run.iteration)


def _mean_loss(reduced: list[dict]) -> float:
    """The step's per-token loss on every rank (only the last pipeline stage computes it)."""
    total = torch.stack([r["lm loss"] for r in reduced]).sum(0) if reduced else torch.zeros(2)
    if torch.distributed.get_world_size() > 1:
        from megatron.core import parallel_state

        total = total.float()
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            torch.distributed.all_reduce(total, group=parallel_state.get_pipeline_model_parallel_group())
        torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return float(total[0] / max(float(total[1]), 1.0))


def _evaluate(run: _Run, valid_set, forward_step) -> float:
    """The mean per-token loss over --eval-iters global batches from the valid set's start."""
    batches = data.loader(valid_set, 0, run.config.micro_batch_size, run.dp_rank, run.dp_size)
    run.ddp.eval()
    totals = []
    with torch.no_grad():
        for _ in range(run.config.eval_iters):
            totals += _forward_backward(run, forward_step, batches, forward_only=True)
    run.ddp.train()
    return _mean_loss(totals)


def _checkpoint(run: _Run) -> bool:
    """Save at --save-interval, and stop (saved) at --exit-interval; True to stop."""
    config = run.config
    saved = bool(config.save and config.save_interval and run.iteration % config.save_interval == 0)
    if saved:
        run.save()
    if config.exit_interval and run.iteration % config.exit_interval == 0 and run.iteration < config.train_iters:
        if config.save and not saved:
            run.save()
        _log(f"exiting at iteration {run.iteration} (--exit-interval)")
        return True
    return False


def _shut_down() -> None:
    from megatron.core import parallel_state

    torch.distributed.barrier()
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()


def train(config: TrainConfig) -> int:
    """Run `config` to its end; 0. A ValueError names a setting this machine or the data cannot serve."""
    _check_supported(config)
    init_distributed()
    cpu = cpu_compat.enable()
    config = _fit_to_machine(config, cpu)
    _init_parallel(config, cpu)
    run = _setup(config, cpu)
    batches, valid_set = _datasets(run)
    writer = _tensorboard(config)
    forward_step = forward_step_factory()
    losses: list[float] = []
    while run.iteration < config.train_iters:
        step = _train_step(run, forward_step, batches)
        losses.append(step.loss)
        if run.iteration % config.log_interval == 0 or run.iteration == config.train_iters:
            _report(run, step, writer)
        if valid_set is not None and config.eval_interval and run.iteration % config.eval_interval == 0:
            _log(f"validation at iteration {run.iteration} | lm loss {_evaluate(run, valid_set, forward_step):.6f}")
        if _checkpoint(run):
            break
    if writer is not None:
        writer.close()
    _log(f"done: {run.iteration} iterations, final lm loss {losses[-1] if losses else math.nan:.6f}")
    _shut_down()
    return 0
