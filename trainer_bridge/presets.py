"""Model presets by Pai's MODEL_SIZE: published architectures → megatron-core TransformerConfig.

Each preset is the architecture only (no parallelism, no precision): the training entry adds
those. `tiny` is for CPU tests and the demo.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    tie_word_embeddings: bool = False
    num_experts: int | None = None
    """MoE: routed experts per layer (None: dense)."""
    moe_router_topk: int = 0
    moe_ffn_hidden_size: int | None = None
    hf_model_type: str = "qwen3"
    """The transformers config class it mirrors (qwen3, qwen3_moe)."""

    @property
    def is_moe(self) -> bool:
        return self.num_experts is not None


TINY = ModelPreset(name="tiny", num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                   num_query_groups=2, kv_channels=16, vocab_size=129280, max_position_embeddings=4096,
                   tie_word_embeddings=False)

PRESETS: dict[str, ModelPreset] = {"tiny": TINY}


def get_preset(name: str) -> ModelPreset:
    for key, preset in PRESETS.items():
        if key.lower() == name.lower():
            return preset
    raise ValueError(f"unknown MODEL_SIZE {name!r}; known: {', '.join(PRESETS)}")
