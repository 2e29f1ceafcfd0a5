"""A training run's settings: `TrainConfig`, whose fields are the options of
``python -m trainer_bridge.train`` (default and help text written once, on the field), the command
line generated from it (`parse_args`, and back with `TrainConfig.to_argv`), and the rules every
caller of the trainer shares (`global_batch_problem`, `PRECISIONS`, `RECOMPUTE`; `DATASET_TYPES` comes from `dataset_engine.raw`).

No torch here: the launcher maps Pai's parameters onto a TrainConfig without loading it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import os
import textwrap
import typing
from collections.abc import Collection
from dataclasses import dataclass, field

from dataset_engine.raw import DATASET_TYPES
from trainer_bridge.presets import ModelPreset, get_preset, preset_from_directory

PRECISIONS = ("fp32", "fp16", "bf16", "fp8")
RECOMPUTE = ("none", "sel", "full", "offload")
PROG = "python -m trainer_bridge.train"
DESCRIPTION = "The bundled Megatron-Core training entry: ``torchrun -m trainer_bridge.train --model-size ... " \
              "--data-path ...``."


def default_precision() -> str:
    """bf16 where CUDA is available, else fp32 (the precision CPU runs train in anyway)."""
    import torch  # only when a default is needed: the launcher reads this module without torch

    return "bf16" if torch.cuda.is_available() else "fp32"


def _dataset_type_from_env() -> str:
    return os.environ.get("MP_DATASET_TYPE", "idxmap")  # Pai's variable, also for the typed entry


def global_batch_problem(global_batch: int, micro_batch: int, data_parallel: int = 1,
                         processes: int | None = None, model_parallel: int | None = None) -> str | None:
    """Why a global batch cannot be cut into micro-batches over the data-parallel ranks (it must be
    a multiple of micro batch x data parallel), or None. `processes` and `model_parallel`
    (TP*PP*CP), when known, say in the message where the data-parallel size comes from."""
    step = micro_batch * data_parallel
    if global_batch % step == 0:
        return None
    origin = f" ({processes} processes / TP*PP*CP {model_parallel})" if processes is not None else ""
    return (f"GLOBAL_BATCH_SIZE={global_batch} is not a multiple of BATCH_SIZE*data-parallel = "
            f"{micro_batch}*{data_parallel} = {step}{origin}; give a multiple of {step}")


def _choices(values: tuple[str, ...]) -> dict:
    return {"choices": values}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Every setting of one training run. Each field is the option ``--field-name`` (a bool is a
    flag, a tuple takes one or more words); the string under a field is its ``--help``."""

    model_size: str
    """tiny, 0.6B, 1.7B, 4B, 8B, 14B, 32B, A3B, A22B, or hf (the architecture of the Hugging Face
    directory given as --load)"""
    micro_batch_size: int = 1
    """Samples per forward-backward pass on each data-parallel rank (Pai's BATCH_SIZE)."""
    global_batch_size: int = 8
    """Samples per optimizer step over all ranks: a multiple of micro batch x data parallel."""
    lr: float = 1e-5
    """Peak learning rate, reached after the warmup."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine decay."""
    seq_length: int = 1024
    """Tokens per sample (packed rows and pretraining samples)."""
    pad_length: int | None = None
    """SFT without packing: samples padded to this (Pai's PAD_LEN)"""
    precision: str = field(default_factory=default_precision, metadata=_choices(PRECISIONS))
    """Training precision (default: bf16 with CUDA, else fp32; CPU runs use fp32)."""
    tensor_model_parallel_size: int = 1
    """Tensor parallel size (TP)."""
    pipeline_model_parallel_size: int = 1
    """Pipeline parallel size (PP)."""
    context_parallel_size: int = 1
    """Context parallel size (CP); the bundled trainer supports 1 only."""
    expert_tensor_parallel_size: int = 1
    """Tensor parallel size inside the MoE experts (ETP)."""
    expert_model_parallel_size: int = 1
    """Expert parallel size (EP)."""
    sequence_parallel: bool = False
    """Split activations along the sequence over the tensor-parallel group (SP)."""
    use_distributed_optimizer: bool = False
    """Shard the optimizer state over the data-parallel ranks (DO; GPU only)."""
    use_flash_attn: bool = False
    """Flash attention (FL)."""
    sft: bool = False
    """fine-tuning: loss only on trained tokens, per-token averaging"""
    recompute: str = field(default="none", metadata=_choices(RECOMPUTE))
    """Activation recomputation: none, sel (selective), full or offload (Pai's AC)."""
    recompute_num_layers: int = 1
    """Layers per recomputed chunk with --recompute full/offload (MP_AC_LAYERS)."""
    optimizer_offload_fraction: float = 0.0
    """Share of the optimizer state kept on the CPU (0: none; GPU only)."""
    save_interval: int = 0
    """Save a checkpoint every this many iterations (0: never)."""
    save: str | None = None
    """checkpoint directory (resumes from the latest checkpoint in it)"""
    data_path: tuple[str, ...]
    """Training data: idxmap prefixes or a blend (WEIGHT PREFIX ...), or SFT json with
    --dataset-type raw."""
    valid_data_path: tuple[str, ...] | None = None
    """Validation data, as --data-path (default: pretraining holds out 1% of --data-path; SFT: none)."""
    load: str | None = None
    """starting weights (a checkpoint directory)"""
    train_iters: int
    """Optimizer steps to train."""
    lr_warmup_iters: int = 0
    """Iterations of linear learning-rate warmup."""
    lr_decay_iters: int | None = None
    """Iterations of cosine decay (default: --train-iters)."""
    dataset_type: str = field(default_factory=_dataset_type_from_env, metadata=_choices(DATASET_TYPES))
    """idxmap, or raw SFT json tokenized as it is read (default: MP_DATASET_TYPE, else idxmap)."""
    sft_packing: bool = False
    """SFT: pack several records into each --seq-length row (MP_SFT_PACKING)."""
    decoder_first_pipeline_num_layers: int | None = None
    """Layers of the first pipeline stage, the others splitting the rest evenly (MP_PP0_LAYERS)."""
    virtual_pipeline_model_parallel_size: int | None = None
    """Virtual pipeline stages per rank (from MP_VP); accepted, each stage runs as one chunk."""
    tokenizer: str | None = None
    """Tokenizer name, for data whose sidecar does not give the EOD id and for raw json."""
    tokenizer_path: str | None = None
    """Hugging Face tokenizer directory for --tokenizer."""
    tensorboard_dir: str | None = None
    """Also write the logged values as TensorBoard events here."""
    log_interval: int = 1
    """Log a line every this many iterations."""
    eval_interval: int = 1000
    """Evaluate on the validation data every this many iterations."""
    eval_iters: int = 10
    """Iterations per evaluation."""
    seed: int = 1234
    """Random seed (weights, data order)."""
    weight_decay: float = 0.1
    """Weight decay."""
    clip_grad: float = 1.0
    """Gradient clipping: largest global gradient norm."""
    num_workers: int = 0
    """Data loader worker processes."""
    exit_interval: int = 0
    """stop (after saving) when the iteration is a multiple of this"""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"--recompute {self.recompute!r}: expected one of {', '.join(RECOMPUTE)}")
        if self.dataset_type not in DATASET_TYPES:
            raise ValueError(f"--dataset-type {self.dataset_type!r}: expected idxmap or raw")
        if self.dataset_type == "raw" and not self.sft:
            raise ValueError("--dataset-type raw is for SFT data (alpaca/messages/ShareGPT json): add --sft")
        problem = global_batch_problem(self.global_batch_size, self.micro_batch_size)
        if problem:
            raise ValueError(problem)
        decay = self.lr_decay_iters or self.train_iters
        if self.lr_warmup_iters and self.lr_warmup_iters >= decay:
            raise ValueError(f"--lr-warmup-iters {self.lr_warmup_iters} must be below the decay iterations "
                             f"{decay} (--lr-decay-iters, else --train-iters)")
        if self.pad_length is not None and self.pad_length > self.seq_length:
            raise ValueError(f"--pad-length {self.pad_length} exceeds --seq-length {self.seq_length}")
        if self.model_size.lower() == "hf":
            self.preset()  # the --load directory must say what the architecture is

    def preset(self) -> ModelPreset:
        """The architecture: a named preset, or (`--model-size hf`) the --load directory's config.json
        (an HF directory) or hf_config.json (an hf2mcore checkpoint)."""
        if self.model_size.lower() != "hf":
            return get_preset(self.model_size)
        return preset_from_directory(self.load)

    def to_argv(self, fields: Collection[str] | None = None) -> list[str]:
        """The options `parse_args` reads back as this config: those of `fields` (default: every
        field), in field order. A false flag or a None value is left out (it is the default)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if (fields is not None and f.name not in fields) or value is None or value is False:
                continue
            argv.append(_flag(f.name))
            if value is not True:
                argv += [_word(v) for v in value] if isinstance(value, tuple) else [_word(value)]
        return argv


# -- the command line, generated from the fields ------------------------------------------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _word(value: object) -> str:
    """A value as a command-line word; a float in its shortest exact spelling, the way Pai's
    scripts write them (1e-5, 5e-3, 0.5, 0: not 1e-05, 0.005, 0.0)."""
    if not isinstance(value, float) or not math.isfinite(value):
        return str(value)
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    digits = next(p for p in range(17) if float(f"{value:.{p}e}") == value)
    mantissa, exponent = f"{value:.{digits}e}".split("e")
    scientific = f"{mantissa}e{int(exponent)}"
    positional = repr(value)
    return positional if len(positional) <= len(scientific) and "e" not in positional else scientific


def field_docs(cls: type) -> dict[str, str]:
    """Each dataclass field's docstring (the string literal right under the field), on one line."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and \
                isinstance(after.value.value, str):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _option(f: dataclasses.Field, hint: object, doc: str) -> dict:
    """add_argument's keywords for one field, from its type, default and docstring."""
    options: dict = {"dest": f.name, "help": doc.replace("%", "%%"), **f.metadata}
    if type(None) in typing.get_args(hint):  # X | None: an option that may be left out
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if hint is bool:
        options["action"] = "store_true"
    elif typing.get_origin(hint) is tuple:
        options["nargs"] = "+"
    elif hint in (int, float):
        options["type"] = hint
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        options["required"] = True
    else:
        options["default"] = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return options


def build_parser() -> argparse.ArgumentParser:
    """The entry's parser: one option per TrainConfig field, and --debug."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    hints, docs = typing.get_type_hints(TrainConfig), field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(_flag(f.name), **_option(f, hints[f.name], docs.get(f.name, "")))
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The TrainConfig of a command line (default: sys.argv); argparse exits on unknown options,
    TrainConfig raises ValueError on inconsistent ones."""
    values = vars(build_parser().parse_args(argv))
    values.pop("debug")  # how errors are shown, not a setting of the run
    for name in ("data_path", "valid_data_path"):
        values[name] = tuple(values[name]) if values[name] else None
    return TrainConfig(**values)
