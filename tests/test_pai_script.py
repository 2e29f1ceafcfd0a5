"""Pai's positional pretrain script runs our pipeline and writes Pai's file names."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset_engine.idxmap import IdxmapReader

pytestmark = pytest.mark.slow  # every test here starts processes (see docs/ARCHITECTURE.md)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "dataprep" / "scripts" / "run_make_pretraining_dataset_megatron.sh"


def test_pai_positional_script_writes_pai_names(tmp_path, deepseek_dir, reference_tokenizer):
    data = tmp_path / "SlimPajama.json"
    texts = ["Hello Pai users.", "预训练数据。", "def f():\n    return 1\n"]
    data.write_text("".join('{"text": %s}\n' % __import__("json").dumps(t) for t in texts), encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, DATAPREP=f"{sys.executable} -m dataprep.cli", DATAPREP_WORKERS="1",
               DATAPREP_ARGS="--no-progress", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", str(SCRIPT), str(data), "DeepSeekV2Tokenizer", "text", str(out), deepseek_dir],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    prefix = out / "mmap_deepseekv2_datasets_text_document"
    with IdxmapReader(str(prefix)) as reader:
        eos = reference_tokenizer.eos_token_id
        for i, text in enumerate(texts):
            expected = reference_tokenizer(text, add_special_tokens=False).input_ids + [eos]
            np.testing.assert_array_equal(reader.get_document(i), expected)
    assert "min" in done.stdout and "sec" in done.stdout


def test_pai_script_needs_five_parameters(tmp_path):
    done = subprocess.run(["bash", str(SCRIPT), "a", "b"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "usage:" in done.stderr


# -- the Pai SFT script: run_build_idxmap_sft_dataset.sh ----------------------------------------
SFT_SCRIPT = ROOT / "dataprep" / "scripts" / "run_build_idxmap_sft_dataset.sh"
ALPACA_SAMPLE = ROOT / "dataprep" / "samples" / "alpaca_zh-sample.json"


def _pai_record(record, hf, seq_len):
    """A record as Pai stores it, computed here: the reference ids of the deepseek template's segments
    (one call per segment), labels[i] = ids[i+1] where that token is trained else -100, last label
    -100, last token -1-id."""
    from dataprep.sft.chat_template import TEMPLATES
    from dataprep.sft.conversations import to_conversation

    ids, trained = [], []
    for text, flag in TEMPLATES["deepseek"].segments(to_conversation(record), hf.eos_token):
        if text:
            seg = hf(text, add_special_tokens=False).input_ids
            ids += seg
            trained += [flag] * len(seg)
    assert len(ids) <= seq_len
    labels = [ids[i + 1] if trained[i + 1] else -100 for i in range(len(ids) - 1)] + [-100]
    tokens = ids[:-1] + [-1 - ids[-1]]
    return tokens, labels


def test_pai_sft_script_writes_pai_rows(tmp_path, deepseek_dir, reference_tokenizer):
    import json

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from conftest import cli_env, split_rows

    seq_len = 256
    out_prefix = tmp_path / "out" / "alpaca"
    env = cli_env(DATAPREP=f"{sys.executable} -m dataprep.cli", DATAPREP_WORKERS="1",
                  DATAPREP_ARGS="--no-progress")
    done = subprocess.run(["bash", str(SFT_SCRIPT), str(ALPACA_SAMPLE), "DeepSeekV2Tokenizer", str(seq_len),
                           str(out_prefix), deepseek_dir, "true"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "min" in done.stdout and "sec" in done.stdout
    prefix = f"{out_prefix}_text_document"
    assert os.path.isfile(prefix + ".bin") and os.path.isfile(prefix + ".idx")
    ds = IndexedDataset(prefix)
    assert ds.index.dtype == np.int32
    rows = [ds[r].tolist() for r in range(len(ds))]
    assert all(len(row) == 2 * seq_len for row in rows)

    pad = reference_tokenizer.pad_token_id
    pad = reference_tokenizer.eos_token_id if pad is None else pad
    found = split_rows(rows, seq_len, pad)
    records = json.loads(ALPACA_SAMPLE.read_text("utf-8"))
    expected = [_pai_record(r, reference_tokenizer, seq_len) for r in records]
    assert sorted(found) == sorted(expected)  # every record exactly once
    assert len(rows) < len(records)  # packed
    sidecar = json.loads(Path(prefix + ".json").read_text("utf-8"))
    assert sidecar["layout"] == "pai-sft-idxmap" and sidecar["rows"] == len(rows)
    assert sidecar["seq_length"] == seq_len


def test_pai_sft_script_refuses_a_bad_packing_value(tmp_path, deepseek_dir):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(SFT_SCRIPT), str(ALPACA_SAMPLE), "DeepSeekV2Tokenizer", "256",
                           str(out / "alpaca"), deepseek_dir, "yes"],
                          env=dict(os.environ, DATAPREP=f"{sys.executable} -m dataprep.cli"),
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "PACKING must be true or false, got 'yes'" in done.stderr
    assert not out.exists()
