"""Inputs and outputs as s3:// URLs, against a real S3-compatible server (moto) that these tests
start on loopback and stop: the same records from S3 or from local paths give the same bytes,
and a run killed while writing to S3 resumes from the shards it left there."""

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli_command, cli_env, make_corpus, write_jsonl

pytestmark = pytest.mark.slow  # every test here starts processes (see docs/ARCHITECTURE.md)

TOKENIZER = "DeepSeekV2Tokenizer"
BUCKET = "dataprep-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the S3 server (moto) did not start")
            time.sleep(0.1)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "FSSPEC_S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": endpoint}
    try:
        yield endpoint, env
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def s3(s3_server):
    import s3fs

    endpoint, _ = s3_server
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint)
    fs.mkdir(BUCKET)
    return fs


def run(s3_server, *args, fault=None) -> subprocess.CompletedProcess:
    _, env = s3_server
    if fault:
        env = {**env, "DATAPREP_FAULT": fault}
    return subprocess.run(cli_command(*args), env=cli_env(**env), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def local_inputs(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("s3-in")
    records = make_corpus()
    return [write_jsonl(d / "part-0.jsonl", records[:70]), write_jsonl(d / "part-1.jsonl", records[70:])]


@pytest.fixture(scope="module")
def uploaded(s3, local_inputs) -> str:
    for path in local_inputs:
        s3.put_file(str(path), f"{BUCKET}/corpus/{path.name}")
    return f"s3://{BUCKET}/corpus"


def pretrain_args(inputs, prefix, *extra):
    return ["pretrain", "--input", *inputs, "--output-prefix", prefix, "--tokenizer", TOKENIZER,
            "--workers", "2", "--shard-bytes", "4K", "--no-progress", *extra]


@pytest.fixture(scope="module")
def local_reference(s3_server, local_inputs, tmp_path_factory) -> dict:
    prefix = tmp_path_factory.mktemp("s3-ref") / "ds"
    done = run(s3_server, *pretrain_args(local_inputs, prefix))
    assert done.returncode == 0, done.stderr
    return {ext: Path(f"{prefix}_text_document{ext}").read_bytes() for ext in (".bin", ".idx")}


def s3_outputs(s3, key_prefix) -> dict:
    s3.invalidate_cache()
    return {ext: s3.cat_file(f"{key_prefix}_text_document{ext}") for ext in (".bin", ".idx")}


@pytest.mark.parametrize("inputs", ["dir", "glob", "files"])
def test_s3_in_s3_out_same_bytes_as_local(s3, s3_server, uploaded, local_reference, inputs):
    given = {"dir": [uploaded], "glob": [f"{uploaded}/part-*.jsonl"],
             "files": [f"{uploaded}/part-0.jsonl", f"{uploaded}/part-1.jsonl"]}[inputs]
    key = f"{BUCKET}/out-{inputs}/ds"
    done = run(s3_server, *pretrain_args(given, f"s3://{key}"))
    assert done.returncode == 0, done.stderr
    assert s3_outputs(s3, key) == local_reference
    import json

    sidecar = json.loads(s3.cat_file(f"{key}_text_document.json"))
    assert [i["path"] for i in sidecar["inputs"]] == [f"{uploaded}/part-0.jsonl", f"{uploaded}/part-1.jsonl"]
    assert not s3.exists(f"{key}.work")
    assert not [p for p in s3.find(f"{BUCKET}/out-{inputs}") if p.endswith(".tmp")]


def test_s3_input_local_output_and_back(s3_server, uploaded, local_reference, local_inputs, s3, tmp_path):
    prefix = tmp_path / "ds"
    assert run(s3_server, *pretrain_args([uploaded], prefix)).returncode == 0
    assert {ext: Path(f"{prefix}_text_document{ext}").read_bytes() for ext in (".bin", ".idx")} == local_reference
    key = f"{BUCKET}/from-local/ds"
    assert run(s3_server, *pretrain_args(local_inputs, f"s3://{key}")).returncode == 0
    assert s3_outputs(s3, key) == local_reference


@pytest.mark.parametrize("point", ["shard-done:1", "merge"])
def test_killed_run_on_s3_resumes_to_the_same_bytes(s3, s3_server, uploaded, local_reference, point):
    key = f"{BUCKET}/resume-{point.replace(':', '-')}/ds"
    killed = run(s3_server, *pretrain_args([uploaded], f"s3://{key}"), fault=point)
    assert killed.returncode == -signal.SIGKILL
    assert not s3.exists(f"{key}_text_document.idx")  # nothing looks finished
    done_markers = [p for p in s3.ls(f"{key}.work") if p.endswith(".done.json")]
    assert len(done_markers) >= 2
    resumed = run(s3_server, *pretrain_args([uploaded], f"s3://{key}"))
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(done_markers)} of " in resumed.stderr
    s3.invalidate_cache()  # this process listed the work directory above
    assert s3_outputs(s3, key) == local_reference
    assert not s3.exists(f"{key}.work")


def test_sft_from_and_to_s3(s3, s3_server, tmp_path):
    import json

    alpaca = json.loads((Path(__file__).parents[1] / "dataprep/samples/alpaca_zh-sample.json").read_text("utf-8"))
    local = write_jsonl(tmp_path / "alpaca.jsonl", alpaca, blank_lines=False)
    s3.put_file(str(local), f"{BUCKET}/sft/alpaca.jsonl")
    args = ["--tokenizer", TOKENIZER, "--workers", "2", "--seq-length", "256", "--shard-bytes", "4K",
            "--no-progress"]
    ref = tmp_path / "ref"
    assert run(s3_server, "sft", "--input", local, "--output-prefix", ref, *args).returncode == 0
    done = run(s3_server, "sft", "--input", f"s3://{BUCKET}/sft/alpaca.jsonl", "--output-prefix",
               f"s3://{BUCKET}/sft-out/ds", *args)
    assert done.returncode == 0, done.stderr
    for name in ("_text_document.bin", "_text_document.idx", "_loss_mask_document.bin", "_loss_mask_document.idx"):
        assert s3.cat_file(f"{BUCKET}/sft-out/ds{name}") == Path(f"{ref}{name}").read_bytes(), name


def test_missing_s3_input_is_one_line(s3_server):
    done = run(s3_server, *pretrain_args([f"s3://{BUCKET}/nope/*.jsonl"], "/tmp/never"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: pattern matched no files: 's3://{BUCKET}/nope/*.jsonl'"]
