"""`dataprep merge`: concatenate idxmaps into one, as Megatron-LM's `tools/merge_datasets.py` does.

Algorithm: resolve the inputs (a prefix, or a directory: every ``*.idx`` in it with a matching
``.bin``, sorted by name); open and validate each one (`IdxmapReader`) and refuse a dtype that
differs from the first input's before anything is written; then stream them through one
`IdxmapWriter` with `IdxmapWriter.add_index`: each ``.bin`` is copied in 64 MiB pieces, its
sequence lengths appended and its document indices shifted by the sequences written before it.
The writer's temporary names and renames apply, so an interrupted merge leaves no output that
looks finished; ``{OUT}.json`` lists the inputs and counts, and carries the tokenizer block when
every input's sidecar has the same one.

The result is byte-identical (``.bin`` and ``.idx``) to preprocessing the inputs' sources
concatenated in the same order: tokens are copied, never re-encoded.

Cost: time linear in the total bytes (one read and one write of every ``.bin``, plus validating
each ``.idx`` twice: once up front, once while copying); memory 4 bytes per sequence and 8 per
document of the output (the writer's index arrays) plus one 64 MiB copy buffer.
"""

from __future__ import annotations

import contextlib
import glob
import os
from dataclasses import dataclass, field

from dataprep import __version__
from dataprep.errors import DataprepError
from dataset_engine.idxmap import IdxmapError, IdxmapReader, IdxmapWriter, read_sidecar, write_sidecar

SIDECAR_FORMAT = "dataprep-merge-sidecar/1"


@dataclass
class MergeInput:
    prefix: str
    dtype: str
    documents: int
    sequences: int
    tokens: int
    sidecar: dict | None


@dataclass
class MergeSummary:
    output_prefix: str
    dtype: str
    inputs: list[MergeInput]
    tokenizer: dict | None
    notes: list[str] = field(default_factory=list)

    @property
    def documents(self) -> int:
        return sum(i.documents for i in self.inputs)

    @property
    def sequences(self) -> int:
        return sum(i.sequences for i in self.inputs)

    @property
    def tokens(self) -> int:
        return sum(i.tokens for i in self.inputs)

    def lines(self) -> list[str]:
        out = [(f"{self.output_prefix}: {len(self.inputs)} inputs merged: {self.documents:,} documents, "
                f"{self.sequences:,} sequences, {self.tokens:,} tokens, dtype {self.dtype}")]
        out += [f"  note: {n}" for n in self.notes]
        out.append(f"  output     {self.output_prefix}.bin/.idx/.json")
        return out


def _strip(prefix: str) -> str:
    return prefix.removesuffix(".bin").removesuffix(".idx")


def resolve_inputs(inputs: list[str] | tuple[str, ...]) -> list[str]:
    """Prefixes in merge order: each input as given, a directory expanded to the prefixes of its
    ``*.idx`` files that have a ``.bin`` beside them, sorted by name."""
    prefixes: list[str] = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(p[:-len(".idx")] for p in glob.glob(os.path.join(glob.escape(item), "*.idx"))
                           if os.path.isfile(p[:-len(".idx")] + ".bin"))
            if not found:
                raise DataprepError(f"{item}: directory holds no idxmap (no *.idx with a matching .bin)")
            prefixes += found
        else:
            prefixes.append(_strip(item))
    if not prefixes:
        raise DataprepError("merge needs at least one --input")
    return prefixes


def _describe(prefix: str) -> MergeInput:
    try:
        with IdxmapReader(prefix) as reader:
            info = MergeInput(prefix, reader.dtype.name, reader.num_documents, len(reader),
                              reader.num_tokens, None)
        info.sidecar = read_sidecar(prefix)
    except IdxmapError as exc:
        raise DataprepError(str(exc)) from exc
    return info


def _common_tokenizer(inputs: list[MergeInput]) -> tuple[dict | None, list[str]]:
    """The tokenizer block all inputs' sidecars share (the engine only kept when it is the same
    everywhere: engines are checked to give identical ids), else None and a note why."""
    blocks = [(i.sidecar or {}).get("tokenizer") for i in inputs]
    if any(b is None for b in blocks):
        missing = [i.prefix for i, b in zip(inputs, blocks) if b is None]
        return None, [f"no tokenizer in the sidecar: {missing[0]} has none"
                      + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")]
    def core(b: dict) -> dict:
        return {k: v for k, v in b.items() if k != "engine"}
    for i, b in zip(inputs[1:], blocks[1:]):
        if core(b) != core(blocks[0]):
            return None, [(f"no tokenizer in the sidecar: {inputs[0].prefix} and {i.prefix} name "
                           f"different tokenizers ({core(blocks[0])} vs {core(b)})")]
    merged = core(blocks[0])
    engines = {b.get("engine") for b in blocks}
    if len(engines) == 1 and None not in engines:
        merged["engine"] = engines.pop()
    return merged, []


def merge_idxmaps(inputs: list[str] | tuple[str, ...], output_prefix: str) -> MergeSummary:
    """Concatenate the idxmaps named by ``inputs`` (prefixes or directories) into ``output_prefix``."""
    output_prefix = _strip(output_prefix)
    prefixes = resolve_inputs(inputs)
    out_abs = os.path.abspath(output_prefix)
    if any(os.path.abspath(p) == out_abs for p in prefixes):
        raise DataprepError(f"--output-prefix {output_prefix} is also an input: it would be "
                            "overwritten while being read")
    described = [_describe(p) for p in prefixes]
    first = described[0]
    for info in described[1:]:
        if info.dtype != first.dtype:
            raise DataprepError(f"dtype mismatch: {info.prefix} holds {info.dtype} tokens but "
                                f"{first.prefix} holds {first.dtype}; merge inputs of one dtype "
                                "(one tokenizer)")
    tokenizer, notes = _common_tokenizer(described)
    sft = [i for i in described if (i.sidecar or {}).get("layout")]
    if sft:
        # The merged sidecar has no layout: a native SFT's loss masks are separate idxmaps.
        notes.append(f"{sft[0].prefix} is an SFT idxmap (layout {sft[0].sidecar['layout']}); the "
                     "output is a plain idxmap: merge the loss-mask idxmaps the same way if needed")
    parent = os.path.dirname(out_abs)
    if not os.path.isdir(parent):
        raise DataprepError(f"--output-prefix {output_prefix}: directory {parent} does not exist")

    writer = IdxmapWriter(output_prefix, first.dtype)
    try:
        for info in described:
            with IdxmapReader(info.prefix) as reader:
                writer.add_index(reader)
        # An old sidecar must not describe the new files, even for a moment.
        with contextlib.suppress(FileNotFoundError):
            os.remove(output_prefix + ".json")
        writer.finalize()
    except BaseException:
        writer.abort()
        raise
    summary = MergeSummary(output_prefix, first.dtype, described, tokenizer, notes)
    _write_sidecar(summary)
    return summary


def _write_sidecar(summary: MergeSummary) -> None:
    """``{OUT}.json``: inputs and counts, deterministic (no times)."""
    sidecar: dict = {
        "format": SIDECAR_FORMAT,
        "tool": {"name": "dataprep", "version": __version__, "command": "merge"},
    }
    if summary.tokenizer is not None:
        sidecar["tokenizer"] = summary.tokenizer
    sidecar["dtype"] = summary.dtype
    sidecar["inputs"] = [{"prefix": os.path.abspath(i.prefix), "documents": i.documents,
                          "sequences": i.sequences, "tokens": i.tokens} for i in summary.inputs]
    sidecar["counts"] = {"documents": summary.documents, "sequences": summary.sequences,
                         "tokens": summary.tokens}
    write_sidecar(summary.output_prefix, sidecar)
