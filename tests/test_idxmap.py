"""Tests for dataset_engine.idxmap: interop with megatron-core, validation, atomic writes."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from dataset_engine import idxmap
from dataset_engine.idxmap import (
    DTYPE_CODES,
    IdxmapError,
    IdxmapReader,
    IdxmapWriter,
    bin_path,
    idx_path,
    optimal_dtype,
)

# (tokens, sequence lengths) per document: single- and multi-sequence documents, a
# zero-length sequence, and a document with no sequences at all.
DOCS = [
    ([1, 2, 3], [3]),
    ([4, 5, 6, 7, 8], [2, 3]),
    ([9], [1]),
    ([], [0]),
    ([], []),
    ([10, 11, 12, 13], [1, 1, 2]),
    ([60000, 0, 65499], [3]),
]


def _expected(docs):
    seqs, doc_idx = [], [0]
    for toks, lens in docs:
        bounds = np.cumsum([0] + list(lens))
        seqs += [toks[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        doc_idx.append(len(seqs))
    return seqs, doc_idx


def _write_ours(prefix, docs, dtype):
    with IdxmapWriter(prefix, dtype) as w:
        for toks, lens in docs:
            w.add_document(np.array(toks, dtype=np.int64), lens)
    return w


def _write_megatron(prefix, docs, dtype, use_add_item):
    builder = IndexedDatasetBuilder(bin_path(prefix), dtype=np.dtype(dtype).type)
    for toks, lens in docs:
        if use_add_item:
            start = 0
            for n in lens:
                builder.add_item(torch.tensor(toks[start:start + n], dtype=torch.int64))
                start += n
            builder.end_document()
        else:
            builder.add_document(np.array(toks, dtype=np.int64), list(lens))
    builder.finalize(idx_path(prefix))


def _files(prefix):
    return [open(p, "rb").read() for p in (idx_path(prefix), bin_path(prefix))]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_megatron_reads_what_we_write(tmp_path, dtype):
    prefix = str(tmp_path / "ours")
    w = _write_ours(prefix, DOCS, dtype)
    seqs, doc_idx = _expected(DOCS)
    assert (w.num_documents, w.num_sequences, w.num_tokens) == (len(DOCS), len(seqs), 16)

    ds = IndexedDataset(prefix)
    assert ds.index.dtype == np.dtype(dtype).type
    assert len(ds) == len(seqs)
    np.testing.assert_array_equal(ds.document_indices, doc_idx)
    np.testing.assert_array_equal(ds.sequence_lengths, [len(s) for s in seqs])
    for i, s in enumerate(seqs):
        got = ds[i]
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, s)


@pytest.mark.parametrize("use_add_item", [True, False], ids=["add_item", "add_document"])
@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_we_read_what_megatron_writes(tmp_path, dtype, use_add_item):
    prefix = str(tmp_path / "meg")
    _write_megatron(prefix, DOCS, dtype, use_add_item)
    seqs, doc_idx = _expected(DOCS)
    with IdxmapReader(prefix) as r:
        assert r.dtype == np.dtype(dtype)
        assert (len(r), r.num_documents, r.num_tokens) == (len(seqs), len(DOCS), 16)
        np.testing.assert_array_equal(r.document_indices, doc_idx)
        np.testing.assert_array_equal(r.sequence_lengths, [len(s) for s in seqs])
        for i, s in enumerate(seqs):
            assert r[i].dtype == np.dtype(dtype)
            np.testing.assert_array_equal(r[i], s)
        for d, (toks, _) in enumerate(DOCS):
            np.testing.assert_array_equal(r.get_document(d), toks)


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_byte_identical_to_megatron(tmp_path, code):
    dtype = DTYPE_CODES[code]
    docs = [([t % 100 for t in toks], lens) for toks, lens in DOCS]  # fits every dtype
    _write_ours(str(tmp_path / "ours"), docs, dtype)
    _write_megatron(str(tmp_path / "meg"), docs, dtype, use_add_item=False)
    assert _files(str(tmp_path / "ours")) == _files(str(tmp_path / "meg"))
    assert DType.code_from_dtype(dtype.type) == code


def _random_docs(rng, n_docs):
    docs = []
    for _ in range(n_docs):
        lens = rng.integers(0, 6, size=rng.integers(0, 4)).tolist()
        docs.append((rng.integers(0, 65000, size=sum(lens)).tolist(), lens))
    return docs


def _bulk(w, docs):
    w.add_documents(
        np.array([t for toks, _ in docs for t in toks], dtype=np.int64),
        np.array([n for _, lens in docs for n in lens], dtype=np.int64),
        np.array([len(lens) for _, lens in docs], dtype=np.int64),
    )


@pytest.mark.parametrize("chunk", [None, 3])
def test_bulk_matches_repeated_add_document(tmp_path, monkeypatch, chunk):
    if chunk:  # exercise the chunked pointer writing and validation across boundaries
        monkeypatch.setattr(idxmap, "_CHUNK", chunk)
    docs = _random_docs(np.random.default_rng(0), 200)
    _write_ours(str(tmp_path / "one"), docs, np.uint16)
    with IdxmapWriter(str(tmp_path / "bulk"), np.uint16) as w:
        _bulk(w, docs[:70])
        _bulk(w, [])
        _bulk(w, docs[70:])
    assert _files(str(tmp_path / "one")) == _files(str(tmp_path / "bulk"))
    seqs, doc_idx = _expected(docs)
    with IdxmapReader(str(tmp_path / "bulk")) as r:
        np.testing.assert_array_equal(r.document_indices, doc_idx)
        assert [r[i].tolist() for i in range(len(r))] == seqs
        assert [r.get_document(d).tolist() for d in range(r.num_documents)] == [
            t for t, _ in docs]
    ds = IndexedDataset(str(tmp_path / "bulk"))
    assert [ds[i].tolist() for i in range(len(ds))] == seqs


def test_bulk_empty_edge_cases(tmp_path):
    prefix = str(tmp_path / "e")
    with IdxmapWriter(prefix, np.int32) as w:
        w.add_documents(np.array([], np.int32), np.array([], np.int64), np.array([], np.int64))
        w.add_documents([], [], [0, 0])  # two documents without sequences
        w.add_documents([], [0], [1])  # one document with an empty sequence
        w.add_documents(np.array([7, 8]), np.array([2]), np.array([1]))
    assert (w.num_documents, w.num_sequences, w.num_tokens) == (4, 2, 2)
    ds = IndexedDataset(prefix)
    np.testing.assert_array_equal(ds.document_indices, [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(ds.sequence_lengths, [0, 2])
    assert ds[0].size == 0 and ds[1].tolist() == [7, 8]
    with IdxmapReader(prefix) as r:
        assert r.get_document(0).size == 0 and r.get_document(-1).tolist() == [7, 8]


def test_empty_dataset_round_trip(tmp_path):
    # megatron-core itself cannot read this (it mmaps the empty .bin); we can.
    prefix = str(tmp_path / "empty")
    with IdxmapWriter(prefix, np.uint16):
        pass
    assert os.path.getsize(bin_path(prefix)) == 0
    assert os.path.getsize(idx_path(prefix)) == 34 + 8
    with IdxmapReader(prefix) as r:
        assert (len(r), r.num_documents, r.num_tokens) == (0, 0, 0)
        with pytest.raises(IndexError):
            r[0]


def test_bulk_rejects_inconsistent_counts(tmp_path):
    with IdxmapWriter(str(tmp_path / "x"), np.uint16) as w:
        with pytest.raises(IdxmapError, match="sum to 3 but 4 tokens"):
            w.add_documents([1, 2, 3, 4], [1, 2], [2])
        with pytest.raises(IdxmapError, match="sequences_per_document sums to 1"):
            w.add_documents([1, 2, 3], [1, 2], [1])
        with pytest.raises(IdxmapError, match="sequence_lengths value -1"):
            w.add_documents([1], [-1, 2], [2])
        with pytest.raises(IdxmapError, match="sequences_per_document value -1"):
            w.add_documents([1], [1], [2, -1])
        with pytest.raises(IdxmapError, match="sum to 2 but 3 tokens"):
            w.add_document(np.array([1, 2, 3]), [1, 1])
    assert w.num_documents == 0


@pytest.mark.parametrize("bad", [65536, -1, 70000, 2**40])
def test_uint16_overflow_refused(tmp_path, bad):
    prefix = str(tmp_path / "x")
    with IdxmapWriter(prefix, np.uint16) as w:
        w.add_document(np.array([1, 2]))
        with pytest.raises(IdxmapError, match=f"{prefix}: token {bad} does not fit uint16"):
            w.add_document(np.array([5, bad, 6], dtype=np.int64))
        with pytest.raises(IdxmapError, match="does not fit"):
            w.add_documents(np.array([bad]), np.array([1]), np.array([1]))
        w.add_document(np.array([3]))
    with IdxmapReader(prefix) as r:  # refused documents left no trace
        assert [r[i].tolist() for i in range(len(r))] == [[1, 2], [3]]


def test_other_bad_tokens_refused(tmp_path):
    with IdxmapWriter(str(tmp_path / "x"), np.int32) as w:
        with pytest.raises(IdxmapError, match="does not fit int32"):
            w.add_document(np.array([2**31]))
        with pytest.raises(IdxmapError, match="must be integers"):
            w.add_document(np.array([1.5]))
        with pytest.raises(IdxmapError, match="1-D"):
            w.add_document(np.zeros((2, 2), np.int32))
        w.add_document(np.array([2**31 - 1, -5], np.int64))
    with pytest.raises(IdxmapError, match="unsupported token dtype"):
        IdxmapWriter(str(tmp_path / "y"), np.uint32)


def test_exception_inside_with_leaves_nothing(tmp_path):
    prefix = str(tmp_path / "x")
    with pytest.raises(RuntimeError, match="boom"):
        with IdxmapWriter(prefix, np.uint16) as w:
            w.add_document(np.arange(100))
            # Before finalize only the temporary .bin exists.
            assert sorted(os.listdir(tmp_path)) == ["x.bin.tmp"]
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
    with pytest.raises(IdxmapError, match="aborted"):
        w.add_document(np.arange(3))


def test_finalize_publishes_and_abort_cleans(tmp_path):
    w = IdxmapWriter(str(tmp_path / "a"), np.uint16)
    w.add_document(np.arange(10))
    assert not os.path.exists(bin_path(str(tmp_path / "a")))
    w.finalize()
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.idx"]
    w.abort()  # no-op once finalized
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.idx"]
    with pytest.raises(IdxmapError, match="finalized"):
        w.finalize()

    w = IdxmapWriter(str(tmp_path / "b"), np.uint16)
    w.add_document(np.arange(10))
    w.abort()
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "a.idx"]


def test_overwrite_existing_dataset(tmp_path):
    prefix = str(tmp_path / "x")
    _write_ours(prefix, DOCS, np.int32)
    _write_ours(prefix, [([1, 2], [2])], np.uint16)
    with IdxmapReader(prefix) as r:
        assert r.dtype == np.uint16 and len(r) == 1 and r[0].tolist() == [1, 2]


# --- corruption -------------------------------------------------------------------------

def _good(tmp_path):
    prefix = str(tmp_path / "c")
    _write_ours(prefix, DOCS, np.uint16)  # S=9 sequences, D=8 document indices, 16 tokens
    return prefix


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _resize(path, delta):
    size = os.path.getsize(path)
    if delta < 0:
        os.truncate(path, size + delta)
    else:
        with open(path, "ab") as f:
            f.write(b"\0" * delta)


S, D = 9, 8
LENGTHS, POINTERS, DOC_IDX = 34, 34 + 4 * S, 34 + 12 * S

CORRUPTIONS = {
    "bad magic": (lambda p: _patch(idx_path(p), 0, b"MMIDIDY"), "idx", "bad magic"),
    "bad version": (lambda p: _patch(idx_path(p), 9, struct.pack("<Q", 2)), "idx",
                    "unsupported version 2"),
    "unknown dtype": (lambda p: _patch(idx_path(p), 17, b"\x09"), "idx",
                      "unknown dtype code 9"),
    "idx header truncated": (lambda p: os.truncate(idx_path(p), 20), "idx", "truncated"),
    "idx truncated": (lambda p: _resize(idx_path(p), -8), "idx",
                      f"truncated: expected {34 + 12 * S + 8 * D} bytes from its counts"),
    "idx trailing bytes": (lambda p: _resize(idx_path(p), 3), "idx", "trailing bytes"),
    "count too large": (lambda p: _patch(idx_path(p), 18, struct.pack("<Q", 2**63)), "idx",
                        "truncated"),
    "bin truncated": (lambda p: _resize(bin_path(p), -2), "bin", "truncated"),
    "bin too long": (lambda p: _resize(bin_path(p), 2), "bin", "too long"),
    "pointer outside": (lambda p: _patch(idx_path(p), POINTERS + 8 * (S - 1),
                                         struct.pack("<q", 10**6)), "idx",
                        f"sequence_pointers\\[{S - 1}\\] is 1000000"),
    "pointer mismatched": (lambda p: _patch(idx_path(p), POINTERS + 8, struct.pack("<q", 0)),
                           "idx", "sequence_pointers\\[1\\] is 0, expected 6"),
    "negative length": (lambda p: _patch(idx_path(p), LENGTHS + 4, struct.pack("<i", -1)),
                        "idx", "sequence_lengths\\[1\\] is negative"),
    "doc indices end early": (lambda p: _patch(idx_path(p), DOC_IDX + 8 * (D - 1),
                                               struct.pack("<q", S - 1)), "idx",
                              f"from 0 to sequence_count={S}"),
    "doc indices start late": (lambda p: _patch(idx_path(p), DOC_IDX, struct.pack("<q", 1)),
                               "idx", "document_indices must run from 0"),
    "doc indices decrease": (lambda p: _patch(idx_path(p), DOC_IDX + 16, struct.pack("<q", 0)),
                             "idx", "document_indices decrease at 2: 1 -> 0"),
    "zero documents": (lambda p: (_patch(idx_path(p), 26, struct.pack("<Q", 0)),
                                  _resize(idx_path(p), -8 * D)), "idx", "document_count is 0"),
    "missing bin": (lambda p: os.remove(bin_path(p)), "bin", "missing"),
    "missing idx": (lambda p: os.remove(idx_path(p)), "idx", "missing"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruption_refused(tmp_path, name):
    corrupt, which, message = CORRUPTIONS[name]
    prefix = _good(tmp_path)
    IdxmapReader(prefix).close()  # sanity: the uncorrupted pair is accepted
    corrupt(prefix)
    path = idx_path(prefix) if which == "idx" else bin_path(prefix)
    with pytest.raises(IdxmapError, match=message) as info:
        IdxmapReader(prefix)
    assert str(info.value).startswith(path + ":")


def test_corruption_in_later_chunk(tmp_path, monkeypatch):
    monkeypatch.setattr(idxmap, "_CHUNK", 2)
    prefix = _good(tmp_path)
    IdxmapReader(prefix).close()
    _patch(idx_path(prefix), POINTERS + 8 * 7, struct.pack("<q", 2))
    with pytest.raises(IdxmapError, match="sequence_pointers\\[7\\] is 2, expected 22"):
        IdxmapReader(prefix)


# --- small API -----------------------------------------------------------------------

def test_optimal_dtype_and_codes_match_megatron():
    for vocab in (1, 32000, 65499, 65500, 65536, 128256):
        assert optimal_dtype(vocab) == np.dtype(DType.optimal_dtype(vocab))
    assert optimal_dtype(65499) == np.uint16 and optimal_dtype(65500) == np.int32
    for code, dt in DTYPE_CODES.items():
        assert DType.dtype_from_code(code) == dt.type
    assert idx_path("a/b") == "a/b.idx" and bin_path("a/b") == "a/b.bin"


def test_reader_indexing_and_views(tmp_path):
    prefix = _good(tmp_path)
    r = IdxmapReader(prefix)
    assert r[-1].tolist() == [60000, 0, 65499] and r[np.int64(1)].tolist() == [4, 5]
    assert r.get_document(-1).tolist() == [60000, 0, 65499]
    with pytest.raises(IndexError):
        r[S]
    with pytest.raises(IndexError):
        r.get_document(D - 1)
    seq = r[0]
    assert not seq.flags.writeable and not seq.flags.owndata  # a view into the map
    r.close()
    assert seq.tolist() == [1, 2, 3]  # views held by callers stay valid after close


@pytest.mark.slow
def test_module_does_not_import_torch():
    code = ("import sys, dataset_engine, dataset_engine.idxmap; "
            "assert not {'torch', 'megatron'} & set(sys.modules), 'imported torch/megatron'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
