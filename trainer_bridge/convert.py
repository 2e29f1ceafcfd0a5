"""Hugging Face ↔ megatron-core checkpoints for Qwen2/Qwen2.5, Qwen3 and Qwen3-MoE models.

    python -m trainer_bridge.convert hf2mcore --load /mnt/qwen3-0.6b --save /mnt/qwen3-0.6b-mcore
    python -m trainer_bridge.convert mcore2hf --load /mnt/qwen3-0.6b-mcore --save /mnt/qwen3-0.6b-hf
    sh trainer_bridge/scripts/convert.sh 0.6B /mnt/qwen3-0.6b /mnt/qwen3-0.6b-mcore false true bf16   # Pai's order

The architecture is read from the HF `config.json` (`trainer_bridge.presets.preset_from_hf`).
hf2mcore writes Megatron-LM's checkpoint layout, as Pai's converters do: `SAVE/release/` holds a
megatron-core distributed checkpoint (torch_dist, ``{"model": ...}`` with Megatron-LM's `args` and
`checkpoint_version` in common.pt), `SAVE/latest_checkpointed_iteration.txt` says `release`, and
`hf_config.json` and the tokenizer files sit beside them; the trainer's `--load` /
PRETRAIN_CHECKPOINT_PATH (and Pai's trainer) takes SAVE. mcore2hf reads that, a trainer's save
directory (its latest iteration) or one `iter_N` directory, and writes `config.json`, sharded
`model-0000x-of-0000y.safetensors` with their index and the tokenizer files. Both stream: hf2mcore
builds the model on the meta device only for its checkpoint layout and converts each tensor when
the writer asks for it; mcore2hf reads one output shard's tensors at a time. Memory stays near the
largest tensor group, not the model.

A distributed checkpoint stores every tensor whole (global shapes) and is resharded on load, so one
conversion serves any TP/PP/EP; `--target-tensor-parallel-size` etc. check that the layout fits the
architecture before anything is written. Its tensor keys are layer-spec independent (megatron-core
maps the local spec's names onto TransformerEngine's, and its grouped experts onto SequentialMLP's).

Tensor mapping, per layer (HF `model.layers.i.` ↔ megatron `decoder.layers.i.`):

    input_layernorm                       ↔ input_layernorm
    self_attn.{q,k,v}_proj (weight, bias) ↔ self_attention.linear_qkv: per query group g, the
                                            rows of g's query heads, then g's key, then g's value
    self_attn.{q,k}_norm                  ↔ self_attention.{q,k}_layernorm
    self_attn.o_proj                      ↔ self_attention.linear_proj
    post_attention_layernorm              ↔ pre_mlp_layernorm
    mlp.gate_proj, mlp.up_proj            ↔ mlp.linear_fc1 (gate rows, then up rows)
    mlp.down_proj                         ↔ mlp.linear_fc2
    MoE: mlp.gate                         ↔ mlp.router
         mlp.experts.e.{gate,up}_proj     ↔ mlp.experts.local_experts.e.linear_fc1
         mlp.experts.e.down_proj          ↔ mlp.experts.local_experts.e.linear_fc2

and `model.embed_tokens` ↔ `embedding.word_embeddings`, `model.norm` ↔
`decoder.final_layernorm`, `lm_head` ↔ `output_layer` (absent when tied).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from typing import Mapping

import torch

from dataprep.errors import debug_requested, run_command
from trainer_bridge import cpu_compat
from trainer_bridge.checkpoint import LATEST, checkpoint_dir
from trainer_bridge.model import ModelConfig, build_model, init_distributed
from trainer_bridge.presets import (HF_CONFIG_FILES, ModelPreset, get_preset, layout_problem, param_count,
                                    preset_from_hf, read_hf_config, same_architecture)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "generation_config.json", "chat_template.jinja")
_LAYER = {  # one-to-one tensors: HF name in a layer → megatron name in a layer
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attn.q_norm.weight": "self_attention.q_layernorm.weight",
    "self_attn.k_norm.weight": "self_attention.k_layernorm.weight",
    "self_attn.o_proj.weight": "self_attention.linear_proj.weight",
    "post_attention_layernorm.weight": "pre_mlp_layernorm.weight",
}
_GLOBAL = {"model.embed_tokens.weight": "embedding.word_embeddings.weight",
           "model.norm.weight": "decoder.final_layernorm.weight",
           "lm_head.weight": "output_layer.weight"}


DIRECTIONS = ("hf2mcore", "mcore2hf")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ConvertError(ValueError):
    """A checkpoint that does not fit the architecture; the message names the tensor."""


def tensor_map(preset: ModelPreset) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every megatron tensor (one-rank GPTModel, local spec) → (how, the HF tensors it is made of),
    in layer order. how: "copy"; "qkv" (grouped-query fused q, k, v); "cat" (gate rows, then up)."""
    table: dict[str, tuple[str, tuple[str, ...]]] = {}
    for hf_name, mc_name in _GLOBAL.items():
        if not (hf_name == "lm_head.weight" and preset.tie_word_embeddings):
            table[mc_name] = ("copy", (hf_name,))
    for i in range(preset.num_layers):
        hp, mp = f"model.layers.{i}.", f"decoder.layers.{i}."
        for hf_name, mc_name in _LAYER.items():
            if preset.qk_layernorm or "_norm." not in hf_name:
                table[mp + mc_name] = ("copy", (hp + hf_name,))
        table[mp + "self_attention.linear_qkv.weight"] = ("qkv", tuple(f"{hp}self_attn.{x}_proj.weight" for x in "qkv"))
        if preset.add_qkv_bias:
            table[mp + "self_attention.linear_qkv.bias"] = ("qkv", tuple(f"{hp}self_attn.{x}_proj.bias" for x in "qkv"))
        if preset.is_moe:
            table[mp + "mlp.router.weight"] = ("copy", (hp + "mlp.gate.weight",))
            experts = [(f"{hp}mlp.experts.{e}.", f"{mp}mlp.experts.local_experts.{e}.") for e in range(preset.num_experts)]
        else:
            experts = [(hp + "mlp.", mp + "mlp.")]
        for he, me in experts:
            table[me + "linear_fc1.weight"] = ("cat", (he + "gate_proj.weight", he + "up_proj.weight"))
            table[me + "linear_fc2.weight"] = ("copy", (he + "down_proj.weight",))
    return table


def to_mcore(preset: ModelPreset, how: str, parts: list[torch.Tensor]) -> torch.Tensor:
    """The megatron tensor made of HF `parts` (see `tensor_map`)."""
    if how == "copy":
        return parts[0]
    if how == "cat":
        return torch.cat(parts)
    q, k, v = parts
    groups, d = preset.num_query_groups, preset.kv_channels
    per_group = preset.num_attention_heads // groups
    rest = q.shape[1:]
    grouped = (q.reshape(groups, per_group * d, *rest), k.reshape(groups, d, *rest), v.reshape(groups, d, *rest))
    return torch.cat(grouped, dim=1).reshape(groups * (per_group + 2) * d, *rest)


def to_hf(preset: ModelPreset, how: str, tensor: torch.Tensor) -> list[torch.Tensor]:
    """The HF tensors a megatron tensor is made of (the inverse of `to_mcore`)."""
    if how == "copy":
        return [tensor]
    if how == "cat":
        return [t.contiguous() for t in tensor.chunk(2)]
    groups, d = preset.num_query_groups, preset.kv_channels
    per_group = preset.num_attention_heads // groups
    rest = tensor.shape[1:]
    q, k, v = tensor.reshape(groups, (per_group + 2) * d, *rest).split([per_group * d, d, d], dim=1)
    return [q.reshape(groups * per_group * d, *rest).contiguous(), k.reshape(groups * d, *rest).contiguous(),
            v.reshape(groups * d, *rest).contiguous()]


def check_sources(preset: ModelPreset, table: dict, hf_names) -> None:
    """Every HF tensor the map needs is there and every HF tensor has a place, before any writing."""
    needed = {name for _, sources in table.values() for name in sources}
    missing = [name for _, sources in table.values() for name in sources if name not in hf_names]
    if missing:
        raise ConvertError(f"the checkpoint has no {missing[0]}"
                           f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    # tied checkpoints may still store lm_head (a copy of the embeddings)
    extra = sorted(set(hf_names) - needed - ({"lm_head.weight"} if preset.tie_word_embeddings else set()))
    if extra:
        raise ConvertError(f"tensors the architecture has no place for: {', '.join(extra[:5])}"
                           f"{' …' if len(extra) > 5 else ''}")


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


class LazyTensors(Mapping):
    """The tensors of a directory's safetensors files, each read from disk only when asked for.
    Plain reads, not a memory map: the bytes of tensors already converted do not stay mapped
    into the process, so memory holds only the tensors in hand."""

    def __init__(self, directory: str) -> None:
        files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
        if not files:
            raise ConvertError(f"{directory}: no .safetensors files")
        self._where: dict[str, tuple[str, int, dict]] = {}
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                try:
                    header = json.loads(f.read(size))
                except ValueError as exc:
                    raise ConvertError(f"{path}: not a safetensors file ({exc})") from None
            header.pop("__metadata__", None)
            for key, info in header.items():
                if info.get("dtype") not in _SAFETENSORS_DTYPES:
                    raise ConvertError(f"{path}: {key} has unsupported dtype {info.get('dtype')!r}")
                self._where[key] = (path, 8 + size, info)

    def __getitem__(self, name: str) -> torch.Tensor:
        path, base, info = self._where[name]
        start, end = info["data_offsets"]
        buffer = bytearray(end - start)
        with open(path, "rb") as f:
            f.seek(base + start)
            if f.readinto(buffer) != len(buffer):
                raise ConvertError(f"{path}: {name} is cut short (file truncated?)")
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        if not buffer:
            return torch.empty(info["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(info["shape"])

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _copy_tokenizer(src: str, dst: str) -> None:
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def _model(preset: ModelPreset, dtype: torch.dtype, meta: bool = False):
    """A one-rank GPTModel of the preset (local spec; on the meta device: shapes and checkpoint
    layout only, no memory), with the process group and parallel state set up once."""
    from megatron.core import parallel_state, tensor_parallel

    init_distributed("gloo")  # conversion runs on the CPU, GPUs or not
    cpu = cpu_compat.enable()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
        tensor_parallel.model_parallel_cuda_manual_seed(0, inference_rng_tracker=cpu, force_reset_rng=True)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    # the trainer's own model builder, one rank
    config = ModelConfig(preset=preset, precision=precision, seq_length=min(preset.max_position_embeddings, 4096))
    with torch.device("meta" if meta else "cpu"):
        model, _ = build_model(config, cpu=True, local_spec=True)
    return model.module if hasattr(model, "module") and precision != "fp32" else model


def _mcore_layout(preset: ModelPreset, dtype: torch.dtype) -> tuple[dict, dict[str, torch.Size]]:
    """The one-rank model's sharded state dict on the meta device, checked against `tensor_map`,
    and each tensor's shape (saving replaces factories such as fused fc1's in place)."""
    layout = _model(preset, dtype, meta=True).sharded_state_dict(prefix="")
    names = {k for k in layout if not k.endswith("._extra_state")}
    table = tensor_map(preset)
    if names != set(table):
        odd = sorted(names ^ set(table))
        raise ConvertError(f"megatron-core's GPTModel and the tensor map differ at {', '.join(odd[:3])}")
    return layout, {name: layout[name].data.shape for name in table}


def _narrow(tensor: torch.Tensor, offsets, sizes) -> torch.Tensor:
    """The view of `tensor` at `offsets` of `sizes`, axis by axis. One rank holds every tensor
    whole, so a checkpoint chunk is this slice of it (past the layer/expert axes)."""
    for axis, (start, size) in enumerate(zip(offsets, sizes)):
        tensor = tensor.narrow(axis, start, size)
    return tensor


def _streaming_strategy(produce):
    """megatron-core's torch_dist save strategy, but each tensor comes from `produce(state-dict
    name)` when the writer reaches it (one at a time, no copy-ahead), not from model memory."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor
    from megatron.core.dist_checkpointing.strategies.torch import (MCoreSavePlanner, TorchDistSaveShardedStrategy,
                                                                   _replace_state_dict_keys_with_sharded_keys,
                                                                   mcore_to_pyt_state_dict)
    from torch.distributed.checkpoint import FileSystemWriter
    from torch.distributed.checkpoint import save as dcp_save
    from torch.distributed.checkpoint.planner import WriteItemType

    class Planner(MCoreSavePlanner):
        def __init__(self, where: dict, **kwargs) -> None:
            super().__init__(**kwargs)
            self.where, self.last, self.handed = where, (None, None), None

        def resolve_data(self, write_item):
            if write_item.type == WriteItemType.BYTE_IO:
                return super().resolve_data(write_item)
            if self.handed is not None:
                # torch's writer keeps every tensor it wrote until the file is closed (it needs them
                # only for safetensors output); the previous one is on disk now, so free its memory
                self.handed.untyped_storage().resize_(0)
            chunk = write_item.tensor_data.chunk
            name, prepended = self.where[(write_item.index.fqn, tuple(write_item.index.offset))]
            if self.last[0] != name:  # a fused fc1 is written as two chunks (gate, up): make it once
                self.last = (name, produce(name))
            piece = _narrow(self.last[1], chunk.offsets[prepended:], chunk.sizes[prepended:])
            self.handed = piece.reshape(chunk.sizes).clone()  # its own storage, exactly its size
            return self.handed

    class Streaming(TorchDistSaveShardedStrategy):
        def save(self, sharded_state_dict, checkpoint_dir):
            flat, paths, names = _replace_state_dict_keys_with_sharded_keys(sharded_state_dict, True)
            where = {}
            for key, shards in flat.items():
                for shard, flat_name in zip(shards, names[key]):
                    if isinstance(shard, ShardedTensor):  # path: ("model", state-dict name[, piece])
                        where[(key, tuple(shard.global_offset))] = (paths[flat_name][1], shard.prepend_axis_num)
            writer = FileSystemWriter(str(checkpoint_dir), single_file_per_rank=True, thread_count=1,
                                      per_thread_copy_ahead=0)
            dcp_save(mcore_to_pyt_state_dict(flat, False), storage_writer=writer,
                     planner=Planner(where, dedup_replicated_tensors=False, flatten_state_dict=False))

    return Streaming("torch_dist", 1)


def _megatron_args(preset: ModelPreset, dtype: torch.dtype, layout: tuple[int, int, int]) -> argparse.Namespace:
    """The `args` Megatron-LM keeps in a checkpoint's common.pt, for trainers that read them
    (parallel sizes for its RNG check; the architecture for --use-checkpoint-args)."""
    tp, pp, ep = layout
    moe = dict(num_experts=preset.num_experts, moe_router_topk=preset.moe_router_topk,
               moe_ffn_hidden_size=preset.moe_ffn_hidden_size) if preset.is_moe else {}
    return argparse.Namespace(
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, expert_model_parallel_size=ep,
        num_layers=preset.num_layers, hidden_size=preset.hidden_size, ffn_hidden_size=preset.ffn_hidden_size,
        num_attention_heads=preset.num_attention_heads, group_query_attention=True,
        num_query_groups=preset.num_query_groups, kv_channels=preset.kv_channels,
        max_position_embeddings=preset.max_position_embeddings, position_embedding_type="rope",
        rotary_base=preset.rotary_base, normalization="RMSNorm", norm_epsilon=preset.norm_epsilon, swiglu=True,
        add_bias_linear=False, add_qkv_bias=preset.add_qkv_bias, qk_layernorm=preset.qk_layernorm,
        untie_embeddings_and_output_weights=not preset.tie_word_embeddings, padded_vocab_size=preset.vocab_size,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, params_dtype=dtype, no_save_rng=True,
        no_save_optim=True, ckpt_format="torch_dist", **moe)


@contextlib.contextmanager
def _output_dir(path: str, tensors: int, what: str):
    """(a temporary sibling of `path` to fill, a progress bar over `tensors`): renamed to `path`
    when the block completes, removed when it fails. A non-empty `path` is refused."""
    if os.path.isdir(path) and os.listdir(path):
        raise ConvertError(f"{path} exists and is not empty; remove it or choose another --save")
    tmp = f"{path.rstrip('/')}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    bar = _progress(tensors, what)
    try:
        yield tmp, bar
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    if os.path.isdir(path):
        os.rmdir(path)  # empty (checked above)
    os.replace(tmp, path)


def hf2mcore(src: str, dst: str, dtype: torch.dtype = torch.float32, layout: tuple[int, int, int] = (1, 1, 1),
             expect: ModelPreset | None = None) -> ModelPreset:
    """Convert the HF model directory `src` into a megatron-core checkpoint directory `dst`,
    tensor by tensor. `layout` (TP, PP, EP) and `expect` (a MODEL_SIZE preset) are checked first."""
    from megatron.core import dist_checkpointing

    hf_config = read_hf_config(src)
    preset = preset_from_hf(hf_config)
    if expect is not None and not same_architecture(expect, preset):
        raise ConvertError(f"{src} is not a {expect.name} model (its config.json differs in architecture)")
    problem = layout_problem(preset, expect.name if expect else preset.name, *layout)
    if problem:  # a layout the trainer would refuse fails here, before anything is written
        raise ConvertError(problem)
    hf = LazyTensors(src)
    table = tensor_map(preset)
    check_sources(preset, table, hf)
    sharded, shapes = _mcore_layout(preset, dtype)

    def produce(name: str) -> torch.Tensor:
        how, sources = table[name]
        tensor = to_mcore(preset, how, [hf[s] for s in sources]).to(dtype)
        bar.update(1)
        if tensor.shape != shapes[name]:
            raise ConvertError(f"{sources[0]}: shape {tuple(hf[sources[0]].shape)} does not fit the architecture "
                               f"({name} is {tuple(shapes[name])})")
        return tensor

    with _output_dir(dst, len(table), "hf2mcore") as (tmp, bar):
        # Megatron-LM's layout (what Pai's converters write): release/ named by the tracker file, and
        # in common.pt the args Megatron-LM reads (parallel sizes, architecture) and checkpoint_version
        # 3.0 (an older one would make it reorder q/k/v)
        state = {"model": sharded, "args": _megatron_args(preset, dtype, layout), "checkpoint_version": 3.0,
                 "iteration": 0}
        os.makedirs(os.path.join(tmp, "release"))
        dist_checkpointing.save(state, os.path.join(tmp, "release"), sharded_strategy=_streaming_strategy(produce))
        with open(os.path.join(tmp, LATEST), "w", encoding="utf-8") as f:
            f.write("release")
        with open(os.path.join(tmp, "hf_config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        _copy_tokenizer(src, tmp)
    return preset


def _progress(total: int, what: str):
    """A tqdm bar over tensors on a terminal (none when output is captured)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit=" tensors", disable=None, file=sys.stderr)


class _CheckpointPieces:
    """Reads chosen tensors of a torch_dist checkpoint into one-rank (whole) tensors, through
    torch.distributed.checkpoint's resharding reads: only the stored chunks they overlap are read,
    whatever TP/PP/EP wrote them, and an optimizer beside them is not touched."""

    def __init__(self, src: str, layout: dict, shapes: dict) -> None:
        from torch.distributed.checkpoint import FileSystemReader

        if not os.path.isfile(os.path.join(src, "metadata.json")):
            raise ConvertError(f"{src}: not a megatron-core distributed checkpoint (no metadata.json)")
        self.src, self.layout, self.shapes = src, layout, shapes
        stored = FileSystemReader(src).read_metadata().state_dict_metadata
        for name in shapes:
            for piece in self._pieces(name):
                if piece.key not in stored:
                    raise ConvertError(f"{src}: the checkpoint has no {piece.key} (another architecture?)")
                if tuple(stored[piece.key].size) != tuple(piece.global_shape):
                    raise ConvertError(f"{src}: {piece.key} has shape {tuple(stored[piece.key].size)}, the "
                                       f"architecture {tuple(piece.global_shape)}")

    def _pieces(self, name: str) -> list:
        from megatron.core.dist_checkpointing.dict_utils import nested_values
        from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

        entry = self.layout[name]
        return list(nested_values(entry.build())) if isinstance(entry, ShardedTensorFactory) else [entry]

    def __call__(self, names: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint import load as dcp_load
        from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
        from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
        from torch.distributed.checkpoint.planner import LoadPlan
        from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

        out, targets, chunks = {}, {}, {}
        for name in names:
            out[name] = torch.empty(self.shapes[name], dtype=dtype)
            for piece in self._pieces(name):
                p = piece.prepend_axis_num
                view = _narrow(out[name], piece.global_offset[p:], piece.local_shape)
                for _ in range(p):
                    view = view.unsqueeze(0)
                targets[(piece.key, tuple(piece.global_offset))] = view
                chunks.setdefault(piece.key, []).append(
                    ChunkStorageMetadata(offsets=torch.Size(piece.global_offset), sizes=view.shape))

        class Planner(DefaultLoadPlanner):
            def set_up_planner(self, state_dict, metadata=None, is_coordinator=False):
                self.stored = metadata.state_dict_metadata

            def create_local_plan(self):
                return LoadPlan([item for key, wanted in chunks.items()
                                 for item in create_read_items_for_chunk_list(key, self.stored[key], wanted)])

            def create_global_plan(self, plans):
                return plans

            def finish_plan(self, plan):
                return plan

            def resolve_tensor(self, item):
                return _narrow(targets[(item.dest_index.fqn, tuple(item.dest_index.offset))], item.dest_offsets,
                               item.lengths)

            def commit_tensor(self, item, tensor):
                pass  # read straight into the target's memory

        dcp_load({}, storage_reader=FileSystemReader(self.src), planner=Planner(), no_dist=True)
        return out


def _shard_groups(table: dict, shapes: dict, dtype: torch.dtype, max_bytes: int) -> list[list[str]]:
    """Megatron tensor names in layer order, cut into groups of at most `max_bytes` of output."""
    groups: list[list[str]] = [[]]
    size = 0
    for name in table:
        nbytes = shapes[name].numel() * dtype.itemsize
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    return groups


def shard_size(text: str) -> int:
    """`save_pretrained`'s max_shard_size: bytes, or 500MB, 5GB (powers of 1000), 2GiB (of 1024)."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
    upper = text.strip().upper()
    unit = next((u for u in sorted(units, key=len, reverse=True) if upper.endswith(u)), "")
    try:
        value = int(float(upper[:len(upper) - len(unit)]) * units.get(unit, 1))
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a shard size: {text!r} (e.g. 5GB)")
    return value


def mcore2hf(src: str, dst: str, dtype: torch.dtype = torch.float32, max_shard_bytes: int = 5 * 10**9,
             hf_config_dir: str | None = None, expect: ModelPreset | None = None) -> ModelPreset:
    """Convert a megatron-core checkpoint (hf2mcore's, or a trainer's `iter_N` directory) back to
    an HF directory, one output shard at a time. The architecture comes from `hf_config_dir` (an HF
    directory or an hf2mcore checkpoint; default: `src` itself), which also gives the tokenizer;
    `expect` (a MODEL_SIZE preset) is checked against it. A trainer's save directory stands for
    its latest iteration (latest_checkpointed_iteration.txt)."""
    from safetensors.torch import save_file

    ckpt = checkpoint_dir(src)
    # the architecture and tokenizer: --hf-config, else beside the checkpoint (hf2mcore's hf_config.json)
    candidates = [hf_config_dir] if hf_config_dir else [src, os.path.dirname(os.path.abspath(ckpt))]
    meta = next((c for c in candidates if any(os.path.isfile(os.path.join(c, n)) for n in HF_CONFIG_FILES)),
                candidates[0])
    hf_config = read_hf_config(meta)
    preset = preset_from_hf(hf_config)
    if expect is not None and not same_architecture(expect, preset):
        raise ConvertError(f"{meta} is not a {expect.name} model (its config differs in architecture)")
    table = tensor_map(preset)
    layout, shapes = _mcore_layout(preset, dtype)
    read = _CheckpointPieces(ckpt, layout, shapes)
    groups = _shard_groups(table, shapes, dtype, max_shard_bytes)
    with _output_dir(dst, len(table), "mcore2hf") as (tmp, bar):
        index = {"metadata": {"total_size": 0}, "weight_map": {}}
        for i, group in enumerate(groups, 1):
            shard = {}
            for name, tensor in read(group, dtype).items():
                how, targets = table[name]
                shard.update(zip(targets, to_hf(preset, how, tensor)))
            file = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            save_file(shard, os.path.join(tmp, file), metadata={"format": "pt"})
            index["weight_map"].update(dict.fromkeys(shard, file))
            index["metadata"]["total_size"] += sum(t.numel() * t.element_size() for t in shard.values())
            bar.update(len(group))
            del shard
        index["weight_map"] = dict(sorted(index["weight_map"].items()))
        with open(os.path.join(tmp, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
        hf_config["torch_dtype"] = hf_config["dtype"] = str(dtype).removeprefix("torch.")
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(hf_config, f, indent=2)
        _copy_tokenizer(meta, tmp)
    return preset


def _pai_arguments(argv: list[str]) -> list[str]:
    """Pai-Megatron-Patch's positional form (distributed_checkpoints_convertor scripts):
    MODEL_SIZE LOAD_DIR SAVE_DIR MG2HF USE_CUDA PR [HF_DIR] → our options."""
    if len(argv) not in (6, 7):
        raise ConvertError(f"expected MODEL_SIZE LOAD_DIR SAVE_DIR MG2HF USE_CUDA PR [HF_DIR], got {len(argv)} "
                           "parameters")
    size, load, save, mg2hf, _use_cuda, precision, *hf_dir = argv  # USE_CUDA: conversion streams on the CPU
    if mg2hf not in ("true", "false"):
        raise ConvertError(f"MG2HF={mg2hf!r}: expected true or false")
    if precision not in DTYPES:
        raise ConvertError(f"PR={precision!r}: expected fp32, bf16 or fp16")
    if mg2hf == "true":
        if not hf_dir:
            raise ConvertError("MG2HF=true needs HF_DIR (the original Hugging Face directory) as the 7th parameter")
        return ["mcore2hf", "--load", load, "--save", save, "--precision", precision, "--hf-config", hf_dir[0],
                "--model-size", size]
    return ["hf2mcore", "--load", load, "--save", save, "--precision", precision, "--model-size", size]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer_bridge.convert", description=__doc__.split("\n")[0])
    parser.add_argument("direction", choices=DIRECTIONS)
    parser.add_argument("--load", required=True, help="source directory")
    parser.add_argument("--save", required=True, help="target directory (created; must not hold files)")
    parser.add_argument("--precision", default="fp32", choices=list(DTYPES))
    parser.add_argument("--model-size", default=None,
                        help="Pai's MODEL_SIZE (0.6B … A3B): checked against the HF config.json; hf: no check")
    parser.add_argument("--target-tensor-parallel-size", "--tp", type=int, default=1, dest="tp",
                        help="hf2mcore: TP the checkpoint is meant for (checked; the checkpoint loads in any layout)")
    parser.add_argument("--target-pipeline-parallel-size", "--pp", type=int, default=1, dest="pp")
    parser.add_argument("--target-expert-parallel-size", "--ep", type=int, default=1, dest="ep")
    parser.add_argument("--max-shard-size", type=shard_size, default=5 * 10**9,
                        help="mcore2hf: largest safetensors file, as save_pretrained's (default 5GB); also "
                             "bounds the memory mcore2hf uses")
    parser.add_argument("--hf-config", default=None,
                        help="mcore2hf: the HF directory (or hf2mcore checkpoint) giving config.json and the "
                             "tokenizer, e.g. for a trainer's iter_N directory (default: --load)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def _expected_preset(model_size: str | None) -> ModelPreset | None:
    """The preset --model-size names, to check the checkpoint against (None: hf or not given)."""
    if not model_size or model_size.lower() == "hf":
        return None
    try:
        return get_preset(model_size)
    except ValueError as exc:
        raise ConvertError(f"{exc}; or hf (the architecture of config.json, unchecked)") from None


def _convert(argv: list[str]) -> int:
    started = time.perf_counter()
    if argv and argv[0] not in DIRECTIONS and not argv[0].startswith("-"):
        argv = _pai_arguments(argv)
    args = _parser().parse_args(argv)
    dtype, expect = DTYPES[args.precision], _expected_preset(args.model_size)
    if args.direction == "hf2mcore":
        preset = hf2mcore(args.load, args.save, dtype, (args.tp, args.pp, args.ep), expect=expect)
    else:
        preset = mcore2hf(args.load, args.save, dtype, args.max_shard_size, args.hf_config, expect=expect)
    print(f"{args.direction}: {preset.hf_model_type}, {preset.num_layers} layers, hidden {preset.hidden_size}, "
          f"{param_count(preset) / 1e9:.2f} B parameters in {args.precision} → {args.save} "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = debug_requested(argv)
    if "--debug" in argv and argv[0] not in DIRECTIONS:
        argv.remove("--debug")  # Pai's positional form: allowed anywhere
    warnings.filterwarnings("ignore", module=r"megatron\.core|torch\.distributed\.checkpoint")  # not about the data
    # ValueError and OSError: a checkpoint, directory or option that does not fit (ConvertError among them)
    return run_command(lambda: _convert(argv), debug=debug, expected=(ConvertError, ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
