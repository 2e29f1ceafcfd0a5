"""`dataprep inspect`, `dataprep verify` and `dataprep merge` on real idxmaps written by
`dataprep pretrain` and `dataprep sft` (bundled DeepSeek tokenizer), checked with megatron-core's
own reader and by corrupting files byte by byte. The CLI runs in real subprocesses."""

import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from conftest import run_cli, write_jsonl
from dataprep.pretrain.run import PretrainConfig, run_pretrain
from dataprep.sft.run import SFTConfig, run_sft

TOKENIZER = "DeepSeekV2Tokenizer"
DEEPSEEK_VOCAB = 129280
SAMPLES = Path(__file__).resolve().parents[1] / "dataprep" / "samples"
HEADER = 34  # bytes before sequence_lengths in .idx


def pretrain(inputs, prefix) -> str:
    config = PretrainConfig(inputs=tuple(map(str, inputs)), output_prefix=str(prefix),
                            tokenizer=TOKENIZER, workers=1, progress=False)
    run_pretrain(config, log=lambda message: None)
    return f"{prefix}_text_document"


def sft(prefix, layout) -> str:
    config = SFTConfig(inputs=(str(SAMPLES / "alpaca_zh-sample.json"),), output_prefix=str(prefix),
                       tokenizer=TOKENIZER, workers=1, progress=False, layout=layout,
                       seq_length=512, packing=layout == "pai")
    run_sft(config, log=lambda message: None)
    return f"{prefix}_text_document"


def copy_idxmap(src: str, dst: str, sidecar: bool = True) -> str:
    exts = (".bin", ".idx", ".json") if sidecar else (".bin", ".idx")
    for ext in exts:
        shutil.copyfile(src + ext, dst + ext)
    return dst


def megatron_documents(prefix: str) -> list[list[int]]:
    ds = IndexedDataset(prefix)
    bounds = ds.document_indices.tolist()
    return [np.concatenate([ds[j] for j in range(bounds[d], bounds[d + 1])]).tolist()
            for d in range(len(bounds) - 1)]


# -- fixtures: two pretrain parts and their concatenation, SFT in both layouts -------------------
@pytest.fixture(scope="module")
def parts(tmp_path_factory, corpus):
    """(a, b, ab): pretrain idxmaps of the corpus's first and second halves and of both in one file."""
    work = tmp_path_factory.mktemp("tools")
    half = len(corpus) // 2
    a_jsonl = write_jsonl(work / "a.jsonl", corpus[:half])
    b_jsonl = write_jsonl(work / "b.jsonl", corpus[half:])
    ab_jsonl = work / "ab.jsonl"
    ab_jsonl.write_bytes(a_jsonl.read_bytes() + b_jsonl.read_bytes())
    return pretrain([a_jsonl], work / "a"), pretrain([b_jsonl], work / "b"), pretrain([ab_jsonl], work / "ab")


@pytest.fixture(scope="module")
def sft_native(tmp_path_factory):
    return sft(tmp_path_factory.mktemp("sft_native") / "sft", "native")


@pytest.fixture(scope="module")
def sft_pai(tmp_path_factory):
    return sft(tmp_path_factory.mktemp("sft_pai") / "sft", "pai")


# -- inspect -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_inspect_prints_counts_and_a_log_histogram(parts):
    _, _, ab = parts
    done = run_cli("inspect", ab)
    assert done.returncode == 0, done.stderr
    docs = megatron_documents(ab)
    lengths = np.array([len(d) for d in docs])
    assert f"{len(docs):,} documents" in done.stdout and "dtype int32" in done.stdout
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "histogram" in line) + 1
    row = re.compile(r"^ {4} *([\d,]+)(?: - +([\d,]+))? +(#*) +([\d,]+)$")
    rows = [m.groups() for m in map(row.match, lines[start:]) if m]
    assert 6 <= len(rows) <= 13, done.stdout

    def number(text: str) -> int:
        return int(text.replace(",", ""))

    bounds = [(number(lo), number(hi or lo)) for lo, hi, _, _ in rows]
    bars = [bar for _, _, bar, _ in rows]
    counts = [number(count) for _, _, _, count in rows]
    # Every document is in exactly one bin, the bins are contiguous and cover min..max.
    assert sum(counts) == len(docs)
    assert bounds[0][0] == lengths.min() and bounds[-1][1] == lengths.max()
    assert all(b[0] == a[1] + 1 for a, b in zip(bounds, bounds[1:]))
    for (lo, hi), count in zip(bounds, counts):
        assert count == int(((lengths >= lo) & (lengths <= hi)).sum())
    # Log-spaced: the last bin is wider than the first; the largest bin has the full 40-char bar.
    assert bounds[-1][1] - bounds[-1][0] > bounds[0][1] - bounds[0][0]
    assert len(bars[counts.index(max(counts))]) == 40
    assert all((set(bar) == {"#"}) == (count > 0) for bar, count in zip(bars, counts))


def test_inspect_counts_documents_without_sequences(tmp_path):
    # Empty documents (repeated document indices), one of them last, and a zero-length sequence.
    from dataprep.tools.inspect import inspect_idxmap
    from dataset_engine.idxmap import IdxmapWriter

    prefix = str(tmp_path / "empty_docs")
    with IdxmapWriter(prefix, np.uint16) as w:
        w.add_document(np.array([1, 2, 3]))
        w.add_document(np.array([], np.int64), [])
        w.add_document(np.arange(40), [10, 0, 30])
        w.add_document(np.array([], np.int64), [])
    out = "\n".join(inspect_idxmap(prefix, samples=[], decode=False, tokenizer_path=None))
    assert "4 documents, 4 sequences, 43 tokens" in out
    assert "min 0" in out and "max 40" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("    ")]
    assert rows[0] == ["0", "#" * 40, "2"]  # the two empty documents have their own bin
    assert sum(int(r[-1]) for r in rows) == 4


@pytest.mark.slow
def test_inspect_plot_writes_a_png_matplotlib_reads(parts, tmp_path):
    _, _, ab = parts
    png = tmp_path / "lengths.png"
    done = run_cli("inspect", ab, "--plot", png)
    assert done.returncode == 0, done.stderr
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))  # written under a temporary name, then renamed
    import matplotlib.image

    image = matplotlib.image.imread(str(png))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image.std() > 0  # not a blank canvas


@pytest.mark.slow
def test_inspect_sft_still_marks_trained_spans(sft_native):
    done = run_cli("inspect", sft_native, "--decode", "--sample", "0")
    assert done.returncode == 0, done.stderr
    assert "⟦" in done.stdout and "⟧" in done.stdout
    assert "tokens/document histogram" in done.stdout


# -- verify: good files ------------------------------------------------------------------------
@pytest.mark.slow
def test_verify_passes_on_pretrain_and_both_sft_layouts(parts, sft_native, sft_pai):
    _, _, ab = parts
    done = run_cli("verify", ab, sft_native, sft_pai)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{ab}: OK" in done.stdout and f"[0, {DEEPSEEK_VOCAB:,})" in done.stdout
    assert "loss mask sft_loss_mask_document: 0/1" in done.stdout
    assert "Pai rows of 2 x 512" in done.stdout
    assert "3 of 3 OK" in done.stdout


# -- verify: broken files ----------------------------------------------------------------------
def failing(*args) -> str:
    done = run_cli("verify", *args)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


@pytest.mark.slow
def test_verify_reports_a_token_outside_the_vocabulary(parts, tmp_path):
    a, _, _ = parts
    bad = copy_idxmap(a, str(tmp_path / "bad"))
    reader_docs = megatron_documents(a)
    doc = 3
    offset = sum(len(d) for d in reader_docs[:doc]) + 2  # the third token of document 3
    with open(bad + ".bin", "r+b") as f:
        f.seek(offset * 4)
        f.write(struct.pack("<i", DEEPSEEK_VOCAB))  # one past the last id
        f.seek((offset + 5) * 4)
        f.write(struct.pack("<i", 200_000))
    out = failing(bad)
    assert f"{bad}: FAILED" in out
    assert f"token {DEEPSEEK_VOCAB} is outside [0, {DEEPSEEK_VOCAB:,}) in document {doc}" in out
    assert "position 2" in out and "2 such value(s)" in out
    # A vocabulary given on the command line wins over the sidecar's.
    assert run_cli("verify", a, "--vocab-size", "100").returncode == 1
    assert run_cli("verify", bad, "--vocab-size", "300000").returncode == 0


def test_verify_finds_and_locates_a_bad_token_in_a_later_chunk(tmp_path):
    # Library call with chunks of 7 tokens; documents with several and zero-length sequences.
    from dataprep.tools.integrity import verify_idxmap
    from dataset_engine.idxmap import IdxmapWriter

    prefix = str(tmp_path / "small")
    with IdxmapWriter(prefix, np.uint16) as w:
        for d in range(10):
            w.add_document(np.arange(d, d + 5, dtype=np.int64), [2, 0, 3])
        w.add_document(np.array([1, 2, 999, 3]))
    result = verify_idxmap(prefix, vocab_size=500, chunk_tokens=7)
    assert not result.ok
    assert "token 999 is outside [0, 500) in document 10 (sequence 30, position 2)" in result.problems[0]
    assert verify_idxmap(prefix, vocab_size=1000, chunk_tokens=7).ok


def test_verify_reports_a_truncated_bin(parts, tmp_path):
    a, _, _ = parts
    bad = copy_idxmap(a, str(tmp_path / "short"))
    size = os.path.getsize(bad + ".bin")
    os.truncate(bad + ".bin", size - 4)
    out = failing(bad)
    assert out.strip().splitlines() == [f"{bad}: FAILED: {bad}.bin: truncated: {bad}.idx implies "
                                        f"{size} bytes, found {size - 4}"]


def test_verify_reports_a_bad_pointer(parts, tmp_path):
    a, _, _ = parts
    bad = copy_idxmap(a, str(tmp_path / "pointer"))
    with open(bad + ".idx", "r+b") as f:
        S = struct.unpack_from("<Q", f.read(HEADER), 18)[0]
        f.seek(HEADER + 4 * S + 8 * 2)  # sequence_pointers[2]
        f.write(struct.pack("<q", 12345))
    out = failing(bad)
    assert f"{bad}.idx: sequence_pointers[2] is 12345" in out and len(out.strip().splitlines()) == 1


def test_verify_reports_missing_files_in_one_line_and_checks_the_others(parts, tmp_path):
    _, _, ab = parts
    out = failing(ab, tmp_path / "nothing")
    assert f"{ab}: OK" in out
    assert f"{tmp_path / 'nothing'}: FAILED: {tmp_path / 'nothing'}.idx: missing" in out
    assert "1 of 2 OK" in out


def test_verify_reports_a_mask_value_of_two(sft_native, tmp_path):
    src_dir, name = os.path.dirname(sft_native), "sft_loss_mask_document"
    for ext in (".bin", ".idx"):
        shutil.copyfile(os.path.join(src_dir, name + ext), tmp_path / (name + ext))
    bad = copy_idxmap(sft_native, str(tmp_path / "sft_text_document"))
    mask = IndexedDataset(str(tmp_path / name))
    at = int(mask.sequence_lengths[0]) + 1  # the second token of record 1
    with open(tmp_path / (name + ".bin"), "r+b") as f:
        f.seek(at)
        f.write(b"\x02")
    out = failing(bad)
    assert "loss-mask value 2 is outside [0, 2) in document 1 (sequence 1, position 1)" in out


def test_verify_reports_mask_lengths_that_differ(sft_native, tmp_path):
    from dataset_engine.idxmap import IdxmapReader, IdxmapWriter

    name = "sft_loss_mask_document"
    bad = copy_idxmap(sft_native, str(tmp_path / "sft_text_document"))
    with IdxmapReader(os.path.join(os.path.dirname(sft_native), name)) as src, \
            IdxmapWriter(str(tmp_path / name), np.uint8) as w:
        for i in range(len(src)):  # record 4 one value short
            w.add_document(src[i][:-1] if i == 4 else src[i])
    out = failing(bad)
    assert "sequence 4 has" in out and "mask values but" in out


def test_verify_reports_a_pai_label_outside_the_vocabulary(sft_pai, tmp_path):
    bad = copy_idxmap(sft_pai, str(tmp_path / "pai_text_document"))
    seq_len = 512
    values = np.fromfile(bad + ".bin", np.int32)
    row1 = values[2 * seq_len: 4 * seq_len]
    j = int(np.flatnonzero(row1[seq_len:] != -100)[0])
    values[2 * seq_len + seq_len + j] = -7  # neither -100 nor an id
    marker = int(np.flatnonzero(row1[:seq_len] < 0)[0])
    values[2 * seq_len + marker] = -1 - DEEPSEEK_VOCAB  # a boundary marker for id == vocab
    row2 = values[4 * seq_len: 6 * seq_len]
    values[4 * seq_len + seq_len + int(np.flatnonzero(row2[seq_len:] != -100)[0])] = DEEPSEEK_VOCAB
    values.tofile(bad + ".bin")
    out = failing(bad)
    assert f"token {-1 - DEEPSEEK_VOCAB} (marker for id {DEEPSEEK_VOCAB}) is outside" in out
    assert f"row 1 (document 1), tokens[{marker}]" in out
    assert f"label -7 is neither -100 nor in [0, {DEEPSEEK_VOCAB:,}) in row 1 (document 1), labels[{j}]; 2 such value(s)" in out


# -- merge -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_merge_equals_preprocessing_the_concatenation(parts, tmp_path):
    a, b, ab = parts
    out = tmp_path / "merged"
    done = run_cli("merge", "--input", a, b, "--output-prefix", out)
    assert done.returncode == 0, done.stderr
    for ext in (".bin", ".idx"):
        assert Path(f"{out}{ext}").read_bytes() == Path(ab + ext).read_bytes(), ext
    sidecar = json.loads(Path(f"{out}.json").read_text())
    ab_sidecar = json.loads(Path(ab + ".json").read_text())
    assert sidecar["tokenizer"] == ab_sidecar["tokenizer"]
    assert [i["prefix"] for i in sidecar["inputs"]] == [a, b]
    assert sidecar["counts"] == {k: ab_sidecar["counts"][k] for k in ("documents", "sequences", "tokens")}
    assert not list(tmp_path.glob("*.tmp"))
    assert run_cli("verify", out).returncode == 0


@pytest.mark.slow
def test_merge_of_a_directory_is_read_by_megatron_in_name_order(parts, tmp_path):
    a, b, _ = parts
    inputs = tmp_path / "parts"
    inputs.mkdir()
    # Named so that sorting puts b first; a stray .idx without .bin is not an idxmap.
    copy_idxmap(b, str(inputs / "00_b"))
    copy_idxmap(a, str(inputs / "01_a"), sidecar=False)
    (inputs / "02_orphan.idx").write_bytes(b"")
    out = tmp_path / "merged"
    done = run_cli("merge", "--input", inputs, a, "--output-prefix", out)
    assert done.returncode == 0, done.stderr
    docs_a, docs_b = megatron_documents(a), megatron_documents(b)
    assert megatron_documents(str(out)) == docs_b + docs_a + docs_a
    ds = IndexedDataset(str(out))
    assert ds.index.dtype == np.int32 and len(ds.document_indices) == 1 + 2 * len(docs_a) + len(docs_b)
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert "tokenizer" not in sidecar  # 01_a has no sidecar: nothing to agree on
    assert "no tokenizer in the sidecar" in done.stdout


@pytest.mark.slow
def test_merge_refuses_a_dtype_mismatch_in_one_line(parts, tmp_path):
    from dataset_engine.idxmap import IdxmapWriter

    a, _, _ = parts
    small = str(tmp_path / "small")
    with IdxmapWriter(small, np.uint16) as w:
        w.add_document(np.array([1, 2, 3]))
    out = tmp_path / "merged"
    done = run_cli("merge", "--input", a, small, "--output-prefix", out)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dtype mismatch")
    assert small in lines[0] and a in lines[0] and "uint16" in lines[0] and "int32" in lines[0]
    assert not list(tmp_path.glob("merged*"))


@pytest.mark.slow
def test_merge_refuses_an_empty_directory_and_its_own_output(parts, tmp_path):
    a, _, _ = parts
    done = run_cli("merge", "--input", tmp_path, "--output-prefix", tmp_path / "out")
    assert done.returncode == 2 and "holds no idxmap" in done.stderr
    done = run_cli("merge", "--input", a, "--output-prefix", a)
    assert done.returncode == 2 and "is also an input" in done.stderr
