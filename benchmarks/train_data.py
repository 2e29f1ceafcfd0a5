"""Data-loading time per training step against the step time, bundled trainer, `tiny` model on CPU.

Each dataset mode is a real subprocess of the training entry (``python -m trainer_bridge.train``,
fresh process, its own free MASTER_PORT) with the same settings:
``--model-size tiny --seq-length 256 --micro-batch-size 4 --global-batch-size 8 --lr 1e-3
--min-lr 1e-4 --train-iters N --eval-interval 100000 --log-interval 1`` (2 micro-batches per step),
and:

1. ``pretrain``: pretrain idxmap, ``--data-path P_text_document`` (built from
   dataprep/samples/pretrain_sample.jsonl: 78 documents, ~4 k tokens, so samples wrap around epochs);
2. ``sft-packed``: SFT idxmap, ``--sft --sft-packing --data-path P``;
3. ``sft-padded``: SFT idxmap, ``--sft --pad-length 256 --data-path P``;
4. ``raw-json``: ``--sft --dataset-type raw --tokenizer DeepSeekV2Tokenizer --data-path
   dataprep/samples/alpaca_zh-sample.json dataprep/samples/chat_sample.jsonl`` (padded to 256).

The SFT idxmap is built from both SFT sample files (90 records), the same records the raw mode
reads; both idxmaps with ``dataprep pretrain|sft ... --tokenizer DeepSeekV2Tokenizer --workers 1
--no-progress`` (the two at once) into a temporary directory (removed at the end). The training
runs go one after the other, never two at once.

The trainer logs, per iteration, ``step S ms`` (the whole optimizer step: zero-grad, the
forward-backward schedule over both micro-batches, optimizer and scheduler) and ``data D ms``
(the time spent inside the step waiting in ``next(data_iterator)``: sample reads and collate,
num_workers=0, so synchronous). The first ``--warmup`` iterations (3) are skipped; per mode:
median step ms, median data ms, data share = median data / median step, median tokens/s as
logged (global batch x 256 positions, padding included), first and last loss (must fall), and
the wall time of the whole subprocess including start-up (imports, model, datasets). The mean
data ms is shown too: raw mode tokenizes a record on its first read and keeps it (the 90 records
are all cached after ~11 steps), which the median hides.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_data.py [--train-iters 30] \
        [--modes pretrain sft-packed sft-padded raw-json] [--warmup 3]

A tiny step takes ~2.6 s on one core (its output layer has the 129,280-entry DeepSeek vocabulary:
2 x 1024 positions x 129,280 logits per step), so the default run takes ~6 minutes;
``--train-iters 20`` takes ~4.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import resource
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SAMPLES = os.path.join(ROOT, "dataprep", "samples")
TOKENIZER = "DeepSeekV2Tokenizer"
SEQ = 256
COMMON = ["--model-size", "tiny", "--seq-length", str(SEQ), "--micro-batch-size", "4", "--global-batch-size", "8",
          "--lr", "1e-3", "--min-lr", "1e-4", "--eval-interval", "100000", "--log-interval", "1"]
LINE = re.compile(r"iteration\s+(\d+)/(\d+) \| lm loss (\S+) \| lr \S+ \| grad norm \S+ \| ([0-9,.]+) tokens/s \| "
                  r"step ([0-9.]+) ms, data ([0-9.]+) ms")
MODES = ("pretrain", "sft-packed", "sft-padded", "raw-json")


def env() -> dict:
    pythonpath = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", PYTHONPATH=os.pathsep.join(pythonpath))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_data(work: str) -> dict:
    """The two idxmaps, with the dataprep CLI in subprocesses; prefixes and build seconds."""
    jobs = {
        "pretrain": (["pretrain", "--input", os.path.join(SAMPLES, "pretrain_sample.jsonl")],
                     os.path.join(work, "pre"), os.path.join(work, "pre_text_document")),
        "sft": (["sft", "--input", os.path.join(SAMPLES, "alpaca_zh-sample.json"),
                 os.path.join(SAMPLES, "chat_sample.jsonl")], os.path.join(work, "sft"), os.path.join(work, "sft")),
    }
    t0, procs, out = time.perf_counter(), {}, {}
    for name, (args, prefix, _) in jobs.items():  # both at once: two cores, one worker each
        cmd = [sys.executable, "-m", "dataprep.cli", *args, "--tokenizer", TOKENIZER, "--output-prefix", prefix,
               "--workers", "1", "--no-progress"]
        procs[name] = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for name, proc in procs.items():
        text = proc.communicate(timeout=600)[0]
        if proc.returncode != 0:
            raise SystemExit(f"dataprep {name} failed:\n{text[-4000:]}")
        summary = " ".join(" ".join(line.split()) for line in text.splitlines()
                           if line.strip().startswith(("text", "tokens")))
        out[name] = (jobs[name][2], time.perf_counter() - t0, summary)
    return out


def mode_args(mode: str, data: dict) -> list[str]:
    if mode == "pretrain":
        return ["--data-path", data["pretrain"][0]]
    if mode == "sft-packed":
        return ["--sft", "--sft-packing", "--data-path", data["sft"][0]]
    if mode == "sft-padded":
        return ["--sft", "--pad-length", str(SEQ), "--data-path", data["sft"][0]]
    return ["--sft", "--dataset-type", "raw", "--tokenizer", TOKENIZER, "--data-path",
            os.path.join(SAMPLES, "alpaca_zh-sample.json"), os.path.join(SAMPLES, "chat_sample.jsonl")]


def run_mode(mode: str, data: dict, iters: int, warmup: int) -> dict:
    cmd = [sys.executable, "-m", "trainer_bridge.train", *COMMON, "--train-iters", str(iters), *mode_args(mode, data)]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # a free port of our own: the trainer's default (29512) may be taken by another run on the machine
    done = subprocess.run(cmd, check=False, env=dict(env(), MASTER_PORT=str(free_port())), capture_output=True,
                          text=True, timeout=3600, cwd=ROOT)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{mode} failed ({shlex.join(cmd)}):\n{done.stderr[-4000:]}")
    rows = [(int(m[1]), float(m[3]), float(m[4].replace(",", "")), float(m[5]), float(m[6]))
            for m in LINE.finditer(done.stdout)]
    if [r[0] for r in rows] != list(range(1, iters + 1)):
        raise SystemExit(f"{mode}: expected iterations 1..{iters}, parsed {[r[0] for r in rows]}\n"
                         f"{done.stdout[-3000:]}")
    kept = rows[warmup:]
    step = statistics.median(r[3] for r in kept)
    data_ms = statistics.median(r[4] for r in kept)
    return {
        "mode": mode, "cmd": cmd, "wall": wall,
        "cpu": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "step": step, "data": data_ms, "data_max": max(r[4] for r in kept),
        "data_mean": statistics.fmean(r[4] for r in kept), "share": data_ms / step,
        "tokens_s": statistics.median(r[2] for r in kept), "loss_first": rows[0][1], "loss_last": rows[-1][1],
        "startup": wall - sum(r[3] for r in rows) / 1e3, "kept": len(kept),
        "note": " ".join(line for line in done.stdout.splitlines() if line.startswith("note:")),
    }


def shown(cmd: list[str], work: str) -> str:
    """The command as run, shorter: python for the interpreter, paths relative to the repository, $TMP."""
    parts = ["python"] + [c.replace(work, "$TMP").replace(ROOT + os.sep, "") for c in cmd[1:]]
    return " ".join(parts)


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="first iterations left out of the medians")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    if args.train_iters <= args.warmup:
        parser.error(f"--train-iters {args.train_iters} must exceed --warmup {args.warmup}")

    command = [os.path.relpath(sys.executable), os.path.relpath(__file__), *sys.argv[1:]]
    prefix = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "HF_HUB_OFFLINE") if k in os.environ)
    print((prefix + " " if prefix else "") + shlex.join(command))
    import numpy
    import torch

    print(f"python {platform.python_version()}, torch {torch.__version__}, megatron-core {version('megatron-core')}, "
          f"numpy {numpy.__version__}, megatron-dataprep {version('megatron-dataprep')}, "
          f"fastokens {version('fastokens')}; {platform.machine()}, {os.cpu_count()} cpus "
          f"({len(os.sched_getaffinity(0))} usable), OMP_NUM_THREADS={env()['OMP_NUM_THREADS']}, "
          f"torch threads {torch.get_num_threads()}, CUDA {'yes' if torch.cuda.is_available() else 'no'}")
    print("load average at start (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"trainer: {' '.join(COMMON)} --train-iters {args.train_iters}; medians over iterations "
          f"{args.warmup + 1}..{args.train_iters} ({args.train_iters - args.warmup} steps)")
    print()

    started = time.perf_counter()
    work = tempfile.mkdtemp(prefix="train-data-bench-")
    results = []
    try:
        data = build_data(work)
        for name, (path, seconds, summary) in data.items():
            print(f"data {name:<8}: $TMP/{os.path.relpath(path, work)}, built in {seconds:.1f} s ({summary})")
        print()
        for mode in args.modes:
            r = run_mode(mode, data, args.train_iters, args.warmup)
            results.append(r)
            falls = "falls" if r["loss_last"] < r["loss_first"] else "DOES NOT FALL"
            print(f"{mode:<10}: step {r['step']:.0f} ms, data {r['data']:.2f} ms (mean {r['data_mean']:.2f}, "
                  f"max {r['data_max']:.1f}), "
                  f"share {r['share']:.3%}, {r['tokens_s']:,.0f} tokens/s, loss {r['loss_first']:.4f} -> "
                  f"{r['loss_last']:.4f} ({falls}), wall {r['wall']:.1f} s (start-up and exit "
                  f"{r['startup']:.1f} s), cpu {r['cpu']:.1f} s", flush=True)
            print(f"            {shown(r['cmd'], work)}")
            if r["note"]:
                print(f"            {r['note']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    header = (f"{'mode':<10} {'step ms':>8} {'data ms':>8} {'(mean)':>6} {'data %':>7} {'tokens/s':>9} "
              f"{'loss first':>10} {'loss last':>9} {'falls':>5} {'wall s':>7} {'start-up s':>10}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['mode']:<10} {r['step']:>8.0f} {r['data']:>8.2f} {r['data_mean']:>6.2f} {r['share']:>7.3%} "
              f"{r['tokens_s']:>9,.0f} "
              f"{r['loss_first']:>10.4f} {r['loss_last']:>9.4f} "
              f"{'yes' if r['loss_last'] < r['loss_first'] else 'NO':>5} "
              f"{r['wall']:>7.1f} {r['startup']:>10.1f}")
    print()
    print("data / step (median data ms / median step ms), and data against the pretrain idxmap's")
    base = next((r for r in results if r["mode"] == "pretrain"), None)
    for r in results:
        against = f", data {r['data'] / base['data']:.2f}x pretrain's" if base and base["data"] else ""
        print(f"{r['mode']:<10} {r['share']:.5f}  (the step is {r['step'] / r['data']:,.0f}x the data wait){against}")
    print()
    print("load average at end (1/5/15 min): " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    print(f"total wall time {time.perf_counter() - started:.1f} s (data build + {len(results)} training runs)")
    if any(r["loss_last"] >= r["loss_first"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
