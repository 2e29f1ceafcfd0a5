"""Shards and resuming: a run killed with SIGKILL at any point, then run again with the same
command, produces the bytes of an uninterrupted run, reusing the shards already finished.

The kills are exact (DATAPREP_FAULT=<point> makes the run SIGKILL itself there) and the runs are
real CLI processes with the real DeepSeek tokenizer and 2 workers.
"""

import gzip
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import cli_command, cli_env, make_corpus, write_jsonl
from dataprep.errors import DataprepError
from dataprep.runs.shards import WorkDir, plan_shards
from dataset_engine.idxmap import IdxmapReader

pytestmark = pytest.mark.slow  # every test here starts processes (see docs/ARCHITECTURE.md)

TOKENIZER = "DeepSeekV2Tokenizer"
SHARD = "3K"  # a few records per shard: many shards from a small corpus


def run(*args, fault=None, timeout=300) -> subprocess.CompletedProcess:
    env = cli_env(**({"DATAPREP_FAULT": fault} if fault else {}))
    return subprocess.run(cli_command(*args), env=env, capture_output=True, text=True, timeout=timeout)


def outputs(prefix, names) -> dict:
    return {n: Path(f"{prefix}{n}").read_bytes() for n in names}


PRETRAIN_OUT = ["_text_document.bin", "_text_document.idx", "_text_document.json", ".rejects.jsonl"]
SFT_OUT = ["_text_document.bin", "_text_document.idx", "_text_document.json",
           "_loss_mask_document.bin", "_loss_mask_document.idx"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """Three files: a jsonl cut into many shards (with bad records), a .jsonl.gz and a JSON array
    (one shard each)."""
    d = tmp_path_factory.mktemp("resume-in")
    records = make_corpus()
    a = write_jsonl(d / "a.jsonl", records[:80])
    with open(a, "ab") as f:  # bad records in later shards
        f.write(b'{"text": 5}\n{"text": "fine"}\nnot json\n')
    write_jsonl(d / "a2.jsonl", records[80:100], blank_lines=False)
    with gzip.open(d / "b.jsonl.gz", "wb") as f:
        f.write((d / "a2.jsonl").read_bytes())
    os.remove(d / "a2.jsonl")
    (d / "c.json").write_text(json.dumps(records[100:], ensure_ascii=False, indent=1), encoding="utf-8")
    return [a, d / "b.jsonl.gz", d / "c.json"]


def pretrain_args(inputs, prefix, *extra):
    return ["pretrain", "--input", *inputs, "--output-prefix", prefix, "--tokenizer", TOKENIZER,
            "--workers", "2", "--shard-bytes", SHARD, "--skip-bad-records", "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """An uninterrupted run, and its shard count."""
    prefix = tmp_path_factory.mktemp("resume-ref") / "ds"
    done = run(*pretrain_args(inputs, prefix))
    assert done.returncode == 0, done.stderr
    assert not Path(f"{prefix}.work").exists()  # removed on success
    return outputs(prefix, PRETRAIN_OUT), len(plan_shards([str(p) for p in inputs], 3 << 10))


def markers(prefix) -> dict[str, float]:
    work = Path(f"{prefix}.work")
    return {p.name: p.stat().st_mtime_ns for p in work.glob("shard-*.done.json")}


def test_plan_cuts_at_line_starts_and_covers_every_byte(inputs):
    files = [str(p) for p in inputs]
    shards = plan_shards(files, 3 << 10)
    assert shards == plan_shards(files, 3 << 10)  # deterministic
    data = inputs[0].read_bytes()
    ranges = [(s.start, s.end) for s in shards if s.path == files[0]]
    assert len(ranges) > 5
    assert ranges[0][0] == 0 and ranges[-1][1] == len(data)
    for (_, end), (start, _) in zip(ranges, ranges[1:]):
        assert end == start and data[start - 1:start] == b"\n"
    whole = [s for s in shards if s.path != files[0]]
    assert [(s.path, s.start, s.end) for s in whole] == [(files[1], 0, None), (files[2], 0, None)]


# shards are marked on the writer thread, in order, while the next shard is read: killed inside
# shard N, the run has marked a prefix of the shards before N
@pytest.mark.parametrize("point,done_before", [("mid-shard:0", [0]), ("shard-done:2", [3]),
                                               ("mid-shard:4", [0, 1, 2, 3, 4]), ("merge", None)])
def test_kill_then_resume_gives_the_uninterrupted_bytes(inputs, reference, tmp_path, point, done_before):
    expected, n_shards = reference
    prefix = tmp_path / "out" / "ds"
    killed = run(*pretrain_args(inputs, prefix), fault=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not Path(f"{prefix}_text_document.idx").exists()
    before = markers(prefix)
    assert len(before) in ([n_shards] if done_before is None else done_before)
    assert sorted(before) == [f"shard-{i:06d}.done.json" for i in range(len(before))]
    resumed = run(*pretrain_args(inputs, prefix))
    assert resumed.returncode == 0, resumed.stderr
    if before:
        assert f"{len(before)} of {n_shards} shards already done" in resumed.stderr
    assert outputs(prefix, PRETRAIN_OUT) == expected
    assert not Path(f"{prefix}.work").exists()


def test_finished_shards_are_reused_not_redone(inputs, reference, tmp_path):
    expected, n_shards = reference
    prefix = tmp_path / "ds"
    assert run(*pretrain_args(inputs, prefix), fault="shard-done:3").returncode == -signal.SIGKILL
    before = markers(prefix)
    # --keep-work: look at the markers after the resumed run
    assert run(*pretrain_args(inputs, prefix, "--keep-work")).returncode == 0
    after = markers(prefix)
    assert len(after) == n_shards
    assert {name: after[name] for name in before} == before  # untouched: not produced again
    assert outputs(prefix, PRETRAIN_OUT) == expected
    # a run whose shards are all done only merges again, to the same bytes
    again = run(*pretrain_args(inputs, prefix))
    assert again.returncode == 0 and f"{n_shards} of {n_shards} shards already done" in again.stderr
    assert outputs(prefix, PRETRAIN_OUT) == expected
    assert not Path(f"{prefix}.work").exists()


def test_changed_input_is_refused_then_restart_starts_over(inputs, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    src = d / "a.jsonl"
    src.write_bytes(inputs[0].read_bytes())
    prefix = tmp_path / "ds"
    assert run(*pretrain_args([src], prefix), fault="shard-done:1").returncode == -signal.SIGKILL
    with open(src, "ab") as f:
        f.write(b'{"text": "one more record"}\n')
    refused = run(*pretrain_args([src], prefix))
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and f"changed input {src}" in line and "--restart" in line, line
    assert len(markers(prefix)) == 2  # nothing was mixed in or removed
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ds")) == ["ds.work"]  # no .tmp left
    restarted = run(*pretrain_args([src], prefix, "--restart"))
    assert restarted.returncode == 0, restarted.stderr
    fresh = tmp_path / "fresh"
    assert run(*pretrain_args([src], fresh)).returncode == 0
    assert outputs(prefix, PRETRAIN_OUT) == outputs(fresh, PRETRAIN_OUT)


def test_a_shard_cut_short_is_redone(inputs, reference, tmp_path):
    """Shard files are not fsynced: after a machine crash one may be shorter than its marker says.
    Such a shard counts as not done."""
    expected, n_shards = reference
    prefix = tmp_path / "ds"
    assert run(*pretrain_args(inputs, prefix), fault="shard-done:3").returncode == -signal.SIGKILL
    cut = Path(f"{prefix}.work/shard-000001_text_document.bin")
    cut.write_bytes(cut.read_bytes()[:-8])
    resumed = run(*pretrain_args(inputs, prefix))
    assert resumed.returncode == 0, resumed.stderr
    assert f"3 of {n_shards} shards already done" in resumed.stderr
    assert outputs(prefix, PRETRAIN_OUT) == expected


def test_changed_options_are_refused(inputs, tmp_path):
    prefix = tmp_path / "ds"
    assert run(*pretrain_args(inputs, prefix), fault="shard-done:0").returncode == -signal.SIGKILL
    refused = run(*pretrain_args(inputs, prefix, "--no-append-eod"))
    assert refused.returncode == 2
    assert "append_eod: True -> False" in refused.stderr and "--restart" in refused.stderr, refused.stderr
    other_plan = run(*pretrain_args(inputs, prefix, "--shard-bytes", "64K"))
    assert other_plan.returncode == 2 and "shard" in other_plan.stderr


def test_a_bad_record_in_a_later_shard_names_its_absolute_line(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", make_corpus(), blank_lines=False)
    lines = path.read_bytes().split(b"\n")
    bad_line = len(lines) - 3  # 1-based: near the end, many shards in
    lines[bad_line - 1] = b'{"text": ["ok", 7]}'
    path.write_bytes(b"\n".join(lines))
    prefix = tmp_path / "ds"
    done = run("pretrain", "--input", path, "--output-prefix", prefix, "--tokenizer", TOKENIZER,
               "--workers", "2", "--shard-bytes", "2K", "--no-progress")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {path}:{bad_line}: "), done.stderr
    # finished shards stay for a resume after the file is fixed; nothing looks finished
    assert len(markers(prefix)) > 3 and not Path(f"{prefix}_text_document.idx").exists()


def test_work_directory_is_locked_while_in_use(tmp_path):
    first = WorkDir(str(tmp_path / "ds"), {"command": "x"}).open()
    try:
        with pytest.raises(DataprepError, match="in use by another dataprep run"):
            WorkDir(str(tmp_path / "ds"), {"command": "x"}).open()
    finally:
        first.close(remove=True)
    assert not (tmp_path / "ds.work").exists()


# -- SFT ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sft_input(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("resume-sft")
    alpaca = json.loads((Path(__file__).parents[1] / "dataprep/samples/alpaca_zh-sample.json").read_text("utf-8"))
    return write_jsonl(d / "alpaca.jsonl", alpaca, blank_lines=False)


def sft_args(path, prefix, *extra):
    return ["sft", "--input", path, "--output-prefix", prefix, "--tokenizer", TOKENIZER, "--workers", "2",
            "--shard-bytes", "4K", "--seq-length", "256", "--no-progress", *extra]


@pytest.mark.parametrize("layout", ["native", "pai"])
def test_sft_kill_then_resume_gives_the_uninterrupted_bytes(sft_input, tmp_path, layout):
    extra = ["--layout", "pai", "--packing"] if layout == "pai" else []
    names = SFT_OUT if layout == "native" else SFT_OUT[:3]
    ref = tmp_path / "ref" / "ds"  # the same name: the sidecar names the loss-mask file
    assert run(*sft_args(sft_input, ref, *extra)).returncode == 0
    prefix = tmp_path / "ds"
    assert run(*sft_args(sft_input, prefix, *extra), fault="shard-done:1").returncode == -signal.SIGKILL
    assert len(markers(prefix)) == 2
    resumed = run(*sft_args(sft_input, prefix, *extra))
    assert resumed.returncode == 0, resumed.stderr
    assert outputs(prefix, names) == outputs(ref, names)
    with IdxmapReader(f"{prefix}_text_document") as r:
        assert len(r) > 0


def test_sft_packing_options_may_change_on_resume(sft_input, tmp_path):
    """The shards hold records, not rows: a run killed as native resumes as packed Pai rows."""
    pai = ["--layout", "pai", "--packing"]
    ref = tmp_path / "ref" / "ds"
    assert run(*sft_args(sft_input, ref, *pai)).returncode == 0
    prefix = tmp_path / "ds"
    assert run(*sft_args(sft_input, prefix), fault="shard-done:1").returncode == -signal.SIGKILL
    resumed = run(*sft_args(sft_input, prefix, *pai))
    assert resumed.returncode == 0, resumed.stderr
    assert "2 of " in resumed.stderr
    assert outputs(prefix, SFT_OUT[:3]) == outputs(ref, SFT_OUT[:3])
