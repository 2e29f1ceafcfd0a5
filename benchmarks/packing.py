"""Rows and time of SFT packing: best-fit-decreasing against Pai's next-fit, on 1M records.

Record lengths (tokens per SFT record, prompt + answer) are synthetic, drawn with a fixed seed:

* ``sft``: lognormal, median 250 tokens, sigma 0.9 (mean ~370, p99 ~2000), rounded and
  clipped to [16, seq_len]: the shape of alpaca/ShareGPT-style instruction data (most records a
  few hundred tokens, a long tail up to the context). Not fit to a particular dataset.
* ``short+long``: 95% short turns uniform in [20, 300], 5% long documents uniform in
  [seq_len/2, seq_len] (the mix where next-fit wastes the most).

For each mix and seq_len, both packers run on the same lengths; the time is the median of
``--repeats`` runs of the whole call (validation, packing, building the plan) on one core.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/packing.py [--records 1000000] \
        [--seq-lens 4096 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dataset_engine.packing import pack_best_fit_decreasing, pack_next_fit


def sft_lengths(rng: np.random.Generator, n: int, seq_len: int) -> np.ndarray:
    return np.clip(np.rint(rng.lognormal(np.log(250), 0.9, n)), 16, seq_len).astype(np.int64)


def short_and_long_lengths(rng: np.random.Generator, n: int, seq_len: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.95, rng.integers(20, 301, n),
                    rng.integers(seq_len // 2, seq_len + 1, n)).astype(np.int64)


MIXES = {"sft": sft_lengths, "short+long": short_and_long_lengths}


def timed(pack, lengths: np.ndarray, seq_len: int, repeats: int):
    seconds, plan = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        plan = pack(lengths, seq_len)
        seconds.append(time.perf_counter() - start)
    return plan, statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    command = [os.path.relpath(sys.executable), os.path.relpath(__file__), *sys.argv[1:]]
    omp = os.environ.get("OMP_NUM_THREADS")
    print(("" if omp is None else f"OMP_NUM_THREADS={omp} ") + shlex.join(command))
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} cpus; {args.records:,} records per case; time = median of "
          f"{args.repeats} runs")
    print()
    header = (f"{'mix':<11} {'seq_len':>7} {'packer':<7} {'rows':>9} {'lower bd':>9} "
              f"{'rows/lb':>8} {'effic.':>7} {'seconds':>8}")
    print(header)
    print("-" * len(header))
    ratios = []
    for mix, make in MIXES.items():
        for seq_len in args.seq_lens:
            lengths = make(np.random.default_rng(args.seed), args.records, seq_len)
            results = {}
            for name, pack in (("bfd", pack_best_fit_decreasing), ("next", pack_next_fit)):
                plan, seconds = timed(pack, lengths, seq_len, args.repeats)
                results[name] = (plan, seconds)
                print(f"{mix:<11} {seq_len:>7} {name:<7} {plan.rows:>9,} "
                      f"{plan.lower_bound:>9,} {plan.rows / plan.lower_bound:>8.4f} "
                      f"{plan.efficiency:>7.2%} {seconds:>8.3f}")
            (bfd, bfd_s), (nf, nf_s) = results["bfd"], results["next"]
            p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
            ratios.append(f"{mix:<11} {seq_len:>7}  lengths mean {lengths.mean():.0f} "
                          f"p50 {p50:.0f} p90 {p90:.0f} p99 {p99:.0f} max {lengths.max()}  |  "
                          f"bfd/next rows {bfd.rows / nf.rows:.4f} "
                          f"({nf.rows - bfd.rows:,} fewer), time {bfd_s / nf_s:.2f}x")
    print()
    print("BFD vs next-fit (rows: fewer is better; time: BFD seconds / next-fit seconds)")
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
