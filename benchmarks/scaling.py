"""Scaling and resuming of `dataprep pretrain`: workers, the Ray engine, and a crash at 50%.

On one corpus (benchmarks/corpus.py: real prose, Chinese and code from this machine) with the
bundled DeepSeek tokenizer, each run a fresh `dataprep pretrain` process, end-to-end wall time:

1. local engine, 1 worker and 2 workers: the scaling from 1 to 2 cores (the script also
   measures how many cores two CPU-bound processes really get here);
2. Ray engine on a local Ray instance with 2 CPUs (started by the run, counted in its time)
   against the local engine with 2 workers: the Ray overhead;
3. resume: a run killed with SIGKILL right after half of its shards are marked done
   (DATAPREP_FAULT), then the same command again: the killed run's time, the resumed run's
   time, and their sum against one uninterrupted run (the cost of the crash);
4. the merge: the seconds the final concatenation of the shards takes (from --keep-work
   timings: the run with every shard already done only merges);
5. every output is compared byte for byte with the uninterrupted local run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/scaling.py [--size-mb 1000] [--shard-mb 64]

Figures also go to benchmarks/out/scaling.json.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from pretrain_throughput import (MB, OUT_DIR, PY, effective_cores, ensure_corpus, parse_summary,  # noqa: E402
                                 run_measured)


# `dataprep` with the main process's own CPU time printed at the end (the workers excluded): the
# part of the work that does not spread over cores bounds a node's throughput.
_MAIN = ("import resource, sys\nfrom dataprep.cli import main\nrc = main(sys.argv[1:])\n"
         "r = resource.getrusage(resource.RUSAGE_SELF)\nprint(f'main-process-cpu {r.ru_utime + r.ru_stime:.3f}')\n"
         "sys.exit(rc)\n")


def pretrain_cmd(corpus: str, prefix: str, workers: int, engine: str, shard_mb: float, *extra: str) -> list[str]:
    return [PY, "-c", _MAIN, "pretrain", "--input", corpus, "--output-prefix", prefix,
            "--tokenizer", "DeepSeekV2Tokenizer", "--workers", str(workers), "--engine", engine,
            "--shard-bytes", str(int(shard_mb * (1 << 20))), "--no-progress", *extra]


def same_output(a: str, b: str) -> bool:
    return all(filecmp.cmp(f"{a}_text_document{ext}", f"{b}_text_document{ext}", shallow=False)
               for ext in (".bin", ".idx"))


def _ray_start_seconds(env: dict) -> float:
    """Seconds `ray.init(num_cpus=2)` takes in a fresh process (import excluded)."""
    import subprocess

    code = ("import time, logging, ray; t = time.perf_counter(); "
            "ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING); "
            "print(time.perf_counter() - t); ray.shutdown()")
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=float, default=1000)
    parser.add_argument("--shard-mb", type=float, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    corpus, _ = ensure_corpus(args.size_mb, args.seed)
    size = os.path.getsize(corpus)
    sys.path.insert(0, os.path.dirname(HERE))
    from dataprep.runs.shards import plan_shards

    n_shards = len(plan_shards([corpus], int(args.shard_mb * (1 << 20))))
    cores = effective_cores(2)
    print(f"corpus {corpus}: {size / MB:,.0f} MB, {n_shards} shards of {args.shard_mb:g} MiB; "
          f"two CPU-bound processes get {cores:.2f} cores here", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               RAY_DEDUP_LOGS="0")
    out = tempfile.mkdtemp(prefix="dataprep-scaling-", dir=os.path.join(HERE, "data"))
    figures: dict = {"corpus_mb": size / MB, "shards": n_shards, "shard_mb": args.shard_mb,
                     "effective_cores_2": cores}
    log = os.path.join(out, "run.log")

    def timed(name: str, cmd: list[str], **extra_env: str) -> dict:
        result = run_measured(cmd, {**env, **extra_env}, log, sample_rss=False)
        summary = parse_summary(result["stdout"])
        main_cpu = re.search(r"main-process-cpu ([\d.]+)", result["stdout"])
        if main_cpu:
            summary["main_process_cpu_s"] = float(main_cpu.group(1))
        steady = summary.get("steady_s")
        print(f"  {name:<34} {result['wall']:7.2f} s  {size / MB / result['wall']:7.1f} MB/s"
              + (f"  | after start-up ({summary['startup_s']:.1f} s): {steady:6.2f} s "
                 f"{size / MB / steady:7.1f} MB/s" if steady else ""), flush=True)
        figures[name] = {"wall_s": round(result["wall"], 3), **summary}
        return result

    try:
        ref = os.path.join(out, "local2")
        timed("local, 1 worker", pretrain_cmd(corpus, os.path.join(out, "local1"), 1, "local", args.shard_mb))
        timed("local, 2 workers", pretrain_cmd(corpus, ref, 2, "local", args.shard_mb))
        timed("ray, 2 CPUs (local instance)", pretrain_cmd(corpus, os.path.join(out, "ray2"), 2, "ray", args.shard_mb))

        half = n_shards // 2 - 1
        crash = os.path.join(out, "crash")
        cmd = pretrain_cmd(corpus, crash, 2, "local", args.shard_mb, "--keep-work")
        killed_t0 = time.perf_counter()
        import subprocess

        killed = subprocess.run(cmd, env={**env, "DATAPREP_FAULT": f"shard-done:{half}"},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed_s = time.perf_counter() - killed_t0
        if killed.returncode != -9:
            raise SystemExit(f"the crash run was not killed (rc={killed.returncode})")
        print(f"  {'killed after shard ' + str(half + 1) + ' of ' + str(n_shards):<34} {killed_s:7.2f} s", flush=True)
        figures["killed_s"] = round(killed_s, 3)
        timed("resumed (same command)", cmd)
        timed("merge only (all shards done)", cmd)

        ray_start = _ray_start_seconds(env)
        figures["ray_start_s"] = round(ray_start, 3)
        print(f"  {'(starting a 2-CPU Ray instance alone)':<34} {ray_start:7.2f} s", flush=True)
        one = figures["local, 1 worker"]["wall_s"]
        two = figures["local, 2 workers"]["wall_s"]
        ray = figures["ray, 2 CPUs (local instance)"]["wall_s"]
        resumed = figures["resumed (same command)"]["wall_s"]
        merge_only = figures["merge only (all shards done)"]
        steady_one = figures["local, 1 worker"]["steady_s"]
        steady_two = figures["local, 2 workers"]["steady_s"]
        figures.update(
            speedup_2_workers=round(one / two, 3),
            speedup_2_workers_steady=round(steady_one / steady_two, 3),
            ray_over_local_without_ray_start=round((ray - ray_start) / two, 3),
            ray_over_local=round(ray / two, 3),
            crash_total_over_uninterrupted=round((killed_s + resumed) / two, 3),
            resumed_over_uninterrupted=round(resumed / two, 3),
            merge_s=round(merge_only["wall_s"] - merge_only.get("startup_s", 0.0), 3),
            identical={name: same_output(os.path.join(out, name), ref)
                       for name in ("local1", "ray2", "crash")},
        )
        print(f"\n  2 workers / 1 worker: {figures['speedup_2_workers']:.2f}x faster end to end, "
              f"{figures['speedup_2_workers_steady']:.2f}x after start-up "
              f"(the machine gives {cores:.2f} cores to two processes)")
        print(f"  ray / local (2 CPUs): {figures['ray_over_local']:.2f}x the time; "
              f"{figures['ray_over_local_without_ray_start']:.2f}x without starting Ray")
        print(f"  crash at 50% + resume: {figures['crash_total_over_uninterrupted']:.2f}x one uninterrupted run; "
              f"the resumed run alone {figures['resumed_over_uninterrupted']:.2f}x")
        print(f"  final merge of {n_shards} shards: {figures['merge_s']:.2f} s (kernel copy, then fsync "
              f"of the whole output)")
        # A one-record run's main-process CPU is the start-up; the rest of the 2-worker run's is
        # the per-byte work that one process does for every worker (receiving, writing, merging).
        tiny = os.path.join(out, "tiny.jsonl")
        with open(tiny, "w", encoding="utf-8") as f:
            f.write('{"text": "one record"}\n')
        startup = run_measured(pretrain_cmd(tiny, os.path.join(out, "tiny"), 2, "local", args.shard_mb), env,
                               log, sample_rss=False)
        startup_cpu = float(re.search(r"main-process-cpu ([\d.]+)", startup["stdout"]).group(1))
        per_gb = (figures["local, 2 workers"]["main_process_cpu_s"] - startup_cpu) / (size / 1e9)
        figures["main_process_cpu_s_per_gb"] = round(per_gb, 3)
        figures["main_process_ceiling_mb_s"] = round(1000 / per_gb, 1)
        print(f"  main process: {per_gb:.2f} CPU s per GB of input after start-up, so one output takes "
              f"in at most ~{1000 / per_gb:,.0f} MB/s whatever the cores")
        print(f"  byte-identical to local, 2 workers: {figures['identical']}")
        os.makedirs(OUT_DIR, exist_ok=True)
        with open(os.path.join(OUT_DIR, "scaling.json"), "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
        return 0 if all(figures["identical"].values()) else 1
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
