"""`dataprep pretrain` end to end: megatron-core reads exactly the reference tokenizer's ids, the
bytes do not depend on workers, chunking or the input form, bad records are reported by
file:line (or rejected with the right line), options and engines behave, and an interrupted
run leaves nothing that looks finished.

Expectations come from outside the pipeline: `AutoTokenizer(text, add_special_tokens=False)`
(Pai's reference), megatron-core's `IndexedDataset` reader, and line numbers counted here.
"""

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset

from conftest import EOS_TEXT, cli_command, cli_env, run_cli, write_jsonl
from dataprep.errors import DataprepError
from dataprep.pretrain.run import PretrainConfig, run_pretrain
from dataprep.io.sources import ChunkReader, read_chunk_lines

TOKENIZER = "DeepSeekV2Tokenizer"
DEEPSEEK_VOCAB = 129280


# -- helpers -----------------------------------------------------------------------------------
def pretrain(inputs, prefix, **options):
    """The library call, one worker and no progress bar unless told otherwise."""
    options.setdefault("workers", 1)
    options.setdefault("progress", False)
    options.setdefault("tokenizer", TOKENIZER)
    if isinstance(inputs, (str, Path)):
        inputs = (inputs,)
    config = PretrainConfig(inputs=tuple(map(str, inputs)), output_prefix=str(prefix), **options)
    return run_pretrain(config, log=lambda message: None)


def doc_prefix(prefix, key="text") -> str:
    return f"{prefix}_{key}_document"


def output_bytes(prefix, key="text", sidecar=False) -> dict:
    exts = (".bin", ".idx", ".json") if sidecar else (".bin", ".idx")
    return {ext: Path(doc_prefix(prefix, key) + ext).read_bytes() for ext in exts}


def sidecar_of(prefix, key="text") -> dict:
    return json.loads(Path(doc_prefix(prefix, key) + ".json").read_text(encoding="utf-8"))


def megatron_documents(prefix, key="text"):
    """Documents as megatron-core reads them: a list of sequences (lists of ids) each."""
    ds = IndexedDataset(doc_prefix(prefix, key))
    bounds = ds.document_indices.tolist()
    docs = [[ds[j].tolist() for j in range(bounds[d], bounds[d + 1])] for d in range(len(bounds) - 1)]
    return docs, ds.index.dtype


def expected_documents(records, tok, key="text", eod=True):
    """What Pai/Megatron write: per record, the reference ids of each non-empty item (one
    sequence each), EOD after the last; a record without tokens is no document."""
    docs, empty = [], 0
    for record in records:
        value = record[key]
        items = value if isinstance(value, list) else [value]
        sequences = [ids for ids in (tok(t, add_special_tokens=False).input_ids for t in items) if ids]
        if not sequences:
            empty += 1
            continue
        if eod:
            sequences[-1] = sequences[-1] + [tok.eos_token_id]
        docs.append(sequences)
    return docs, empty


def assert_same_documents(got, expected):
    assert len(got) == len(expected), f"{len(got)} documents, expected {len(expected)}"
    for d, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"document {d} differs"


def files_in(directory) -> list[str]:
    directory = Path(directory)
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def counts_line(text: str) -> tuple[int, int, int, int]:
    m = re.search(r"read ([\d,]+) = written ([\d,]+) \+ rejected ([\d,]+) \+ empty ([\d,]+)", text)
    assert m, text
    return tuple(int(g.replace(",", "")) for g in m.groups())


def element_start_line(text: str, marker: str) -> int:
    """1-based line where the top-level element of a pretty-printed JSON array holding `marker`
    starts (its "  {" line), counted here."""
    lines = text.split("\n")
    k = next(i for i, line in enumerate(lines) if marker in line)
    while lines[k].rstrip("\r") != "  {":
        k -= 1
    return k + 1


def chunk_index_of_line(path, line, chunk_bytes) -> int:
    """Index of the reader's chunk holding `line` (to check a test's precondition)."""
    before, next_line = 0, 1
    for chunk in ChunkReader([str(path)], ["text"], chunk_bytes):
        if chunk.kind == "range":
            first = next_line
            next_line += len(read_chunk_lines(chunk))
        else:
            first = chunk.line_numbers[0] if chunk.line_numbers else chunk.first_line
        if first > line:
            break
        before += 1
    return before - 1


# -- shared runs -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pretrain")


@pytest.fixture(scope="module")
def expected(corpus, reference_tokenizer):
    docs, empty = expected_documents(corpus, reference_tokenizer)
    # the corpus exercises what it claims to
    assert empty >= 5 and any(len(d) > 1 for d in docs)
    assert any(reference_tokenizer.eos_token_id in seq[:-1] for d in docs for seq in d)
    return docs, empty


@pytest.fixture(scope="module")
def baseline(work, corpus_jsonl):
    """Default engine, one worker, 4 KiB chunks: the run everything else is compared with."""
    prefix = work / "baseline" / "ds"
    summary = pretrain(corpus_jsonl, prefix, chunk_bytes=4096)
    return summary, prefix


@dataclass
class Tiny:
    path: Path
    reference: object  # its AutoTokenizer


@pytest.fixture(scope="module")
def tiny_tokenizers(work, corpus) -> dict:
    """A byte-level BPE trained here on the corpus (vocab 600), saved as Hugging Face directories:
    "eos" declares <eos> as its eos token, "no-eos" declares none. Small vocab: uint16 output.
    Reader-focused tests use it: it loads in milliseconds, and any tokenizer shows the property."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<eos>"], show_progress=False)
    texts = [t for r in corpus for t in (r["text"] if isinstance(r["text"], list) else [r["text"]])]
    tok.train_from_iterator(texts, trainer)
    made = {}
    for name, extra in (("eos", {"eos_token": "<eos>"}), ("no-eos", {})):
        path = work / f"tiny-tokenizer-{name}"
        PreTrainedTokenizerFast(tokenizer_object=tok, **extra).save_pretrained(str(path))
        made[name] = Tiny(path, AutoTokenizer.from_pretrained(str(path)))
    assert made["no-eos"].reference.eos_token_id is None
    assert made["eos"].reference.eos_token_id == tok.token_to_id("<eos>")
    assert len(made["eos"].reference) < 65500
    return made


@pytest.fixture(scope="module")
def tiny(tiny_tokenizers) -> Tiny:
    return tiny_tokenizers["eos"]


def tiny_pretrain(tiny: Tiny, inputs, prefix, **options):
    options.setdefault("backend", "hf")
    return pretrain(inputs, prefix, tokenizer="HuggingFaceTokenizer", tokenizer_path=str(tiny.path),
                    **options)


@pytest.fixture(scope="module")
def tiny_run(work, corpus_jsonl, tiny):
    """The corpus through the tiny tokenizer: baseline of the input-form tests."""
    prefix = work / "tiny-baseline" / "ds"
    return tiny_pretrain(tiny, corpus_jsonl, prefix), prefix


# -- 1. megatron-core reads exactly the reference tokens ---------------------------------------
@pytest.mark.slow
def test_megatron_reads_reference_tokens(baseline, expected, corpus, corpus_jsonl, reference_tokenizer):
    summary, prefix = baseline
    docs, empty = expected
    got, dtype = megatron_documents(prefix)
    assert dtype == np.int32
    assert_same_documents(got, docs)

    n = len(corpus)
    assert (summary.read, summary.written, summary.rejected, summary.empty) == (n, n - empty, 0, empty)
    sidecar = sidecar_of(prefix)
    assert sidecar["counts"] == {
        "records_read": n, "records_written": n - empty, "records_rejected": 0,
        "records_empty": empty, "documents": len(docs), "sequences": sum(map(len, docs)),
        "tokens": sum(len(s) for d in docs for s in d), "empty_documents": empty,
    }
    assert len(reference_tokenizer) == DEEPSEEK_VOCAB
    assert sidecar["tokenizer"]["name"] == TOKENIZER
    assert sidecar["tokenizer"]["vocab_size"] == DEEPSEEK_VOCAB
    assert sidecar["tokenizer"]["eod"] == reference_tokenizer.eos_token_id
    assert sidecar["dtype"] == "int32" and sidecar["json_key"] == "text"
    assert sidecar["inputs"] == [{"path": os.path.abspath(corpus_jsonl),
                                  "bytes": os.path.getsize(corpus_jsonl)}]
    assert files_in(prefix.parent) == ["ds_text_document.bin", "ds_text_document.idx",
                                       "ds_text_document.json"]


# -- 2. the bytes do not depend on the worker count (nor on the chunk size) ---------------------
@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.slow
def test_same_bytes_for_any_worker_count(work, corpus_jsonl, baseline, workers):
    assert len(list(ChunkReader([str(corpus_jsonl)], ["text"], 4096))) >= 8
    prefix = work / f"workers{workers}" / "ds"
    summary = pretrain(corpus_jsonl, prefix, chunk_bytes=4096, workers=workers)
    assert summary.workers == workers
    assert output_bytes(prefix, sidecar=True) == output_bytes(baseline[1], sidecar=True)


@pytest.mark.slow
def test_cli_workers_2_same_bytes_as_library(work, corpus_jsonl, baseline, expected, corpus):
    prefix = work / "cli-workers2" / "ds"
    done = run_cli("pretrain", "--input", corpus_jsonl, "--output-prefix", prefix,
                   "--tokenizer", TOKENIZER, "--workers", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert output_bytes(prefix, sidecar=True) == output_bytes(baseline[1], sidecar=True)
    docs, empty = expected
    assert counts_line(done.stdout) == (len(corpus), len(corpus) - empty, 0, empty)


# -- 3. the bytes do not depend on the input form ----------------------------------------------
def _json_array(records, newline="\n", bom=False) -> bytes:
    text = json.dumps(records, indent=2, ensure_ascii=False).replace("\n", newline) + newline
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


@pytest.fixture(scope="module")
def input_forms(work, corpus, corpus_jsonl) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    d = work / "forms"
    d.mkdir()
    raw = corpus_jsonl.read_bytes()
    forms = {}
    (d / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    forms["jsonl.gz"] = d / "c.jsonl.gz"
    (d / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    forms["jsonl.zst"] = d / "c.jsonl.zst"
    (d / "c.json").write_bytes(_json_array(corpus))
    forms["json-array"] = d / "c.json"
    (d / "c_bom_crlf.json").write_bytes(_json_array(corpus, newline="\r\n", bom=True))
    forms["json-array-bom-crlf"] = d / "c_bom_crlf.json"
    (d / "c.json.gz").write_bytes(gzip.compress(_json_array(corpus)))
    forms["json-array.gz"] = d / "c.json.gz"
    # a string and a one-item list are the same document, so every record fits a list column
    lists = [r["text"] if isinstance(r["text"], list) else [r["text"]] for r in corpus]
    table = pa.table({"id": [r["id"] for r in corpus], "text": pa.array(lists, pa.list_(pa.string()))})
    pq.write_table(table, d / "c.parquet", row_group_size=7)
    forms["parquet-list-column"] = d / "c.parquet"
    forms["bom-crlf-blank-lines"] = write_jsonl(d / "bom_crlf.jsonl", corpus, newline="\r\n", bom=True)
    # the records split over a directory of mixed forms, read in name order
    split = d / "split"
    split.mkdir()
    write_jsonl(split / "part-00.jsonl", corpus[:20])
    (split / "part-01.jsonl.gz").write_bytes(
        gzip.compress(write_jsonl(d / "p1.jsonl", corpus[20:45], newline="\r\n").read_bytes()))
    (split / "part-02.json").write_bytes(_json_array(corpus[45:]))
    (split / "README.md").write_text("not an input\n")
    (split / ".hidden.jsonl").write_text('{"text": 1}\n')  # would be a bad record if read
    forms["directory"] = split
    forms["glob"] = str(split / "part-*")
    return forms


@pytest.mark.parametrize("form", ["jsonl.gz", "jsonl.zst", "json-array", "json-array-bom-crlf",
                                  "json-array.gz", "parquet-list-column",
                                  "directory", "glob", "bom-crlf-blank-lines"])
def test_same_bytes_for_every_input_form(work, input_forms, tiny, tiny_run, corpus, form):
    prefix = work / "form" / form / "ds"
    summary = tiny_pretrain(tiny, input_forms[form], prefix, chunk_bytes=4096)
    assert (summary.read, summary.rejected, summary.empty) == (len(corpus), 0, tiny_run[0].empty)
    assert output_bytes(prefix) == output_bytes(tiny_run[1])


def test_small_vocab_is_uint16_with_eod(tiny, tiny_run, corpus):
    """The baseline of the input-form tests is itself right: uint16, reference ids, EOD."""
    summary, prefix = tiny_run
    got, dtype = megatron_documents(prefix)
    assert dtype == np.uint16
    docs, empty = expected_documents(corpus, tiny.reference)
    assert_same_documents(got, docs)
    assert summary.empty == empty and summary.engine == "hf"
    sidecar = sidecar_of(prefix)
    assert (sidecar["dtype"], sidecar["tokenizer"]["eod"]) == ("uint16", tiny.reference.eos_token_id)


def test_parquet_string_column_reads_reference_tokens(work, corpus, tiny):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [r for r in corpus if isinstance(r["text"], str)]
    path = work / "strings.parquet"
    pq.write_table(pa.table({"text": [r["text"] for r in records], "id": [r["id"] for r in records]}),
                   path, row_group_size=10)
    prefix = work / "parquet-strings" / "ds"
    tiny_pretrain(tiny, path, prefix)
    assert_same_documents(megatron_documents(prefix)[0], expected_documents(records, tiny.reference)[0])


# -- 4. bad records ----------------------------------------------------------------------------
# kind: (the line, words its reason must contain)
BAD_KINDS = {
    "invalid-json": (b'{"text": "unterminated', ["invalid JSON"]),
    "not-an-object": (b"[1, 2]", ["not a JSON object", "array"]),
    "missing-key": (b'{"body": "no text key here"}', ["missing key", "'text'"]),
    "number": (b'{"text": 42}', ["'text'", "not a string"]),
    "null": (b'{"text": null}', ["'text'", "not a string", "null"]),
    "list-with-number": (b'{"text": ["fine", 7]}', ["'text'", "item 1", "not a string"]),
    "invalid-utf8": (b'{"text": "caf\xe9 au lait"}', ["invalid UTF-8"]),
    "lone-surrogate": (b'{"text": "broken \\ud800 here"}', ["surrogate", "\\ud800"]),
}
GOOD_HEAD = [b'{"text": "good one"}', b"", b'{"text": "good two", "id": 2}', b"   ",
             b'{"text": "good three"}']
BAD_LINE = len(GOOD_HEAD) + 1
GOOD_TAIL = [b'{"text": "after the bad one"}']


# Real subprocesses for these kinds (they also show that nothing else reaches stderr: no warning,
# no traceback); every kind also runs through the CLI's main() in this process, which is cheap.
SUBPROCESS_KINDS = ("invalid-utf8", "lone-surrogate", "invalid-json")


def _bad_cli_input(d: Path, kind: str) -> tuple[Path, Path]:
    out = d / "out"
    out.mkdir(parents=True)
    path = d / "input.jsonl"
    path.write_bytes(b"\n".join(GOOD_HEAD + [BAD_KINDS[kind][0]] + GOOD_TAIL) + b"\n")
    return path, out


def _bad_cli_args(path, out, tiny) -> list[str]:
    return ["pretrain", "--input", str(path), "--output-prefix", str(out / "ds"),
            "--tokenizer", "HuggingFaceTokenizer", "--tokenizer-path", str(tiny.path),
            "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def bad_cli_subprocesses(work, tiny) -> dict:
    """The subprocess runs, all started at once (they mostly wait on imports)."""
    started = {}
    for kind in SUBPROCESS_KINDS:
        path, out = _bad_cli_input(work / "bad-cli-subprocess" / kind, kind)
        proc = subprocess.Popen(cli_command(*_bad_cli_args(path, out, tiny)), env=cli_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started[kind] = (path, out, proc)
    done = {}
    for kind, (path, out, proc) in started.items():
        stdout, stderr = proc.communicate(timeout=300)
        done[kind] = (path, out, proc.returncode, stderr)
    return done


@pytest.mark.parametrize("kind,how", [(k, "main()") for k in BAD_KINDS] +
                         [(k, "subprocess") for k in SUBPROCESS_KINDS])
@pytest.mark.slow
def test_cli_bad_record_is_one_error_line_and_no_output(work, tiny, capsys, request, kind, how):
    from dataprep.cli import main as cli_main

    if how == "subprocess":
        path, out, returncode, stderr = request.getfixturevalue("bad_cli_subprocesses")[kind]
    else:
        path, out = _bad_cli_input(work / "bad-cli-main" / kind, kind)
        returncode = cli_main(_bad_cli_args(path, out, tiny))
        stderr = capsys.readouterr().err
    assert returncode != 0
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"error: {path}:{BAD_LINE}: "), lines[0]
    for word in BAD_KINDS[kind][1]:
        assert word in lines[0]
    assert files_in(out) == []  # no .bin/.idx/.json, no .tmp


def _mixed_bad_file(path) -> tuple[dict, list[dict]]:
    """Good records, empty records, blank lines and every kind of bad record, in one file.
    Returns {kind: line} and the good records in order."""
    lines, bad_at, good = [], {}, []
    for i, (kind, (bad, _)) in enumerate(BAD_KINDS.items()):
        record = {"text": f"good record {i}, before {kind}", "id": i}
        lines.append(json.dumps(record).encode())
        good.append(record)
        if i % 3 == 0:
            lines.append(b"")
        if i % 4 == 1:
            lines.append(b'{"text": ""}')
            good.append({"text": ""})
        lines.append(bad)
        bad_at[kind] = len(lines)
    tail = {"text": ["pre-split", "", "tail"], "id": "tail"}
    lines.append(json.dumps(tail).encode())
    good.append(tail)
    Path(path).write_bytes(b"\n".join(lines) + b"\n")
    return bad_at, good


@pytest.mark.slow
def test_cli_skip_bad_records_writes_rejects_and_counts(work, reference_tokenizer):
    d = work / "skip-cli"
    d.mkdir()
    path = d / "mixed.jsonl"
    bad_at, good = _mixed_bad_file(path)
    prefix = d / "out" / "ds"
    done = run_cli("pretrain", "--input", path, "--output-prefix", prefix, "--tokenizer", TOKENIZER,
                   "--workers", "1", "--skip-bad-records", "--no-progress")
    assert done.returncode == 0, done.stderr

    rejects = [json.loads(line) for line in Path(f"{prefix}.rejects.jsonl").read_text("utf-8").splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [(str(path), line) for line in bad_at.values()]
    raw_lines = path.read_bytes().split(b"\n")
    for entry, kind in zip(rejects, bad_at):
        for word in BAD_KINDS[kind][1]:
            assert word in entry["reason"], (kind, entry["reason"])
        assert entry["record"] == raw_lines[bad_at[kind] - 1].decode("utf-8", "replace")

    docs, empty = expected_documents(good, reference_tokenizer)
    read = len([line for line in raw_lines if line.strip()])
    counts = (read, len(docs), len(BAD_KINDS), empty)
    assert read == len(docs) + len(BAD_KINDS) + empty and empty >= 2
    assert counts_line(done.stdout) == counts
    sidecar = sidecar_of(prefix)["counts"]
    assert (sidecar["records_read"], sidecar["records_written"], sidecar["records_rejected"],
            sidecar["records_empty"]) == counts
    assert_same_documents(megatron_documents(prefix)[0], docs)


def _many_records(n=400):
    return [{"text": f"Line {i}: the quick brown fox, 数据 {i * 7919 % 1000}.", "id": f"r{i}"}
            for i in range(n)]


def _write_later_chunk_input(d: Path, form: str, bad_index: int) -> tuple[Path, int]:
    """400 records with `{"text": null, "id": "BAD"}` at `bad_index`; returns the file and the
    1-based line (row for parquet) of the bad record, counted here."""
    records = _many_records()
    records.insert(bad_index, {"text": None, "id": "BAD"})
    if form == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = d / "in.parquet"
        pq.write_table(pa.table({"text": [r["text"] for r in records], "id": [r["id"] for r in records]}),
                       path, row_group_size=16)
        return path, bad_index + 1
    if form == "json-array":
        path = d / "in.json"
        path.write_bytes(_json_array(records))
        return path, element_start_line(path.read_text("utf-8"), '"id": "BAD"')
    lines, bad_line = [], None
    for i, record in enumerate(records):
        if i % 23 == 0:
            lines.append("")
        lines.append(json.dumps(record, ensure_ascii=False))
        if record["id"] == "BAD":
            bad_line = len(lines)
    if form == "jsonl":
        path = d / "in.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    else:  # jsonl.gz, with a BOM and CRLF line ends
        path = d / "in.jsonl.gz"
        path.write_bytes(gzip.compress(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode("utf-8")))
    return path, bad_line


@pytest.mark.parametrize("form,workers", [("jsonl", 2), ("jsonl.gz", 1), ("json-array", 1), ("parquet", 1)])
def test_bad_record_in_a_later_chunk_names_its_line(work, tiny, form, workers):
    d = work / "later-chunk" / form
    (d / "out").mkdir(parents=True)
    path, line = _write_later_chunk_input(d, form, bad_index=333)
    assert chunk_index_of_line(path, line, 1024) >= 4  # the bad record is in a later chunk
    with pytest.raises(DataprepError) as caught:
        tiny_pretrain(tiny, path, d / "out" / "ds", chunk_bytes=1024, workers=workers)
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert "'text'" in message and "not a string" in message and "null" in message
    assert "\n" not in message
    assert files_in(d / "out") == []


@pytest.mark.parametrize("form,workers", [("jsonl", 2), ("json-array", 1)])
def test_skip_bad_records_across_chunks(work, tiny, form, workers):
    """Bad records spread over many chunks, one chunk holding nothing but bad records and one
    holding nothing but blank lines: every reject has its line, and the good records are all
    written, in order."""
    d = work / "skip-chunks" / form
    d.mkdir(parents=True)
    good = _many_records(300)
    entries: list = [dict(r) for r in good]
    kinds = [{"text": 42}, {"text": None}, {"text": ["ok", 1]}, {"body": "no text"}, [1, 2]]
    for pos in (5, 77, 150, 151, 260):
        entries.insert(pos, {"bad": kinds[pos % 5]})
    entries[200:200] = [{"bad": kinds[j % 5]} for j in range(120)]  # > 1 KiB of bad records
    entries.append({"text": "", "id": "empty"})
    good.append({"text": "", "id": "empty"})

    bad_lines = []
    if form == "jsonl":
        path = d / "in.jsonl"
        lines = []
        for i, entry in enumerate(entries):
            if i == 100:
                lines.extend([" " * 300] * 8)  # > 1 KiB of blank lines
            lines.append(json.dumps(entry["bad"] if "bad" in entry else entry))
            if "bad" in entry:
                bad_lines.append(len(lines))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        chunks = [read_chunk_lines(c) for c in ChunkReader([str(path)], ["text"], 1024)]
        assert any(all(not line.strip() for line in c) for c in chunks)  # a chunk of blank lines
        bad_set = {lines[n - 1].encode() for n in bad_lines}
        assert any(all(line in bad_set for line in c) for c in chunks)  # a chunk of bad records
    else:
        path = d / "in.json"
        text = json.dumps([e.get("bad", e) if isinstance(e, dict) else e for e in entries], indent=2)
        path.write_text(text, encoding="utf-8")
        # with indent=2 every element starts on a line "  {" or "  [" (nested ones are deeper)
        starts = [i + 1 for i, line in enumerate(text.split("\n")) if line in ("  {", "  [")]
        assert len(starts) == len(entries)
        bad_lines = [starts[n] for n, e in enumerate(entries) if "bad" in e]

    prefix = d / "out" / "ds"
    summary = tiny_pretrain(tiny, path, prefix, chunk_bytes=1024, workers=workers, skip_bad_records=True)
    rejects = [json.loads(x) for x in Path(f"{prefix}.rejects.jsonl").read_text("utf-8").splitlines()]
    assert [r["line"] for r in rejects] == bad_lines
    assert {r["file"] for r in rejects} == {str(path)} and all(r["reason"] for r in rejects)
    docs, empty = expected_documents(good, tiny.reference)
    assert (summary.read, summary.written, summary.rejected, summary.empty) == \
        (len(entries), len(docs), len(bad_lines), empty)
    assert summary.read == summary.written + summary.rejected + summary.empty
    assert_same_documents(megatron_documents(prefix)[0], docs)


# -- 5. tokenizer and option errors, aliases, json keys -----------------------------------------
@pytest.mark.parametrize("args,words", [
    (["--tokenizer", "GPT7Tokenizer"],
     ["unknown tokenizer", "GPT7Tokenizer", "DeepSeekV2Tokenizer", "Qwen2Tokenizer", "LLama3Tokenizer",
      "HuggingFaceTokenizer"]),
    (["--tokenizer", TOKENIZER, "--tokenizer-path", "{missing}"], ["not found", "{missing}"]),
    (["--tokenizer", "Qwen2Tokenizer"], ["--tokenizer-path"]),
    (["--tokenizer", TOKENIZER, "--split-sentences"], ["--split-sentences", "not supported"]),
    (["--tokenizer", TOKENIZER, "--vocab-file", "vocab.json"], ["--vocab-file", "not supported"]),
    ([], ["--tokenizer is required"]),
], ids=["unknown-tokenizer", "missing-tokenizer-dir", "path-required", "split-sentences", "vocab-file",
        "no-tokenizer"])
@pytest.mark.slow
def test_cli_option_errors_are_one_line(tmp_path, corpus_jsonl, args, words):
    missing = str(tmp_path / "no-such-tokenizer")
    args = [a.replace("{missing}", missing) for a in args]
    out = tmp_path / "out"
    done = run_cli("pretrain", "--input", corpus_jsonl, "--output-prefix", out / "ds", *args)
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for word in words:
        assert word.replace("{missing}", missing) in lines[0]
    assert files_in(out) == []


@pytest.mark.slow
def test_no_append_eod(work, corpus, corpus_jsonl, reference_tokenizer):
    prefix = work / "no-eod" / "ds"
    pretrain(corpus_jsonl, prefix, append_eod=False, backend="hf")
    docs, _ = expected_documents(corpus, reference_tokenizer, eod=False)
    assert_same_documents(megatron_documents(prefix)[0], docs)
    assert sidecar_of(prefix)["options"]["append_eod"] is False


@pytest.mark.slow
def test_megatron_and_pai_option_spellings(work, corpus_jsonl, deepseek_dir, baseline):
    prefix = work / "pai-aliases" / "ds"
    done = run_cli("pretrain", "--input", corpus_jsonl, "--output-prefix", prefix,
                   "--patch-tokenizer-type", TOKENIZER, "--load", deepseek_dir, "--partitions", "2",
                   "--keep-sequential-samples", "--append-eod", "--workers", "2", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert output_bytes(prefix, sidecar=True) == output_bytes(baseline[1], sidecar=True)


def test_json_keys_write_one_idxmap_per_key(work, tiny):
    d = work / "json-keys"
    records = [
        {"title": "First title", "text": "Body of the first record."},
        {"title": "", "text": "第二条记录的正文。"},
        {"title": "Only a title", "text": ""},
        {"title": ["Part A", "", "Part B"], "text": "Body four 🚀"},
        {"title": "", "text": ""},
    ]
    d.mkdir()
    path = write_jsonl(d / "in.jsonl", records)
    prefix = d / "out" / "ds"
    summary = tiny_pretrain(tiny, path, prefix, json_keys=("text", "title"))
    assert (summary.read, summary.written, summary.empty) == (5, 4, 1)
    for key in ("text", "title"):
        docs, empty = expected_documents(records, tiny.reference, key=key)
        assert_same_documents(megatron_documents(prefix, key)[0], docs)
        sidecar = sidecar_of(prefix, key)
        assert sidecar["json_key"] == key
        assert (sidecar["counts"]["documents"], sidecar["counts"]["empty_documents"]) == (len(docs), empty)


# -- 6. a tokenizer without eos ----------------------------------------------------------------
def test_append_eod_without_eos_token_is_a_clear_error(work, corpus_jsonl, tiny_tokenizers, capsys):
    from dataprep.cli import main as cli_main

    path = tiny_tokenizers["no-eos"].path
    out = work / "tiny-eod" / "out"
    returncode = cli_main(["pretrain", "--input", str(corpus_jsonl), "--output-prefix", str(out / "ds"),
                           "--tokenizer", "HuggingFaceTokenizer", "--tokenizer-path", str(path),
                           "--append-eod", "--workers", "1", "--no-progress"])
    assert returncode != 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for word in ("--append-eod", "eos", str(path), "--no-append-eod"):
        assert word in lines[0]
    assert files_in(out) == []


def test_no_eos_tokenizer_works_without_eod_in_uint16(work, corpus, corpus_jsonl, tiny_tokenizers):
    path, reference = tiny_tokenizers["no-eos"].path, tiny_tokenizers["no-eos"].reference
    prefix = work / "tiny" / "ds"
    pretrain(corpus_jsonl, prefix, tokenizer="HuggingFaceTokenizer", tokenizer_path=str(path),
             append_eod=False)
    got, dtype = megatron_documents(prefix)
    assert dtype == np.uint16
    assert_same_documents(got, expected_documents(corpus, reference, eod=False)[0])
    sidecar = sidecar_of(prefix)
    assert (sidecar["dtype"], sidecar["tokenizer"]["eod"]) == ("uint16", None)
    assert sidecar["tokenizer"]["vocab_size"] == len(reference)


# -- 7. every engine writes the reference bytes ------------------------------------------------
def engine_run(work, corpus_jsonl, backend):
    prefix = work / f"engine-{backend}" / "ds"
    summary = pretrain(corpus_jsonl, prefix, backend=backend)
    assert summary.engine == backend, summary.notes  # not a silent fallback to another engine
    assert sidecar_of(prefix)["tokenizer"]["engine"] == backend
    return prefix


@pytest.fixture(scope="module")
def transformers_run(work, corpus_jsonl):
    return engine_run(work, corpus_jsonl, "transformers")


@pytest.mark.slow
def test_transformers_engine_writes_the_reference_tokens(transformers_run, baseline):
    # baseline (the auto engine) was checked token by token against the reference tokenizer
    assert output_bytes(transformers_run) == output_bytes(baseline[1])


@pytest.mark.parametrize("backend", ["hf", "fastokens", "gigatoken"])
@pytest.mark.slow
def test_every_engine_gives_the_same_bytes_as_transformers(work, corpus_jsonl, transformers_run, backend):
    prefix = engine_run(work, corpus_jsonl, backend)
    assert output_bytes(prefix) == output_bytes(transformers_run)


# -- 8. verify-tokenizer and inspect -----------------------------------------------------------
@pytest.mark.slow
def test_verify_tokenizer_reports_every_engine_exact(corpus, corpus_jsonl):
    done = run_cli("verify-tokenizer", "--tokenizer", TOKENIZER, "--input", corpus_jsonl)
    assert done.returncode == 0, done.stdout + done.stderr
    n_texts = sum(len(r["text"]) if isinstance(r["text"], list) else 1 for r in corpus)
    for engine in ("fastokens", "gigatoken", "hf"):
        assert f"{engine}: exact on all {n_texts:,} texts" in done.stdout, done.stdout


@pytest.mark.slow
def test_inspect_decodes_the_first_document(baseline, corpus, expected):
    _, prefix = baseline
    done = run_cli("inspect", doc_prefix(prefix), "--decode", "--sample", "0")
    assert done.returncode == 0, done.stderr
    docs, _ = expected
    assert f"{len(docs):,} documents" in done.stdout
    assert f"document 0: {sum(map(len, docs[0]))} tokens" in done.stdout
    assert corpus[0]["text"] + EOS_TEXT in done.stdout


# -- 9. no torch, no megatron ------------------------------------------------------------------
@pytest.mark.slow
def test_dataprep_imports_neither_torch_nor_megatron():
    code = ("import sys\n"
            "import dataprep.pretrain.run, dataprep.pretrain.documents, dataprep.cli, dataset_engine.idxmap\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'megatron'))\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    done = subprocess.run([sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# -- 10. a killed run leaves nothing that looks finished -----------------------------------------
@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """~30 MB of jsonl: long enough that a run is still writing when the test interrupts it."""
    rng = np.random.default_rng(0)
    words = np.array("the of and to in is that for it as was with be by on not this are or from "
                     "数据 模型 训练 🤖 def return x = 1".split())
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    size = 0
    with open(path, "w", encoding="utf-8") as f:
        i = 0
        while size < 30_000_000:
            line = json.dumps({"text": f"doc {i}: " + " ".join(rng.choice(words, 180).tolist())},
                              ensure_ascii=False) + "\n"
            f.write(line)
            size += len(line.encode("utf-8"))
            i += 1
    return path


def _start_and_wait_for_writing(big_input, out):
    """A CLI run in its own process group (as from a terminal), once it is in the middle of writing."""
    proc = subprocess.Popen(cli_command("pretrain", "--input", big_input, "--output-prefix", out / "ds",
                                        "--tokenizer", TOKENIZER, "--workers", "2", "--no-progress"),
                            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tmp_bin = out / "ds.work" / "shard-000000_text_document.bin.tmp"  # the first shard's output
    deadline = time.monotonic() + 120
    while not tmp_bin.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert tmp_bin.exists(), "the run never started writing"
    # 1.5 s into writing, or as soon as the first tokens reach the disk (the writer buffers
    # 16 MB of the ~33 MB output), whichever comes first: in the middle either way.
    writing = time.monotonic()
    while proc.poll() is None and time.monotonic() - writing < 1.5:
        if tmp_bin.exists() and tmp_bin.stat().st_size > 0:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be interrupted; make the input bigger"
    return proc


def _reap(proc):
    try:  # workers of a killed run are orphans in its process group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.mark.slow
def test_killed_run_leaves_no_final_outputs(tmp_path, big_input):
    out = tmp_path / "out"
    proc = _start_and_wait_for_writing(big_input, out)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        left = files_in(out)
        finished = [n for n in left if n.endswith((".bin", ".idx", ".json", ".rejects.jsonl"))]
        assert finished == [], left
        assert "ds.work" in left, left  # the unfinished shard's .tmp files, for a resume
    finally:
        _reap(proc)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_one_line(tmp_path, big_input):
    """Ctrl-C reaches the main process and its workers: one line, exit 130, nothing left behind."""
    out = tmp_path / "out"
    proc = _start_and_wait_for_writing(big_input, out)
    try:
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130, stderr
        assert stderr.strip().splitlines() == [
            "interrupted; no output was finalized (rerun the same command to resume from the finished "
            "shards)"], stderr
        assert files_in(out) == []
    finally:
        _reap(proc)
        proc.stderr.close()


# -- regressions ------------------------------------------------------------------------------
def test_same_file_twice_reports_its_own_line_numbers(work, tiny):
    """A file given twice (upsampling, or two overlapping globs): each pass has its own lines."""
    d = work / "twice"
    d.mkdir()
    path = d / "in.jsonl"
    path.write_text('{"text": "a"}\n{"text": 5}\n{"text": "b"}\n', encoding="utf-8")
    prefix = d / "out" / "ds"
    summary = tiny_pretrain(tiny, [path, path], prefix, skip_bad_records=True)
    assert (summary.read, summary.written, summary.rejected) == (6, 4, 2)
    rejects = [json.loads(x) for x in Path(f"{prefix}.rejects.jsonl").read_text("utf-8").splitlines()]
    assert [(r["file"], r["line"]) for r in rejects] == [(str(path), 2), (str(path), 2)]


def test_engine_is_started_once_per_run(work, corpus_jsonl, tiny, monkeypatch):
    """The engine is built once, not again when the run starts (it was built twice before)."""
    import dataprep.runs.workers as workers_module

    started = []
    real = workers_module.init_worker

    def counting(spec, *rest):
        started.append(spec.engine)
        return real(spec, *rest)

    monkeypatch.setattr(workers_module, "init_worker", counting)
    tiny_pretrain(tiny, corpus_jsonl, work / "once" / "ds")
    assert started == ["hf"]


# -- regressions: bugs found and fixed ---------------------------------------------------------
def test_two_objects_on_one_line_is_a_bad_record(work, tiny):
    d = work / "two-objects"
    (d / "out").mkdir(parents=True)
    path = d / "in.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"} {"text": "c"}\n{"text": "d"}\n', encoding="utf-8")
    with pytest.raises(DataprepError, match=re.escape(f"{path}:2: invalid JSON")):
        tiny_pretrain(tiny, path, d / "out" / "ds")


def test_a_value_split_across_lines_is_a_bad_record_even_when_counts_match(work, tiny):
    """msgspec reads a value split over two lines; a second line holding two objects made the
    record count match the line count, and the split record went through unreported."""
    d = work / "split-value"
    (d / "out").mkdir(parents=True)
    path = d / "in.jsonl"
    path.write_text('{"text": "a"}\n{"text":\n "b"} {"text": "c"}\n{"text": "d"}\n', encoding="utf-8")
    with pytest.raises(DataprepError, match=re.escape(f"{path}:2: invalid JSON")):
        tiny_pretrain(tiny, path, d / "out" / "ds")


def test_invalid_utf8_in_a_json_array_names_its_line(work, tiny):
    d = work / "array-utf8"
    (d / "out").mkdir(parents=True)
    path = d / "in.json"
    data = _json_array([{"text": f"element {i}"} for i in range(10)]).replace(b"element 7", b"element \xff7")
    path.write_bytes(data)
    line = next(i + 1 for i, raw in enumerate(data.split(b"\n")) if b"\xff" in raw)
    assert line > 20
    with pytest.raises(DataprepError) as caught:
        tiny_pretrain(tiny, path, d / "out" / "ds")
    assert str(caught.value).startswith(f"{path}:{line}: "), str(caught.value)
    assert files_in(d / "out") == []
