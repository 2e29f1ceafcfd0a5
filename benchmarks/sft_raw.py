"""Raw SFT mode (``MP_DATASET_TYPE=raw``): time to first sample and random access on a ~1 GB alpaca
corpus, against Pai's raw mode (tokenize everything at start-up) and against the idxmap path.

The corpus is synthetic, built from the 60 records of dataprep/samples/alpaca_zh-sample.json
(Chinese and English, some with system/history): record i takes sample i % 60, the instruction
of another sample (rotating), and its output repeated 1x (45% of records), 2x (25%), 4x (20%),
8x (8%), 20x (1.8%) or 80x (0.2%, up to ~3000 tokens: some are truncated at 2048), with the
counter appended: ~2.9x the sample's output, ~135 tokens per record on average (Pai's sample
alpaca-style qwen_sft.json: mean 114, max 2458). The same records are written as jsonl and as a pretty-printed JSON
array (json.dumps indent=4, ensure_ascii=False, as Pai's alpaca_zh files are), plus a ~100 MB
jsonl prefix, under benchmarks/data/ (reused when present with the recorded sizes).

1. raw mode, jsonl and JSON array, each with a fresh empty cache directory: `index_records`
   cold (the scan; the .npz is written by a background thread meanwhile, waited for before
   the next step) and warm (read from the cache); `open_raw_sft` with
   the index cached (tokenizer load + engine probe: "start-up", paid by the trainer anyway);
   `SFTDataset` construction (unpacked, seq_length = pad_length = 2048, shuffled); sample 0.
   Time to first sample = index + dataset + sample 0 (cold and warm index cache). The files
   are read once beforehand so "cold" means a cold index cache, not a cold disk.
2. random access: 2000 random sample indices in this process; a torch DataLoader
   (num_workers=2, batch_size=8, collate_sft) over samples 0..1999, wall time including the
   workers' start-up.
3. Pai's raw mode (JSONSFTDataset) tokenizes every record at start-up: json-decode, then
   ``apply_chat_template`` of the prompt and of the full conversation with the transformers
   tokenizer (bundled DeepSeek; it has no chat template, so a Jinja one in the same format as
   dataprep's `deepseek` template is set). Measured on the first N records of the jsonl in one
   process and extrapolated to the whole file; Pai runs this under datasets.map(num_proc=16),
   so the ratio is also given with the ideal speed-up on this machine's cores. Not emulated
   (so Pai's real time is larger): load_dataset's Arrow conversion, padding every record to
   the pad length and np.array over all of them.
4. idxmap: `run_sft` (2 workers) on the ~100 MB prefix: records/s and M tokens/s; then
   `build_sft_dataset` unpacked and packed (bfd and next-fit at 2048): random-access samples/s,
   rows, lower bound, efficiency.
5. raw packed: `RawSFT.lengths` (every record tokenized once by dataprep sft's workers, one per core) on the ~100 MB prefix,
   extrapolated to the full corpus; raw packed samples == idxmap packed samples (first 50).

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/sft_raw.py [--size-mb 1000] \
        [--prefix-mb 100] [--pai-records 20000] [--random 2000]

MB are 10^6 bytes. Imports are done before any timing. Peak RSS is ru_maxrss of this process (and
of its largest child: DataLoader and run_sft workers, forked, so they start with the parent's RSS);
RSS includes the pages of mmap'd input files (the index scan maps the whole file).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA_DIR = os.path.join(HERE, "data")
SAMPLES = os.path.join(ROOT, "dataprep", "samples", "alpaca_zh-sample.json")
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

MB = 1_000_000
TOKENIZER = "DeepSeekV2Tokenizer"
SEQ = 2048
CORPUS_VERSION = 2

# Pai emulation: the tokenizer's chat template in the format of dataprep's `deepseek` template.
PAI_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}"
    "{% elif m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] + '<｜Assistant｜>' }}"
    "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")


def now() -> float:
    return time.perf_counter()


# ===========================================================================================
# The corpus.
# ===========================================================================================

_enc = json.encoder.encode_basestring  # ensure_ascii=False string encoder (C)


def _pretty(value, level: int) -> str:
    """json.dumps(value, indent=4, ensure_ascii=False) at nesting ``level`` (dicts, lists, str)."""
    if isinstance(value, str):
        return _enc(value)
    pad, close = "    " * (level + 1), "    " * level
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{\n" + ",\n".join(f"{pad}{_enc(k)}: {_pretty(v, level + 1)}" for k, v in value.items()) \
            + f"\n{close}}}"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + ",\n".join(pad + _pretty(v, level + 1) for v in value) + f"\n{close}]"
    return json.dumps(value)


def _repeats(i: int) -> int:
    h = (i * 2654435761) % 1000
    return 1 if h < 450 else 2 if h < 700 else 4 if h < 900 else 8 if h < 980 else 20 if h < 998 else 80


def make_record(samples: list[dict], i: int) -> dict:
    n = len(samples)
    base = samples[i % n]
    rec = dict(base)
    rec["instruction"] = samples[(i + i // n) % n]["instruction"]
    rec["output"] = "\n\n".join([base["output"]] * _repeats(i)) + f" ({i})"
    return rec


def corpus_paths(size_mb: float, prefix_mb: float) -> dict:
    stem = os.path.join(DATA_DIR, f"sft_alpaca_{size_mb:g}mb")
    return {"jsonl": stem + ".jsonl", "json": stem + ".json", "prefix": f"{stem}_first{prefix_mb:g}mb.jsonl",
            "meta": stem + f"_first{prefix_mb:g}mb.meta.json"}


def ensure_corpus(size_mb: float, prefix_mb: float) -> dict:
    paths = corpus_paths(size_mb, prefix_mb)
    if os.path.exists(paths["meta"]):
        with open(paths["meta"], encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("version") == CORPUS_VERSION and all(
                os.path.exists(paths[k]) and os.path.getsize(paths[k]) == meta[f"{k}_bytes"]
                for k in ("jsonl", "json", "prefix")):
            meta["generated_s"] = None
            return meta
    os.makedirs(DATA_DIR, exist_ok=True)
    with open(SAMPLES, encoding="utf-8") as f:
        samples = json.load(f)
    # the hand-written pretty printer must match json.dumps(indent=4) exactly
    check = [make_record(samples, i) for i in range(300)]
    assert "[\n" + ",\n".join("    " + _pretty(r, 1) for r in check) + "\n]" == \
        json.dumps(check, indent=4, ensure_ascii=False)
    print(f"building corpus {os.path.relpath(paths['jsonl'], ROOT)} (+ .json, + prefix) ...", flush=True)
    t0 = now()
    target, prefix_target = int(size_mb * MB), int(prefix_mb * MB)
    sizes = {"jsonl": 0, "json": 0, "prefix": 0}
    records = prefix_records = 0
    i = 0
    with open(paths["jsonl"] + ".tmp", "wb") as fl, open(paths["json"] + ".tmp", "wb") as fa, \
            open(paths["prefix"] + ".tmp", "wb") as fp:
        fa.write(b"[\n")
        sizes["json"] += 2
        while sizes["jsonl"] < target:
            batch = [make_record(samples, j) for j in range(i, i + 2000)]
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch).encode()
            pretty = ((",\n" if i else "") + ",\n".join("    " + _pretty(r, 1) for r in batch)).encode()
            fl.write(lines)
            fa.write(pretty)
            sizes["jsonl"] += len(lines)
            sizes["json"] += len(pretty)
            if sizes["prefix"] < prefix_target:
                fp.write(lines)
                sizes["prefix"] += len(lines)
                prefix_records += len(batch)
            i += len(batch)
            records += len(batch)
        fa.write(b"\n]\n")
        sizes["json"] += 3
    for k in ("jsonl", "json", "prefix"):
        os.replace(paths[k] + ".tmp", paths[k])
    meta = {"version": CORPUS_VERSION, "records": records, "prefix_records": prefix_records,
            **{f"{k}_bytes": v for k, v in sizes.items()}}
    with open(paths["meta"], "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    meta["generated_s"] = now() - t0
    return meta


def rss_note() -> str:
    """Peak RSS so far (ru_maxrss) and the current anonymous / file-backed resident memory (mmap'd
    files count in RSS while their pages are mapped)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB
    cur = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                cur[line.split(":")[0]] = int(line.split()[1]) * 1024 / MB
    return (f"RSS peak so far {peak:,.0f} MB, now anon {cur.get('RssAnon', 0):,.0f} MB + "
            f"file {cur.get('RssFile', 0):,.0f} MB")


def warm_page_cache(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


# ===========================================================================================
# Measurements.
# ===========================================================================================

def random_access(ds, n: int, seed: int = 0) -> tuple[float, int]:
    idx = np.random.default_rng(seed).integers(0, len(ds), n)
    t0 = now()
    for i in idx.tolist():
        ds[i]
    return n / (now() - t0), n


def loader_rate(ds, n: int, workers: int = 2, batch: int = 8) -> tuple[float, float]:
    """(samples/s over samples 0..n-1 including worker start-up, seconds to the first batch)."""
    from dataset_engine.sft import collate_sft

    sub = torch.utils.data.Subset(ds, range(min(n, len(ds))))
    t0 = now()
    loader = torch.utils.data.DataLoader(sub, batch_size=batch, num_workers=workers, collate_fn=collate_sft)
    first, count = None, 0
    for b in loader:
        if first is None:
            first = now() - t0
        count += b["tokens"].shape[0]
    return count / (now() - t0), first


def raw_mode(path: str, kind: str, args) -> dict:
    from dataprep.sft.raw import open_raw_sft
    from dataset_engine.raw import index_records
    from dataset_engine.sft import SFTDataset, SFTDatasetConfig

    cache = tempfile.mkdtemp(prefix=f"sft-raw-{kind}-")
    try:
        r = {"kind": kind, "bytes": os.path.getsize(path)}
        t0 = now()
        ix = index_records(path, cache)
        r["index_cold"] = now() - t0
        r["records"] = len(ix.starts)
        t0 = now()
        for thread in threading.enumerate():  # the cache file is written in the background
            if thread.name == "raw-index-cache":
                thread.join()
        r["index_save"] = now() - t0
        t0 = now()
        index_records(path, cache)
        r["index_warm"] = now() - t0
        t0 = now()
        source = open_raw_sft([path], tokenizer=TOKENIZER, cache_dir=cache)
        r["open"] = now() - t0
        r["startup"] = r["open"] - r["index_warm"]
        t0 = now()
        ds = SFTDataset(source, SFTDatasetConfig(seq_length=SEQ, pad_length=SEQ, cache_dir=cache))
        r["dataset"] = now() - t0
        t0 = now()
        s0 = ds[0]
        r["first"] = now() - t0
        t0 = now()
        ds[1]
        r["second"] = now() - t0
        assert s0["tokens"].shape == (SEQ,)
        r["ttfs_cold"] = r["index_cold"] + r["dataset"] + r["first"]
        r["ttfs_warm"] = r["index_warm"] + r["dataset"] + r["first"]
        r["random_rate"], _ = random_access(ds, args.random)
        r["loader_rate"], r["loader_first"] = loader_rate(ds, args.random)
        return r
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def pai_emulation(path: str, n: int) -> dict:
    from transformers import AutoTokenizer

    from dataprep.tokenization.tokenizers import bundled_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(bundled_tokenizer_dir())
    tok.chat_template = PAI_TEMPLATE
    with open(path, "rb") as f:
        lines = [f.readline() for _ in range(n)]
    lines = [line for line in lines if line.strip()]
    tokens = 0
    t0 = now()
    for line in lines:
        ex = json.loads(line)
        # JSONSFTDataset.preprocess: user = instruction + input, assistant = output (no system/history)
        text = [{"role": "user", "content": ex["instruction"] + ex.get("input", "")},
                {"role": "assistant", "content": ex["output"]}]
        # (transformers 5 returns a BatchEncoding by default; Pai's code expects the list of ids)
        source = tok.apply_chat_template(text[:-1], return_dict=False)
        full = tok.apply_chat_template(text, return_dict=False)
        assert full[:len(source)] == source
        tokens += len(full)
    seconds = now() - t0
    return {"records": len(lines), "seconds": seconds, "rate": len(lines) / seconds, "tokens": tokens}


def idxmap_mode(prefix_path: str, work: str) -> dict:
    from dataprep.sft.run import SFTConfig, run_sft
    from dataprep.sft.raw import build_sft_dataset
    from dataset_engine.sft import SFTDatasetConfig

    out = os.path.join(work, "sft100")
    logs: list[str] = []
    t0 = now()
    summary = run_sft(SFTConfig(inputs=(prefix_path,), output_prefix=out, tokenizer=TOKENIZER, workers=2,
                                progress=False), log=logs.append)
    r = {"wall": now() - t0, "summary": summary, "logs": logs, "prefix": out}
    cache = os.path.join(work, "cache-idxmap")
    t0 = now()
    unpacked = build_sft_dataset(out, SFTDatasetConfig(seq_length=SEQ, cache_dir=cache), dataset_type="idxmap")
    r["open_unpacked"] = now() - t0
    r["unpacked_rate"], _ = random_access(unpacked, 2000)
    r["loader_rate"], r["loader_first"] = loader_rate(unpacked, 2000)
    t0 = now()
    packed = build_sft_dataset(out, SFTDatasetConfig(seq_length=SEQ, packing=True, cache_dir=cache),
                               dataset_type="idxmap")
    r["open_packed"] = now() - t0
    t0 = now()
    build_sft_dataset(out, SFTDatasetConfig(seq_length=SEQ, packing=True, cache_dir=cache), dataset_type="idxmap")
    r["open_packed_cached"] = now() - t0
    r["packed_rate"], _ = random_access(packed, 2000)
    t0 = now()
    nf = build_sft_dataset(out, SFTDatasetConfig(seq_length=SEQ, packing=True, packing_algorithm="next-fit",
                                                 cache_dir=cache), dataset_type="idxmap")
    r["open_nextfit"] = now() - t0
    r["plan"], r["nf_plan"], r["packed"] = packed.plan, nf.plan, packed
    return r


def raw_packed(prefix_path: str, idx_packed, work: str) -> dict:
    from dataprep.sft.raw import open_raw_sft
    from dataset_engine.sft import SFTDataset, SFTDatasetConfig

    cache = os.path.join(work, "cache-raw-packed")
    source = open_raw_sft([prefix_path], tokenizer=TOKENIZER, cache_dir=cache)
    t0 = now()
    lengths = source.lengths
    r = {"lengths_s": now() - t0, "records": len(lengths), "tokens": int(lengths.sum())}
    t0 = now()
    ds = SFTDataset(source, SFTDatasetConfig(seq_length=SEQ, packing=True, cache_dir=cache))
    r["dataset"] = now() - t0
    assert len(ds) == len(idx_packed), (len(ds), len(idx_packed))
    assert np.array_equal(ds.plan.order, idx_packed.plan.order)
    for i in range(50):
        a, b = ds[i], idx_packed[i]
        assert a.keys() == b.keys(), i
        for k in a:
            assert torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k], (i, k)
    r["equal"] = True
    r["random_rate"], _ = random_access(ds, 2000)
    return r


# ===========================================================================================
# main
# ===========================================================================================

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=1000, help="jsonl corpus size (the array is larger)")
    parser.add_argument("--prefix-mb", type=float, default=100, help="prefix for the idxmap and lengths runs")
    parser.add_argument("--pai-records", type=int, default=20000, help="records tokenized the Pai way")
    parser.add_argument("--random", type=int, default=2000, help="random accesses per measurement")
    args = parser.parse_args()

    started = now()
    command = [os.path.relpath(sys.executable), os.path.relpath(__file__), *sys.argv[1:]]
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE") if k in os.environ)
    print((env + " " if env else "") + shlex.join(command))
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} cpus (load average {os.getloadavg()[0]:.2f}); "
          f"tokenizer {TOKENIZER} (bundled); seq_length = pad_length = {SEQ}")

    meta = ensure_corpus(args.size_mb, args.prefix_mb)
    paths = corpus_paths(args.size_mb, args.prefix_mb)
    gen = f"generated in {meta['generated_s']:.1f} s" if meta["generated_s"] is not None else "reused"
    print(f"corpus ({gen}): {meta['records']:,} records; jsonl {meta['jsonl_bytes'] / MB:,.1f} MB, "
          f"JSON array {meta['json_bytes'] / MB:,.1f} MB, prefix {meta['prefix_records']:,} records "
          f"{meta['prefix_bytes'] / MB:,.1f} MB")
    for k in ("jsonl", "json", "prefix"):
        warm_page_cache(paths[k])
    t0 = now()
    import transformers  # noqa: F401  (imports paid once, before any timing, so both formats' start-up compare)

    import dataprep.runs.workers  # noqa: F401
    import dataprep.sft.raw  # noqa: F401
    import dataprep.sft.run  # noqa: F401
    import dataset_engine.raw  # noqa: F401
    import dataset_engine.sft  # noqa: F401
    imports = now() - t0
    print(f"imports (transformers, dataprep, dataset_engine; not in any figure below): {imports:.2f} s")
    print(flush=True)

    # -- 1, 2: raw mode --------------------------------------------------------------------
    raw = {}
    for kind in ("jsonl", "json"):
        label = "jsonl" if kind == "jsonl" else "JSON array"
        print(f"[raw {label}] {os.path.relpath(paths[kind], ROOT)}", flush=True)
        r = raw[kind] = raw_mode(paths[kind], kind, args)
        assert r["records"] == meta["records"], (r["records"], meta["records"])
        print(f"    index cold {r['index_cold']:.2f} s ({r['bytes'] / MB / r['index_cold']:,.0f} MB/s), "
              f"warm {r['index_warm']:.3f} s; start-up {r['startup']:.2f} s; dataset {r['dataset']:.3f} s; "
              f"sample 0 {r['first'] * 1e3:.1f} ms (sample 1 {r['second'] * 1e3:.2f} ms)", flush=True)
        print(f"    random access {r['random_rate']:,.0f} samples/s; DataLoader(2 workers, batch 8) "
              f"{r['loader_rate']:,.0f} samples/s (first batch {r['loader_first']:.2f} s)", flush=True)
        print(f"    {rss_note()}", flush=True)

    # -- 3: Pai's raw mode -------------------------------------------------------------------
    print(f"[pai emulation] first {args.pai_records:,} records of the jsonl, transformers AutoTokenizer",
          flush=True)
    pai = pai_emulation(paths["jsonl"], args.pai_records)
    cores = min(16, os.cpu_count() or 1)
    pai["full_1"] = meta["records"] / pai["rate"]
    pai["full_n"] = pai["full_1"] / cores
    print(f"    {pai['records']:,} records in {pai['seconds']:.2f} s = {pai['rate']:,.0f} records/s "
          f"({pai['tokens'] / pai['records']:.0f} tokens per record); {rss_note()}", flush=True)

    # -- 4, 5: idxmap and raw packed on the prefix -------------------------------------------
    work = tempfile.mkdtemp(prefix="sft-raw-bench-")
    try:
        print(f"[idxmap] run_sft on {os.path.relpath(paths['prefix'], ROOT)}, 2 workers", flush=True)
        idx = idxmap_mode(paths["prefix"], work)
        s = idx["summary"]
        for line in idx["logs"]:
            print(f"    {line}")
        for line in s.lines():
            print(f"    {line}")
        print(f"    random access unpacked {idx['unpacked_rate']:,.0f} samples/s; DataLoader(2 workers, batch 8) "
              f"{idx['loader_rate']:,.0f} samples/s; {rss_note()}", flush=True)
        print("[raw packed] RawSFT.lengths on the prefix", flush=True)
        rp = raw_packed(paths["prefix"], idx["packed"], work)
        print(f"    lengths {rp['lengths_s']:.2f} s; raw == idxmap (first 50 packed rows): yes; {rss_note()}",
              flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # -- summary -----------------------------------------------------------------------------
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    n = meta["records"]
    W = 64

    def line(name: str, value: str) -> None:
        print(f"{name:<{W}} {value}")

    print()
    print(f"=== summary: {n:,} records (jsonl {meta['jsonl_bytes'] / MB:,.0f} MB, "
          f"JSON array {meta['json_bytes'] / MB:,.0f} MB); {os.cpu_count()} cpus ===")
    print()
    print(f"{'raw mode (fresh cache dir per format)':<{W}} {'jsonl':>10} {'JSON array':>11}")
    print("-" * (W + 23))
    J, A = raw["jsonl"], raw["json"]

    def both(name: str, key: str, fmt: str, scale: float = 1.0) -> None:
        print(f"{name:<{W}} {format(J[key] * scale, fmt):>10} {format(A[key] * scale, fmt):>11}")

    both("index, cold (s)", "index_cold", ".2f")
    both("index, warm / cached (s)", "index_warm", ".3f")
    both("tokenizer + engine start-up, open_raw_sft - warm index (s)", "startup", ".2f")
    both("dataset construction, unpacked shuffled (s)", "dataset", ".3f")
    both("first sample, incl. RawSFT building its engine (ms)", "first", ".1f", 1e3)
    both("second sample (ms)", "second", ".2f", 1e3)
    both("time to first sample, cold index (s)", "ttfs_cold", ".2f")
    both("time to first sample, warm index (s)", "ttfs_warm", ".2f")
    both(f"random access, 1 process ({args.random} samples, samples/s)", "random_rate", ",.0f")
    both(f"DataLoader 2 workers, batch 8 (samples 0..{args.random - 1}, samples/s)", "loader_rate", ",.0f")
    print()
    line(f"Pai-style tokenize-all rate (extrapolated from {pai['records']:,} records)",
         f"{pai['rate']:,.0f} records/s, 1 process")
    line(f"Pai-style time to first sample, {n:,} records, 1 process", f"{pai['full_1']:,.0f} s")
    line(f"Pai-style time to first sample, ideal x{cores} (num_proc on {cores} cpus)", f"{pai['full_n']:,.0f} s")
    for kind, r in raw.items():
        label = "jsonl" if kind == "jsonl" else "JSON array"
        line(f"Pai-style / ours (cold time to first sample), {label}",
             f"{pai['full_1'] / r['ttfs_cold']:,.0f}x (1 process), {pai['full_n'] / r['ttfs_cold']:,.0f}x "
             f"(ideal x{cores})")
    print()
    pl, nf = idx["plan"], idx["nf_plan"]
    line(f"idxmap: run_sft, 2 workers, {s.read:,} records ({s.bytes_in / MB:,.0f} MB)",
         f"{s.seconds:.1f} s, {s.read / s.seconds:,.0f} records/s, {s.tokens / s.seconds / 1e6:.2f} M tokens/s "
         f"(start-up {s.startup_seconds:.1f} s)")
    line(f"dataprep sft / Pai-style encoder (records/s; Pai ideal x{cores})",
         f"{s.read / s.seconds / (pai['rate'] * cores):.1f}x end to end, "
         f"{s.read / (s.seconds - s.startup_seconds) / (pai['rate'] * cores):.1f}x after start-up")
    line("idxmap: random access unpacked (samples/s)", f"{idx['unpacked_rate']:,.0f}")
    line("idxmap: DataLoader 2 workers, batch 8, unpacked (samples/s)", f"{idx['loader_rate']:,.0f}")
    line("idxmap: random access packed, bfd (rows/s)", f"{idx['packed_rate']:,.0f}")
    line("idxmap: packed dataset construction, plan cold / cached (s)",
         f"{idx['open_packed']:.2f} / {idx['open_packed_cached']:.2f}")
    line(f"packing at {SEQ}, bfd: rows / lower bound / efficiency",
         f"{pl.rows:,} / {pl.lower_bound:,} / {pl.efficiency:.2%}")
    line(f"packing at {SEQ}, next-fit (file order): rows / efficiency", f"{nf.rows:,} / {nf.efficiency:.2%}")
    line("rows bfd / next-fit", f"{pl.rows / nf.rows:.4f} ({nf.rows - pl.rows:,} fewer rows)")
    print()
    full_lengths = n / (rp["records"] / rp["lengths_s"])
    line(f"raw packed: RawSFT.lengths, {rp['records']:,} records, {cores} worker processes",
         f"{rp['lengths_s']:.1f} s, {rp['records'] / rp['lengths_s']:,.0f} records/s, "
         f"{rp['tokens'] / rp['lengths_s'] / 1e6:.2f} M tokens/s")
    line(f"raw packed: lengths extrapolated to {n:,} records", f"{full_lengths:,.0f} s")
    line("raw packed: random access (rows/s)", f"{rp['random_rate']:,.0f}")
    line("raw packed == idxmap packed (first 50 rows)", "yes" if rp["equal"] else "NO")
    line("idxmap unpacked / raw unpacked random access (jsonl)", f"{idx['unpacked_rate'] / J['random_rate']:.2f}x")
    line("idxmap unpacked / raw unpacked, DataLoader 2 workers (jsonl)", f"{idx['loader_rate'] / J['loader_rate']:.2f}x")
    line("idxmap packed / raw packed random access", f"{idx['packed_rate'] / rp['random_rate']:.2f}x")
    print()
    line("peak RSS, this process / largest child (MB)", f"{self_kb * 1024 / MB:,.0f} / {child_kb * 1024 / MB:,.0f}")
    line("total wall (s)", f"{now() - started:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
