"""Model presets by Pai's MODEL_SIZE: published architectures → megatron-core TransformerConfig.

Each preset is the architecture only (no parallelism, no precision): the training entry adds
those. `tiny` is for CPU tests and the demo.

Sources of the Qwen3 numbers (checked against each other; they agree):
- the official Hugging Face `config.json` of each model (Qwen/Qwen3-0.6B ... Qwen/Qwen3-32B,
  Qwen/Qwen3-30B-A3B, Qwen/Qwen3-235B-A22B): num_hidden_layers, hidden_size, intermediate_size,
  num_attention_heads, num_key_value_heads, head_dim=128, vocab_size=151936,
  max_position_embeddings=40960, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings
  (true only for 0.6B/1.7B/4B); MoE: num_experts=128, num_experts_per_tok=8,
  moe_intermediate_size, norm_topk_prob=true, decoder_sparse_step=1, mlp_only_layers=[]
  (every layer is MoE), no shared experts;
- Pai-Megatron-Patch `examples/qwen3/run_mcore_qwen3.sh` (the MODEL_SIZE table this module is
  named after): NUM_LAYERS, HIDDEN_SIZE, NUM_ATTENTION_HEADS, INTERMEDIATE_SIZE,
  NUM_KEY_VALUE_HEADS, MAX_POSITION_EMBEDDINGS, ROPE_THETA, RMS_NORM_EPS, `--kv-channels 128`,
  `--untie-embeddings-and-output-weights` from 8B up, NUM_EXPERTS/ROUTER_TOPK/
  MOE_INTERMEDIATE_SIZE for A3B/A22B.
- cross-check: the parameter totals these give (`param_count`) equal, to the unit, the totals
  keras-team/keras-hub publishes for its conversions of the same checkpoints
  (keras_hub/src/models/qwen3/qwen3_presets.py, qwen3_moe/qwen3_moe_presets.py); see
  tests/test_presets.py.
The "-2507" refreshes (e.g. Qwen3-4B-Instruct-2507: 262144 positions, rope_theta 5e6) are other
checkpoints and are not what these presets describe.

Note on routing: HF `norm_topk_prob=True` (softmax over all experts, keep the top k, renormalise)
equals megatron-core's `moe_router_pre_softmax=False` (top k logits, then softmax over them).
Pai's script passes `--moe-router-pre-softmax` for A22B only; the HF config says the A22B weights
are renormalised like A3B's, so both presets use pre_softmax=False.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class ModelPreset:
    name: str
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    """Dense MLP width (SwiGLU: gate and up are each this wide)."""
    num_attention_heads: int
    num_query_groups: int
    """Key/value heads (grouped-query attention)."""
    kv_channels: int
    """Per-head dimension (Qwen3 uses 128 whatever the hidden size)."""
    vocab_size: int
    max_position_embeddings: int
    rotary_base: float = 1_000_000.0
    norm_epsilon: float = 1e-6
    qk_layernorm: bool = True
    add_qkv_bias: bool = False
    """Biases on the q/k/v projections (Qwen2/Qwen2.5; Qwen3 has none)."""
    tie_word_embeddings: bool = False
    num_experts: int | None = None
    """MoE: routed experts per layer (None: dense)."""
    moe_router_topk: int = 0
    moe_ffn_hidden_size: int | None = None
    hf_model_type: str = "qwen3"
    """The transformers config class it mirrors (qwen2, qwen3, qwen3_moe)."""
    moe_norm_topk_prob: bool = True
    """MoE: renormalise the top-k routing weights to sum to 1 (HF `norm_topk_prob`)."""
    hf_repo: str | None = None
    """The Hugging Face checkpoint whose config.json the numbers come from."""

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None


TINY = ModelPreset(name="tiny", num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                   num_query_groups=2, kv_channels=16, vocab_size=129280, max_position_embeddings=4096,
                   tie_word_embeddings=False)

_QWEN3_VOCAB = 151936        # config.json vocab_size (all Qwen3 sizes; Pai: 151643 tokens + 293 extra)
_QWEN3_POSITIONS = 40960     # config.json max_position_embeddings (Pai MAX_POSITION_EMBEDDINGS)



def _qwen3(name: str, layers: int, hidden: int, ffn: int, heads: int, kv_heads: int, tie: bool, **moe) -> ModelPreset:
    """A Qwen3 row: what differs between sizes; head_dim, vocabulary and positions are shared."""
    repo = {"A3B": "Qwen/Qwen3-30B-A3B", "A22B": "Qwen/Qwen3-235B-A22B"}.get(name, f"Qwen/Qwen3-{name}")
    return ModelPreset(name=name, hf_repo=repo, hf_model_type="qwen3_moe" if moe else "qwen3", num_layers=layers,
                       hidden_size=hidden, ffn_hidden_size=ffn, num_attention_heads=heads, num_query_groups=kv_heads,
                       kv_channels=128, vocab_size=_QWEN3_VOCAB, max_position_embeddings=_QWEN3_POSITIONS,
                       tie_word_embeddings=tie, **moe)


# Dense. Per row: (num_hidden_layers, hidden_size, intermediate_size, num_attention_heads,
# num_key_value_heads, tie_word_embeddings), from Qwen/Qwen3-<size>/config.json and Pai's
# run_mcore_qwen3.sh (NUM_LAYERS, HIDDEN_SIZE, INTERMEDIATE_SIZE, NUM_ATTENTION_HEADS,
# NUM_KEY_VALUE_HEADS; tie: no `--untie-embeddings-and-output-weights` for 0.6B/1.7B/4B).
QWEN3_0_6B = _qwen3("0.6B", 28, 1024, 3072, 16, 8, tie=True)
QWEN3_1_7B = _qwen3("1.7B", 28, 2048, 6144, 16, 8, tie=True)
QWEN3_4B = _qwen3("4B", 36, 2560, 9728, 32, 8, tie=True)
QWEN3_8B = _qwen3("8B", 36, 4096, 12288, 32, 8, tie=False)
QWEN3_14B = _qwen3("14B", 40, 5120, 17408, 40, 8, tie=False)
QWEN3_32B = _qwen3("32B", 64, 5120, 25600, 64, 8, tie=False)

# MoE, from Qwen/Qwen3-30B-A3B and Qwen/Qwen3-235B-A22B config.json (num_experts=128,
# num_experts_per_tok=8, moe_intermediate_size, norm_topk_prob=true, intermediate_size is the
# unused dense width since mlp_only_layers=[]) and Pai's A3B/A22B rows (NUM_EXPERTS, ROUTER_TOPK,
# MOE_INTERMEDIATE_SIZE, NUM_KEY_VALUE_HEADS=4, untied).
QWEN3_A3B = _qwen3("A3B", 48, 2048, 6144, 32, 4, tie=False, num_experts=128, moe_router_topk=8,
                   moe_ffn_hidden_size=768, moe_norm_topk_prob=True)
QWEN3_A22B = _qwen3("A22B", 94, 4096, 12288, 64, 4, tie=False, num_experts=128, moe_router_topk=8,
                    moe_ffn_hidden_size=1536, moe_norm_topk_prob=True)

PRESETS: dict[str, ModelPreset] = {
    p.name: p for p in (TINY, QWEN3_0_6B, QWEN3_1_7B, QWEN3_4B, QWEN3_8B, QWEN3_14B, QWEN3_32B,
                        QWEN3_A3B, QWEN3_A22B)
}


def get_preset(name: str) -> ModelPreset:
    for key, preset in PRESETS.items():
        if key.lower() == name.lower():
            return preset
    raise ValueError(f"unknown MODEL_SIZE {name!r}; known: {', '.join(PRESETS)}")


def divisors(n: int) -> str:
    """The numbers that divide `n`, for messages ("1, 2, 4")."""
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def layout_problem(preset: ModelPreset, size: str, tp: int = 1, pp: int = 1, ep: int = 1, etp: int = 1,
                   uneven_pp: bool = False) -> str | None:
    """Why a TP/PP/EP(/ETP) layout cannot split the preset (megatron-core's conditions on its
    heads, query groups, layers and experts), or None. `size` names the model in the message;
    `uneven_pp`: the first stage is sized on its own (MP_PP0_LAYERS), so PP need not divide."""
    for name, value in (("TP", tp), ("PP", pp), ("EP", ep), ("ETP", etp)):
        if value < 1:
            return f"{name}={value} is too small; give an integer >= 1"
    heads, groups, layers = preset.num_attention_heads, preset.num_query_groups, preset.num_layers
    if heads % tp or groups % tp:
        return (f"TP={tp} must divide {size}'s {heads} attention heads and {groups} query groups; "
                f"use TP in {divisors(math.gcd(heads, groups))}")
    if not uneven_pp and layers % pp:
        return (f"PP={pp} does not divide {size}'s {layers} layers; use PP in {divisors(layers)} "
                "or set MP_PP0_LAYERS for an uneven first stage")
    if preset.num_experts is None:
        if ep > 1 or etp > 1:
            return f"EP={ep}/ETP={etp} on {size}, a dense model without experts; set ETP=1 and EP=1"
    elif preset.num_experts % ep:
        return f"EP={ep} does not divide {size}'s {preset.num_experts} experts; use EP in {divisors(preset.num_experts)}"
    return None


HF_FAMILIES = ("qwen2", "qwen3", "qwen3_moe")
_ARCHITECTURE = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
                 "vocab_size", "rotary_base", "norm_epsilon", "qk_layernorm", "add_qkv_bias",
                 "tie_word_embeddings", "num_experts", "moe_router_topk", "moe_ffn_hidden_size")


def same_architecture(a: ModelPreset, b: ModelPreset) -> bool:
    """Whether two presets describe the same tensors and computation (names and position limits
    aside; a MoE model's dense width is unused)."""
    dense = () if a.is_moe else ("ffn_hidden_size",)
    return all(getattr(a, f) == getattr(b, f) for f in _ARCHITECTURE + dense) and \
        (not a.is_moe or a.moe_norm_topk_prob == b.moe_norm_topk_prob)


def preset_from_hf(config: dict, name: str = "hf") -> ModelPreset:
    """The architecture of a Hugging Face `config.json` (Qwen2/Qwen2.5, Qwen3, Qwen3-MoE)."""
    family = config.get("model_type")
    if family not in HF_FAMILIES:
        raise ValueError(f"model_type {family!r} is not supported; known: {', '.join(HF_FAMILIES)}")
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    if (rope.get("rope_type") or "default") != "default" or config.get("rope_scaling"):
        raise ValueError(f"RoPE scaling {rope.get('rope_type') or config.get('rope_scaling')!r} is not supported")
    heads = config["num_attention_heads"]
    moe = {}
    if family == "qwen3_moe":
        if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) != 1:
            raise ValueError("Qwen3-MoE with dense layers (mlp_only_layers, decoder_sparse_step) is not supported")
        experts = config.get("num_experts", config.get("num_local_experts"))  # transformers 5 writes the latter
        moe = dict(num_experts=experts, moe_router_topk=config["num_experts_per_tok"],
                   moe_ffn_hidden_size=config["moe_intermediate_size"],
                   moe_norm_topk_prob=bool(config.get("norm_topk_prob", True)))
    return ModelPreset(
        name=name, hf_model_type=family, num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"], ffn_hidden_size=config["intermediate_size"],
        num_attention_heads=heads, num_query_groups=config.get("num_key_value_heads") or heads,
        kv_channels=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=config["vocab_size"], max_position_embeddings=config["max_position_embeddings"],
        rotary_base=float(theta), norm_epsilon=config.get("rms_norm_eps", 1e-6),
        qk_layernorm=family != "qwen2", add_qkv_bias=family == "qwen2",
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)), **moe)


HF_CONFIG_FILES = ("config.json", "hf_config.json")  # an HF directory's; its copy in an hf2mcore checkpoint


def read_hf_config(path: str | None) -> dict:
    """The HF config of a Hugging Face directory (`config.json`) or of an hf2mcore checkpoint
    (`hf_config.json`)."""
    for name in HF_CONFIG_FILES:
        if path and os.path.isfile(os.path.join(path, name)):
            with open(os.path.join(path, name), encoding="utf-8") as f:
                return json.load(f)
    raise ValueError(f"{path or '(none)'} is neither a Hugging Face directory (config.json) nor an hf2mcore "
                     "checkpoint (hf_config.json)")


def preset_from_directory(path: str | None) -> ModelPreset:
    """What MODEL_SIZE / --model-size `hf` stands for: the architecture of `read_hf_config(path)`."""
    try:
        config = read_hf_config(path)
    except ValueError as exc:
        raise ValueError(f"MODEL_SIZE hf takes the architecture from the checkpoint: {exc}") from None
    return preset_from_hf(config)


# -- transformers ------------------------------------------------------------------------------
def hf_config(preset: ModelPreset):
    """The `transformers` Qwen3Config / Qwen3MoeConfig of the preset's architecture."""
    common: dict[str, Any] = {
        "vocab_size": preset.vocab_size, "hidden_size": preset.hidden_size,
        "intermediate_size": preset.ffn_hidden_size, "num_hidden_layers": preset.num_layers,
        "num_attention_heads": preset.num_attention_heads, "num_key_value_heads": preset.num_query_groups,
        "head_dim": preset.kv_channels, "hidden_act": "silu",
        "max_position_embeddings": preset.max_position_embeddings, "rms_norm_eps": preset.norm_epsilon,
        "tie_word_embeddings": preset.tie_word_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": float(preset.rotary_base)},
        "attention_bias": False, "use_sliding_window": False,
    }
    if not preset.qk_layernorm:
        raise ValueError(f"{preset.name}: Qwen3 always has q/k RMSNorm; qk_layernorm=False has no HF config")
    if preset.is_moe:
        from transformers import Qwen3MoeConfig

        # transformers 5 has no head_dim field on Qwen3MoeConfig, but the attention reads
        # `config.head_dim` when present (as the real config.json sets it); without it the head
        # would be hidden/heads = 64 wide.
        config = Qwen3MoeConfig(
            **common, num_experts=preset.num_experts, num_experts_per_tok=preset.moe_router_topk,
            moe_intermediate_size=preset.moe_ffn_hidden_size, norm_topk_prob=preset.moe_norm_topk_prob,
            decoder_sparse_step=1, mlp_only_layers=[],
        )
    else:
        from transformers import Qwen3Config

        config = Qwen3Config(**common, max_window_layers=preset.num_layers)
    if getattr(config, "head_dim", None) != preset.kv_channels:
        raise RuntimeError(f"{type(config).__name__} dropped head_dim={preset.kv_channels}")
    return config


# -- megatron-core -----------------------------------------------------------------------------
def transformer_config_kwargs(preset: ModelPreset) -> dict[str, Any]:
    """Keyword arguments of megatron-core's `TransformerConfig` expressing the architecture.

    No parallelism, precision or init settings: the caller adds those (e.g. params_dtype,
    use_cpu_initialization, tensor_model_parallel_size). The GPTModel arguments (vocabulary,
    sequence length, RoPE base, tying) are in `gpt_model_kwargs`.
    """
    import torch  # here only: the launcher reads the presets without loading torch

    kwargs: dict[str, Any] = {
        "num_layers": preset.num_layers,
        "hidden_size": preset.hidden_size,
        "ffn_hidden_size": preset.ffn_hidden_size,
        "num_attention_heads": preset.num_attention_heads,
        "num_query_groups": preset.num_query_groups,
        "kv_channels": preset.kv_channels,
        "normalization": "RMSNorm",
        "layernorm_epsilon": preset.norm_epsilon,
        "gated_linear_unit": True,  # SwiGLU: silu(gate) * up
        "activation_func": torch.nn.functional.silu,
        "add_bias_linear": False,
        "add_qkv_bias": preset.add_qkv_bias,  # Qwen2 has q/k/v biases, Qwen3 none
        "qk_layernorm": preset.qk_layernorm,
    }
    if preset.is_moe:
        kwargs.update(
            num_moe_experts=preset.num_experts,
            moe_router_topk=preset.moe_router_topk,
            moe_ffn_hidden_size=preset.moe_ffn_hidden_size,
            moe_layer_freq=1,  # every layer (HF decoder_sparse_step=1)
            moe_shared_expert_intermediate_size=None,
            moe_router_score_function="softmax",
            # norm_topk_prob=True: softmax over the top-k logits (= renormalised top-k probs);
            # False: top-k of the softmax over all experts, not renormalised.
            moe_router_pre_softmax=not preset.moe_norm_topk_prob,
            moe_grouped_gemm=False,  # CPU: sequential experts (no grouped_gemm/TE)
        )
    return kwargs


def gpt_model_kwargs(preset: ModelPreset) -> dict[str, Any]:
    """Keyword arguments of megatron-core's `GPTModel` (besides config and layer spec)."""
    return {
        "vocab_size": preset.vocab_size,
        "max_sequence_length": preset.max_position_embeddings,
        "position_embedding_type": "rope",
        "rotary_percent": 1.0,
        "rotary_base": int(preset.rotary_base),
        "share_embeddings_and_output_weights": preset.tie_word_embeddings,
    }


def layer_spec(preset: ModelPreset):
    """The megatron-core local (no TransformerEngine) layer spec for the preset."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    return get_gpt_layer_local_spec(num_experts=preset.num_experts, moe_grouped_gemm=False,
                                    qk_layernorm=preset.qk_layernorm, normalization="RMSNorm")


def param_count(preset: ModelPreset) -> int:
    """Parameters of the megatron-core GPTModel for the preset (pipeline 1, tied embeddings once).

    Equal to the transformers model's count: the same tensors, fused differently (megatron's
    linear_qkv = HF q/k/v_proj, linear_fc1 = gate_proj + up_proj).
    """
    h, kv = preset.hidden_size, preset.kv_channels
    q_width = preset.num_attention_heads * kv
    kv_width = preset.num_query_groups * kv
    attention = h * (q_width + 2 * kv_width) + q_width * h      # linear_qkv + linear_proj
    if preset.qk_layernorm:
        attention += 2 * kv                                     # q_layernorm, k_layernorm (per head dim)
    if preset.add_qkv_bias:
        attention += q_width + 2 * kv_width                     # linear_qkv.bias
    if preset.is_moe:
        expert = 3 * h * preset.moe_ffn_hidden_size             # fc1 (gate, up) + fc2
        mlp = preset.num_experts * expert + preset.num_experts * h   # experts + router (no bias)
    else:
        mlp = 3 * h * preset.ffn_hidden_size
    layer = attention + mlp + 2 * h                             # input_layernorm, pre_mlp_layernorm
    embedding = preset.vocab_size * h
    output = 0 if preset.tie_word_embeddings else preset.vocab_size * h
    return embedding + preset.num_layers * layer + h + output   # + final_layernorm
