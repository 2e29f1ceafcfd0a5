"""The bundled trainer on CPU, `tiny` preset, real processes: the loss falls for pretrain idxmaps,
SFT idxmaps (packed and padded) and raw json; raw and idxmap give the same losses; prompt and
padding tokens carry no loss; stopping and resuming gives the losses of an uninterrupted run."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, cli_env, logged_losses, run_cli

pytestmark = pytest.mark.slow  # every test here starts processes (see docs/ARCHITECTURE.md)

SAMPLES = ROOT / "dataprep" / "samples"
TOKENIZER = "DeepSeekV2Tokenizer"


def train(*args, timeout: float = 600) -> dict[int, float]:
    """Run the entry; the logged loss per iteration."""
    cmd = [sys.executable, "-m", "trainer_bridge.train", "--model-size", "tiny", "--micro-batch-size", "2",
           "--global-batch-size", "4", "--lr", "5e-3", "--min-lr", "1e-4", "--lr-warmup-iters", "2",
           "--log-interval", "1", "--eval-interval", "100000", *map(str, args)]
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return logged_losses(done.stdout)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("trainer-data")
    out = {}
    done = run_cli("pretrain", "--input", SAMPLES / "pretrain_sample.jsonl", "--tokenizer", TOKENIZER,
                   "--output-prefix", d / "pre", "--workers", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    out["pretrain"] = d / "pre_text_document"
    done = run_cli("sft", "--input", SAMPLES / "alpaca_zh-sample.json", "--tokenizer", TOKENIZER,
                   "--output-prefix", d / "sft", "--workers", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    out["sft"] = d / "sft"
    return out


def falls(losses: dict[int, float]) -> bool:
    values = [losses[i] for i in sorted(losses)]
    return np.mean(values[-3:]) < np.mean(values[:3]) - 0.5


@pytest.mark.parametrize("mode", ["pretrain", "sft-packed", "sft-padded"])
def test_loss_falls(data, mode):
    if mode == "pretrain":
        args = ["--data-path", data["pretrain"], "--seq-length", 64]
    else:
        args = ["--sft", "--data-path", data["sft"], "--seq-length", 128, "--pad-length", 128]
        args += ["--sft-packing"] if mode == "sft-packed" else []
    losses = train(*args, "--train-iters", 15)
    assert sorted(losses) == list(range(1, 16))
    assert falls(losses), losses


def test_raw_mode_trains_exactly_like_the_idxmap(data, monkeypatch):
    """MP_DATASET_TYPE=raw over the json the idxmap was built from: the same losses, step by step."""
    common = ["--sft", "--seq-length", 128, "--pad-length", 128, "--train-iters", 12]
    idxmap = train("--data-path", data["sft"], *common)
    monkeypatch.setenv("MP_DATASET_TYPE", "raw")
    raw = train("--data-path", SAMPLES / "alpaca_zh-sample.json", "--tokenizer", TOKENIZER, *common)
    assert raw == idxmap
    assert falls(raw), raw


def test_resume_continues_exactly(data, tmp_path):
    """Stop after 4 steps (checkpoint), rerun the same command: steps 5-8 equal an uninterrupted run."""
    common = ["--data-path", data["pretrain"], "--seq-length", 32, "--train-iters", 8, "--save-interval", 100]
    whole = train(*common, "--save", tmp_path / "whole")
    first = train(*common, "--save", tmp_path / "resumed", "--exit-interval", 4)
    assert sorted(first) == [1, 2, 3, 4]
    assert (tmp_path / "resumed" / "latest_checkpointed_iteration.txt").read_text() == "4"
    second = train(*common, "--save", tmp_path / "resumed")
    assert sorted(second) == [5, 6, 7, 8]
    assert {**first, **second} == whole


def test_prompt_and_padding_carry_no_loss(data):
    """The masks reaching the loss: per-token losses only where the SFT labels are trained."""
    from dataset_engine.batch import collate
    from dataprep.sft.raw import build_sft_dataset
    from dataset_engine.sft import SFTDatasetConfig
    from trainer_bridge.loop import forward_step_factory

    dataset = build_sft_dataset(str(data["sft"]), SFTDatasetConfig(seq_length=128, pad_length=128))
    batch = collate([dataset[i] for i in range(3)])
    seen = {}

    def model(tokens, position_ids, attention_mask, labels=None, packed_seq_params=None):
        seen.update(tokens=tokens, labels=labels, mask=attention_mask)
        return torch.arange(tokens.numel(), dtype=torch.float32).view(tokens.shape)  # loss = position

    forward_step = forward_step_factory(thd=False)  # the CPU path: a block-diagonal mask
    output, loss_func = forward_step(iter([batch]), model)
    total, count, _ = loss_func(output)
    trained = batch["labels"] != -100
    assert int(count) == int(trained.sum()) > 0
    assert float(total) == float(torch.arange(trained.numel()).view(trained.shape)[trained].sum())
    assert not trained[batch["tokens"] == dataset.source.pad_id].all()  # padding exists and is not trained
    assert (seen["labels"] >= 0).all()  # -100 never reaches the cross entropy


def test_block_causal_mask_keeps_documents_apart():
    from trainer_bridge.cpu_compat import block_causal_mask

    positions = torch.tensor([[0, 1, 2, 0, 1, 0]])
    allowed = ~block_causal_mask(positions)[0, 0]
    expected = torch.zeros(6, 6, dtype=torch.bool)
    for lo, hi in [(0, 3), (3, 5), (5, 6)]:
        expected[lo:hi, lo:hi] = torch.ones(hi - lo, hi - lo, dtype=torch.bool).tril()
    assert torch.equal(allowed, expected)


@pytest.mark.parametrize("options,message", [
    (["--dataset-type", "raw"], "error: --dataset-type raw is for SFT data (alpaca/messages/ShareGPT json): add --sft"),
    (["--context-parallel-size", "2"], "error: --context-parallel-size 2 (CP): context parallelism is not supported "
                                       "by the bundled trainer yet; use CP=1"),
])
def test_bad_options_are_one_line_errors(data, options, message):
    cmd = [sys.executable, "-m", "trainer_bridge.train", "--model-size", "tiny", "--data-path", str(data["pretrain"]),
           "--train-iters", "2", *options]
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == message


def test_tensor_parallel_2_on_cpu_matches_tp1(data):
    """torchrun with 2 gloo processes and TP=2 gives TP=1's losses (same initial weights: every rank
    draws the full weight on CPU and keeps its slice)."""
    common = ["--data-path", data["pretrain"], "--seq-length", 32, "--train-iters", 5]
    tp1 = train(*common)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541",
           "-m", "trainer_bridge.train", "--model-size", "tiny", "--micro-batch-size", "2", "--global-batch-size", "4",
           "--lr", "5e-3", "--min-lr", "1e-4", "--lr-warmup-iters", "2", "--log-interval", "1",
           "--eval-interval", "100000", "--tensor-model-parallel-size", "2", *map(str, common)]
    done = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    tp2 = logged_losses(done.stdout)
    assert sorted(tp2) == sorted(tp1)
    np.testing.assert_allclose([tp2[i] for i in sorted(tp2)], [tp1[i] for i in sorted(tp1)], atol=1e-5)


def test_starting_weights_and_tensorboard(data, tmp_path):
    """--load starts from a checkpoint's weights (its first loss is the trained model's, lower than a
    fresh model's); TensorBoard event files are written."""
    common = ["--data-path", data["pretrain"], "--seq-length", 32]
    trained = train(*common, "--train-iters", 12, "--save", tmp_path / "ckpt", "--save-interval", 12)
    fresh = train(*common, "--train-iters", 1, "--lr-warmup-iters", 0)
    loaded = train(*common, "--train-iters", 1, "--lr-warmup-iters", 0, "--load", tmp_path / "ckpt" / "iter_0000012",
                   "--tensorboard-dir", tmp_path / "tb")
    assert loaded[1] < fresh[1] - 0.5 and loaded[1] < trained[1]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_pai_launcher_runs_the_entry_on_cpu(data, tmp_path):
    """Pai's 27 positional parameters through run_mcore.sh train the tiny model here; bf16 and the
    distributed optimizer fall back to fp32 and the standard optimizer on CPU, with a note."""
    script = ROOT / "trainer_bridge" / "scripts" / "run_mcore.sh"
    params = ["dsw", "tiny", 2, 4, "5e-3", "1e-4", 32, 32, "bf16", 1, 1, 1, 1, 1, "false", "true", "false",
              "false", "none", "false", 100000, data["pretrain"], "none", "none", 4 * 32 * 6, 4 * 32 * 2,
              tmp_path / "out"]
    env = cli_env(PYTHON=sys.executable, MASTER_PORT="29547")
    done = subprocess.run(["bash", str(script), *map(str, params)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    losses = logged_losses(done.stdout)
    assert sorted(losses) == list(range(1, 7))  # 6 iterations = tokens / global batch / seq_len
    assert "note: no GPU: training in fp32 with the standard optimizer (asked: bf16, distributed optimizer)" in done.stdout
