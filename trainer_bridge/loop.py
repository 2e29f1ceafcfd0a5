"""The training loop: build everything from a TrainConfig, train, evaluate, log, checkpoint."""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from trainer_bridge.train import TrainConfig, init_distributed, build_model, forward_step_factory


def _log(line: str) -> None:
    if torch.distributed.get_rank() == 0:
        print(line, flush=True)


def train(config: TrainConfig) -> int:
    init_distributed()
    from trainer_bridge import cpu_compat

    cpu = cpu_compat.enable()
    if cpu and (config.precision != "fp32" or config.use_distributed_optimizer or config.optimizer_offload_fraction):
        # the same command runs on a CPU machine: megatron-core's mixed-precision and distributed
        # optimizers need CUDA tensors, so train in fp32 with the plain optimizer and say so
        _log(f"note: no GPU: training in fp32 with the standard optimizer (asked: {config.precision}"
             f"{', distributed optimizer' if config.use_distributed_optimizer else ''}"
             f"{', optimizer offload' if config.optimizer_offload_fraction else ''})")
        config = dataclasses.replace(config, precision="fp32", use_distributed_optimizer=False,
                                     optimizer_offload_fraction=0.0)
    from megatron.core import parallel_state, tensor_parallel
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from trainer_bridge import checkpoint, data

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

    model, tconfig = build_model(config, cpu)
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
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=config.lr, min_lr=config.min_lr,
        lr_warmup_steps=config.lr_warmup_iters * gbs, lr_decay_steps=decay * gbs, lr_decay_style="cosine",
        start_wd=config.weight_decay, end_wd=config.weight_decay, wd_incr_steps=decay * gbs,
        wd_incr_style="constant")

    dp_size = parallel_state.get_data_parallel_world_size()
    dp_rank = parallel_state.get_data_parallel_rank()
    if gbs % (config.micro_batch_size * dp_size):
        raise ValueError(f"global batch {gbs} is not a multiple of micro batch {config.micro_batch_size} "
                         f"x data-parallel size {dp_size}")
    num_microbatches = gbs // (config.micro_batch_size * dp_size)
    iteration, consumed = 0, 0
    state = checkpoint.load(config, ddp, optimizer, scheduler) if config.save or config.load else None
    if state is not None:
        iteration, consumed = state["iteration"], state["consumed_samples"]
        _log(f"resumed at iteration {iteration} ({consumed} samples consumed)")

    from dataset_engine.gpt import megatron_num_samples

    settings = data.DataSettings(
        data_path=config.data_path, valid_data_path=config.valid_data_path, sft=config.sft,
        dataset_type=config.dataset_type, seq_length=config.seq_length,
        pad_length=config.pad_length or config.seq_length, sft_packing=config.sft_packing,
        tokenizer=config.tokenizer, tokenizer_path=config.tokenizer_path, seed=config.seed,
        num_workers=config.num_workers)
    train_set, valid_set = data.build_datasets(settings, megatron_num_samples(
        config.train_iters, gbs, config.eval_interval, config.eval_iters))
    train_batches = data.loader(train_set, consumed, config.micro_batch_size, dp_rank, dp_size, config.num_workers)
    length = config.seq_length if (not config.sft or config.sft_packing) else (config.pad_length or config.seq_length)

    writer = None
    if config.tensorboard_dir and torch.distributed.get_rank() == 0:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(config.tensorboard_dir)
        except ImportError:
            _log("note: tensorboard is not installed; logging to stdout only")

    forward_step = forward_step_factory()
    forward_backward = get_forward_backward_func()
    losses: list[float] = []
    while iteration < config.train_iters:
        started = time.perf_counter()
        forward_step.data_seconds = 0.0
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        reduced = forward_backward(forward_step_func=forward_step, data_iterator=train_batches, model=[ddp],
                                   num_microbatches=num_microbatches, seq_length=length,
                                   micro_batch_size=config.micro_batch_size, forward_only=False)
        ok, grad_norm, _ = optimizer.step()
        scheduler.step(increment=gbs)
        iteration += 1
        consumed += gbs
        loss = _mean_loss(reduced)
        losses.append(loss)
        seconds = time.perf_counter() - started
        if iteration % config.log_interval == 0 or iteration == config.train_iters:
            lr = optimizer.param_groups[0]["lr"]
            tokens = gbs * length
            _log(f"iteration {iteration:>6}/{config.train_iters} | lm loss {loss:.6f} | lr {lr:.3e} | "
                 f"grad norm {float(grad_norm or 0.0):.3f} | {tokens / seconds:,.0f} tokens/s | "
                 f"step {seconds * 1e3:.0f} ms, data {forward_step.data_seconds * 1e3:.1f} ms")
            if writer is not None:
                for name, value in (("lm loss", loss), ("learning-rate", lr), ("grad-norm", float(grad_norm or 0.0)),
                                    ("tokens-per-second", tokens / seconds), ("data-seconds", forward_step.data_seconds)):
                    writer.add_scalar(name, value, iteration)
        if valid_set is not None and config.eval_interval and iteration % config.eval_interval == 0:
            _log(f"validation at iteration {iteration} | lm loss {_evaluate(config, ddp, valid_set, forward_step, length, num_microbatches, dp_rank, dp_size):.6f}")
        saved = bool(config.save and config.save_interval and iteration % config.save_interval == 0)
        if saved:
            checkpoint.save(config, ddp, optimizer, scheduler, iteration, consumed)
        if config.exit_interval and iteration % config.exit_interval == 0 and iteration < config.train_iters:
            if config.save and not saved:
                checkpoint.save(config, ddp, optimizer, scheduler, iteration, consumed)
            _log(f"exiting at iteration {iteration} (--exit-interval)")
            break
    if writer is not None:
        writer.close()
    _log(f"done: {iteration} iterations, final lm loss {losses[-1] if losses else math.nan:.6f}")
    torch.distributed.barrier()
    parallel_state.destroy_model_parallel()
    torch.distributed.destroy_process_group()
    return 0


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


def _evaluate(config, ddp, valid_set, forward_step, length, num_microbatches, dp_rank, dp_size) -> float:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from trainer_bridge import data

    batches = data.loader(valid_set, 0, config.micro_batch_size, dp_rank, dp_size)
    ddp.eval()
    totals = []
    with torch.no_grad():
        for _ in range(config.eval_iters):
            totals += get_forward_backward_func()(forward_step_func=forward_step, data_iterator=batches, model=[ddp],
                                                  num_microbatches=num_microbatches, seq_length=length,
                                                  micro_batch_size=config.micro_batch_size, forward_only=True)
    ddp.train()
    return _mean_loss(totals)
