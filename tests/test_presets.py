"""trainer_bridge.presets: the Qwen3 presets are the published architectures, and megatron-core
builds from them exactly the model transformers builds from the same preset.

- Every full preset: `param_count` == the transformers model (meta device, no weights) == the real
  megatron-core GPTModel (local spec, meta device) == the total published for the checkpoint.
- Scaled-down variants (same structure, narrow): megatron-core and transformers given the same
  weights produce the same logits (dense tied/untied, MoE with and without norm_topk_prob).
- The tiny preset builds and runs forward/backward on CPU.
"""

import dataclasses

import pytest
import torch

from trainer_bridge.presets import (
    PRESETS,
    ModelPreset,
    get_preset,
    gpt_model_kwargs,
    hf_config,
    layer_spec,
    param_count,
    transformer_config_kwargs,
)

QWEN3 = ["0.6B", "1.7B", "4B", "8B", "14B", "32B", "A3B", "A22B"]

# Totals published with the official checkpoints' conversions: keras-team/keras-hub
# keras_hub/src/models/qwen3/qwen3_presets.py and qwen3_moe/qwen3_moe_presets.py ("params", equal to
# the HF model's num_parameters() by their conversion check). Rounded, they are the model cards'
# 0.6B / 1.7B / 4.0B / 8.2B / 14.8B / 32.8B / 30.5B / 235B.
PUBLISHED_PARAMS = {
    "0.6B": 596_049_920, "1.7B": 1_720_574_976, "4B": 4_022_468_096, "8B": 8_190_735_360,
    "14B": 14_768_307_200, "32B": 32_762_123_264, "A3B": 30_532_122_624, "A22B": 235_093_634_560,
}
# Model cards (and the keras-hub descriptions): activated parameters of the MoE models.
PUBLISHED_ACTIVE_BILLIONS = {"A3B": 3.3, "A22B": 22}


def hf_meta_count(preset: ModelPreset) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(preset))
    if preset.tie_word_embeddings:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    return sum(p.numel() for p in model.parameters())  # shared tensors once


@pytest.fixture(scope="module")
def megatron(tmp_path_factory):
    """World-size-1 gloo process group and megatron-core model-parallel state, CPU for 'cuda'."""
    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed
    from megatron.core.transformer.moe import moe_utils

    mp = pytest.MonkeyPatch()
    # RoPE moves its frequencies to torch.cuda.current_device() on the first forward.
    mp.setattr(torch.cuda, "current_device", lambda: torch.device("cpu"))
    mp.setattr(moe_utils, "te_general_gemm", None, raising=False)  # 0.16.1 NameError without TE
    created = not dist.is_initialized()
    if created:
        store = tmp_path_factory.mktemp("dist") / "store"
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    initialized_mp = not parallel_state.model_parallel_is_initialized()
    if initialized_mp:
        parallel_state.initialize_model_parallel()
    model_parallel_cuda_manual_seed(1234, inference_rng_tracker=True, force_reset_rng=True)
    yield
    if initialized_mp:
        parallel_state.destroy_model_parallel()
    if created:
        dist.destroy_process_group()
    mp.undo()


def build_gpt(preset: ModelPreset, **config):
    from megatron.core.models.gpt import GPTModel
    from megatron.core.transformer import TransformerConfig

    tconfig = TransformerConfig(**transformer_config_kwargs(preset), use_cpu_initialization=True, **config)
    return GPTModel(config=tconfig, transformer_layer_spec=layer_spec(preset), **gpt_model_kwargs(preset))


def causal_inputs(vocab: int, batch: int = 2, seq: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    positions = torch.arange(seq).unsqueeze(0).expand(batch, -1)
    mask = torch.triu(torch.ones(seq, seq, dtype=torch.bool), diagonal=1)[None, None]  # True = masked
    return ids, positions, mask


# -- the presets -------------------------------------------------------------------------------
def test_registry():
    assert list(PRESETS) == ["tiny", *QWEN3]
    assert get_preset("a22b") is get_preset("A22B") is PRESETS["A22B"]
    assert get_preset("0.6b").name == "0.6B"
    with pytest.raises(ValueError, match="unknown MODEL_SIZE"):
        get_preset("7B")


@pytest.mark.parametrize("name", QWEN3)
def test_qwen3_common_architecture(name):
    p = get_preset(name)
    assert (p.kv_channels, p.vocab_size, p.max_position_embeddings) == (128, 151936, 40960)
    assert (p.rotary_base, p.norm_epsilon, p.qk_layernorm) == (1_000_000.0, 1e-6, True)
    assert p.tie_word_embeddings == (name in ("0.6B", "1.7B", "4B"))
    assert p.is_moe == (name in ("A3B", "A22B"))
    assert p.hf_model_type == ("qwen3_moe" if p.is_moe else "qwen3")
    if p.is_moe:
        assert (p.num_experts, p.moe_router_topk, p.moe_norm_topk_prob) == (128, 8, True)


@pytest.mark.parametrize("name", QWEN3)
def test_hf_config(name):
    p = get_preset(name)
    c = hf_config(p)
    assert c.model_type == p.hf_model_type
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (p.num_layers, p.hidden_size,
                                                                         p.ffn_hidden_size)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (p.num_attention_heads,
                                                                          p.num_query_groups, 128)
    assert c.rope_parameters["rope_theta"] == 1_000_000.0 and c.rms_norm_eps == 1e-6
    assert c.tie_word_embeddings == p.tie_word_embeddings and c.attention_bias is False
    if p.is_moe:
        assert (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size) == (128, 8, p.moe_ffn_hidden_size)
        assert c.norm_topk_prob is True and c.mlp_only_layers == [] and c.decoder_sparse_step == 1


@pytest.mark.parametrize("name", QWEN3)
def test_transformer_config_kwargs(name):
    p = get_preset(name)
    kw = transformer_config_kwargs(p)
    assert kw["activation_func"] is torch.nn.functional.silu and kw["gated_linear_unit"] is True
    assert kw["normalization"] == "RMSNorm" and kw["layernorm_epsilon"] == 1e-6
    assert kw["add_bias_linear"] is False and kw["add_qkv_bias"] is False and kw["qk_layernorm"] is True
    assert kw["kv_channels"] == 128 and kw["num_query_groups"] == p.num_query_groups
    forbidden = {"tensor_model_parallel_size", "pipeline_model_parallel_size", "expert_model_parallel_size",
                 "sequence_parallel", "bf16", "fp16", "params_dtype", "use_cpu_initialization"}
    assert not forbidden & set(kw)
    if p.is_moe:
        assert (kw["num_moe_experts"], kw["moe_router_topk"], kw["moe_ffn_hidden_size"]) == (
            128, 8, p.moe_ffn_hidden_size)
        assert kw["moe_router_pre_softmax"] is False and kw["moe_grouped_gemm"] is False
    else:
        assert "num_moe_experts" not in kw
    gm = gpt_model_kwargs(p)
    assert gm["rotary_base"] == 1_000_000 and gm["position_embedding_type"] == "rope"
    assert gm["share_embeddings_and_output_weights"] == p.tie_word_embeddings
    assert (gm["vocab_size"], gm["max_sequence_length"]) == (151936, 40960)


# -- parameter counts --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", *QWEN3])
def test_param_count_equals_transformers(name):
    p = get_preset(name)
    assert param_count(p) == hf_meta_count(p)


@pytest.mark.parametrize("name", QWEN3)
def test_param_count_is_the_published_total(name):
    p = get_preset(name)
    assert param_count(p) == PUBLISHED_PARAMS[name]
    if p.is_moe:
        idle = p.num_layers * (p.num_experts - p.moe_router_topk) * 3 * p.hidden_size * p.moe_ffn_hidden_size
        unit = 0.1 if name == "A3B" else 1.0  # the cards truncate: 3.35 B -> "3.3B", 22.19 B -> "22B"
        assert PUBLISHED_ACTIVE_BILLIONS[name] <= (param_count(p) - idle) / 1e9 < PUBLISHED_ACTIVE_BILLIONS[name] + unit


@pytest.mark.parametrize("name", ["tiny", *QWEN3])
@pytest.mark.slow
def test_param_count_equals_megatron(megatron, name):
    """The real GPTModel of the full preset, on the meta device (no memory, no init)."""
    p = get_preset(name)
    with torch.device("meta"):
        model = build_gpt(p, perform_initialization=False)
    assert sum(t.numel() for t in model.parameters()) == param_count(p)
    assert model.share_embeddings_and_output_weights == p.tie_word_embeddings
    if p.tie_word_embeddings:
        assert model.output_layer.weight is None
    layer = model.decoder.layers[0]
    assert layer.self_attention.linear_qkv.weight.shape == (
        (p.num_attention_heads + 2 * p.num_query_groups) * p.kv_channels, p.hidden_size)
    if p.is_moe:
        assert len(layer.mlp.experts.local_experts) == p.num_experts
        assert layer.mlp.experts.local_experts[0].linear_fc1.weight.shape == (2 * p.moe_ffn_hidden_size,
                                                                              p.hidden_size)


# -- the same function -------------------------------------------------------------------------
def narrow(name: str, **changes) -> ModelPreset:
    """The preset's structure (tying, GQA, head_dim > hidden/heads, MoE) at toy size."""
    p = get_preset(name)
    small = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 96, "num_attention_heads": 4, "num_query_groups": 2,
                 "kv_channels": 32, "vocab_size": 256}
    if p.is_moe:
        small.update(num_experts=8, moe_router_topk=2, moe_ffn_hidden_size=48)
    return dataclasses.replace(p, name=f"{name}-narrow", **(small | changes))


def copy_megatron_to_hf(gpt, hf, p: ModelPreset) -> None:
    """megatron-core local-spec weights into the transformers Qwen3/Qwen3Moe model."""
    sd = {k: v for k, v in gpt.state_dict().items() if "_extra_state" not in k}
    heads_per_group = p.num_attention_heads // p.num_query_groups
    kv = p.kv_channels
    with torch.no_grad():
        hf.model.embed_tokens.weight.copy_(sd["embedding.word_embeddings.weight"])
        hf.model.norm.weight.copy_(sd["decoder.final_layernorm.weight"])
        if not p.tie_word_embeddings:
            hf.lm_head.weight.copy_(sd["output_layer.weight"])
        for i, layer in enumerate(hf.model.layers):
            pre = f"decoder.layers.{i}."
            attn = layer.self_attn
            layer.input_layernorm.weight.copy_(sd[pre + "input_layernorm.weight"])
            layer.post_attention_layernorm.weight.copy_(sd[pre + "pre_mlp_layernorm.weight"])
            # linear_qkv rows: per query group [its query heads, one key head, one value head].
            qkv = sd[pre + "self_attention.linear_qkv.weight"].view(p.num_query_groups, heads_per_group + 2, kv, -1)
            attn.q_proj.weight.copy_(qkv[:, :heads_per_group].reshape(-1, p.hidden_size))
            attn.k_proj.weight.copy_(qkv[:, heads_per_group].reshape(-1, p.hidden_size))
            attn.v_proj.weight.copy_(qkv[:, heads_per_group + 1].reshape(-1, p.hidden_size))
            attn.o_proj.weight.copy_(sd[pre + "self_attention.linear_proj.weight"])
            attn.q_norm.weight.copy_(sd[pre + "self_attention.q_layernorm.weight"])
            attn.k_norm.weight.copy_(sd[pre + "self_attention.k_layernorm.weight"])
            if p.is_moe:
                layer.mlp.gate.weight.copy_(sd[pre + "mlp.router.weight"])
                for e in range(p.num_experts):
                    ex = f"{pre}mlp.experts.local_experts.{e}."
                    layer.mlp.experts.gate_up_proj[e].copy_(sd[ex + "linear_fc1.weight"])  # [gate; up]
                    layer.mlp.experts.down_proj[e].copy_(sd[ex + "linear_fc2.weight"])
            else:
                gate, up = sd[pre + "mlp.linear_fc1.weight"].chunk(2, dim=0)
                layer.mlp.gate_proj.weight.copy_(gate)
                layer.mlp.up_proj.weight.copy_(up)
                layer.mlp.down_proj.weight.copy_(sd[pre + "mlp.linear_fc2.weight"])


@pytest.mark.parametrize("name,changes", [
    ("0.6B", {}),                                  # tied embeddings
    ("8B", {}),                                    # untied
    ("A3B", {}),                                   # MoE, norm_topk_prob
    ("A22B", {"moe_norm_topk_prob": False}),       # MoE, pre-softmax routing (HF norm_topk_prob=False)
])
def test_megatron_and_transformers_compute_the_same(megatron, name, changes):
    from transformers import AutoModelForCausalLM

    p = narrow(name, **changes)
    gpt = build_gpt(p, init_method_std=0.2).eval()
    with torch.no_grad():  # non-trivial norm weights so a swapped norm would show
        for key, t in gpt.named_parameters():
            if t.dim() == 1:
                t.add_(0.3 * torch.randn_like(t))
    hf = AutoModelForCausalLM.from_config(hf_config(p), attn_implementation="eager").eval()
    assert sum(t.numel() for t in gpt.parameters()) == sum(t.numel() for t in hf.parameters()) == param_count(p)
    copy_megatron_to_hf(gpt, hf, p)
    ids, positions, mask = causal_inputs(p.vocab_size)
    with torch.no_grad():
        ours = gpt(ids, positions, mask)
        theirs = hf(input_ids=ids).logits
    assert ours.shape == theirs.shape == (2, 12, p.vocab_size)
    assert ours.abs().max() > 1.0  # not a vacuous comparison of near-zero logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_tiny_builds_and_runs_on_cpu(megatron):
    p = get_preset("tiny")
    gpt = build_gpt(p)
    assert sum(t.numel() for t in gpt.parameters()) == param_count(p)
    ids, positions, mask = causal_inputs(p.vocab_size, seq=16)
    labels = torch.roll(ids, -1, dims=1)
    loss = gpt(ids, positions, mask, labels=labels)  # per-token losses [b, s]
    assert loss.shape == (2, 16) and torch.isfinite(loss).all()
    assert abs(loss.mean().item() - torch.log(torch.tensor(float(p.vocab_size))).item()) < 1.0  # ~uniform at init
    loss.mean().backward()
    grads = [t.grad for t in gpt.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    gpt.eval()
    with torch.no_grad():
        logits = gpt(ids, positions, mask)
    assert logits.shape == (2, 16, p.vocab_size) and logits.device.type == "cpu"
