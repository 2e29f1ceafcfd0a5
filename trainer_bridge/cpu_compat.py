"""megatron-core on a CPU-only torch: the few adjustments it needs, in one place, only without CUDA.

megatron-core is written for GPUs. With gloo on CPU it trains correctly (TP/PP/EP results equal
TP=1, see ../shared/notes) once these are in place:

* a few modules ask for ``cuda`` devices (``torch.cuda.current_device()``, ``device="cuda"``,
  ``tensor.cuda()``): a torch function mode maps them to the CPU, and ``torch.cuda.synchronize``
  (called by the checkpoint writer) does nothing;
* gradient clipping asserts CUDA tensors while scaling (the norm itself is right): the scaling
  is done with ``torch._foreach_mul_`` instead;
* activation recomputation saves and restores the CUDA RNG state: the CPU generator's instead;
* megatron-core 0.16.1's MoE utilities name ``te_general_gemm`` even without TransformerEngine.

Mixed precision (bf16/fp16) and the distributed optimizer check for CUDA tensors throughout and
are GPU-only: on CPU the entry trains in fp32 with the standard optimizer and prints a note.

`enable()` does nothing when CUDA is available, so GPU runs are untouched.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False


def _cpu(device):
    if isinstance(device, int) or (isinstance(device, str) and device.startswith("cuda")) or \
            (isinstance(device, torch.device) and device.type == "cuda"):
        return torch.device("cpu")
    return device


class _CudaToCpu(TorchFunctionMode):
    """Rewrites ``device=`` arguments that name CUDA to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = _cpu(kwargs["device"])
        if func in (torch.Tensor.cuda,):
            return args[0]
        if func is torch.Tensor.to and args and len(args) > 1 and not isinstance(args[1], torch.dtype):
            args = (args[0], _cpu(args[1]), *args[2:])
        return func(*args, **kwargs)


def _clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron-core's clip_grad_by_total_norm_fp32 without its CUDA-only multi-tensor scale."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = []
    for param in parameters:
        grad = param.decoupled_grad if use_decoupled_grad else param.grad
        if grad is not None:
            grads.append(grad.detach())
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0 and grads:
        torch._foreach_mul_(grads, clip_coeff)


def enable() -> bool:
    """Install the CPU adjustments when CUDA is absent; True when they are active."""
    global _ENABLED
    if torch.cuda.is_available():
        return False
    if _ENABLED:
        return True
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *args, **kwargs: None  # checkpoint writers wait for the GPU
    _CudaToCpu().__enter__()  # for the rest of the process: megatron asks for cuda at many depths
    from megatron.core.optimizer import optimizer as megatron_optimizer
    from megatron.core.transformer.moe import moe_utils

    from megatron.core.tensor_parallel import random as megatron_random

    megatron_optimizer.clip_grad_by_total_norm_fp32 = _clip_grad_by_total_norm_fp32
    # activation recomputation saves and restores the "CUDA" RNG: the CPU generator here
    megatron_random._get_cuda_rng_state = lambda *args, clone=False, **kwargs: \
        torch.get_rng_state().clone() if clone else torch.get_rng_state()
    megatron_random._set_cuda_rng_state = lambda state, *args, **kwargs: torch.set_rng_state(state)
    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None
    _ENABLED = True
    return True


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """megatron's boolean attention mask ([B, 1, S, S], True = masked) that is causal within each
    packed document and blocks attention across documents, from positions that restart at 0 at
    each document: what packed (THD) attention does on GPUs with TransformerEngine."""
    b, s = position_ids.shape
    doc = torch.cumsum((position_ids == 0).to(torch.int64), dim=1)  # document number per token
    same_doc = doc[:, :, None] == doc[:, None, :]
    causal = torch.ones(s, s, dtype=torch.bool, device=position_ids.device).tril()
    return ~(same_doc & causal)[:, None, :, :]
