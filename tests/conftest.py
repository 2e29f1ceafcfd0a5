"""Shared fixtures: the bundled DeepSeek tokenizer, the reference tokenizer, a CLI runner and a
realistic mixed corpus. Everything runs offline."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
if "DATAPREP_CACHE" not in os.environ:  # caches and digest memos of the tests stay out of ~/.cache
    import tempfile

    os.environ["DATAPREP_CACHE"] = _SESSION_CACHE = tempfile.mkdtemp(prefix="dataprep-test-cache-")

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The literal text of DeepSeek's eos token; written inside a document it is still the special token.
EOS_TEXT = "<｜end▁of▁sentence｜>"


def pytest_sessionfinish(session, exitstatus):
    if globals().get("_SESSION_CACHE"):
        import shutil

        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


def cli_env(**extra: str) -> dict:
    pythonpath = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(pythonpath))
    env.update(extra)
    return env


def logged_losses(stdout: str) -> dict[int, float]:
    """The trainer's logged loss per iteration ("iteration   3/10 | lm loss 4.5…")."""
    import re

    return {int(m.group(1)): float(m.group(2))
            for m in re.finditer(r"iteration\s+(\d+)/\d+ \| lm loss ([0-9.]+)", stdout)}


def cli_command(*args) -> list[str]:
    return [sys.executable, "-m", "dataprep.cli", *map(str, args)]


def run_cli(*args, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`dataprep ARGS...` in a real subprocess (text output captured)."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def deepseek_dir() -> str:
    from dataprep.tokenization.tokenizers import bundled_tokenizer_dir

    path = bundled_tokenizer_dir()
    assert os.path.isfile(os.path.join(path, "tokenizer.json")), path
    return path


@pytest.fixture(scope="session")
def reference_tokenizer(deepseek_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(deepseek_dir)


_PROSE = [
    "The river rose overnight, and by morning the low fields were silver with water.",
    "Farmers walked the levees in pairs, checking for seepage and talking quietly about the harvest.",
    "A good tokenizer is boring: it turns the same text into the same ids every time.",
    "Dr. Smith's lab measured 3.14159 rad/s at 10,000 rpm (±0.5%) on 2024-03-01.",
    "She said, \"Don't panic\" — then laughed; the U.S.A. team's e-mail was lost.",
]
_CHINESE = [
    "数据预处理是大模型训练的第一步。我们在北京和上海都有数据中心，每天处理数十亿个词元。",
    "春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "混合文本：GPU 显存 80GB，batch size 为 1024，学习率 3e-4。",
]
_CODE = [
    "def tokenize(xs):\r\n\tfor x in xs:\r\n\t\tif x  ==   ' ':\r\n\t\t\tcontinue\r\n\n\n    return    xs\t\t\n",
    "#include <stdio.h>\n\nint main(void) {\n\tprintf(\"%d\\n\", 42);\t\t// answer\n    return 0;\n}\n",
    "SELECT  id,\tname\r\nFROM   users\r\nWHERE  age >= 18    AND name LIKE '%ann%';\r\n",
]
_EMOJI = [
    "Launch day 🚀🤖 — family 👩‍👩‍👧‍👦, flags 🇨🇳🇺🇸, wave 👋🏽 and a heart ❤️.",
    "Emoji-only: 😀😃😄😁😆😅🤣😂🙂🙃",
]


def make_corpus() -> list[dict]:
    """Records as they appear in real pretraining jsonl, in a fixed order.

    Record 0 is short plain English (inspect decodes it). Includes: prose, Chinese, code with
    tabs/CRLF/whitespace runs, emoji, the eos token written as text, pre-split documents (lists,
    with empty items), empty documents ("" , [] and ["", ""]), whitespace-only text, other
    scripts, extra fields of every JSON type, and a record larger than a 4 KiB chunk.
    """
    records: list[dict] = [
        {"text": "Megatron reads tokens from a memory-mapped file and an index of where each "
                 "document starts.", "id": 0},
        {"text": "\n\n".join(_PROSE), "id": 1, "meta": {"source": "prose", "tags": ["a", "b"]}},
        {"text": _CHINESE[0], "id": 2},
        {"text": _CODE[0], "id": 3, "lang": "python"},
        {"text": _EMOJI[0], "id": 4},
        {"text": f"The model stops at {EOS_TEXT} and then continues.{EOS_TEXT}", "id": 5},
        {"text": ["First sentence of a pre-split document.", "", "第二句：中文。", "   spaces   "],
         "id": 6},
        {"text": "", "id": 7},
        {"text": "日本語のテキストとカタカナ、한국어 텍스트, русский текст, العربية.", "id": 8,
         "score": 0.5, "ok": True, "none": None},
        {"text": "   \n\t  ", "id": 9},
        {"text": ["", ""], "id": 10},
        {"text": [], "id": 11},
        {"text": _CODE[1], "id": 12},
        {"text": ["single item list"], "id": 13},
        {"text": "Zero\u200bwidth, nbsp\xa0here, full\u3000width, combining e\u0301, ﬁ ligature, "
                 "escaped \\n backslash, a tab\tend, line\u2028separator, next\x85line, "
                 "controls \x00\x01\x1f\x7f, bom\ufeffinside, private \ue000 and \U0010fffd.", "id": 14},
        {"text": " ".join(_PROSE * 14), "id": 15},  # > 4 KiB: a chunk holding one record
        {"text": ["", "only the second item"], "id": 16},
    ]
    # Many mid-sized records, so small chunk sizes produce many chunks.
    for i in range(100):
        parts = [_PROSE[i % 5], _CHINESE[i % 3], _CODE[i % 3], _EMOJI[i % 2]]
        text = f"Record {i}. " + " ".join(parts[: 1 + i % 4]) + ("\n" * (i % 3)) + " " * (i % 4)
        records.append({"text": text, "id": 100 + i})
        if i % 17 == 5:
            records.append({"text": "", "id": 1000 + i})
        if i % 13 == 7:
            records.append({"text": [text[:40], "", text[40:]], "id": 2000 + i})
    return records


def write_jsonl(path, records, *, blank_lines: bool = True, newline: str = "\n",
                bom: bool = False) -> Path:
    """Write records one per line; with blank_lines, blank and whitespace-only lines between
    some records (and at the end), as real files have."""
    lines = []
    for i, rec in enumerate(records):
        lines.append(json.dumps(rec, ensure_ascii=i % 2 == 0))  # both escaped and raw UTF-8
        if blank_lines and i % 9 == 4:
            lines.append("")
        if blank_lines and i % 11 == 3:
            lines.append("   \t")
    if blank_lines:
        lines.append("")
    data = (newline.join(lines) + newline).encode("utf-8")
    Path(path).write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return Path(path)


@pytest.fixture(scope="session")
def corpus() -> list[dict]:
    return make_corpus()


@pytest.fixture(scope="session")
def corpus_jsonl(tmp_path_factory, corpus) -> Path:
    """The corpus as a jsonl file with blank lines."""
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", corpus)


def split_rows(rows, seq_len, pad):
    """The records of Pai rows, recovered by cutting at the negative (last-token) markers; checks
    the padding after the last record of each row."""
    found = []
    for row in rows:
        tokens, labels = row[:seq_len], row[seq_len:]
        start = 0
        for end in [i + 1 for i, t in enumerate(tokens) if t < 0]:
            found.append((tokens[start:end], labels[start:end]))
            start = end
        assert start > 0, "a row without records"
        assert tokens[start:] == [pad] * (seq_len - start)
        assert labels[start:] == [-100] * (seq_len - start)
    return found
