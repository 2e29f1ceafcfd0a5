"""--engine ray: the shards as Ray tasks on a local Ray instance with 2 CPUs give the local
engine's bytes, for pretrain and SFT, and a run killed under one engine resumes under the other."""

import json
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import cli_command, cli_env, make_corpus, write_jsonl

pytestmark = pytest.mark.slow  # every test here starts processes (see docs/ARCHITECTURE.md)

TOKENIZER = "DeepSeekV2Tokenizer"


def run(*args, fault=None) -> subprocess.CompletedProcess:
    env = cli_env(RAY_DEDUP_LOGS="0", **({"DATAPREP_FAULT": fault} if fault else {}))
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("ray-in")
    records = make_corpus()
    a = write_jsonl(d / "a.jsonl", records[:90])
    with open(a, "ab") as f:
        f.write(b'{"text": 5}\n')  # a rejected record, in the last shard of a.jsonl
    (d / "b.json").write_text(json.dumps(records[90:], ensure_ascii=False), encoding="utf-8")
    return [a, d / "b.json"]


def pretrain_args(inputs, prefix, engine, *extra):
    return ["pretrain", "--input", *inputs, "--output-prefix", prefix, "--tokenizer", TOKENIZER,
            "--workers", "2", "--engine", engine, "--shard-bytes", "4K", "--skip-bad-records",
            "--no-progress", *extra]


NAMES = ["_text_document.bin", "_text_document.idx", "_text_document.json", ".rejects.jsonl"]


def outputs(prefix, names=NAMES) -> dict:
    return {n: Path(f"{prefix}{n}").read_bytes() for n in names}


@pytest.fixture(scope="module")
def local_reference(inputs, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("ray-ref") / "ds"
    done = run(*pretrain_args(inputs, prefix, "local"))
    assert done.returncode == 0, done.stderr
    return outputs(prefix)


def test_ray_engine_gives_the_local_bytes(inputs, local_reference, tmp_path):
    prefix = tmp_path / "ds"
    done = run(*pretrain_args(inputs, prefix, "ray"))
    assert done.returncode == 0, done.stderr
    assert outputs(prefix) == local_reference
    assert "records    read" in done.stdout and "rejected 1" in done.stdout


def test_killed_ray_run_resumes_with_either_engine(inputs, local_reference, tmp_path):
    for engine in ("ray", "local"):
        prefix = tmp_path / engine / "ds"
        killed = run(*pretrain_args(inputs, prefix, "ray"), fault="shard-done:2")
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        resumed = run(*pretrain_args(inputs, prefix, engine))
        assert resumed.returncode == 0, resumed.stderr
        assert "3 of " in resumed.stderr
        assert outputs(prefix) == local_reference


def test_ray_sft_gives_the_local_bytes(tmp_path):
    alpaca = Path(__file__).parents[1] / "dataprep/samples/alpaca_zh-sample.json"
    chat = Path(__file__).parents[1] / "dataprep/samples/chat_sample.jsonl"
    names = ["_text_document.bin", "_text_document.idx", "_text_document.json",
             "_loss_mask_document.bin", "_loss_mask_document.idx"]
    got = {}
    for engine in ("local", "ray"):
        prefix = tmp_path / engine / "ds"  # the same name: the sidecar names the loss-mask file
        done = run("sft", "--input", alpaca, chat, "--output-prefix", prefix, "--tokenizer", TOKENIZER,
                   "--workers", "2", "--engine", engine, "--shard-bytes", "8K", "--seq-length", "512",
                   "--no-progress")
        assert done.returncode == 0, done.stderr
        got[engine] = outputs(prefix, names)
    assert got["ray"] == got["local"]


def test_unreachable_ray_cluster_is_one_line(inputs, tmp_path):
    done = run(*pretrain_args(inputs, tmp_path / "ds", "ray", "--ray-address", "127.0.0.1:1"))
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot start or join Ray at 127.0.0.1:1"), done.stderr
