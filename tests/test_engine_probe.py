"""Verify, don't trust: an engine whose ids differ from the reference tokenizer is never used."""

import json

import numpy as np
import pytest

import dataprep.tokenization.tokenizers as tokenizers
from dataprep.pretrain.run import PretrainConfig, run_pretrain
from dataprep.tools.verify import verify_tokenizer
from dataset_engine.idxmap import IdxmapReader

TEXTS = ["Plain English text.", "中文文本，用于测试。", "def f():\n    return 42\n", "3.14159 and 2718"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in TEXTS), encoding="utf-8")
    return path


class _OffByOne(tokenizers._Fastokens):
    """fastokens, but every id of texts containing a digit is shifted: wrong only sometimes."""

    def encode_batch(self, texts):
        ids, offsets = super().encode_batch(texts)
        ids = ids.copy()
        for i, text in enumerate(texts):
            if any(c.isdigit() for c in text):
                ids[offsets[i]:offsets[i + 1]] += 1
        return ids, offsets


class _Missing:
    def __init__(self, spec):
        raise ImportError("No module named 'gigatoken'")


def _expected(reference_tokenizer):
    eos = reference_tokenizer.eos_token_id
    return [reference_tokenizer(t, add_special_tokens=False).input_ids + [eos] for t in TEXTS]


@pytest.mark.slow
def test_a_differing_engine_is_skipped_with_a_note(tmp_path, corpus, deepseek_dir, reference_tokenizer,
                                                   monkeypatch):
    monkeypatch.setitem(tokenizers._ENGINE_CLASSES, "fastokens", _OffByOne)
    monkeypatch.setitem(tokenizers._ENGINE_CLASSES, "gigatoken", _Missing)
    notes = []
    summary = run_pretrain(PretrainConfig(inputs=(str(corpus),), output_prefix=str(tmp_path / "out" / "ds"),
                                          tokenizer="DeepSeekV2Tokenizer", tokenizer_path=deepseek_dir,
                                          workers=1, progress=False), log=notes.append)
    assert summary.engine == "hf"
    assert any("fastokens: differs from the reference tokenizer" in n for n in notes), notes
    assert any("gigatoken: not installed" in n for n in notes), notes
    with IdxmapReader(str(tmp_path / "out" / "ds_text_document")) as reader:
        got = [reader.get_document(d).tolist() for d in range(reader.num_documents)]
    assert got == _expected(reference_tokenizer)


@pytest.mark.slow
def test_explicit_backend_that_differs_falls_back_to_hf(tmp_path, corpus, deepseek_dir, reference_tokenizer,
                                                        monkeypatch):
    monkeypatch.setitem(tokenizers._ENGINE_CLASSES, "fastokens", _OffByOne)
    notes = []
    summary = run_pretrain(PretrainConfig(inputs=(str(corpus),), output_prefix=str(tmp_path / "ds"),
                                          tokenizer="DeepSeekV2Tokenizer", tokenizer_path=deepseek_dir,
                                          workers=1, backend="fastokens", progress=False), log=notes.append)
    assert summary.engine == "hf"
    assert notes and "fastokens: differs" in notes[0]
    sidecar = json.loads((tmp_path / "ds_text_document.json").read_text())
    assert sidecar["tokenizer"]["engine"] == "hf"


@pytest.mark.slow
def test_verify_tokenizer_fails_and_names_the_record(corpus, deepseek_dir, monkeypatch):
    monkeypatch.setitem(tokenizers._ENGINE_CLASSES, "fastokens", _OffByOne)
    ok, lines = verify_tokenizer(name="DeepSeekV2Tokenizer", path=deepseek_dir, inputs=[str(corpus)],
                                 json_keys=("text",), limit=100, backend="auto", trust_remote_code=False)
    assert not ok
    report = "\n".join(lines)
    # texts 3 and 4 hold digits: two of four differ, the first on line 3 of the file
    assert f"fastokens: DIFFERS on 2 of 4 texts; first at {corpus}:3 token 0" in report, report
    assert "hf: exact on all 4 texts" in report, report


def test_probe_mismatch_reports_where(deepseek_dir):
    ids = np.array([1, 2, 3, 4, 5], dtype=np.uint32)
    offsets = np.array([0, 2, 5], dtype=np.int64)
    assert tokenizers.probe_mismatch("x", [[1, 2], [3, 4, 5]], ids, offsets, n_fixed=1) is None
    note = tokenizers.probe_mismatch("x", [[1, 2], [3, 9, 5]], ids, offsets, n_fixed=1)
    assert note == "x: differs from the reference tokenizer on input record #0 at token 1; not used"
