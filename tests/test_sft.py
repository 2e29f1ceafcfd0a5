"""`dataprep sft` end to end: megatron-core reads exactly the reference ids and loss masks, records
are truncated or dropped by Pai's rules, bad records are reported by file:line (or rejected), the
bytes do not depend on workers or chunking, and the pai layout is Pai's rows value for value.

Expectations come from outside the pipeline: the reference tokenizer (`AutoTokenizer`, one call per
template segment) through `chat_template.encode_conversation`, a replica of Pai's encoder loop and
next-fit packing written here, megatron-core's `IndexedDataset` reader, and line numbers counted here.
"""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from conftest import EOS_TEXT, ROOT, run_cli, split_rows
from dataprep.sft.chat_template import TEMPLATES, HFChatTemplate, encode_conversation
from dataprep.sft.conversations import to_conversation
from dataprep.errors import DataprepError
from dataprep.sft.run import SFTConfig, run_sft
from dataprep.io.sources import ChunkReader

TOKENIZER = "DeepSeekV2Tokenizer"
SAMPLES = ROOT / "dataprep" / "samples"
ALPACA_SAMPLE = SAMPLES / "alpaca_zh-sample.json"
CHAT_SAMPLE = SAMPLES / "chat_sample.jsonl"
IGNORE = -100

# alpaca (system + history + input), messages and ShareGPT records in one file, told apart by keys
MIXED = [
    {"instruction": "把下面的句子翻译成英文", "input": "你好，世界", "output": "Hello, world!",
     "system": "You translate.", "history": [["Say hi", "Hi there."], ["再说一次", " Hi again — 🚀"]]},
    {"messages": [{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "And in code?"},
                  {"role": "assistant", "content": "def add():\n\treturn 2 + 2\n"}]},
    {"conversations": [{"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue 🔵"}],
     "system": "你是一个助手。"},
    {"instruction": "Say done.", "input": "", "output": "Done.", "id": 3, "meta": {"k": [1, None]}},
    {"conversations": [{"from": "user", "value": f"A stop token {EOS_TEXT} written in the prompt"},
                       {"from": "assistant", "value": "  two leading spaces and a newline\n"}]},
    {"messages": [{"role": "user", "content": "日本語？"}, {"role": "assistant", "content": "はい、日本語です。"},
                  {"role": "user", "content": "SELECT  1;\r\n"}, {"role": "assistant", "content": "1"}]},
]
ARRAY = [
    {"conversations": [{"from": "system", "value": "Sys."}, {"from": "human", "value": "Q1"},
                       {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"},
                       {"from": "gpt", "value": "A2 ✓"}]},
    {"instruction": "写一首诗", "output": "春眠不觉晓，\n处处闻啼鸟。", "history": []},
    {"messages": [{"role": "user", "content": "emoji 👩‍👩‍👧‍👦"}, {"role": "assistant", "content": "🇨🇳🇺🇸"}]},
]


# -- helpers -----------------------------------------------------------------------------------
def sft(inputs, prefix, **options):
    """The library call, one worker and no progress bar unless told otherwise."""
    options.setdefault("workers", 1)
    options.setdefault("progress", False)
    options.setdefault("tokenizer", TOKENIZER)
    if isinstance(inputs, (str, Path)):
        inputs = (inputs,)
    config = SFTConfig(inputs=tuple(map(str, inputs)), output_prefix=str(prefix), **options)
    return run_sft(config, log=lambda message: None)


def reference_encoder(hf):
    """encode(texts) -> (ids, offsets): one reference call per segment, no special tokens added."""
    def encode(texts):
        rows = [hf(t, add_special_tokens=False).input_ids for t in texts]
        ids = np.array([i for row in rows for i in row], np.int64)
        offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
        return ids, offsets
    return encode


def expected_record(record, hf, renderer=None):
    """(ids, mask) of a record, computed with the reference tokenizer."""
    renderer = renderer or TEMPLATES["deepseek"]
    ids, mask = encode_conversation(to_conversation(record), renderer, reference_encoder(hf), hf.eos_token)
    return ids.tolist(), mask.astype(int).tolist()


def read_records(path) -> list:
    path = Path(path)
    text = path.read_text("utf-8")
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_jsonl(path, records) -> Path:
    lines = []
    for i, rec in enumerate(records):
        lines.append(rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=i % 2 == 0))
        if i % 3 == 1:
            lines.append("")  # blank lines are not records
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Path(path)


def write_array(path, records) -> Path:
    Path(path).write_text(json.dumps(records, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return Path(path)


def array_element_lines(path) -> list[int]:
    """1-based line where each top-level element of an indent=2 JSON array starts, counted here."""
    return [i + 1 for i, line in enumerate(Path(path).read_text("utf-8").split("\n")) if line == "  {"]


def tokens_prefix(prefix) -> str:
    return f"{prefix}_text_document"


def sidecar_of(prefix) -> dict:
    return json.loads(Path(tokens_prefix(prefix) + ".json").read_text("utf-8"))


def megatron_native(prefix):
    """[(ids, mask)] per record as megatron-core reads the two idxmaps, and their dtypes."""
    tokens = IndexedDataset(tokens_prefix(prefix))
    mask = IndexedDataset(f"{prefix}_loss_mask_document")
    assert len(tokens) == len(mask)
    n = len(tokens)
    # one document per record, one sequence per document
    assert tokens.document_indices.tolist() == list(range(n + 1))
    assert mask.document_indices.tolist() == list(range(n + 1))
    records = [(tokens[i].tolist(), mask[i].tolist()) for i in range(n)]
    return records, tokens.index.dtype, mask.index.dtype


def trained_runs(ids, mask) -> list[list[int]]:
    runs, cur = [], None
    for t, m in zip(ids, mask):
        if m and cur is None:
            cur = []
        if m:
            cur.append(t)
        elif cur is not None:
            runs.append(cur)
            cur = None
    if cur is not None:
        runs.append(cur)
    return runs


def files_in(directory) -> list[str]:
    directory = Path(directory)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def output_bytes(prefix) -> dict:
    return {name: Path(f"{prefix}{name}").read_bytes()
            for name in ("_text_document.bin", "_text_document.idx", "_text_document.json",
                         "_loss_mask_document.bin", "_loss_mask_document.idx")}


def pad_of(hf) -> int:
    return hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id


# -- Pai's encoder loop and next-fit packing, replicated ----------------------------------------
def pai_samples(records, hf, seq_len):
    """Per single-turn record, Pai's (tokens, labels): prompt = the ids before the first trained
    one; drop when the prompt fills seq_len; cut at seq_len; labels pre-shifted; last token -1-id."""
    samples = []
    for record in records:
        ids, mask = expected_record(record, hf)
        first = mask.index(1)
        assert all(mask[first:]), "single-turn record expected"
        input_ids, all_ids = ids[:first], list(ids)
        if len(input_ids) >= seq_len:
            continue
        if len(all_ids) >= seq_len:
            all_ids = all_ids[:seq_len]
        labels = [IGNORE] * (len(input_ids) - 1) + all_ids[len(input_ids):] + [IGNORE]
        all_ids[-1] = -1 - all_ids[-1]
        assert len(labels) == len(all_ids)
        samples.append((all_ids, labels))
    return samples


def pai_rows(samples, seq_len, pad, packing):
    rows, tokens, labels = [], [], []

    def flush():
        rows.append(tokens + [pad] * (seq_len - len(tokens)) + labels + [IGNORE] * (seq_len - len(labels)))

    for t, l in samples:
        if tokens and (not packing or len(tokens) + len(t) > seq_len):
            flush()
            tokens, labels = [], []
        tokens, labels = tokens + t, labels + l
    if tokens:
        flush()
    return rows


def megatron_rows(prefix):
    ds = IndexedDataset(tokens_prefix(prefix))
    return [ds[r].tolist() for r in range(len(ds))], ds.index.dtype


# -- 1. native layout: megatron-core reads the reference ids and masks --------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sft")


@pytest.fixture(scope="module")
def native_inputs(work):
    d = work / "inputs"
    d.mkdir()
    mixed = write_jsonl(d / "mixed.jsonl", MIXED)
    array = write_array(d / "array.json", ARRAY)
    return [mixed, array, CHAT_SAMPLE, ALPACA_SAMPLE]


@pytest.fixture(scope="module")
def native_records(native_inputs):
    records = [r for path in native_inputs for r in read_records(path)]
    assert len(records) == len(MIXED) + len(ARRAY) + 30 + 60
    return records


@pytest.fixture(scope="module")
def native_expected(native_records, reference_tokenizer):
    return [expected_record(r, reference_tokenizer) for r in native_records]


@pytest.fixture(scope="module")
def native_run(work, native_inputs):
    prefix = work / "native" / "out"
    return sft(native_inputs, prefix), prefix


def test_native_megatron_reads_reference_ids_and_masks(native_run, native_expected):
    _, prefix = native_run
    got, tokens_dtype, mask_dtype = megatron_native(prefix)
    assert tokens_dtype == np.int32 and mask_dtype == np.uint8
    assert len(got) == len(native_expected)
    for i, ((ids, mask), (e_ids, e_mask)) in enumerate(zip(got, native_expected)):
        assert ids == e_ids, f"record {i}: ids differ"
        assert mask == e_mask, f"record {i}: mask differs"


def test_native_trained_tokens_are_each_answer_and_its_eos(native_run, native_records, reference_tokenizer):
    _, prefix = native_run
    got, _, _ = megatron_native(prefix)
    assert len(got) == len(native_records)
    multi_turn = 0
    for i, ((ids, mask), record) in enumerate(zip(got, native_records)):
        answers = [t.content for t in to_conversation(record) if t.role == "assistant"]
        multi_turn += len(answers) > 1
        decoded = [reference_tokenizer.decode(run) for run in trained_runs(ids, mask)]
        assert decoded == [a + EOS_TEXT for a in answers], f"record {i}"
        assert ids[0] == reference_tokenizer.bos_token_id and mask[0] == 0
        assert mask[-1] == 1 and ids[-1] == reference_tokenizer.eos_token_id
    assert multi_turn >= 8  # history, multi-turn messages and ShareGPT are exercised


def test_native_sidecar_counts(native_run, native_expected):
    summary, prefix = native_run
    side = sidecar_of(prefix)
    assert side["layout"] == "dataprep-sft-native/1"
    assert side["template"] == "deepseek" and summary.template == "deepseek"
    assert side["loss_mask"] == "out_loss_mask_document"
    assert side["dtype"] == "int32"
    c = side["counts"]
    n = len(native_expected)
    assert c["records_read"] == n == summary.read
    assert c["records_read"] == (c["records_written"] + c["records_rejected"] + c["records_dropped_prompt"]
                                 + c["records_dropped_long"])
    assert (c["records_written"], c["records_rejected"], c["records_dropped_prompt"],
            c["records_dropped_long"], c["records_truncated"]) == (n, 0, 0, 0, 0)
    assert c["tokens"] == sum(len(ids) for ids, _ in native_expected)
    assert c["trained_tokens"] == sum(sum(mask) for _, mask in native_expected)
    assert c["max_length"] == max(len(ids) for ids, _ in native_expected)
    assert side["tokenizer"]["pad"] == 1 and side["tokenizer"]["eod"] == 1


# -- 2. seq_length: truncate, drop when the prompt fills it, --drop-long ------------------------
SEQ = 64


def _prompt_len(record, hf) -> int:
    return expected_record(record, hf)[1].index(1)


def _tuned(make, measure, target):
    for n in range(1, 300):
        record = make(n)
        if measure(record) == target:
            return record
    raise AssertionError(f"no record with length {target}")


@pytest.fixture(scope="module")
def seq_records(reference_tokenizer):
    hf = reference_tokenizer
    apples = lambda answer: lambda n: {"instruction": "Count: " + " ".join(["apple"] * n), "input": "",
                                       "output": answer}
    long_answer = " ".join(f"word{i}" for i in range(80))
    records = {
        "short": {"instruction": "Hi", "input": "", "output": "Hello!"},
        "prompt_fills": _tuned(apples("yes"), lambda r: _prompt_len(r, hf), SEQ),
        "prompt_one_less": _tuned(apples(long_answer), lambda r: _prompt_len(r, hf), SEQ - 1),
        "prompt_huge": {"messages": [{"role": "user", "content": "long " * 200},
                                     {"role": "assistant", "content": "ok"}]},
        "answer_long": {"conversations": [{"from": "human", "value": "Talk."},
                                          {"from": "gpt", "value": long_answer}]},
        "exactly_seq": _tuned(lambda n: {"instruction": "Fruit?", "output": " ".join(["pear"] * n)},
                              lambda r: len(expected_record(r, hf)[0]), SEQ),
    }
    return records


@pytest.fixture(scope="module")
def seq_input(work, seq_records):
    return write_jsonl(work / "seq.jsonl", list(seq_records.values()))


@pytest.mark.parametrize("drop_long", [False, True], ids=["truncate", "drop-long"])
@pytest.mark.slow
def test_seq_length_truncates_or_drops(work, seq_records, seq_input, reference_tokenizer, drop_long):
    hf = reference_tokenizer
    prefix = work / f"seq-{drop_long}" / "out"
    summary = sft(seq_input, prefix, seq_length=SEQ, drop_long=drop_long)
    full = {k: expected_record(r, hf) for k, r in seq_records.items()}
    assert len(full["prompt_one_less"][0]) > SEQ and len(full["answer_long"][0]) > SEQ
    assert len(full["exactly_seq"][0]) == SEQ
    long_ones = ["prompt_one_less", "answer_long"]
    kept = ["short"] + ([] if drop_long else ["prompt_one_less"]) + \
        ([] if drop_long else ["answer_long"]) + ["exactly_seq"]
    order = list(seq_records)
    kept.sort(key=order.index)
    expected = [(ids[:SEQ], mask[:SEQ]) for ids, mask in (full[k] for k in kept)]
    got, _, _ = megatron_native(prefix)
    assert got == expected
    if not drop_long:  # cut to exactly seq_length; one trained token left after a prompt of SEQ-1
        lengths = {k: len(g[0]) for k, g in zip(kept, got)}
        assert lengths["prompt_one_less"] == lengths["answer_long"] == SEQ
        assert sum(got[kept.index("prompt_one_less")][1]) == 1
    c = sidecar_of(prefix)["counts"]
    assert c["records_read"] == len(seq_records) == summary.read
    assert c["records_dropped_prompt"] == 2 == summary.dropped_prompt
    assert c["records_dropped_long"] == (len(long_ones) if drop_long else 0) == summary.dropped_long
    assert c["records_truncated"] == (0 if drop_long else len(long_ones)) == summary.truncated
    assert c["records_written"] == len(kept) == summary.written
    assert c["records_read"] == (c["records_written"] + c["records_rejected"] + c["records_dropped_prompt"]
                                 + c["records_dropped_long"])
    assert c["max_length"] == SEQ


# -- 3. bad records: file:line, no output; or rejects ------------------------------------------
GOOD = [{"instruction": f"Question {i}: what is {i} squared?", "input": "", "output": f"{i * i}."}
        for i in range(40)]
BAD_KINDS = {
    "missing-output": ('{"instruction": "no answer here"}', ["missing key 'output'"]),
    "roles-order": (json.dumps({"messages": [{"role": "assistant", "content": "hi"},
                                             {"role": "user", "content": "?"}]}), ["out of order", "assistant"]),
    "invalid-json": ('{"instruction": "x", "output": ', ["invalid JSON"]),
    "not-an-object": ('["instruction", "output"]', ["not a JSON object"]),
}


def _bad_jsonl(path, bad_line: str, at: int = 30) -> int:
    """GOOD records with one bad line after `at` of them (in a later 1 KiB chunk); returns its line."""
    lines = [json.dumps(r, ensure_ascii=False) for r in GOOD[:at]]
    lines.insert(3, "")  # blank lines are counted as lines
    lines.append(bad_line)
    bad_at = len(lines)
    lines += [json.dumps(r) for r in GOOD[at:]]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return bad_at


def _bad_array(path, bad_record, at: int = 30) -> int:
    records = GOOD[:at] + [bad_record] + GOOD[at:]
    write_array(path, records)
    return array_element_lines(path)[at]


def _chunk_count(path, chunk_bytes) -> int:
    return sum(1 for _ in ChunkReader([str(path)], [], chunk_bytes))


@pytest.mark.parametrize("kind,layout", [(k, "native") for k in ("missing-output", "roles-order", "invalid-json")]
                         + [("array-element", "native"), ("invalid-json", "pai")])
@pytest.mark.slow
def test_bad_record_fails_fast_with_file_line_and_no_output(work, kind, layout):
    d = work / f"bad-{kind}-{layout}"
    d.mkdir()
    if kind == "array-element":
        path = d / "in.json"
        line = _bad_array(path, {"messages": "not a list"})
        words = ["'messages' is not an array"]
    else:
        path = d / "in.jsonl"
        bad, words = BAD_KINDS[kind]
        line = _bad_jsonl(path, bad)
    assert _chunk_count(path, 1024) > 2  # the bad record is not in the first chunk
    out = d / "out"
    options = {"seq_length": 256} if layout == "pai" else {}
    with pytest.raises(DataprepError) as caught:
        sft(path, out / "ds", layout=layout, chunk_bytes=1024, **options)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    for word in words:
        assert word in message, message
    assert "\n" not in message
    assert files_in(out) == []  # no final .bin/.idx/.json, and nothing temporary left


@pytest.mark.parametrize("second,third", [
    ('{"instruction": "a", "output": "b"} {"instruction": "c", "output": "d"}', '{"instruction": "e", "output": "f"}'),
    ('{"instruction": "a",', '"output": "b"} {"instruction": "c", "output": "d"}'),
], ids=["two-objects-on-a-line", "object-across-two-lines"])
def test_a_line_that_is_not_one_json_value_is_invalid_json(work, second, third):
    """jsonl is one JSON value per line: line 2 is a bad record in both files (with the second one,
    the values per line still add up to the number of lines)."""
    d = work / f"not-one-value-{len(second)}"
    d.mkdir()
    path = d / "in.jsonl"
    path.write_text("\n".join(['{"instruction": "q", "output": "r"}', second, third]) + "\n", encoding="utf-8")
    with pytest.raises(DataprepError) as caught:
        sft(path, d / "out" / "ds")
    assert str(caught.value).startswith(f"{path}:2: invalid JSON"), str(caught.value)
    assert files_in(d / "out") == []


@pytest.mark.slow
def test_skip_bad_records_writes_rejects_and_counts(work, reference_tokenizer):
    d = work / "skip"
    d.mkdir()
    jsonl = d / "mixed.jsonl"
    lines, bad_lines, good = [], [], []
    huge = {"instruction": "long " * 300, "output": "ok"}  # prompt fills seq_length: dropped
    for i, rec in enumerate(GOOD):
        lines.append(json.dumps(rec))
        good.append(rec)
        if i % 10 == 5:
            kind = list(BAD_KINDS)[(i // 10) % len(BAD_KINDS)]
            lines.append(BAD_KINDS[kind][0])
            bad_lines.append((str(jsonl), len(lines), BAD_KINDS[kind][1]))
        if i == 20:
            lines.append("")
            lines.append(json.dumps(huge))
    jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
    array = d / "array.json"
    array_records = GOOD[:12] + [{"conversations": [{"from": "bot", "value": "?"}]}] + GOOD[12:20]
    write_array(array, array_records)
    bad_lines.append((str(array), array_element_lines(array)[12], ["unknown speaker 'bot'"]))
    good += GOOD[:20]

    prefix = d / "out" / "ds"
    summary = sft([jsonl, array], prefix, seq_length=256, skip_bad_records=True, chunk_bytes=1024)
    rejects = [json.loads(x) for x in Path(f"{prefix}.rejects.jsonl").read_text("utf-8").splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [(f, n) for f, n, _ in bad_lines]
    for entry, (_, _, words) in zip(rejects, bad_lines):
        for word in words:
            assert word in entry["reason"], entry
    expected = [expected_record(r, reference_tokenizer) for r in good]
    got, _, _ = megatron_native(prefix)
    assert got == expected
    c = sidecar_of(prefix)["counts"]
    read = len(GOOD) + 1 + 20 + len(bad_lines)
    assert (c["records_read"], c["records_written"], c["records_rejected"], c["records_dropped_prompt"]) == \
        (read, len(good), len(bad_lines), 1)
    assert c["records_read"] == (c["records_written"] + c["records_rejected"] + c["records_dropped_prompt"]
                                 + c["records_dropped_long"])
    assert (summary.read, summary.written, summary.rejected, summary.dropped) == (read, len(good), len(bad_lines), 1)


# -- 4. the bytes do not depend on workers or chunking ------------------------------------------
@pytest.mark.slow
def test_same_bytes_for_two_workers_and_small_chunks(work, native_inputs, native_run):
    _, baseline = native_run
    assert sum(_chunk_count(p, 2048) for p in native_inputs) >= 10
    prefix = work / "det" / "out"  # same basename: the sidecar names the mask file
    sft(native_inputs, prefix, workers=2, chunk_bytes=2048)
    assert output_bytes(prefix) == output_bytes(baseline)


# -- 5. pai layout: Pai's rows, value for value ------------------------------------------------
PAI_SEQ = 128


@pytest.fixture(scope="module")
def pai_input(work):
    """Single-turn alpaca records: the sample's (without history), a long prompt, long answers."""
    records = [r for r in read_records(ALPACA_SAMPLE) if not r.get("history")]
    records.insert(5, {"instruction": "很长的问题。" * 60, "input": "", "output": "短。"})
    records.insert(9, {"instruction": "Write a list.", "input": "",
                       "output": ", ".join(f"item {i}" for i in range(60))})
    records.append({"instruction": "Last", "input": "and longest", "output": "长答案。" * 80,
                    "system": "系统"})
    return write_array(work / "pai.json", records), records


@pytest.fixture(scope="module")
def pai_expected(pai_input, reference_tokenizer):
    _, records = pai_input
    samples = pai_samples(records, reference_tokenizer, PAI_SEQ)
    assert len(samples) == len(records) - 1  # the long prompt is dropped
    assert sum(len(t) == PAI_SEQ for t, _ in samples) >= 2  # and two records are cut
    return samples


@pytest.mark.parametrize("packing", [True, False], ids=["next-fit", "one-per-row"])
@pytest.mark.slow
def test_pai_rows_equal_pais_encoder_and_next_fit(work, pai_input, pai_expected, reference_tokenizer, packing):
    path, records = pai_input
    pad = pad_of(reference_tokenizer)
    prefix = work / f"pai-{packing}" / "out"
    summary = sft(path, prefix, layout="pai", seq_length=PAI_SEQ, packing=packing,
                  packing_algorithm="next-fit")
    expected = pai_rows(pai_expected, PAI_SEQ, pad, packing)
    if packing:
        assert len(expected) < len(pai_expected)  # rows do hold several records
    else:
        assert len(expected) == len(pai_expected)
    got, dtype = megatron_rows(prefix)
    assert dtype == np.int32
    assert len(got) == len(expected)
    for r, (g, e) in enumerate(zip(got, expected)):
        assert len(g) == 2 * PAI_SEQ
        assert g == e, f"row {r} differs"
    side = sidecar_of(prefix)
    assert side["layout"] == "pai-sft-idxmap" and side["rows"] == len(expected) == summary.rows
    c = side["counts"]
    assert (c["records_read"], c["records_written"], c["records_dropped_prompt"], c["records_truncated"]) == \
        (len(records), len(pai_expected), 1, sum(len(t) == PAI_SEQ for t, _ in pai_expected))
    assert not Path(tokens_prefix(prefix).replace("_text_", "_loss_mask_") + ".bin").exists()
    assert files_in(prefix.parent) == ["out_text_document.bin", "out_text_document.idx", "out_text_document.json"]


@pytest.mark.slow
def test_pai_bfd_holds_every_record_once_in_fewer_rows(work, pai_input, pai_expected, reference_tokenizer):
    path, _ = pai_input
    pad = pad_of(reference_tokenizer)
    prefix = work / "pai-bfd" / "out"
    sft(path, prefix, layout="pai", seq_length=PAI_SEQ, packing=True, packing_algorithm="bfd")
    got, dtype = megatron_rows(prefix)
    assert dtype == np.int32 and all(len(g) == 2 * PAI_SEQ for g in got)
    found = split_rows(got, PAI_SEQ, pad)
    assert sorted(found) == sorted(pai_expected)
    next_fit = pai_rows(pai_expected, PAI_SEQ, pad, packing=True)
    assert len(got) <= len(next_fit)


# -- 7. a tokenizer with its own chat template --------------------------------------------------
CHATML_JINJA = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.mark.slow
def test_cli_tokenizer_own_template(work, reference_tokenizer):
    from transformers import AutoTokenizer

    d = work / "templated"
    tok = copy.deepcopy(reference_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML_JINJA
    tok.save_pretrained(str(d / "tokenizer"))
    records = MIXED[:3] + ARRAY
    path = write_jsonl(d / "in.jsonl", records)
    prefix = d / "out" / "ds"
    done = run_cli("sft", "--input", path, "--output-prefix", prefix, "--tokenizer", "HuggingFaceTokenizer",
                   "--tokenizer-path", d / "tokenizer", "--workers", "1", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert sidecar_of(prefix)["template"] == "tokenizer"
    reloaded = AutoTokenizer.from_pretrained(str(d / "tokenizer"))
    assert reloaded.chat_template
    got, _, _ = megatron_native(prefix)
    assert len(got) == len(records)
    for i, ((ids, mask), record) in enumerate(zip(got, records)):
        assert (ids, mask) == expected_record(record, reloaded, HFChatTemplate(reloaded)), f"record {i}"
        answers = [t.content for t in to_conversation(record) if t.role == "assistant"]
        assert [reloaded.decode(run) for run in trained_runs(ids, mask)] == [a + "<|im_end|>" for a in answers]
        whole = reloaded.apply_chat_template([{"role": t.role, "content": t.content}
                                              for t in to_conversation(record)], tokenize=False)
        assert reloaded.decode(ids) == whole


# -- 8. CLI errors: one line, exit 2 -----------------------------------------------------------
@pytest.mark.parametrize("args,words", [
    (["--layout", "pai"], ["--layout pai needs --seq-length"]),
    (["--packing"], ["--packing needs --seq-length"]),
    (["--drop-long"], ["--drop-long needs --seq-length"]),
    (["--input", "{missing}"], ["input not found", "{missing}"]),
    (["--template", "vicuna"], ["unknown chat template 'vicuna'"]),
], ids=["pai-without-seq-length", "packing-without-seq-length", "drop-long-without-seq-length",
        "missing-input", "unknown-template"])
@pytest.mark.slow
def test_cli_errors_are_one_line_exit_2(work, tmp_path, args, words):
    missing = str(tmp_path / "no-such.jsonl")
    good = write_jsonl(tmp_path / "good.jsonl", MIXED[:2])
    args = [a.replace("{missing}", missing) for a in args]
    if "--input" not in args:
        args = ["--input", str(good), *args]
    out = tmp_path / "out"
    done = run_cli("sft", *args, "--output-prefix", out / "ds", "--tokenizer", TOKENIZER,
                   "--workers", "1", "--no-progress")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word.replace("{missing}", missing) in lines[0], lines[0]
    assert files_in(out) == []


@pytest.mark.slow
def test_parquet_and_compressed_inputs_give_the_jsonl_bytes(work, reference_tokenizer):
    """The same records as parquet (messages as list<struct>, alpaca as columns) and as .jsonl.gz
    give the bytes of the plain jsonl run (sidecar inputs aside)."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    d = work / "parquet"
    d.mkdir()
    chat = [r for r in MIXED if "messages" in r]
    alpaca = [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}
              for r in MIXED if "instruction" in r]
    pq.write_table(pa.Table.from_pylist(chat), d / "chat.parquet", row_group_size=1)
    pq.write_table(pa.Table.from_pylist(alpaca), d / "alpaca.parquet")
    plain = write_jsonl(d / "all.jsonl", chat + alpaca)
    with gzip.open(d / "all.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(plain.read_text("utf-8"))
    runs = {name: sft(inputs, d / name / "out") for name, inputs in
            [("jsonl", [plain]), ("parquet", [d / "chat.parquet", d / "alpaca.parquet"]), ("gz", [d / "all.jsonl.gz"])]}
    assert {s.written for s in runs.values()} == {len(chat) + len(alpaca)}
    reference = {ext: (d / "jsonl" / f"out_text_document{ext}").read_bytes() for ext in (".bin", ".idx")}
    for name in ("parquet", "gz"):
        for ext, data in reference.items():
            assert (d / name / f"out_text_document{ext}").read_bytes() == data, (name, ext)
    got, _, _ = megatron_native(d / "parquet" / "out")
    assert [ids for ids, _ in got] == [expected_record(r, reference_tokenizer)[0] for r in chat + alpaca]


@pytest.mark.slow
def test_a_bad_parquet_row_is_named_by_its_row(work):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = work / "parquet-bad"
    d.mkdir()
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]
    rows[3]["output"] = None
    pq.write_table(pa.Table.from_pylist(rows), d / "in.parquet", row_group_size=2)
    with pytest.raises(DataprepError, match=r"in\.parquet:4: alpaca: missing key 'output'"):
        sft(d / "in.parquet", d / "out" / "ds")
