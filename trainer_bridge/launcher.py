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
exit status 2 (``--debug`` or DATAPREP_DEBUG=1: the traceback; `dataprep.errors`).

How: the parameters are read one by one (`read_parameters`, `read_mp_variables`), checked against
each other, the model and the process count, then set as `TrainConfig` fields; the entry's
options are that config's `TrainConfig.to_argv`, so they are always ones the entry parses.

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
from typing import Any, NamedTuple

from dataprep.errors import debug_requested, run_command
from trainer_bridge.config import DATASET_TYPES, PRECISIONS, RECOMPUTE, TrainConfig, global_batch_problem
from trainer_bridge.presets import PRESETS, ModelPreset, divisors, layout_problem, preset_from_directory

PARAMS = ("ENV", "MODEL_SIZE", "BATCH_SIZE", "GLOBAL_BATCH_SIZE", "LR", "MIN_LR", "SEQ_LEN", "PAD_LEN", "PR",
          "TP", "PP", "CP", "ETP", "EP", "SP", "DO", "FL", "SFT", "AC", "OPTIMIZER_OFFLOAD", "SAVE_INTERVAL",
          "DATASET_PATH", "VALID_DATASET_PATH", "PRETRAIN_CHECKPOINT_PATH", "TRAIN_TOKENS_OR_ITERS",
          "WARMUP_TOKENS_OR_ITERS", "OUTPUT_BASEPATH")
ENTRY_MODULE = "trainer_bridge.train"
DEFAULT_PORT = 29500
DEFAULT_TOKENIZER = "Qwen3Tokenizer"
PAI_RECOMPUTE = {**{name: name for name in RECOMPUTE}, "false": "none"}  # AC → --recompute
# Pai's defaults for what its script hard-codes.
LOG_INTERVAL, EVAL_INTERVAL, EVAL_ITERS = 1, 10000, 10


class LaunchError(ValueError):
    """A parameter that cannot launch; the message names the value and the fix, on one line."""


@dataclass(frozen=True)
class Launch:
    torchrun: list[str]
    """The launcher: ``python -m torch.distributed.run`` and its distributed arguments."""
    entry: list[str]
    """The options for ``python -m trainer_bridge.train`` (`TrainConfig.to_argv`)."""
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


class Layout(NamedTuple):
    """Where the processes run: nodes, this node's rank, the rendezvous, processes per node."""

    nodes: int
    node_rank: int
    master_addr: str
    master_port: int
    nproc: int

    @property
    def world(self) -> int:
        return self.nodes * self.nproc


def _layout(kind: str, env: Mapping[str, str], gpu_counter) -> Layout:
    """Where the processes run under ENV=dsw (this machine) or ENV=dlc (PAI-DLC's variables)."""
    nproc = local_process_count(env, gpu_counter)
    if kind == "dsw":
        port = _int("MASTER_PORT", env.get("MASTER_PORT", str(DEFAULT_PORT)))
        return Layout(1, 0, "localhost", port, nproc)
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
    return Layout(nodes, rank, env["MASTER_ADDR"], port, nproc)


# -- reading Pai's parameters ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PaiParameters:
    """Pai's 27 positional parameters, each read and checked on its own (`read_parameters`)."""

    text: Mapping[str, str]
    """As given, by name: the run name and some messages repeat the user's spelling (LR=1e-5)."""
    env: str
    preset: ModelPreset
    micro_batch: int
    global_batch: int
    lr: float
    min_lr: float
    seq: int
    pad: int
    precision: str
    tp: int
    pp: int
    cp: int
    etp: int
    ep: int
    sp: bool
    do: bool
    fl: bool
    sft: bool
    recompute: str
    """AC as --recompute (false = none)."""
    offload: float | None
    """OPTIMIZER_OFFLOAD as a fraction (None: false)."""
    save_interval: int
    data: tuple[str, ...]
    valid: tuple[str, ...] | None
    load: str | None
    """PRETRAIN_CHECKPOINT_PATH (None: none or empty)."""
    train_amount: int
    warmup_amount: int
    """TRAIN_TOKENS_OR_ITERS and WARMUP_TOKENS_OR_ITERS: tokens when SFT=false, iterations when true."""
    output: str


def _by_name(argv: Sequence[str]) -> dict[str, str]:
    """The positional parameters by Pai's names; LaunchError when there are not 27."""
    if len(argv) < len(PARAMS):
        first = len(argv)
        missing = (f"{PARAMS[first]} (${first + 1})" if first == len(PARAMS) - 1 else
                   f"${first + 1}-${len(PARAMS)} ({PARAMS[first]} ... {PARAMS[-1]})")
        raise LaunchError(f"expected {len(PARAMS)} positional parameters, got {len(argv)}: missing {missing}; "
                          "quote any empty value")
    if len(argv) > len(PARAMS):
        extra = " ".join(shlex.quote(a) for a in argv[len(PARAMS):])
        raise LaunchError(f"expected {len(PARAMS)} positional parameters, got {len(argv)}: extra {extra} after "
                          "OUTPUT_BASEPATH; quote a blend like '0.5 a 0.5 b' as one parameter")
    return dict(zip(PARAMS, argv))


def _offload(text: str) -> float | None:
    if text == "false":
        return None
    fraction = _float("OPTIMIZER_OFFLOAD", text)
    if fraction > 1:
        raise LaunchError(f"OPTIMIZER_OFFLOAD={text} must be false or a fraction from 0 to 1")
    return fraction


def read_parameters(p: Mapping[str, str], presets: Mapping[str, ModelPreset]) -> PaiParameters:
    """Each parameter of `p` (by name) checked on its own, in Pai's order; LaunchError on the first bad one."""
    if p["ENV"] not in ("dsw", "dlc"):
        raise LaunchError(f"ENV={p['ENV']!r} must be dsw (one machine) or dlc (PAI-DLC nodes)")
    preset = _lookup(p["MODEL_SIZE"], presets, p["PRETRAIN_CHECKPOINT_PATH"])
    sizes = dict(micro_batch=_int("BATCH_SIZE", p["BATCH_SIZE"]),
                 global_batch=_int("GLOBAL_BATCH_SIZE", p["GLOBAL_BATCH_SIZE"]),
                 lr=_float("LR", p["LR"]), min_lr=_float("MIN_LR", p["MIN_LR"]),
                 seq=_int("SEQ_LEN", p["SEQ_LEN"]), pad=_int("PAD_LEN", p["PAD_LEN"]))
    if p["PR"] not in PRECISIONS:
        raise LaunchError(f"PR={p['PR']!r} must be one of {', '.join(PRECISIONS)}")
    parallel = {k.lower(): _int(k, p[k]) for k in ("TP", "PP", "CP", "ETP", "EP")}
    switches = {k.lower(): _bool(k, p[k]) for k in ("SP", "DO", "FL", "SFT")}
    if p["AC"] not in PAI_RECOMPUTE:
        raise LaunchError(f"AC={p['AC']!r} must be sel, full, offload or none (false)")
    offload = _offload(p["OPTIMIZER_OFFLOAD"])
    save_interval = _int("SAVE_INTERVAL", p["SAVE_INTERVAL"])
    data = _paths("DATASET_PATH", p["DATASET_PATH"])
    valid = None if p["VALID_DATASET_PATH"] in ("", "none") else _paths("VALID_DATASET_PATH",
                                                                         p["VALID_DATASET_PATH"])
    train_amount = _int("TRAIN_TOKENS_OR_ITERS", p["TRAIN_TOKENS_OR_ITERS"])
    warmup_amount = _int("WARMUP_TOKENS_OR_ITERS", p["WARMUP_TOKENS_OR_ITERS"], minimum=0)
    if not p["OUTPUT_BASEPATH"]:
        raise LaunchError("OUTPUT_BASEPATH is empty; give the directory for checkpoints and logs")
    load = None if p["PRETRAIN_CHECKPOINT_PATH"] in ("", "none") else p["PRETRAIN_CHECKPOINT_PATH"]
    return PaiParameters(
        text=p, env=p["ENV"], preset=preset, **sizes, precision=p["PR"], **parallel, **switches,
        recompute=PAI_RECOMPUTE[p["AC"]], offload=offload, save_interval=save_interval, data=tuple(data),
        valid=tuple(valid) if valid else None, load=load, train_amount=train_amount,
        warmup_amount=warmup_amount, output=p["OUTPUT_BASEPATH"])


@dataclass(frozen=True)
class MpVariables:
    """Pai's MP_* environment variables."""

    dataset_type: str
    """MP_DATASET_TYPE: idxmap (default) or raw."""
    packing: bool
    """MP_SFT_PACKING."""
    ac_layers: int
    """MP_AC_LAYERS (default 1): layers per recomputed chunk for AC=full/offload."""
    pp0: int | None
    """MP_PP0_LAYERS: layers of the first pipeline stage."""
    vp_layers: int | None
    """MP_VP: layers per virtual pipeline stage."""


def read_mp_variables(env: Mapping[str, str]) -> MpVariables:
    dataset_type = env.get("MP_DATASET_TYPE") or "idxmap"
    if dataset_type not in DATASET_TYPES:
        raise LaunchError(f"MP_DATASET_TYPE={dataset_type!r} must be idxmap or raw (json SFT data)")
    return MpVariables(
        dataset_type=dataset_type, packing=_bool("MP_SFT_PACKING", env.get("MP_SFT_PACKING") or "false"),
        ac_layers=_int("MP_AC_LAYERS", env.get("MP_AC_LAYERS") or "1"),
        pp0=_int("MP_PP0_LAYERS", env["MP_PP0_LAYERS"]) if env.get("MP_PP0_LAYERS") else None,
        vp_layers=_int("MP_VP", env["MP_VP"]) if env.get("MP_VP") else None)


# -- the parameters against each other and the model ----------------------------------------------------

def _check_model_fit(pai: PaiParameters, mp: MpVariables) -> None:
    """Lengths, learning rates and parallel sizes that the model or each other rule out."""
    size, seq, tp, cp = pai.text["MODEL_SIZE"], pai.seq, pai.tp, pai.cp
    if pai.pad > seq:
        raise LaunchError(f"PAD_LEN={pai.pad} exceeds SEQ_LEN={seq}; give PAD_LEN <= SEQ_LEN")
    if pai.min_lr > pai.lr:
        raise LaunchError(f"MIN_LR={pai.text['MIN_LR']} exceeds LR={pai.text['LR']}; give MIN_LR <= LR")
    problem = layout_problem(pai.preset, size, tp, pai.pp, pai.ep, pai.etp, uneven_pp=mp.pp0 is not None)
    if problem:
        raise LaunchError(problem)
    if pai.sp and tp == 1:
        raise LaunchError("SP=true needs TP > 1 (sequence parallelism splits over the tensor-parallel group); "
                          "set SP=false or TP > 1")
    if pai.sp and seq % tp:
        raise LaunchError(f"SP=true needs SEQ_LEN={seq} divisible by TP={tp}")
    if cp > 1 and seq % (2 * cp):
        raise LaunchError(f"CP={cp} needs SEQ_LEN={seq} divisible by 2*CP={2 * cp}")
    if mp.packing and cp > 1:
        raise LaunchError(f"MP_SFT_PACKING=true with CP={cp} is not supported; set CP=1 or MP_SFT_PACKING=false")
    if mp.dataset_type == "raw" and not pai.sft:
        raise LaunchError("MP_DATASET_TYPE=raw reads SFT json; set SFT=true (pretraining reads an idxmap)")


def _pipeline_stages(pai: PaiParameters, mp: MpVariables) -> list[int]:
    """Layers per pipeline stage: [all stages'], or [first stage's, each other's] with MP_PP0_LAYERS."""
    layers, pp, pp0 = pai.preset.num_layers, pai.pp, mp.pp0
    if pp0 is None:
        return [layers // pp]
    if pp == 1:
        raise LaunchError(f"MP_PP0_LAYERS={pp0} needs PP > 1 (it sizes the first of several pipeline stages)")
    rest = layers - pp0
    if rest < pp - 1 or rest % (pp - 1):
        raise LaunchError(f"MP_PP0_LAYERS={pp0} leaves {rest} of {pai.text['MODEL_SIZE']}'s {layers} layers, not "
                          f"divisible over the other {pp - 1} stages; pick MP_PP0_LAYERS so (layers - it) % (PP - 1) "
                          "== 0")
    return [pp0, rest // (pp - 1)]


def _virtual_pipeline_size(pai: PaiParameters, mp: MpVariables, stages: list[int]) -> int | None:
    """--virtual-pipeline-model-parallel-size from MP_VP (Pai's layers per virtual stage); None for one chunk."""
    vp_layers = mp.vp_layers
    if vp_layers is None:
        return None
    if pai.pp == 1:
        raise LaunchError(f"MP_VP={vp_layers} (layers per virtual stage) needs PP > 1")
    if mp.pp0 is not None:
        raise LaunchError("MP_VP with MP_PP0_LAYERS is not supported; unset one of them")
    if stages[0] % vp_layers:
        raise LaunchError(f"MP_VP={vp_layers} does not divide the {stages[0]} layers per pipeline stage; "
                          f"use MP_VP in {divisors(stages[0])}")
    return stages[0] // vp_layers if stages[0] // vp_layers > 1 else None


def _check_recompute(pai: PaiParameters, mp: MpVariables, stages: list[int]) -> None:
    layers, ac_layers = pai.preset.num_layers, mp.ac_layers
    if pai.recompute == "full" and any(n % ac_layers for n in stages):
        raise LaunchError(f"AC=full with MP_AC_LAYERS={ac_layers}: the layers per pipeline stage "
                          f"({'/'.join(map(str, stages))}) must be a multiple of it; use a divisor")
    if pai.recompute == "offload" and ac_layers >= layers:
        raise LaunchError(f"AC=offload with MP_AC_LAYERS={ac_layers}: must be below "
                          f"{pai.text['MODEL_SIZE']}'s {layers} layers")


class Iterations(NamedTuple):
    train: int
    warmup: int
    decay: int


def _iterations(pai: PaiParameters) -> Iterations:
    """Pai's semantics: TRAIN/WARMUP are iterations when SFT=true (decay over train - warmup), tokens
    when SFT=false (iterations = tokens / GLOBAL_BATCH_SIZE / SEQ_LEN, decay over all of them)."""
    if pai.sft:
        iters = Iterations(pai.train_amount, pai.warmup_amount, pai.train_amount - pai.warmup_amount)
    else:
        per_iter = pai.global_batch * pai.seq
        train = pai.train_amount // per_iter
        if train == 0:
            raise LaunchError(f"TRAIN_TOKENS_OR_ITERS={pai.train_amount} tokens give 0 iterations at "
                              f"GLOBAL_BATCH_SIZE*SEQ_LEN = {per_iter} tokens each (SFT=false counts tokens); "
                              f"give at least {per_iter}")
        iters = Iterations(train, pai.warmup_amount // per_iter, train)
    if iters.warmup >= iters.decay:
        unit = "iterations" if pai.sft else "tokens"
        raise LaunchError(f"WARMUP_TOKENS_OR_ITERS={pai.warmup_amount} gives {iters.warmup} warmup iterations, not "
                          f"below the {iters.decay} lr decay iterations; give fewer warmup {unit}")
    return iters


def _check_processes(pai: PaiParameters, layout: Layout) -> None:
    """The process count against the parallel sizes and the global batch."""
    world, model_parallel = layout.world, pai.tp * pai.pp * pai.cp
    if world % model_parallel:
        raise LaunchError(f"{world} processes ({layout.nodes} node(s) x {layout.nproc}) are not divisible by "
                          f"TP*PP*CP = {pai.tp}*{pai.pp}*{pai.cp} = {model_parallel}; change the parallel sizes or "
                          "the GPU count")
    problem = global_batch_problem(pai.global_batch, pai.micro_batch, world // model_parallel, processes=world,
                                   model_parallel=model_parallel)
    if problem:
        raise LaunchError(problem)
    expert_parallel = pai.etp * pai.ep * pai.pp
    if pai.preset.is_moe and world % expert_parallel:
        raise LaunchError(f"{world} processes are not divisible by ETP*EP*PP = {pai.etp}*{pai.ep}*{pai.pp} = "
                          f"{expert_parallel}; change ETP/EP or the GPU count")


# -- Pai's run → the entry's TrainConfig ---------------------------------------------------------------

def run_name(pai: PaiParameters, distributed_optimizer: bool, iters: Iterations) -> str:
    """Pai's NAME without its timestamp, so that rerunning the same command resumes the same run."""
    t = pai.text
    return (f"{'finetune' if pai.sft else 'pretrain'}-mcore-{t['MODEL_SIZE']}-lr-{t['LR']}-minlr-{t['MIN_LR']}"
            f"-bs-{pai.micro_batch}-gbs-{pai.global_batch}-seqlen-{pai.seq}-pr-{pai.precision}"
            f"-tp-{pai.tp}-pp-{pai.pp}-cp-{pai.cp}-ac-{pai.recompute}-do-{str(distributed_optimizer).lower()}"
            f"-sp-{str(pai.sp).lower()}-ti-{iters.train}-wi-{iters.warmup}")


def _settings(pai: PaiParameters, mp: MpVariables, iters: Iterations, vp: int | None, distributed_optimizer: bool,
              name: str, env: Mapping[str, str]) -> dict[str, Any]:
    """The TrainConfig fields Pai's parameters set (the others keep the entry's defaults)."""
    out = pai.output.rstrip("/") or "/"
    settings: dict[str, Any] = dict(
        model_size=pai.preset.name, micro_batch_size=pai.micro_batch, global_batch_size=pai.global_batch,
        lr=pai.lr, min_lr=pai.min_lr, seq_length=pai.seq, pad_length=pai.pad, precision=pai.precision,
        tensor_model_parallel_size=pai.tp, pipeline_model_parallel_size=pai.pp, context_parallel_size=pai.cp,
        sequence_parallel=pai.sp, use_distributed_optimizer=distributed_optimizer, use_flash_attn=pai.fl,
        sft=pai.sft, recompute=pai.recompute, save_interval=pai.save_interval, save=f"{out}/checkpoint/{name}",
        data_path=pai.data, valid_data_path=pai.valid, load=pai.load, train_iters=iters.train,
        lr_warmup_iters=iters.warmup, lr_decay_iters=iters.decay, dataset_type=mp.dataset_type,
        sft_packing=mp.packing, decoder_first_pipeline_num_layers=mp.pp0,
        virtual_pipeline_model_parallel_size=vp, tokenizer=env.get("DATAPREP_TOKENIZER") or DEFAULT_TOKENIZER,
        tokenizer_path=env.get("DATAPREP_TOKENIZER_PATH") or pai.load, tensorboard_dir=f"{out}/tensorboard/{name}",
        log_interval=LOG_INTERVAL, eval_interval=EVAL_INTERVAL, eval_iters=EVAL_ITERS)
    if pai.preset.is_moe:  # a dense model has no expert layout to pass
        settings.update(expert_tensor_parallel_size=pai.etp, expert_model_parallel_size=pai.ep)
    if pai.recompute in ("full", "offload"):
        settings["recompute_num_layers"] = mp.ac_layers
    if pai.offload is not None:
        settings["optimizer_offload_fraction"] = pai.offload
    return settings


def _train_config(settings: Mapping[str, Any]) -> TrainConfig:
    try:
        return TrainConfig(**settings)
    except ValueError as exc:  # the entry's own checks: still a parameter that cannot launch
        raise LaunchError(str(exc)) from None


def _torchrun(python: str, layout: Layout) -> list[str]:
    return [python, "-m", "torch.distributed.run", "--nproc-per-node", str(layout.nproc), "--nnodes",
            str(layout.nodes), "--node-rank", str(layout.node_rank), "--master-addr", layout.master_addr,
            "--master-port", str(layout.master_port)]


def pai_to_entry(argv: Sequence[str], env: Mapping[str, str], *,
                 presets: Mapping[str, ModelPreset] | None = None,
                 gpu_counter: Callable[[], int | None] = nvidia_smi_gpu_count,
                 python: str = sys.executable) -> Launch:
    """Validate Pai's 27 positional parameters (and MP_* in ``env``) and build the launch.

    ``presets`` maps MODEL_SIZE names to architectures (default: ``trainer_bridge.presets.PRESETS``);
    ``gpu_counter`` stands in for ``nvidia-smi -L``. Raises LaunchError on the first problem.
    """
    pai = read_parameters(_by_name(argv), PRESETS if presets is None else presets)
    mp = read_mp_variables(env)
    _check_model_fit(pai, mp)
    stages = _pipeline_stages(pai, mp)
    vp = _virtual_pipeline_size(pai, mp, stages)
    _check_recompute(pai, mp, stages)
    iters = _iterations(pai)
    layout = _layout(pai.env, env, gpu_counter)
    _check_processes(pai, layout)
    notes = []
    distributed_optimizer = pai.do
    if pai.offload is not None and not pai.do:
        notes.append("OPTIMIZER_OFFLOAD needs the distributed optimizer: DO=true (as Pai)")
        distributed_optimizer = True
    name = run_name(pai, distributed_optimizer, iters)
    settings = _settings(pai, mp, iters, vp, distributed_optimizer, name, env)
    # Megatron's tensor/sequence-parallel overlap wants one CUDA connection. No NVTE_FLASH_ATTN /
    # NVTE_FUSED_ATTN as Pai exports: megatron-core rejects them unless they match its attention
    # backend, which the entry chooses from --use-flash-attn.
    return Launch(torchrun=_torchrun(python, layout), entry=_train_config(settings).to_argv(settings),
                  env={"CUDA_DEVICE_MAX_CONNECTIONS": "1"}, name=name, notes=notes)


USAGE = ("usage: python -m trainer_bridge.launcher [--dry-run] [--debug] " + " ".join(PARAMS))


def _launch(args: list[str], dry_run: bool) -> int:
    launch = pai_to_entry(args, os.environ)
    for note in launch.notes:
        print(f"note: {note}", file=sys.stderr)
    if dry_run:
        print(launch.shell_line())
        return 0
    sys.stdout.flush()
    os.execvpe(launch.argv[0], launch.argv, {**os.environ, **launch.env})
    return 0  # not reached


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [a for a in args if a != "--debug"]  # no Pai parameter is "--debug": accepted anywhere
    dry_run = False
    while args and args[0] in ("--dry-run", "-h", "--help"):
        if args[0] != "--dry-run":
            print(USAGE)
            print(__doc__)
            return 0
        dry_run = True
        args.pop(0)
    return run_command(lambda: _launch(args, dry_run), debug=debug, expected=(LaunchError,))


if __name__ == "__main__":
    sys.exit(main())
