"""Pai-Megatron-Patch's ``run_mcore_qwen3.sh`` parameters → a torchrun command for ``trainer_bridge.train``.

Usage (the same 27 positional parameters and MP_* variables as Pai's script)::

    python -m trainer_bridge.launcher [--dry-run] ENV MODEL_SIZE BATCH_SIZE GLOBAL_BATCH_SIZE LR MIN_LR \\
        SEQ_LEN PAD_LEN PR TP PP CP ETP EP SP DO FL SFT AC OPTIMIZER_OFFLOAD SAVE_INTERVAL \\
        DATASET_PATH VALID_DATASET_PATH PRETRAIN_CHECKPOINT_PATH TRAIN_TOKENS_OR_ITERS \\
        WARMUP_TOKENS_OR_ITERS OUTPUT_BASEPATH

    sh trainer_bridge/scripts/run_mcore.sh dsw A3B 1 8 1e-5 1e-6 128 128 bf16 4 2 1 1 4 true true true \\
        false sel false 100000 /mnt/data/mmap_qwen3_datasets_text_document \\
        /mnt/data/mmap_qwen3_datasets_text_document /mnt/ckpts/Qwen3-30B-A3B-to-mcore 10000 100 /mnt/out

``--dry-run`` (or ``DATAPREP_DRY_RUN=1`` with the shell script) prints the command as one shell-quoted
line instead of running it. A bad parameter stops before anything starts: ``error: ...`` on one line,
exit status 2.

What each parameter becomes (Pai's semantics):

* SFT=false: TRAIN_TOKENS_OR_ITERS and WARMUP_TOKENS_OR_ITERS are tokens; iterations are
  ``tokens / GLOBAL_BATCH_SIZE / SEQ_LEN`` (rounded down) and lr decay iterations = train iterations.
  SFT=true: they are iterations, and lr decay iterations = train − warmup (as Pai).
* PR → ``--precision``; TP/PP/CP/ETP/EP → the parallel sizes (ETP/EP only for MoE models);
  SP/DO/FL/SFT → ``--sequence-parallel`` / ``--use-distributed-optimizer`` / ``--use-flash-attn`` / ``--sft``.
* AC sel|full|offload|none (``false`` = none) → ``--recompute``; MP_AC_LAYERS (default 1) →
  ``--recompute-num-layers`` for full/offload.
* OPTIMIZER_OFFLOAD false or a 0–1 fraction → ``--optimizer-offload-fraction`` (turns DO on, as Pai).
* DATASET_PATH / VALID_DATASET_PATH → ``--data-path`` / ``--valid-data-path``; a blend such as
  ``"0.5 a 0.5 b"`` becomes several words. MP_DATASET_TYPE idxmap|raw → ``--dataset-type``;
  MP_SFT_PACKING=true → ``--sft-packing``.
* MODEL_SIZE → ``--model-size``: a preset, or ``hf`` for PRETRAIN_CHECKPOINT_PATH's own architecture
  (its ``config.json``, or ``hf_config.json`` in an hf2mcore checkpoint).
* PRETRAIN_CHECKPOINT_PATH → ``--load`` (``none``: start from scratch) and ``--tokenizer-path``
  (DATAPREP_TOKENIZER_PATH overrides); ``--tokenizer`` is DATAPREP_TOKENIZER or Qwen3Tokenizer.
* MP_PP0_LAYERS → ``--decoder-first-pipeline-num-layers``. MP_VP is Pai's layers per virtual stage
  (``--num-layers-per-virtual-pipeline-stage``); it becomes
  ``--virtual-pipeline-model-parallel-size = NUM_LAYERS / PP / MP_VP``.
* OUTPUT_BASEPATH → ``--save OUTPUT_BASEPATH/checkpoint/NAME`` and
  ``--tensorboard-dir OUTPUT_BASEPATH/tensorboard/NAME``. NAME is Pai's run name without the
  timestamp (``pretrain-mcore-A3B-lr-1e-5-minlr-1e-6-bs-1-gbs-8-seqlen-128-pr-bf16-tp-4-pp-2-cp-1-
  ac-sel-do-true-sp-true-ti-9-wi-0``), so rerunning the same command resumes the same run.

Distributed layout: ENV=dsw is one machine (master localhost, port 29500 or MASTER_PORT). ENV=dlc
takes MASTER_ADDR, MASTER_PORT, WORLD_SIZE (nodes) and RANK (node rank) as PAI-DLC sets them.
Processes per node = the GPU count: CUDA_VISIBLE_DEVICES if set, else KUBERNETES_CONTAINER_RESOURCE_GPU,
else the lines of ``nvidia-smi -L``, else (a CPU machine) DATAPREP_NPROC or 1.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from trainer_bridge.presets import ModelPreset, divisors, layout_problem

PARAMS = ("ENV", "MODEL_SIZE", "BATCH_SIZE", "GLOBAL_BATCH_SIZE", "LR", "MIN_LR", "SEQ_LEN", "PAD_LEN", "PR",
          "TP", "PP", "CP", "ETP", "EP", "SP", "DO", "FL", "SFT", "AC", "OPTIMIZER_OFFLOAD", "SAVE_INTERVAL",
          "DATASET_PATH", "VALID_DATASET_PATH", "PRETRAIN_CHECKPOINT_PATH", "TRAIN_TOKENS_OR_ITERS",
          "WARMUP_TOKENS_OR_ITERS", "OUTPUT_BASEPATH")
ENTRY_MODULE = "trainer_bridge.train"
DEFAULT_PORT = 29500
DEFAULT_TOKENIZER = "Qwen3Tokenizer"
PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
RECOMPUTE = {"sel": "sel", "full": "full", "offload": "offload", "none": "none", "false": "none"}
# Pai's defaults for what its script hard-codes.
LOG_INTERVAL, EVAL_INTERVAL, EVAL_ITERS = 1, 10000, 10


class LaunchError(ValueError):
    """A parameter that cannot launch; the message names the value and the fix, on one line."""


@dataclass(frozen=True)
class Launch:
    torchrun: list[str]
    """The launcher: ``python -m torch.distributed.run`` and its distributed arguments."""
    entry: list[str]
    """The options for ``python -m trainer_bridge.train``."""
    env: dict[str, str]
    """Environment variables to add for the run."""
    name: str
    """The run name (Pai's NAME): the directory under OUTPUT_BASEPATH/checkpoint and /tensorboard."""
    notes: list[str] = field(default_factory=list)
    """Adjustments made the way Pai makes them (printed to stderr before launching)."""

    @property
    def argv(self) -> list[str]:
        return [*self.torchrun, "-m", ENTRY_MODULE, *self.entry]

    def shell_line(self) -> str:
        """One line to paste into a shell: the environment additions, then the command."""
        prefix = [f"{k}={shlex.quote(v)}" for k, v in self.env.items()]
        return " ".join([*prefix, shlex.join(self.argv)])


# -- parsing helpers ----------------------------------------------------------------------------

def _int(name: str, value: str, minimum: int = 1) -> int:
    try:
        number = int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not a whole number; give an integer >= {minimum}") from None
    if number < minimum:
        raise LaunchError(f"{name}={number} is too small; give an integer >= {minimum}")
    return number


def _float(name: str, value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not a number; give e.g. 1e-5") from None
    if not math.isfinite(number) or number < 0:
        raise LaunchError(f"{name}={value!r} must be a finite number >= 0")
    return number


def _bool(name: str, value: str) -> bool:
    if value == "true":
        return True
    if value == "false":
        return False
    raise LaunchError(f"{name}={value!r} must be true or false")


def _lookup(size: str, presets: Mapping[str, ModelPreset], load: str) -> ModelPreset:
    for key, preset in presets.items():
        if key.lower() == size.lower():
            return preset
    if size.lower() == "hf":  # the checkpoint's own architecture (e.g. Qwen2.5 sizes, which have no preset)
        from trainer_bridge.presets import preset_from_directory

        try:
            return preset_from_directory(None if load in ("", "none") else load)
        except ValueError as exc:
            raise LaunchError(str(exc)) from None
    raise LaunchError(f"unknown MODEL_SIZE {size!r}; known: {', '.join(presets) or '(none)'}, or hf (the "
                      "architecture of PRETRAIN_CHECKPOINT_PATH)")


def _paths(name: str, value: str) -> list[str]:
    """A Pai data path: one prefix/file, several, or a blend ``WEIGHT PATH WEIGHT PATH ...``."""
    words = value.split()
    if not words:
        raise LaunchError(f"{name} is empty; give a dataset path (or a blend like '0.5 a 0.5 b')")

    def is_number(word: str) -> bool:
        try:
            float(word)
            return True
        except ValueError:
            return False

    blend = len(words) > 1 and is_number(words[0])
    if blend and (len(words) % 2 or not all(map(is_number, words[::2])) or any(map(is_number, words[1::2]))):
        raise LaunchError(f"{name}={value!r} is not a blend; write 'WEIGHT PATH WEIGHT PATH ...'")
    return words


# -- GPU count and distributed layout -------------------------------------------------------------

def nvidia_smi_gpu_count() -> int | None:
    """GPUs listed by ``nvidia-smi -L`` (None without a working nvidia-smi)."""
    try:
        done = subprocess.run(["nvidia-smi", "-L"], check=False, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return sum(1 for line in done.stdout.splitlines() if line.startswith("GPU ")) or None


def local_process_count(env: Mapping[str, str], gpu_counter: Callable[[], int | None] = nvidia_smi_gpu_count) -> int:
    """Processes per node: the local GPU count, or DATAPREP_NPROC (default 1) on a CPU machine."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        devices = []
        for item in visible.split(","):
            item = item.strip()
            if not item or item == "-1":  # CUDA ignores the devices after an invalid one
                break
            devices.append(item)
        if devices:
            return len(devices)
    else:
        k8s = env.get("KUBERNETES_CONTAINER_RESOURCE_GPU", "").strip()
        if k8s.isdigit() and int(k8s) > 0:
            return int(k8s)
        count = gpu_counter()
        if count:
            return count
    return _int("DATAPREP_NPROC", env.get("DATAPREP_NPROC", "1"))


def _layout(kind: str, env: Mapping[str, str], gpu_counter) -> tuple[int, int, str, int, int]:
    """(nodes, node rank, master address, master port, processes per node)."""
    nproc = local_process_count(env, gpu_counter)
    if kind == "dsw":
        port = _int("MASTER_PORT", env.get("MASTER_PORT", str(DEFAULT_PORT)))
        return 1, 0, "localhost", port, nproc
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK") if not env.get(k)]
    if missing:
        raise LaunchError(f"ENV=dlc needs {', '.join(missing)} from PAI-DLC (MASTER_ADDR, MASTER_PORT, "
                          "WORLD_SIZE = nodes, RANK = node rank); set them, or use ENV=dsw on one machine")
    port = _int("MASTER_PORT", env["MASTER_PORT"])
    nodes = _int("WORLD_SIZE", env["WORLD_SIZE"])
    rank = _int("RANK", env["RANK"], minimum=0)
    if rank >= nodes:
        raise LaunchError(f"RANK={rank} is not below WORLD_SIZE={nodes}; under ENV=dlc RANK is the node rank "
                          "and WORLD_SIZE the number of nodes")
    if port > 65535:
        raise LaunchError(f"MASTER_PORT={port} is not a port; give 1-65535")
    return nodes, rank, env["MASTER_ADDR"], port, nproc


# -- the mapping ------------------------------------------------------------------------------------

def pai_to_entry(argv: Sequence[str], env: Mapping[str, str], *,
                 presets: Mapping[str, ModelPreset] | None = None,
                 gpu_counter: Callable[[], int | None] = nvidia_smi_gpu_count,
                 python: str = sys.executable) -> Launch:
    """Validate Pai's 27 positional parameters (and MP_* in ``env``) and build the launch.

    ``presets`` maps MODEL_SIZE names to architectures (default: ``trainer_bridge.presets.PRESETS``);
    ``gpu_counter`` stands in for ``nvidia-smi -L``. Raises LaunchError on the first problem.
    """
    if len(argv) != len(PARAMS):
        if len(argv) < len(PARAMS):
            first = len(argv)
            missing = (f"{PARAMS[first]} (${first + 1})" if first == len(PARAMS) - 1 else
                       f"${first + 1}-${len(PARAMS)} ({PARAMS[first]} ... {PARAMS[-1]})")
            raise LaunchError(f"expected {len(PARAMS)} positional parameters, got {len(argv)}: missing {missing}; "
                              "quote any empty value")
        extra = " ".join(shlex.quote(a) for a in argv[len(PARAMS):])
        raise LaunchError(f"expected {len(PARAMS)} positional parameters, got {len(argv)}: extra {extra} after "
                          "OUTPUT_BASEPATH; quote a blend like '0.5 a 0.5 b' as one parameter")
    p = dict(zip(PARAMS, argv))
    if presets is None:
        from trainer_bridge.presets import PRESETS as presets

    kind = p["ENV"]
    if kind not in ("dsw", "dlc"):
        raise LaunchError(f"ENV={kind!r} must be dsw (one machine) or dlc (PAI-DLC nodes)")
    preset = _lookup(p["MODEL_SIZE"], presets, p["PRETRAIN_CHECKPOINT_PATH"])
    mbs = _int("BATCH_SIZE", p["BATCH_SIZE"])
    gbs = _int("GLOBAL_BATCH_SIZE", p["GLOBAL_BATCH_SIZE"])
    lr = _float("LR", p["LR"])
    min_lr = _float("MIN_LR", p["MIN_LR"])
    seq = _int("SEQ_LEN", p["SEQ_LEN"])
    pad = _int("PAD_LEN", p["PAD_LEN"])
    precision = p["PR"]
    if precision not in PRECISIONS:
        raise LaunchError(f"PR={precision!r} must be one of {', '.join(PRECISIONS)}")
    tp, pp, cp, etp, ep = (_int(k, p[k]) for k in ("TP", "PP", "CP", "ETP", "EP"))
    sp, do, fl, sft = (_bool(k, p[k]) for k in ("SP", "DO", "FL", "SFT"))
    if p["AC"] not in RECOMPUTE:
        raise LaunchError(f"AC={p['AC']!r} must be sel, full, offload or none (false)")
    ac = RECOMPUTE[p["AC"]]
    offload = None
    if p["OPTIMIZER_OFFLOAD"] != "false":
        offload = _float("OPTIMIZER_OFFLOAD", p["OPTIMIZER_OFFLOAD"])
        if offload > 1:
            raise LaunchError(f"OPTIMIZER_OFFLOAD={p['OPTIMIZER_OFFLOAD']} must be false or a fraction from 0 to 1")
    save_interval = _int("SAVE_INTERVAL", p["SAVE_INTERVAL"])
    data = _paths("DATASET_PATH", p["DATASET_PATH"])
    valid = None if p["VALID_DATASET_PATH"] in ("", "none") else _paths("VALID_DATASET_PATH",
                                                                         p["VALID_DATASET_PATH"])
    train_amount = _int("TRAIN_TOKENS_OR_ITERS", p["TRAIN_TOKENS_OR_ITERS"])
    warmup_amount = _int("WARMUP_TOKENS_OR_ITERS", p["WARMUP_TOKENS_OR_ITERS"], minimum=0)
    output = p["OUTPUT_BASEPATH"]
    if not output:
        raise LaunchError("OUTPUT_BASEPATH is empty; give the directory for checkpoints and logs")

    dataset_type = env.get("MP_DATASET_TYPE") or "idxmap"
    if dataset_type not in ("idxmap", "raw"):
        raise LaunchError(f"MP_DATASET_TYPE={dataset_type!r} must be idxmap or raw (json SFT data)")
    packing = _bool("MP_SFT_PACKING", env.get("MP_SFT_PACKING") or "false")
    ac_layers = _int("MP_AC_LAYERS", env.get("MP_AC_LAYERS") or "1")
    pp0 = _int("MP_PP0_LAYERS", env["MP_PP0_LAYERS"]) if env.get("MP_PP0_LAYERS") else None
    vp_layers = _int("MP_VP", env["MP_VP"]) if env.get("MP_VP") else None

    # -- sizes against the model -------------------------------------------------------------------
    size = p["MODEL_SIZE"]
    if pad > seq:
        raise LaunchError(f"PAD_LEN={pad} exceeds SEQ_LEN={seq}; give PAD_LEN <= SEQ_LEN")
    if min_lr > lr:
        raise LaunchError(f"MIN_LR={p['MIN_LR']} exceeds LR={p['LR']}; give MIN_LR <= LR")
    problem = layout_problem(preset, size, tp, pp, ep, etp, uneven_pp=pp0 is not None)
    if problem:
        raise LaunchError(problem)
    layers = preset.num_layers
    if sp and tp == 1:
        raise LaunchError("SP=true needs TP > 1 (sequence parallelism splits over the tensor-parallel group); "
                          "set SP=false or TP > 1")
    if sp and seq % tp:
        raise LaunchError(f"SP=true needs SEQ_LEN={seq} divisible by TP={tp}")
    if cp > 1 and seq % (2 * cp):
        raise LaunchError(f"CP={cp} needs SEQ_LEN={seq} divisible by 2*CP={2 * cp}")
    if packing and cp > 1:
        raise LaunchError(f"MP_SFT_PACKING=true with CP={cp} is not supported; set CP=1 or MP_SFT_PACKING=false")
    if dataset_type == "raw" and not sft:
        raise LaunchError("MP_DATASET_TYPE=raw reads SFT json; set SFT=true (pretraining reads an idxmap)")

    if pp0 is not None:
        if pp == 1:
            raise LaunchError(f"MP_PP0_LAYERS={pp0} needs PP > 1 (it sizes the first of several pipeline stages)")
        rest = layers - pp0
        if rest < pp - 1 or rest % (pp - 1):
            raise LaunchError(f"MP_PP0_LAYERS={pp0} leaves {rest} of {size}'s {layers} layers, not divisible "
                              f"over the other {pp - 1} stages; pick MP_PP0_LAYERS so (layers - it) % (PP - 1) == 0")
        stages = [pp0, rest // (pp - 1)]
    else:
        stages = [layers // pp]

    vp = None
    if vp_layers is not None:
        if pp == 1:
            raise LaunchError(f"MP_VP={vp_layers} (layers per virtual stage) needs PP > 1")
        if pp0 is not None:
            raise LaunchError("MP_VP with MP_PP0_LAYERS is not supported; unset one of them")
        if stages[0] % vp_layers:
            raise LaunchError(f"MP_VP={vp_layers} does not divide the {stages[0]} layers per pipeline stage; "
                              f"use MP_VP in {divisors(stages[0])}")
        vp = stages[0] // vp_layers if stages[0] // vp_layers > 1 else None

    if ac == "full" and any(n % ac_layers for n in stages):
        raise LaunchError(f"AC=full with MP_AC_LAYERS={ac_layers}: the layers per pipeline stage "
                          f"({'/'.join(map(str, stages))}) must be a multiple of it; use a divisor")
    if ac == "offload" and ac_layers >= layers:
        raise LaunchError(f"AC=offload with MP_AC_LAYERS={ac_layers}: must be below {size}'s {layers} layers")

    # -- iterations (Pai: tokens when SFT=false, iterations when SFT=true) --------------------------
    if sft:
        train_iters, warmup_iters = train_amount, warmup_amount
        decay_iters = train_iters - warmup_iters
    else:
        per_iter = gbs * seq
        train_iters, warmup_iters = train_amount // per_iter, warmup_amount // per_iter
        decay_iters = train_iters
        if train_iters == 0:
            raise LaunchError(f"TRAIN_TOKENS_OR_ITERS={train_amount} tokens give 0 iterations at "
                              f"GLOBAL_BATCH_SIZE*SEQ_LEN = {per_iter} tokens each (SFT=false counts tokens); "
                              f"give at least {per_iter}")
    if warmup_iters >= decay_iters:
        unit = "iterations" if sft else "tokens"
        raise LaunchError(f"WARMUP_TOKENS_OR_ITERS={warmup_amount} gives {warmup_iters} warmup iterations, not "
                          f"below the {decay_iters} lr decay iterations; give fewer warmup {unit}")

    # -- distributed layout --------------------------------------------------------------------------
    nodes, node_rank, master, port, nproc = _layout(kind, env, gpu_counter)
    world = nodes * nproc
    model_parallel = tp * pp * cp
    if world % model_parallel:
        raise LaunchError(f"{world} processes ({nodes} node(s) x {nproc}) are not divisible by TP*PP*CP = "
                          f"{tp}*{pp}*{cp} = {model_parallel}; change the parallel sizes or the GPU count")
    dp = world // model_parallel
    if gbs % (mbs * dp):
        raise LaunchError(f"GLOBAL_BATCH_SIZE={gbs} is not a multiple of BATCH_SIZE*data-parallel = {mbs}*{dp} = "
                          f"{mbs * dp} ({world} processes / TP*PP*CP {model_parallel}); give a multiple of {mbs * dp}")
    if preset.num_experts is not None and world % (etp * ep * pp):
        raise LaunchError(f"{world} processes are not divisible by ETP*EP*PP = {etp}*{ep}*{pp} = {etp * ep * pp}; "
                          "change ETP/EP or the GPU count")

    notes = []
    if offload is not None and not do:
        notes.append("OPTIMIZER_OFFLOAD needs the distributed optimizer: DO=true (as Pai)")
        do = True

    mode = "finetune" if sft else "pretrain"
    name = (f"{mode}-mcore-{size}-lr-{p['LR']}-minlr-{p['MIN_LR']}-bs-{mbs}-gbs-{gbs}-seqlen-{seq}-pr-{precision}"
            f"-tp-{tp}-pp-{pp}-cp-{cp}-ac-{ac}-do-{str(do).lower()}-sp-{str(sp).lower()}"
            f"-ti-{train_iters}-wi-{warmup_iters}")
    load = p["PRETRAIN_CHECKPOINT_PATH"]
    load = None if load in ("", "none") else load
    tokenizer_path = env.get("DATAPREP_TOKENIZER_PATH") or load
    out = output.rstrip("/") or "/"

    entry = ["--model-size", preset.name, "--micro-batch-size", str(mbs), "--global-batch-size", str(gbs),
             "--lr", p["LR"], "--min-lr", p["MIN_LR"], "--seq-length", str(seq), "--pad-length", str(pad),
             "--precision", precision, "--tensor-model-parallel-size", str(tp),
             "--pipeline-model-parallel-size", str(pp), "--context-parallel-size", str(cp)]
    if preset.num_experts is not None:
        entry += ["--expert-tensor-parallel-size", str(etp), "--expert-model-parallel-size", str(ep)]
    entry += [flag for on, flag in ((sp, "--sequence-parallel"), (do, "--use-distributed-optimizer"),
                                    (fl, "--use-flash-attn"), (sft, "--sft")) if on]
    entry += ["--recompute", ac]
    if ac in ("full", "offload"):
        entry += ["--recompute-num-layers", str(ac_layers)]
    if offload is not None:
        entry += ["--optimizer-offload-fraction", p["OPTIMIZER_OFFLOAD"]]
    entry += ["--save-interval", str(save_interval), "--save", f"{out}/checkpoint/{name}", "--data-path", *data]
    if valid:
        entry += ["--valid-data-path", *valid]
    if load:
        entry += ["--load", load]
    entry += ["--train-iters", str(train_iters), "--lr-warmup-iters", str(warmup_iters),
              "--lr-decay-iters", str(decay_iters), "--dataset-type", dataset_type]
    if packing:
        entry += ["--sft-packing"]
    if pp0 is not None:
        entry += ["--decoder-first-pipeline-num-layers", str(pp0)]
    if vp is not None:
        entry += ["--virtual-pipeline-model-parallel-size", str(vp)]
    entry += ["--tokenizer", env.get("DATAPREP_TOKENIZER") or DEFAULT_TOKENIZER]
    if tokenizer_path:
        entry += ["--tokenizer-path", tokenizer_path]
    entry += ["--tensorboard-dir", f"{out}/tensorboard/{name}", "--log-interval", str(LOG_INTERVAL),
              "--eval-interval", str(EVAL_INTERVAL), "--eval-iters", str(EVAL_ITERS)]

    torchrun = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--nnodes", str(nodes),
                "--node-rank", str(node_rank), "--master-addr", master, "--master-port", str(port)]
    # Megatron's tensor/sequence-parallel overlap wants one CUDA connection. No NVTE_FLASH_ATTN /
    # NVTE_FUSED_ATTN as Pai exports: megatron-core rejects them unless they match its attention
    # backend, which the entry chooses from --use-flash-attn.
    run_env = {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    return Launch(torchrun=torchrun, entry=entry, env=run_env, name=name, notes=notes)


USAGE = ("usage: python -m trainer_bridge.launcher [--dry-run] " + " ".join(PARAMS))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    dry_run = False
    while args and args[0] in ("--dry-run", "-h", "--help"):
        if args[0] != "--dry-run":
            print(USAGE)
            print(__doc__)
            return 0
        dry_run = True
        args.pop(0)
    try:
        launch = pai_to_entry(args, os.environ)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in launch.notes:
        print(f"note: {note}", file=sys.stderr)
    if dry_run:
        print(launch.shell_line())
        return 0
    sys.stdout.flush()
    os.execvpe(launch.argv[0], launch.argv, {**os.environ, **launch.env})
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
