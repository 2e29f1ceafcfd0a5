"""The bundled Megatron-Core training entry: ``torchrun -m trainer_bridge.train --model-size ... --data-path ...``.

One loop on megatron-core: GPTModel from a preset, `parallel_state` (TP/PP/CP/EP), megatron DDP and
optimizer (distributed optimizer optional), the forward-backward schedule, LR warmup then cosine
decay to min_lr, weight decay, gradient clipping, periodic evaluation, logging of loss, LR, grad
norm, tokens/s and data-wait time. Without CUDA it runs on CPU with gloo (`cpu_compat`), where
packed rows use a block-diagonal causal mask instead of THD attention.

This module is only the command: the options are `config.TrainConfig`'s fields, the model is
built in `model`, the loop runs in `loop`. Errors follow `dataprep.errors`: a setting that cannot
be served is ``error: <message>`` and exit 2; ``--debug`` (or DATAPREP_DEBUG=1) shows tracebacks.
"""

from __future__ import annotations

import sys

from dataprep.errors import debug_requested, run_command
from trainer_bridge.config import TrainConfig, parse_args
from trainer_bridge.loop import train

__all__ = ["TrainConfig", "main", "parse_args", "train"]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # ValueError: a setting this machine or the data cannot serve (TrainConfig's checks, the loop's)
    return run_command(lambda: train(parse_args(argv)), debug=debug_requested(argv), expected=(ValueError,))


if __name__ == "__main__":
    sys.exit(main())
