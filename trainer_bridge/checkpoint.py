"""Checkpoints: megatron-core distributed checkpoints under ``--save``, resumed from the latest.

``{save}/iter_{N:07d}/`` holds the model and optimizer (sharded: each rank writes its part, any
parallel layout can load it) plus the scheduler, the random generators, the iteration and the
consumed-sample count (the data position), and ``{save}/latest_checkpointed_iteration.txt`` (Megatron's name) names the latest
complete one: it is replaced atomically after the checkpoint is fully written, so a crash while
saving resumes from the previous checkpoint. ``--load`` gives starting weights only: a
megatron-core checkpoint, or a Hugging Face model directory (converted once, `convert.py`).
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

from dataset_engine.cache import cache_key, default_cache_dir, file_digest
from trainer_bridge.config import TrainConfig
from trainer_bridge.presets import ModelPreset, preset_from_hf, read_hf_config, same_architecture

LATEST = "latest_checkpointed_iteration.txt"


def _rng_state() -> dict:
    """The random generators (rank 0's: the model has no dropout, so they rarely matter)."""
    from megatron.core import tensor_parallel

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def _model_state(ddp) -> dict:
    return ddp.module.sharded_state_dict(prefix="") if hasattr(ddp.module, "sharded_state_dict") \
        else ddp.sharded_state_dict(prefix="")


def save(config: TrainConfig, ddp, optimizer, scheduler, iteration: int, consumed: int) -> str:
    from megatron.core import dist_checkpointing

    path = os.path.join(config.save, f"iter_{iteration:07d}")
    if torch.distributed.get_rank() == 0:
        os.makedirs(path, exist_ok=True)
    torch.distributed.barrier()
    model = _model_state(ddp)
    state = {"model": model, "optimizer": optimizer.sharded_state_dict(model),
             "scheduler": scheduler.state_dict(), "iteration": iteration, "consumed_samples": consumed,
             "rng": _rng_state()}
    dist_checkpointing.save(state, path)
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        tmp = os.path.join(config.save, LATEST + ".tmp")
        with open(tmp, "w") as f:
            f.write(str(iteration))
        os.replace(tmp, os.path.join(config.save, LATEST))
    torch.distributed.barrier()
    return path


def converted_hf(path: str, wanted: ModelPreset) -> str:
    """`path` itself, or for a Hugging Face model directory (it has a config.json) its
    megatron-core conversion in the model's own precision, made once per machine by local rank 0
    and cached under $DATAPREP_CACHE/hf2mcore (keyed by its files' contents).
    The other ranks wait for it on the filesystem, not in a collective that could time out."""
    if not os.path.isfile(os.path.join(path, "config.json")) or os.path.isfile(os.path.join(path, LATEST)) \
            or os.path.isfile(os.path.join(path, "metadata.json")):  # Pai's converters copy config.json too
        return path
    hf_config = read_hf_config(path)
    found = preset_from_hf(hf_config)
    if not same_architecture(found, wanted):
        raise ValueError(f"{path}: its config.json is not the architecture of MODEL_SIZE {wanted.name} "
                         f"(--model-size hf takes the directory's own)")
    # the stored precision: lossless and the smallest copy (loading casts to the run's precision)
    precision = {"bfloat16": "bf16", "float16": "fp16"}.get(
        str(hf_config.get("torch_dtype") or hf_config.get("dtype") or "float32"), "fp32")
    # the files' contents decide the key (the one cache rule): a model rewritten in place is converted again
    files = {name: file_digest(os.path.join(path, name))
             for name in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, name))}
    key = cache_key({"hf2mcore": 1, "precision": precision, "files": files})
    target = os.path.join(default_cache_dir(), "hf2mcore", key)
    failed, started = target + ".failed", time.time()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0 and not os.path.isdir(target):
        tmp = f"{target}.tmp-{os.getpid()}"
        if os.path.exists(failed):
            os.remove(failed)
        # a process of its own, outside this job's process group and torchrun's rendezvous
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHELASTIC", "GROUP_", "ROLE_"))
               and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
        done = subprocess.run([sys.executable, "-m", "trainer_bridge.convert", "hf2mcore", "--load", path,
                               "--save", tmp, "--precision", precision], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            error = f"{path}: converting to megatron-core failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
            with open(failed, "w", encoding="utf-8") as f:
                f.write(error)
            raise ValueError(error)
        try:
            os.replace(tmp, target)
        except OSError:  # another machine sharing the cache finished first
            if not os.path.isdir(target):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    while not os.path.isdir(target):
        if os.path.exists(failed) and os.path.getmtime(failed) >= started:  # not an earlier run's
            with open(failed, encoding="utf-8") as f:
                raise ValueError(f.read())
        time.sleep(1.0)
    torch.distributed.barrier()
    return target


def load(config: TrainConfig, ddp, optimizer, scheduler) -> dict | None:
    """Resume from the latest checkpoint in --save (model, optimizer, scheduler, position), else
    start from --load's weights; None when there is nothing to load."""
    from megatron.core import dist_checkpointing

    target = ddp.module.module if hasattr(ddp.module, "module") else ddp.module
    if config.save and os.path.exists(os.path.join(config.save, LATEST)):
        model = _model_state(ddp)
        template = {"model": model, "optimizer": optimizer.sharded_state_dict(model, is_loading=True)}
        state = dist_checkpointing.load(template, checkpoint_dir(config.save))
        target.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "rng" in state:
            _set_rng_state(state["rng"])
        return {"iteration": int(state["iteration"]), "consumed_samples": int(state["consumed_samples"])}
    if config.load:
        load_weights(target, _model_state(ddp), checkpoint_dir(converted_hf(config.load, config.preset())))
    return None


def checkpoint_dir(path: str) -> str:
    """The distributed checkpoint a --load path stands for: itself, or for a save directory (ours,
    Megatron-LM's or Pai's converters') the one its latest_checkpointed_iteration.txt names
    (`release` or `iter_N`)."""
    tracker = os.path.join(path, LATEST)
    if os.path.isfile(os.path.join(path, "metadata.json")) or not os.path.isfile(tracker):
        return path
    with open(tracker, encoding="utf-8") as f:
        text = f.read().strip()
    if text == "release":
        return os.path.join(path, "release")
    try:
        return os.path.join(path, f"iter_{int(text):07d}")
    except ValueError:
        raise ValueError(f"{tracker}: expected an iteration number or 'release', found {text[:40]!r}") from None


def load_weights(module, sharded_state_dict: dict, path: str) -> None:
    """Start weights from a distributed checkpoint: only the model's tensors are read. Its
    common.pt (pickled objects, e.g. Megatron-LM's args) and modules' extra state are left alone,
    so checkpoints written by Megatron-LM or Pai's converters load as well as ours."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject
    from megatron.core.dist_checkpointing.strategies.common import TorchCommonLoadStrategy

    class TensorsOnly(TorchCommonLoadStrategy):
        def load_common(self, checkpoint_dir):
            return {}

    if not os.path.isfile(os.path.join(path, "metadata.json")):
        raise ValueError(f"{path}: not a megatron-core distributed checkpoint (no metadata.json), nor a "
                         "directory with latest_checkpointed_iteration.txt or a Hugging Face config.json")
    tensors = {k: v for k, v in sharded_state_dict.items() if not isinstance(v, ShardedObject)}
    state = dist_checkpointing.load({"model": tensors}, path, common_strategy=TensorsOnly())["model"]
    missing = [k for k in module.state_dict() if k not in state and not k.endswith("._extra_state")]
    if missing:
        raise ValueError(f"{path}: the checkpoint does not give {', '.join(missing[:3])}")
    module.load_state_dict(state, strict=False)
