"""Pretrain index building at scale: dataset_engine.gpt against megatron-core's GPTDataset, one run.

A synthetic idxmap of ``--docs`` documents (default 10.5 M) with lognormal lengths (median 120
tokens, sigma 1.0, clipped to [1, 32768]: mean ~200, ~2.1 G tokens) is written once under
benchmarks/data/: a real ``.idx`` and a sparse ``.bin`` of the right size (int32 tokens, all
zero), which is all index building reads. Then, each in a fresh process (so peak RSS is the
build's own; imports are done before the clock starts and their RSS is reported apart):

* megatron-core: ``BlendedMegatronDatasetBuilder(GPTDataset, [train, valid, test], ...)`` with a
  ``path_to_cache``: cold (indices built and saved), then warm (loaded);
* dataprep: ``dataset_engine.gpt.build_gpt_datasets`` with a fresh cache directory: cold, warm;
* random access: samples/s over 20,000 random train samples for both (no attention mask, as
  with flash attention; the sparse .bin reads zeros);
* both give the same first 200 train samples (checked).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gpt_index.py [--docs 10500000] \
        [--seq-length 4096] [--train-samples 1000000] [--split 969,30,1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
EOD = 1


def make_idxmap(prefix: str, docs: int, seed: int = 0) -> dict:
    """The synthetic idxmap (reused when present): header, lengths, pointers, document indices."""
    meta_path = prefix + ".meta.json"
    if os.path.exists(meta_path) and os.path.exists(prefix + ".idx") and os.path.exists(prefix + ".bin"):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta["docs"] == docs:
            return meta
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.rint(rng.lognormal(np.log(120), 1.0, docs)), 1, 32768).astype(np.int32)
    pointers = np.zeros(docs, np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * 4, out=pointers[1:])
    from dataset_engine.idxmap import _HEADER, _MAGIC  # the one description of the header

    with open(prefix + ".idx.tmp", "wb") as f:
        f.write(_HEADER.pack(_MAGIC, 1, 4, docs, docs + 1))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(np.arange(docs + 1, dtype=np.int64).tobytes())
    tokens = int(lengths.sum(dtype=np.int64))
    with open(prefix + ".bin.tmp", "wb") as f:
        f.truncate(tokens * 4)  # sparse: index building never reads tokens
    os.replace(prefix + ".bin.tmp", prefix + ".bin")
    os.replace(prefix + ".idx.tmp", prefix + ".idx")
    meta = {"docs": docs, "tokens": tokens, "mean": float(lengths.mean())}
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    return meta


class _Tokenizer:
    """What megatron-core's GPTDatasetConfig needs of a tokenizer."""

    def __init__(self) -> None:
        self.eod, self.vocab_size = EOD, 151936
        self.unique_identifiers = {"class": "bench", "eod": EOD}


def worker(args) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch  # noqa: F401  (imported before the clock, as in training)
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from dataset_engine.gpt import GPTDataConfig, build_gpt_datasets

    sizes = [args.train_samples, args.train_samples // 100, args.train_samples // 1000]
    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    if args.worker == "megatron":
        config = GPTDatasetConfig(
            random_seed=1234, sequence_length=args.seq_length, blend=([args.prefix], None), split=args.split,
            tokenizer=_Tokenizer(), reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
            create_attention_mask=False, path_to_cache=args.cache)
        datasets = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    else:
        config = GPTDataConfig(data_path=(args.prefix,), seq_length=args.seq_length, eod=EOD, split=args.split,
                               create_attention_mask=False, cache_dir=args.cache)
        datasets = build_gpt_datasets(config, sizes)
    seconds = time.perf_counter() - t0
    rss_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"seconds": seconds, "rss_imports_mb": rss_imports, "rss_peak_mb": rss_build,
           "samples": [len(d) if d is not None else 0 for d in datasets]}
    train = datasets[0]
    if args.random:
        idx = np.random.default_rng(1).integers(0, len(train), args.random)
        t0 = time.perf_counter()
        for i in idx:
            train[int(i)]
        out["random_rate"] = args.random / (time.perf_counter() - t0)
    import hashlib

    h = hashlib.sha256()
    for i in range(200):
        h.update(train[i]["tokens"].numpy().tobytes())
        h.update(train[i]["position_ids"].numpy().tobytes())
    out["checksum"] = h.hexdigest()
    print(json.dumps(out))
    return out


def run(kind: str, args, cache: str, random: int = 0) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--prefix", args.prefix, "--cache", cache,
           "--seq-length", str(args.seq_length), "--train-samples", str(args.train_samples), "--split", args.split,
           "--random", str(random)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=10_500_000)
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--train-samples", type=int, default=1_000_000)
    parser.add_argument("--split", default="969,30,1")
    parser.add_argument("--random", type=int, default=20_000)
    parser.add_argument("--data-dir", default=os.path.join(HERE, "data"))
    parser.add_argument("--worker", choices=["megatron", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    os.makedirs(args.data_dir, exist_ok=True)
    args.prefix = os.path.join(args.data_dir, f"gpt_synthetic_{args.docs}_text_document")
    t0 = time.perf_counter()
    meta = make_idxmap(args.prefix, args.docs)
    print(f"python {platform.python_version()}, {len(os.sched_getaffinity(0))} cpus; idxmap {meta['docs']:,} documents, "
          f"{meta['tokens'] / 1e9:.2f} G tokens (mean {meta['mean']:.0f}), .idx "
          f"{os.path.getsize(args.prefix + '.idx') / 1e6:,.0f} MB, sparse .bin ({time.perf_counter() - t0:.1f} s)")
    print(f"seq_length {args.seq_length}, samples [train, valid, test] = "
          f"[{args.train_samples:,}, {args.train_samples // 100:,}, {args.train_samples // 1000:,}], split {args.split}")
    work = tempfile.mkdtemp(prefix="gpt-index-bench-")
    try:
        results = {}
        for kind in ("megatron", "ours"):
            cache = os.path.join(work, kind)
            results[kind, "cold"] = run(kind, args, cache)
            results[kind, "warm"] = run(kind, args, cache, random=args.random)
            for phase in ("cold", "warm"):
                r = results[kind, phase]
                print(f"  {kind:<9} {phase}: {r['seconds']:7.2f} s, peak RSS {r['rss_peak_mb']:,.0f} MB "
                      f"(after imports {r['rss_imports_mb']:,.0f} MB), samples {r['samples']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m, o = results["megatron", "cold"], results["ours", "cold"]
    mw, ow = results["megatron", "warm"], results["ours", "warm"]
    same = m["checksum"] == o["checksum"] == mw["checksum"] == ow["checksum"] and m["samples"] == o["samples"]
    print()
    rows = [
        ("index build, cold (s)", f"{m['seconds']:.2f}", f"{o['seconds']:.2f}", f"{m['seconds'] / o['seconds']:.2f}x faster"),
        ("index load, warm cache (s)", f"{mw['seconds']:.2f}", f"{ow['seconds']:.2f}", f"{mw['seconds'] / ow['seconds']:.2f}x faster"),
        ("build peak RSS above imports (MB)", f"{m['rss_peak_mb'] - m['rss_imports_mb']:,.0f}",
         f"{o['rss_peak_mb'] - o['rss_imports_mb']:,.0f}", ""),
        ("build peak RSS, whole process (MB)", f"{m['rss_peak_mb']:,.0f}", f"{o['rss_peak_mb']:,.0f}", ""),
        (f"random access, {args.random:,} samples (samples/s)", f"{mw['random_rate']:,.0f}",
         f"{ow['random_rate']:,.0f}", f"{ow['random_rate'] / mw['random_rate']:.2f}x"),
        ("same samples (first 200 train)", "", "", "yes" if same else "NO"),
    ]
    print(f"{'':<42} {'megatron-core':>14} {'dataprep':>10}  ratio")
    for name, a, b, ratio in rows:
        print(f"{name:<42} {a:>14} {b:>10}  {ratio}")


if __name__ == "__main__":
    main()
