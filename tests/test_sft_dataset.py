"""SFT samples: labels are the next trained token (never a padding artefact), positions restart per
record, no target crosses a record, cu_seqlens match the records, raw json / native idxmap / Pai
rows give identical samples, micro-batches of any size collate, DataLoader workers work, and the
raw index finds exactly the records `json` finds."""

import json
import os
import re
import threading

import numpy as np
import pytest
import torch

from conftest import ROOT
from dataprep.sft.run import SFTConfig, run_sft
from dataprep.sft.raw import build_sft_dataset, open_raw_sft
from dataset_engine import raw as raw_module
from dataset_engine.raw import RawIndexError, index_records, record_line
from dataset_engine.sft import SFTDataset, SFTDatasetConfig, collate_sft
from dataset_engine.sft_format import open_sft

SAMPLES = ROOT / "dataprep" / "samples"
ALPACA = SAMPLES / "alpaca_zh-sample.json"
CHAT = SAMPLES / "chat_sample.jsonl"
TOKENIZER = "DeepSeekV2Tokenizer"


def build(tmp, inputs, name, **options):
    prefix = tmp / name
    run_sft(SFTConfig(inputs=tuple(map(str, inputs)), output_prefix=str(prefix), tokenizer=TOKENIZER,
                      workers=1, progress=False, **options), log=lambda m: None)
    return str(prefix)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Native (no seq-length) and Pai-layout (bfd, packed at 256) builds of the two sample files."""
    tmp = tmp_path_factory.mktemp("sft-ds")
    inputs = [ALPACA, CHAT]
    return {"tmp": tmp, "inputs": inputs, "native": build(tmp, inputs, "native"),
            "pai": build(tmp, inputs, "pai", layout="pai", seq_length=256, packing=True)}


@pytest.fixture(scope="module")
def raw_source(built):
    return open_raw_sft([str(p) for p in built["inputs"]], tokenizer=TOKENIZER,
                        cache_dir=str(built["tmp"] / "cache"))


def config(tmp, **kw):
    kw.setdefault("seq_length", 256)
    return SFTDatasetConfig(cache_dir=str(tmp / "cache"), **kw)


def assert_same(a: dict, b: dict, where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), f"{where}: {key}"
        else:
            assert a[key] == b[key], f"{where}: {key}"


def check_row(sample: dict, records: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> None:
    """The row holds these records back to back: ids, targets of trained tokens only, positions
    restarting at 0, one cu_seqlens segment each, then padding (its own segment, no targets)."""
    tokens, labels = sample["tokens"].numpy(), sample["labels"].numpy()
    cu = sample["cu_seqlens"].tolist()
    at = 0
    for n, (ids, mask) in enumerate(records):
        k = len(ids)
        np.testing.assert_array_equal(tokens[at:at + k], ids)
        expected = [int(ids[j + 1]) if mask[j + 1] else -100 for j in range(k - 1)] + [-100]
        np.testing.assert_array_equal(labels[at:at + k], expected)  # the last target stays inside
        np.testing.assert_array_equal(sample["position_ids"][at:at + k].numpy(), np.arange(k))
        assert cu[n] == at and cu[n + 1] == at + k
        at += k
    assert (tokens[at:] == pad_id).all() and (labels[at:] == -100).all()
    np.testing.assert_array_equal(sample["loss_mask"].numpy(), (labels != -100).astype(np.float32))
    assert cu[-1] == len(tokens)
    assert sample["max_seqlen"] == max(np.diff(cu))


@pytest.mark.slow
def test_packed_rows_hold_whole_records_with_their_own_positions(built):
    source = open_sft(built["native"])
    ds = SFTDataset(source, config(built["tmp"], packing=True))
    seen = []
    for r in range(len(ds)):
        members = ds.records[ds.plan.row(r)]
        check_row(ds[r], [source.record(i) for i in members], source.pad_id)
        seen += members.tolist()
    assert sorted(seen) == list(range(len(source)))
    assert ds.plan.rows <= 1.1 * ds.plan.lower_bound


def test_labels_keep_the_pad_id_where_it_is_a_real_target(built):
    """DeepSeek's pad id is its eos id (1), which ends every answer: Pai's raw mode used the pad id
    as the ignore index and lost those targets; here they are trained."""
    source = open_sft(built["native"])
    assert source.pad_id == 1
    sample = SFTDataset(source, config(built["tmp"], packing=True))[0]
    eos_targets = sample["labels"] == 1
    assert eos_targets.any() and (sample["loss_mask"][eos_targets] == 1).all()


def test_unpacked_samples_are_padded_records_in_seeded_order(built):
    source = open_sft(built["native"])
    ds = SFTDataset(source, config(built["tmp"], pad_length=128))
    assert sorted(ds.order.tolist()) == list(range(len(source)))
    assert ds.order.tolist() != sorted(ds.order.tolist())  # shuffled
    for idx in range(len(ds)):
        ids, mask = source.record(ds.order[idx])
        sample = ds[idx]
        assert sample["tokens"].shape == (128,) and "cu_seqlens" not in sample
        k = min(len(ids), 128)
        np.testing.assert_array_equal(sample["tokens"][:k].numpy(), ids[:k])
        np.testing.assert_array_equal(sample["position_ids"].numpy(), np.arange(128))
    in_order = SFTDataset(source, config(built["tmp"], pad_length=128, shuffle=False))
    assert in_order.order.tolist() == list(range(len(source)))


@pytest.mark.slow
def test_a_prompt_that_fills_the_sample_trains_nothing_and_is_left_out_of_packing(tmp_path):
    long_prompt = {"instruction": "很长的问题。" * 200, "output": "短答。"}
    short = {"instruction": "Say hi.", "output": "Hi!"}
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [short, long_prompt, short]) + "\n",
                    encoding="utf-8")
    source = open_sft(build(tmp_path, [path], "ds"))
    assert source.lengths[1] > 300
    unpacked = SFTDataset(source, config(tmp_path, seq_length=256, shuffle=False))
    assert len(unpacked) == 3
    assert unpacked[1]["loss_mask"].sum() == 0 and unpacked[0]["loss_mask"].sum() > 0
    packed = SFTDataset(source, config(tmp_path, seq_length=256, packing=True))
    assert packed.records.tolist() == [0, 2]


@pytest.mark.slow
def test_raw_mode_yields_the_idxmap_samples(built, raw_source):
    native = open_sft(built["native"])
    assert len(raw_source) == len(native)
    np.testing.assert_array_equal(raw_source.lengths, native.lengths)
    for options in (dict(packing=True), dict(pad_length=200), dict(seq_length=64, packing=True),
                    dict(seq_length=2048, packing=True, packing_algorithm="next-fit")):
        a = SFTDataset(raw_source, config(built["tmp"], **options))
        b = SFTDataset(native, config(built["tmp"], **options))
        assert len(a) == len(b)
        for i in range(len(a)):
            assert_same(a[i], b[i], f"{options} sample {i}")


def test_pai_rows_yield_the_native_packed_samples(built):
    """Written as Pai rows with bfd at 256 (seed 1234), read back: the same samples as packing
    the native records at load time with the same seed."""
    pai = SFTDataset(open_sft(built["pai"]), config(built["tmp"], packing=True))
    native = SFTDataset(open_sft(built["native"]), config(built["tmp"], packing=True))
    assert len(pai) == len(native)
    for i in range(len(pai)):
        assert_same(pai[i], native[i], f"row {i}")


def test_pai_rows_trained_with_another_seq_length_is_an_error(built):
    with pytest.raises(ValueError, match="built for seq_length 256 .* training uses seq_length 512"):
        SFTDataset(open_sft(built["pai"]), config(built["tmp"], seq_length=512, packing=True))


def test_collate_builds_micro_batches_with_batch_level_cu_seqlens(built):
    ds = SFTDataset(open_sft(built["native"]), config(built["tmp"], packing=True))
    rows = [ds[i] for i in range(3)]
    batch = collate_sft(rows)
    assert batch["tokens"].shape == (3, 256)
    expected = [0]
    for b, row in enumerate(rows):
        expected += [int(x) + b * 256 for x in row["cu_seqlens"][1:]]
    assert batch["cu_seqlens"].tolist() == expected
    assert batch["cu_seqlens"].dtype == torch.int32
    assert batch["max_seqlen"] == max(r["max_seqlen"] for r in rows)
    unpacked = collate_sft([SFTDataset(open_sft(built["native"]), config(built["tmp"], pad_length=64))[i] for i in range(5)])
    assert unpacked["labels"].shape == (5, 64) and "cu_seqlens" not in unpacked


@pytest.mark.parametrize("kind", ["native", "pai", "raw"])
def test_dataloader_workers(built, raw_source, kind):
    source = raw_source if kind == "raw" else open_sft(built[kind])
    ds = SFTDataset(source, config(built["tmp"], packing=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_sft)
    batches = list(loader)
    assert sum(b["tokens"].shape[0] for b in batches) == len(ds)
    assert torch.equal(batches[0]["tokens"], collate_sft([ds[i] for i in range(4)])["tokens"])


def test_packing_plans_are_cached_under_what_decides_them(built):
    tmp = built["tmp"] / "plans"
    source = open_sft(built["native"])
    first = SFTDataset(source, SFTDatasetConfig(seq_length=256, packing=True, cache_dir=str(tmp)))
    files = os.listdir(tmp)
    assert len(files) == 1 and files[0].startswith("sft-packing-")
    again = SFTDataset(source, SFTDatasetConfig(seq_length=256, packing=True, cache_dir=str(tmp)))
    np.testing.assert_array_equal(again.plan.order, first.plan.order)
    SFTDataset(source, SFTDatasetConfig(seq_length=256, packing=True, seed=7, cache_dir=str(tmp)))
    SFTDataset(source, SFTDatasetConfig(seq_length=512, packing=True, cache_dir=str(tmp)))
    assert len(os.listdir(tmp)) == 3


@pytest.mark.slow
def test_mp_dataset_type_selects_raw(built, monkeypatch):
    cfg = config(built["tmp"], pad_length=64)
    monkeypatch.setenv("MP_DATASET_TYPE", "raw")
    ds = build_sft_dataset(str(ALPACA), cfg, tokenizer=TOKENIZER)
    assert type(ds.source).__name__ == "RawSFT" and len(ds) == 60
    monkeypatch.setenv("MP_DATASET_TYPE", "idxmap")
    assert type(build_sft_dataset(built["native"], cfg).source).__name__ == "NativeSFT"
    monkeypatch.setenv("MP_DATASET_TYPE", "parquet")
    with pytest.raises(ValueError, match="MP_DATASET_TYPE must be one of idxmap, raw, got 'parquet'"):
        build_sft_dataset(built["native"], cfg)


@pytest.mark.slow
def test_a_bad_raw_record_names_its_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    records = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    records[3] = {"instruction": "no answer"}
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    line = path.read_text().splitlines().index("  {", path.read_text().splitlines().index('    "instruction": "no answer"') - 1) + 1
    source = open_raw_sft([str(path)], tokenizer=TOKENIZER, cache_dir=str(tmp_path / "c"))
    source.record(0)
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: alpaca: missing key 'output'")):
        source.record(3)
    with pytest.raises(ValueError, match=re.escape(f"{path}:{line}: alpaca: missing key 'output'")):
        source.lengths  # the all-records pass (packing) stops at the same place


# -- the raw index ---------------------------------------------------------------------------
TRICKY = [
    {"instruction": 'quote " and \\" and \\\\" end', "output": "brackets ] } [ { , inside"},
    {"instruction": "backslashes \\\\\\\\", "output": "\\"},
    {"messages": [{"role": "user", "content": "[1, 2]"}, {"role": "assistant", "content": "{\"a\": [3]}"}]},
    {"instruction": "中文，逗号、括号【】", "output": "emoji 🤖 \u2028 line separator"},
    {"nested": {"deep": [[[], {}], {"x": [1, {"y": "]"}]}]}, "instruction": "n", "output": "o"},
]


def expected_spans(text: str):
    """Each element's text and start line, found with the json module."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    out = []
    while True:
        while text[pos] in " \t\r\n,":
            pos += 1
        if text[pos] == "]":
            return out
        value, end = decoder.raw_decode(text, pos)
        out.append((value, text.count("\n", 0, pos) + 1))
        pos = end


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
@pytest.mark.parametrize("style", ["indent", "compact", "crlf", "bom"])
def test_array_index_finds_every_element(tmp_path, monkeypatch, block, style):
    monkeypatch.setattr(raw_module, "BLOCK", block)
    records = TRICKY * 7
    text = json.dumps(records, indent=None if style == "compact" else 2, ensure_ascii=style == "indent")
    if style == "crlf":
        text = text.replace("\n", "\r\n")
    path = tmp_path / "a.json"
    path.write_bytes((b"\xef\xbb\xbf" if style == "bom" else b"") + text.encode("utf-8"))
    index = index_records(str(path))
    data = path.read_bytes()
    got = [json.loads(data[s:e]) for s, e in zip(index.starts, index.ends)]
    assert got == records
    lines = [record_line(str(path), index, i) for i in range(len(records))]
    assert lines == [line for _, line in expected_spans(text)]


@pytest.mark.parametrize("block", [5, 1 << 20])
def test_jsonl_index_skips_blank_lines(tmp_path, monkeypatch, block):
    monkeypatch.setattr(raw_module, "BLOCK", block)
    path = tmp_path / "a.jsonl"
    lines = ["\ufeff" + json.dumps(TRICKY[0]), "", "   ", json.dumps(TRICKY[1]), "\t",
             json.dumps(TRICKY[2], ensure_ascii=False), json.dumps(TRICKY[3])]
    path.write_text("\n".join(lines), encoding="utf-8")  # no final newline
    index = index_records(str(path))
    data = path.read_bytes()
    assert [json.loads(data[s:e]) for s, e in zip(index.starts, index.ends)] == TRICKY[:4]
    assert index.lines.tolist() == [1, 4, 6, 7]


@pytest.mark.parametrize("text, problem", [
    ('[{"a": 1}, {"b": 2}', "not a complete JSON array"),
    ('[{"a": "unclosed}]', "not a complete JSON array"),
    ('[{"a": 1}]] ', "unbalanced brackets"),
    ('[{"a": 1}] {"b": 2}', "unexpected data outside"),
])
def test_broken_arrays_are_refused(tmp_path, text, problem):
    path = tmp_path / "broken.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RawIndexError, match=problem):
        index_records(str(path))


def test_empty_array_and_cached_index(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[ ]\n")
    assert len(index_records(str(empty)).starts) == 0
    path = tmp_path / "a.json"
    path.write_text(json.dumps(TRICKY), encoding="utf-8")
    cache = tmp_path / "cache"
    first = index_records(str(path), str(cache))
    for thread in threading.enumerate():  # the cache is written in the background
        if thread.name == "raw-index-cache":
            thread.join()
    assert len(list(cache.iterdir())) == 1
    np.testing.assert_array_equal(index_records(str(path), str(cache)).starts, first.starts)
    path.write_text(json.dumps(TRICKY[:2]), encoding="utf-8")  # changed file: a new key
    assert len(index_records(str(path), str(cache)).starts) == 2


def test_an_index_of_bytes_rewritten_before_their_digest_is_not_cached(tmp_path):
    """The cache key is the digest of the bytes scanned: when the file changes between the scan
    and the (background) digest, nothing is saved, and the next start scans the new bytes."""
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TRICKY), encoding="utf-8")
    cache = tmp_path / "cache"
    scanned_stamp = raw_module.file_stamp(str(path))
    index = raw_module.index_records(str(path))
    path.write_text(json.dumps(TRICKY[0]) + "\n", encoding="utf-8")  # rewritten before the digest
    raw_module._save_index(index, str(path), scanned_stamp, str(cache))
    assert not cache.exists() or not list(cache.iterdir())
    raw_module._save_index(raw_module.index_records(str(path)), str(path), raw_module.file_stamp(str(path)), str(cache))
    assert len(list(cache.iterdir())) == 1  # an unchanged file is saved
    assert len(index_records(str(path), str(cache)).starts) == 1


@pytest.mark.slow
def test_raw_mode_with_the_tokenizers_own_template_in_dataloader_workers(tmp_path, reference_tokenizer):
    """A tokenizer with its own chat template: raw samples (built again in each DataLoader worker,
    which reloads the template) equal the idxmap's."""
    import copy

    tok = copy.deepcopy(reference_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                         "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
                         "{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tok.save_pretrained(str(tmp_path / "tok"))
    prefix = tmp_path / "ds"
    run_sft(SFTConfig(inputs=(str(CHAT),), output_prefix=str(prefix), tokenizer="HuggingFaceTokenizer",
                      tokenizer_path=str(tmp_path / "tok"), workers=1, progress=False), log=lambda m: None)
    cfg = config(tmp_path, seq_length=128, packing=True)
    native = SFTDataset(open_sft(str(prefix)), cfg)
    raw = build_sft_dataset(str(CHAT), cfg, dataset_type="raw", tokenizer="HuggingFaceTokenizer",
                            tokenizer_path=str(tmp_path / "tok"))
    assert raw.source.options.template == "tokenizer"
    loader = torch.utils.data.DataLoader(raw, batch_size=2, num_workers=2, collate_fn=collate_sft)
    expected = torch.utils.data.DataLoader(native, batch_size=2, collate_fn=collate_sft)
    for got, want in zip(loader, expected, strict=True):
        assert_same(got, want, "batch")
