"""HF ↔ megatron-core conversion on tiny random Qwen2 and Qwen3 models (CPU, no downloads):
megatron-core's GPTModel loaded from the converted checkpoint gives the HF model's logits, and
converting back gives every tensor unchanged, loadable by AutoModelForCausalLM."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, cli_env, logged_losses

pytestmark = pytest.mark.slow  # every test here starts processes (see docs/ARCHITECTURE.md)

SCRIPT = r'''
import json, sys, torch
from trainer_bridge.checkpoint import checkpoint_dir, load_weights
from trainer_bridge.convert import _model, read_hf_config
from trainer_bridge.presets import preset_from_hf
src, ckpt, tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
preset = preset_from_hf(read_hf_config(src))
model = _model(preset, torch.float32)
load_weights(model, model.sharded_state_dict(prefix=""), checkpoint_dir(ckpt))
model.eval()
ids = torch.tensor([tokens])
pos = torch.arange(len(tokens)).unsqueeze(0)
mask = torch.triu(torch.ones(1, 1, len(tokens), len(tokens), dtype=torch.bool), diagonal=1)
with torch.no_grad():
    logits = model(ids, pos, mask)
print(json.dumps(logits[0].tolist()))
'''


def tiny_model(family: str, tie: bool, path: Path) -> Path:
    from transformers import (Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3MoeConfig,
                              Qwen3MoeForCausalLM)

    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=tie, max_position_embeddings=128)
    if family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16))
    elif family == "qwen3_moe":
        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**common, head_dim=16, num_experts=4, num_experts_per_tok=2,
                                                   moe_intermediate_size=32, norm_topk_prob=True))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    with torch.no_grad():  # random norms and biases too, so a swapped tensor shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(str(path))
    return path


def token_data(tmp_path: Path, seed: int) -> str:
    """A small pretrain idxmap of random ids below the tiny models' vocabulary (eod 1)."""
    import numpy as np

    from dataset_engine.idxmap import IdxmapWriter, write_sidecar

    prefix = str(tmp_path / "data_text_document")
    rng = np.random.default_rng(seed)
    with IdxmapWriter(prefix, np.uint16) as writer:
        for _ in range(64):
            writer.add_document(np.append(rng.integers(2, 96, int(rng.integers(8, 40))), 1))
    write_sidecar(prefix, {"tokenizer": {"eod": 1}})
    return prefix


def run(*args):
    done = subprocess.run([sys.executable, *map(str, args)], env=cli_env(), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("family,tie", [("qwen3", False), ("qwen3", True), ("qwen2", False), ("qwen2", True),
                                        ("qwen3_moe", False)])
def test_hf2mcore_logits_and_back(tmp_path, family, tie):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    src = tiny_model(family, tie, tmp_path / "hf")
    ckpt, back = tmp_path / "mcore", tmp_path / "back"
    layout = ["--tp", "2", "--pp", "2"] + (["--ep", "2"] if family == "qwen3_moe" else [])
    run("-m", "trainer_bridge.convert", "hf2mcore", "--load", src, "--save", ckpt, *layout)
    # Megatron-LM's layout, as Pai's converters write it: release/ named by the tracker file, and
    # the args Megatron-LM reads in common.pt
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "release"
    assert (ckpt / "release" / "metadata.json").is_file() and (ckpt / "hf_config.json").is_file()
    import argparse
    with torch.serialization.safe_globals([argparse.Namespace, torch.float32.__class__]):
        common = torch.load(ckpt / "release" / "common.pt", map_location="cpu")
    assert common["checkpoint_version"] == 3.0
    args = common["args"]
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size) == (2, 2)
    assert args.expert_model_parallel_size == (2 if family == "qwen3_moe" else 1)
    assert args.num_layers == 2 and args.untie_embeddings_and_output_weights == (not tie)
    tokens = [3, 17, 5, 88, 41, 2, 60, 9]
    got = torch.tensor(json.loads(run("-c", SCRIPT, src, ckpt, json.dumps(tokens)).strip().splitlines()[-1]))
    hf = AutoModelForCausalLM.from_pretrained(str(src)).eval()
    with torch.no_grad():
        want = hf(torch.tensor([tokens])).logits[0]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    run("-m", "trainer_bridge.convert", "mcore2hf", "--load", ckpt, "--save", back)
    original = load_file(str(src / "model.safetensors"))
    index = json.loads((back / "model.safetensors.index.json").read_text())
    converted = {}
    for file in set(index["weight_map"].values()):
        converted.update(load_file(str(back / file)))
    if tie:
        original.pop("lm_head.weight", None)
    assert sorted(converted) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(converted[name], tensor), name
    reloaded = AutoModelForCausalLM.from_pretrained(str(back)).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(torch.tensor([tokens])).logits[0], want, rtol=0, atol=0)


def test_unknown_family_is_one_line(tmp_path):
    d = tmp_path / "llama"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    done = subprocess.run([sys.executable, "-m", "trainer_bridge.convert", "hf2mcore", "--load", str(d),
                           "--save", str(tmp_path / "out")], env=cli_env(), capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: model_type 'llama' is not supported")


TP_SCRIPT = r'''
import json, sys, torch
from megatron.core import parallel_state, tensor_parallel
from trainer_bridge import cpu_compat
from trainer_bridge.checkpoint import checkpoint_dir, converted_hf, load_weights
from trainer_bridge.config import parse_args
from trainer_bridge.model import ModelConfig, build_model, init_distributed
hf_dir, tokens = sys.argv[1], json.loads(sys.argv[2])
init_distributed()
cpu_compat.enable()
parallel_state.initialize_model_parallel(tensor_model_parallel_size=2)
tensor_parallel.model_parallel_cuda_manual_seed(0, inference_rng_tracker=True, force_reset_rng=True)
config = parse_args(["--model-size", "hf", "--load", hf_dir, "--data-path", "-", "--train-iters", "1",
                     "--tensor-model-parallel-size", "2", "--precision", "fp32"])
model, _ = build_model(ModelConfig.of(config), cpu=True)
load_weights(model, model.sharded_state_dict(prefix=""), checkpoint_dir(converted_hf(hf_dir, config.preset())))
model.eval()
ids = torch.tensor([tokens])
pos = torch.arange(len(tokens)).unsqueeze(0)
mask = torch.triu(torch.ones(1, 1, len(tokens), len(tokens), dtype=torch.bool), diagonal=1)
with torch.no_grad():
    logits = tensor_parallel.gather_from_tensor_model_parallel_region(model(ids, pos, mask))
if torch.distributed.get_rank() == 0:
    print("LOGITS " + json.dumps(logits[0].tolist()))
torch.distributed.barrier()  # neither rank leaves while the other still talks to it (gloo aborts)
torch.distributed.destroy_process_group()
'''


@pytest.mark.parametrize("given", ["hf-directory", "hf2mcore-tp2"])
def test_tp2_load_gives_the_same_logits(tmp_path, given):
    """A checkpoint converted for TP=2 (hf2mcore --tp 2), or an HF directory given as --load
    (converted once, cached), loads into a TP=2 model on two gloo processes; the logits are the
    HF model's."""
    from transformers import AutoModelForCausalLM

    src = tiny_model("qwen3", False, tmp_path / "hf")
    load = src
    if given == "hf2mcore-tp2":
        load = tmp_path / "mcore-tp2"
        run("-m", "trainer_bridge.convert", "hf2mcore", "--load", src, "--save", load, "--tp", "2")
    tokens = [5, 1, 77, 20, 33, 8]
    env = cli_env(DATAPREP_CACHE=str(tmp_path / "cache"))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29552" if given == "hf-directory" else "29551", "--no-python",
                           sys.executable, "-c", TP_SCRIPT, str(load), json.dumps(tokens)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("LOGITS "))
    got = torch.tensor(json.loads(line[len("LOGITS "):]))
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(str(src)).eval()(torch.tensor([tokens])).logits[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if given == "hf-directory":
        assert len(list((tmp_path / "cache" / "hf2mcore").iterdir())) == 1  # converted once, cached
    else:
        assert not (tmp_path / "cache" / "hf2mcore").exists()  # used as it is


def test_continue_from_hf_then_export(tmp_path):
    """The users' flow: an HF model as --load (--model-size hf), a few training steps with a
    checkpoint, then mcore2hf of that checkpoint: transformers loads it, and its weights moved."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    src = tiny_model("qwen3", False, tmp_path / "hf")
    prefix = token_data(tmp_path, seed=0)
    save = tmp_path / "ckpt"
    done = subprocess.run(
        [sys.executable, "-m", "trainer_bridge.train", "--model-size", "hf", "--load", str(src), "--data-path", prefix,
         "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3",
         "--train-iters", "3", "--save", str(save), "--save-interval", "3", "--eval-interval", "100"],
        env=cli_env(DATAPREP_CACHE=str(tmp_path / "cache")), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    back = tmp_path / "back"
    run("-m", "trainer_bridge.convert", "mcore2hf", "--load", save / "iter_0000003", "--hf-config", src,
        "--save", back)
    model = AutoModelForCausalLM.from_pretrained(str(back))
    trained = dict(model.state_dict())
    original = load_file(str(src / "model.safetensors"))
    assert sorted(k for k in trained) == sorted(original)
    assert any(not torch.equal(trained[k], original[k]) for k in original)  # training changed it


def train_from_hf(src: Path, data: str, save: Path, tmp_path: Path, *layout: str, port: int = 0) -> dict[int, float]:
    """Two steps of the trainer from the HF directory `src` (--model-size hf); 2 processes when a
    layout is given. The logged loss per step."""
    entry = ["-m", "trainer_bridge.train", "--model-size", "hf", "--load", str(src), "--data-path", data,
             "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3",
             "--train-iters", "2", "--log-interval", "1", "--eval-interval", "100", "--save", str(save),
             "--save-interval", "2", *layout]
    cmd = [sys.executable, *(["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
                             if layout else []), *entry]
    done = subprocess.run(cmd, env=cli_env(DATAPREP_CACHE=str(tmp_path / "cache")), capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return logged_losses(done.stdout)


def test_moe_from_hf_in_pp2_and_ep2_and_back(tmp_path):
    """A Qwen3-MoE HF directory loads into PP=2 and EP=2 runs on two gloo processes: their first
    loss (the loaded weights, before any update) is the one-process run's. mcore2hf reads the
    checkpoint the PP=2 run saved (written by two processes): transformers loads it, and its
    tensors are the one-process run's after the same two steps."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    src = tiny_model("qwen3_moe", False, tmp_path / "hf")
    prefix = token_data(tmp_path, seed=1)
    one = train_from_hf(src, prefix, tmp_path / "one", tmp_path)
    pp2 = train_from_hf(src, prefix, tmp_path / "pp2", tmp_path, "--pipeline-model-parallel-size", "2", port=29548)
    ep2 = train_from_hf(src, prefix, tmp_path / "ep2", tmp_path, "--expert-model-parallel-size", "2", port=29549)
    assert sorted(one) == sorted(pp2) == sorted(ep2) == [1, 2]
    np.testing.assert_allclose([pp2[1], ep2[1]], [one[1], one[1]], rtol=1e-5)

    for name in ("one", "pp2"):
        run("-m", "trainer_bridge.convert", "mcore2hf", "--load", tmp_path / name, "--hf-config", src,
            "--save", tmp_path / f"{name}-hf")
    one_hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "one-hf")).state_dict()
    pp2_hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "pp2-hf")).state_dict()
    assert sorted(one_hf) == sorted(pp2_hf)
    for key in one_hf:
        torch.testing.assert_close(pp2_hf[key], one_hf[key], rtol=1e-4, atol=1e-5)


def test_tied_model_in_pp2_trains_like_one_process(tmp_path):
    """Tied embeddings split across two pipeline stages (the last stage holds the output copy):
    from the same HF weights, PP=2 gives the one-process losses step by step."""
    import numpy as np

    src = tiny_model("qwen3", True, tmp_path / "hf")
    prefix = token_data(tmp_path, seed=2)
    one = train_from_hf(src, prefix, tmp_path / "one", tmp_path)
    pp2 = train_from_hf(src, prefix, tmp_path / "pp2", tmp_path, "--pipeline-model-parallel-size", "2", port=29550)
    assert sorted(one) == sorted(pp2) == [1, 2]
    np.testing.assert_allclose([pp2[i] for i in (1, 2)], [one[i] for i in (1, 2)], rtol=1e-5)


def convert(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(ROOT / "trainer_bridge" / "scripts" / "convert.sh"), *map(str, args)],
                          env=cli_env(PYTHON=sys.executable), capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_pai_positional_script_round_trip(tmp_path):
    """Pai's converter order (MODEL_SIZE LOAD SAVE MG2HF USE_CUDA PR [HF_DIR]) both ways."""
    from safetensors.torch import load_file

    src = tiny_model("qwen2", False, tmp_path / "hf")
    done = convert("hf", src, tmp_path / "mcore", "false", "true", "fp32")
    assert done.returncode == 0, done.stderr[-2000:]
    done = convert("hf", tmp_path / "mcore", tmp_path / "back", "true", "true", "fp32", src)
    assert done.returncode == 0, done.stderr[-2000:]
    original = load_file(str(src / "model.safetensors"))
    back = {}
    for file in (tmp_path / "back").glob("model-*.safetensors"):
        back.update(load_file(str(file)))
    assert sorted(back) == sorted(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


@pytest.mark.parametrize("case,expected", [
    ("size", "is not a 0.6B model"),
    ("unknown-size", "unknown MODEL_SIZE '7B'"),
    ("tp", "TP=3 must divide hf's 4 attention heads and 2 query groups; use TP in 1, 2"),
    ("ep", "EP=2/ETP=1 on hf, a dense model without experts"),
    ("not-empty", "exists and is not empty"),
    ("no-hf-dir", "MG2HF=true needs HF_DIR"),
    ("truncated", "is cut short"),
    ("not-mcore", "not a megatron-core distributed checkpoint"),
])
def test_bad_conversions_are_one_line_and_write_nothing(tmp_path, case, expected):
    src = tiny_model("qwen3", False, tmp_path / "hf")
    save = tmp_path / "out"
    pai = {"size": ("0.6B", src, save, "false", "true", "fp32"),
           "unknown-size": ("7B", src, save, "false", "true", "fp32"),
           "no-hf-dir": ("hf", src, save, "true", "true", "fp32")}
    if case in pai:
        done = convert(*pai[case])
    elif case == "tp":
        done = convert("hf2mcore", "--load", src, "--save", save, "--target-tensor-parallel-size", "3")
    elif case == "ep":
        done = convert("hf2mcore", "--load", src, "--save", save, "--ep", "2")
    elif case == "not-empty":
        save.mkdir()
        (save / "keep.txt").write_text("mine")
        done = convert("hf2mcore", "--load", src, "--save", save)
    elif case == "truncated":
        weights = src / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
        done = convert("hf2mcore", "--load", src, "--save", save)
    else:
        done = convert("mcore2hf", "--load", src, "--save", save)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, last
    if case == "not-empty":
        assert [p.name for p in save.iterdir()] == ["keep.txt"]
    else:
        assert not save.exists()
    assert not list(tmp_path.glob("out.tmp-*"))  # no half-written checkpoint left behind


def test_bf16_directory_is_cached_in_bf16_and_loses_nothing(tmp_path):
    """An HF directory stored in bf16 is converted (once, cached) in bf16, the model's own
    precision: the cache is the size of the model, and an fp32 run from it starts exactly where
    one from the same weights written in fp32 starts."""
    from torch.distributed.checkpoint import FileSystemReader
    from transformers import AutoModelForCausalLM

    src = tiny_model("qwen3", True, tmp_path / "hf")
    bf16 = AutoModelForCausalLM.from_pretrained(str(src)).to(torch.bfloat16)
    bf16.save_pretrained(str(tmp_path / "bf16"))
    bf16.to(torch.float32).save_pretrained(str(tmp_path / "fp32"))  # the same values, exactly
    prefix = token_data(tmp_path, seed=3)
    from_bf16 = train_from_hf(tmp_path / "bf16", prefix, tmp_path / "a", tmp_path)
    from_fp32 = train_from_hf(tmp_path / "fp32", prefix, tmp_path / "b", tmp_path)
    assert from_bf16[1] == pytest.approx(from_fp32[1], rel=1e-6)
    cached = sorted((tmp_path / "cache" / "hf2mcore").iterdir())
    assert len(cached) == 2
    dtypes = sorted(",".join(sorted({str(md.properties.dtype) for md in
                                     FileSystemReader(str(c / "release")).read_metadata().state_dict_metadata.values()
                                     if hasattr(md, "properties")})) for c in cached)
    assert dtypes == ["torch.bfloat16", "torch.float32"]  # one cache entry each, in its own precision


def test_pai_converted_checkpoint_as_load(tmp_path):
    """A checkpoint in the layout Pai's converters write (config.json and tokenizer copied beside
    release/ and the tracker file; common.pt holding Megatron-LM's pickled args) is taken as
    start weights, not mistaken for an HF directory, and its common.pt is not unpickled: the run
    starts where one from the HF directory starts."""
    import shutil

    src = tiny_model("qwen3", False, tmp_path / "hf")
    pai = tmp_path / "Qwen3-tiny-to-mcore"
    run("-m", "trainer_bridge.convert", "hf2mcore", "--load", src, "--save", pai)
    prefix = token_data(tmp_path, seed=4)
    from_hf = train_from_hf(src, prefix, tmp_path / "a", tmp_path)
    from_ours = train_from_hf(pai, prefix, tmp_path / "b", tmp_path)  # --model-size hf: its hf_config.json
    shutil.copy(src / "config.json", pai / "config.json")
    (pai / "release" / "common.pt").write_bytes(b"Megatron-LM args of classes this process cannot import")
    from_pai = train_from_hf(pai, prefix, tmp_path / "c", tmp_path)
    assert from_ours[1] == pytest.approx(from_hf[1], rel=1e-6)
    assert from_pai[1] == pytest.approx(from_hf[1], rel=1e-6)
    assert len(list((tmp_path / "cache" / "hf2mcore").iterdir())) == 1  # the HF directory's; not the Pai one
