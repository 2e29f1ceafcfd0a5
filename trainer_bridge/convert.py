"""Hugging Face ↔ megatron-core checkpoints for Qwen2/Qwen2.5, Qwen3 and Qwen3-MoE models.

    python -m trainer_bridge.convert hf2mcore --load /mnt/qwen3-0.6b --save /mnt/qwen3-0.6b-mcore
    python -m trainer_bridge.convert mcore2hf --load /mnt/qwen3-0.6b-mcore --save /mnt/qwen3-0.6b-hf

The architecture is read from the HF `config.json` (`trainer_bridge.presets.preset_from_hf`).
hf2mcore writes a megatron-core distributed checkpoint (``{"model": ...}``, what the trainer's
`--load` / PRETRAIN_CHECKPOINT_PATH reads, in any parallel layout: dist checkpoints reshard on
load) plus `hf_config.json` and the tokenizer files; mcore2hf writes `config.json`, sharded
`model-0000x-of-0000y.safetensors` with their index and the tokenizer files.

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
`decoder.final_layernorm`, `lm_head` ↔ `output_layer` (absent when tied). The megatron names are
those of megatron-core's local layer spec (what the trainer uses without TransformerEngine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from typing import Mapping

import torch

from trainer_bridge.presets import ModelPreset, preset_from_hf

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


class ConvertError(ValueError):
    """A checkpoint that does not fit the architecture; the message names the tensor."""


def _fuse_qkv(p: ModelPreset, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    groups, d = p.num_query_groups, p.kv_channels
    per_group = p.num_attention_heads // groups
    rest = q.shape[1:]
    parts = (q.reshape(groups, per_group * d, *rest), k.reshape(groups, d, *rest), v.reshape(groups, d, *rest))
    return torch.cat(parts, dim=1).reshape(groups * (per_group + 2) * d, *rest)


def _split_qkv(p: ModelPreset, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    groups, d = p.num_query_groups, p.kv_channels
    per_group = p.num_attention_heads // groups
    rest = qkv.shape[1:]
    q, k, v = qkv.reshape(groups, (per_group + 2) * d, *rest).split([per_group * d, d, d], dim=1)
    return (q.reshape(groups * per_group * d, *rest), k.reshape(groups * d, *rest), v.reshape(groups * d, *rest))


def hf_to_mcore(preset: ModelPreset, hf: Mapping[str, torch.Tensor]):
    """An HF state dict as megatron-core GPTModel's (local spec, one rank): (name, tensor) pairs,
    layer by layer, so with a lazy `hf` (`LazyTensors`) one layer is in memory at a time."""
    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise ConvertError(f"the checkpoint has no {name}")
        used.add(name)
        return hf[name]

    for hf_name, mc_name in _GLOBAL.items():
        if hf_name == "lm_head.weight" and preset.tie_word_embeddings:
            used.add(hf_name)  # some tied checkpoints still store it (a copy of the embeddings)
            continue
        yield mc_name, take(hf_name)
    for i in range(preset.num_layers):
        hp, mp = f"model.layers.{i}.", f"decoder.layers.{i}."
        for hf_name, mc_name in _LAYER.items():
            if "_norm." in hf_name and not preset.qk_layernorm:
                continue
            yield mp + mc_name, take(hp + hf_name)
        yield mp + "self_attention.linear_qkv.weight", _fuse_qkv(
            preset, *(take(f"{hp}self_attn.{x}_proj.weight") for x in "qkv"))
        if preset.add_qkv_bias:
            yield mp + "self_attention.linear_qkv.bias", _fuse_qkv(
                preset, *(take(f"{hp}self_attn.{x}_proj.bias") for x in "qkv"))
        if preset.is_moe:
            yield mp + "mlp.router.weight", take(hp + "mlp.gate.weight")
            for e in range(preset.num_experts):
                he, me = f"{hp}mlp.experts.{e}.", f"{mp}mlp.experts.local_experts.{e}."
                yield me + "linear_fc1.weight", torch.cat([take(he + "gate_proj.weight"), take(he + "up_proj.weight")])
                yield me + "linear_fc2.weight", take(he + "down_proj.weight")
        else:
            yield mp + "mlp.linear_fc1.weight", torch.cat([take(hp + "mlp.gate_proj.weight"),
                                                           take(hp + "mlp.up_proj.weight")])
            yield mp + "mlp.linear_fc2.weight", take(hp + "mlp.down_proj.weight")
    extra = sorted(set(hf) - used)
    if extra:
        raise ConvertError(f"tensors the architecture has no place for: {', '.join(extra[:5])}"
                           f"{' …' if len(extra) > 5 else ''}")


def mcore_to_hf(preset: ModelPreset, mc: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """megatron-core GPTModel's state dict (local spec, one rank) → the HF one."""
    out: dict[str, torch.Tensor] = {}
    for hf_name, mc_name in _GLOBAL.items():
        if hf_name == "lm_head.weight" and preset.tie_word_embeddings:
            continue
        out[hf_name] = mc[mc_name]
    for i in range(preset.num_layers):
        hp, mp = f"model.layers.{i}.", f"decoder.layers.{i}."
        for hf_name, mc_name in _LAYER.items():
            if "_norm." in hf_name and not preset.qk_layernorm:
                continue
            out[hp + hf_name] = mc[mp + mc_name]
        for x, t in zip("qkv", _split_qkv(preset, mc[mp + "self_attention.linear_qkv.weight"])):
            out[f"{hp}self_attn.{x}_proj.weight"] = t
        if preset.add_qkv_bias:
            for x, t in zip("qkv", _split_qkv(preset, mc[mp + "self_attention.linear_qkv.bias"])):
                out[f"{hp}self_attn.{x}_proj.bias"] = t
        if preset.is_moe:
            out[hp + "mlp.gate.weight"] = mc[mp + "mlp.router.weight"]
            for e in range(preset.num_experts):
                he, me = f"{hp}mlp.experts.{e}.", f"{mp}mlp.experts.local_experts.{e}."
                out[he + "gate_proj.weight"], out[he + "up_proj.weight"] = mc[me + "linear_fc1.weight"].chunk(2)
                out[he + "down_proj.weight"] = mc[me + "linear_fc2.weight"]
        else:
            out[hp + "mlp.gate_proj.weight"], out[hp + "mlp.up_proj.weight"] = mc[mp + "mlp.linear_fc1.weight"].chunk(2)
            out[hp + "mlp.down_proj.weight"] = mc[mp + "mlp.linear_fc2.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def read_hf_config(directory: str, name: str = "config.json") -> dict:
    """The HF config in a model directory (`hf_config.json` in an hf2mcore checkpoint)."""
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise ConvertError(f"{directory}: no {name} (not a Hugging Face model directory"
                           f"{' or an hf2mcore checkpoint' if name != 'config.json' else ''})")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class LazyTensors(Mapping):
    """The tensors of a directory's safetensors files, each read from its (memory-mapped) file
    only when asked for."""

    def __init__(self, directory: str) -> None:
        from safetensors import safe_open

        files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
        if not files:
            raise ConvertError(f"{directory}: no .safetensors files")
        self._files = [safe_open(os.path.join(directory, n), "pt") for n in files]
        self._where = {key: f for f in self._files for key in f.keys()}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._where[name].get_tensor(name)

    def __iter__(self):
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)



def _copy_tokenizer(src: str, dst: str) -> None:
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def _model(preset: ModelPreset, dtype: torch.dtype):
    """A one-rank GPTModel of the preset on CPU (process group and parallel state set up once)."""
    from megatron.core import parallel_state, tensor_parallel

    from trainer_bridge import cpu_compat
    from trainer_bridge.train import build_model, init_distributed, parse_args

    init_distributed()
    cpu = cpu_compat.enable()
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel()
        tensor_parallel.model_parallel_cuda_manual_seed(0, inference_rng_tracker=cpu, force_reset_rng=True)
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    # the training entry's own model builder (one rank; the preset replaces --model-size's)
    config = parse_args(["--model-size", "tiny", "--data-path", "-", "--train-iters", "1", "--precision", precision,
                         "--seq-length", str(min(preset.max_position_embeddings, 4096))])
    model, _ = build_model(config, cpu=True, preset=preset)
    return model.module if hasattr(model, "module") and precision != "fp32" else model


def hf2mcore(src: str, dst: str, dtype: torch.dtype = torch.float32) -> ModelPreset:
    """Convert the HF model directory `src` into a megatron-core checkpoint directory `dst`."""
    from megatron.core import dist_checkpointing

    hf_config = read_hf_config(src)
    preset = preset_from_hf(hf_config)
    model = _model(preset, dtype)
    params = {k: v for k, v in model.state_dict().items() if not k.endswith("._extra_state")}
    filled: set[str] = set()
    with torch.no_grad():  # tensor by tensor into the model's own storage: one layer in memory at a time
        for name, tensor in hf_to_mcore(preset, LazyTensors(src)):
            if name not in params or params[name].shape != tensor.shape:
                raise ConvertError(f"{name}: no such tensor of shape {tuple(tensor.shape)} in the model")
            params[name].copy_(tensor)
            filled.add(name)
    if filled != set(params):
        raise ConvertError(f"the checkpoint does not give {sorted(set(params) - filled)[:5]}")
    os.makedirs(dst, exist_ok=True)
    dist_checkpointing.save({"model": model.sharded_state_dict(prefix="")}, dst)
    with open(os.path.join(dst, "hf_config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    _copy_tokenizer(src, dst)
    return preset


def mcore2hf(src: str, dst: str, dtype: torch.dtype = torch.float32, max_shard_bytes: int = 5 << 30,
             hf_config_dir: str | None = None) -> ModelPreset:
    """Convert a megatron-core checkpoint (hf2mcore's, or a trainer's `iter_N` directory) back to
    an HF directory. The architecture comes from `hf_config_dir` (an HF directory or an
    hf2mcore checkpoint; default: `src` itself), which also gives the tokenizer files."""
    from megatron.core import dist_checkpointing
    from safetensors.torch import save_file

    meta = hf_config_dir or src
    has_hf_config = os.path.isfile(os.path.join(meta, "hf_config.json"))
    hf_config = read_hf_config(meta, "hf_config.json" if has_hf_config else "config.json")
    preset = preset_from_hf(hf_config)
    model = _model(preset, dtype)
    state = dist_checkpointing.load({"model": model.sharded_state_dict(prefix="")}, src)["model"]
    model.load_state_dict(state, strict=False)
    tensors = mcore_to_hf(preset, {k: v.detach().to(dtype) for k, v in model.state_dict().items()
                                   if not k.endswith("._extra_state")})
    os.makedirs(dst, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": {}}
    for i, shard in enumerate(shards, 1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(dst, file), metadata={"format": "pt"})
        index["weight_map"].update(dict.fromkeys(shard, file))
    with open(os.path.join(dst, "model.safetensors.index.json"), "w", encoding="utf-8") as f:
        json.dump(index, f, indent=2)
    hf_config["torch_dtype"] = hf_config["dtype"] = str(dtype).removeprefix("torch.")
    with open(os.path.join(dst, "config.json"), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    _copy_tokenizer(meta, dst)
    return preset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer_bridge.convert", description=__doc__.split("\n")[0])
    parser.add_argument("direction", choices=["hf2mcore", "mcore2hf"])
    parser.add_argument("--load", required=True, help="source directory")
    parser.add_argument("--save", required=True, help="target directory")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--hf-config", default=None,
                        help="mcore2hf: the HF directory (or hf2mcore checkpoint) giving config.json and the "
                             "tokenizer, e.g. for a trainer's iter_N directory (default: --load)")
    args = parser.parse_args(argv)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    try:
        if args.direction == "hf2mcore":
            preset = hf2mcore(args.load, args.save, dtype)
        else:
            preset = mcore2hf(args.load, args.save, dtype, hf_config_dir=args.hf_config)
    except (ConvertError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.direction}: {preset.hf_model_type}, {preset.num_layers} layers, hidden {preset.hidden_size} "
          f"→ {args.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
