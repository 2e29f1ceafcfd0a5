"""Throughput of `dataprep pretrain` against a classic Megatron-style baseline and the engine ceiling.

On the SAME corpus (benchmarks/corpus.py: real prose, Chinese and code from this machine), the
SAME tokenizer (the bundled DeepSeek tokenizer) and the SAME number of cores:

1. classic reference: a re-implementation shaped like Megatron-LM's classic
   tools/preprocess_data.py (multiprocessing.Pool + AutoTokenizer per worker + pool.imap over the
   raw lines, chunksize 32, + megatron-core's IndexedDatasetBuilder); end-to-end wall time of
   the subprocess;
2. dataprep: `dataprep pretrain ... --workers N --no-progress`, end-to-end wall time, its own
   summary, and whether its .bin/.idx are byte-identical to the classic reference's;
3. engine ceiling: fastokens `encode_batch_flat` over all texts already in memory (batches of
   ~4 MB of text), with
   FASTOKENS_BPE_THREADS=N (and =1), in a clean subprocess; CPU time / wall time shows the
   thread count was honoured;
4. steady state: dataprep's summary splits its run into start-up (loading the tokenizer,
   starting workers, the engine probe) and the rest; the steady-state rate is compared with the
   engine ceiling (which also excludes loading) and with the classic reference;
5. peak RSS of dataprep's whole process tree (sum of VmRSS of the main process and all its
   descendants, polled from /proc every 50 ms) and of its main process alone, per corpus size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pretrain_throughput.py [--sizes-mb 100 1000] \
        [--workers 2] [--skip-classic]

The corpus is built with benchmarks/corpus.py if missing. Figures also go to
benchmarks/out/pretrain_throughput.json. MB are 10^6 bytes of the jsonl file; tokens include
the EOD appended to each document (the engine ceiling's count adds one per document to match).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT_DIR = os.path.join(HERE, "out")
sys.path.insert(0, HERE)

MB = 1_000_000
PY = sys.executable


# ===========================================================================================
# 1. The classic reference, shaped like Megatron-LM's tools/preprocess_data.py (own code).
#    Runs in a subprocess: `pretrain_throughput.py _classic INPUT PREFIX WORKERS TOKDIR`.
# ===========================================================================================

class ClassicEncoder:
    """Per-worker state, as in the classic script: the tokenizer is a class attribute set by
    the pool initializer, and `encode` takes one raw line of the jsonl file."""

    tokenizer = None
    eod = None

    def __init__(self, tokenizer_dir: str, json_keys: tuple[str, ...] = ("text",)) -> None:
        self.tokenizer_dir = tokenizer_dir
        self.json_keys = json_keys

    def initializer(self) -> None:
        from transformers import AutoTokenizer

        ClassicEncoder.tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        ClassicEncoder.eod = ClassicEncoder.tokenizer.eos_token_id

    def encode(self, json_line: str):
        data = json.loads(json_line)
        ids, lens = {}, {}
        for key in self.json_keys:
            text = data[key]
            doc_ids = ClassicEncoder.tokenizer(text, add_special_tokens=False).input_ids
            if len(doc_ids) > 0:
                doc_ids = doc_ids + [ClassicEncoder.eod]
            ids[key] = doc_ids
            lens[key] = [len(doc_ids)]
        return ids, lens, len(json_line)


def classic_main(input_path: str, output_prefix: str, workers: int, tokenizer_dir: str) -> int:
    import multiprocessing

    import numpy
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from transformers import AutoTokenizer

    # The classic script builds the tokenizer in the main process too (vocab size, eod).
    AutoTokenizer.from_pretrained(tokenizer_dir)
    start = time.time()
    encoder = ClassicEncoder(tokenizer_dir)
    key = "text"
    bin_path, idx_path = f"{output_prefix}_{key}_document.bin", f"{output_prefix}_{key}_document.idx"
    fin = open(input_path, "r", encoding="utf-8")
    pool = multiprocessing.Pool(workers, initializer=encoder.initializer)
    encoded_docs = pool.imap(encoder.encode, fin, 32)
    builder = IndexedDatasetBuilder(bin_path, dtype=numpy.int32)
    total_bytes = 0
    docs = 0
    for i, (doc, sentence_lens, bytes_processed) in enumerate(encoded_docs, start=1):
        total_bytes += bytes_processed
        if len(doc[key]) == 0:
            continue  # skip empty documents
        builder.add_document(doc[key], sentence_lens[key])
        docs += 1
        if i % 20000 == 0:
            elapsed = time.time() - start
            print(f"processed {i} documents ({i / elapsed:.1f} docs/s, "
                  f"{total_bytes / elapsed / 1024 / 1024:.2f} MiB/s)", file=sys.stderr, flush=True)
    pool.close()
    pool.join()
    fin.close()
    builder.finalize(idx_path)
    print(json.dumps({"documents": docs}))
    return 0


# ===========================================================================================
# 3. The engine ceiling. Subprocess: `pretrain_throughput.py _engine INPUT TOKDIR`
#    (the thread count comes from the environment, FASTOKENS_BPE_THREADS).
# ===========================================================================================

def engine_main(input_path: str, tokenizer_dir: str) -> int:
    import fastokens
    import numpy as np
    from transformers import AutoTokenizer

    with open(input_path, "rb") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    engine = fastokens.Tokenizer.from_json_str(tok.backend_tokenizer.to_str())
    engine.encode_batch_flat(texts[:8])  # first-call set-up (thread pool), not timed
    # Batches of about 4 MB of text, as a user of the batch API would feed a large corpus (one call
    # over a whole GB-scale list runs at half the speed); the same unit of work as dataprep's chunks.
    batches, batch, size = [], [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= 4 << 20:
            batches.append(batch)
            batch, size = [], 0
    if batch:
        batches.append(batch)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    parts = [engine.encode_batch_flat(b) for b in batches]
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    ids = b"".join(p[0] for p in parts)
    lengths = np.concatenate([np.diff(np.frombuffer(p[1], np.uint64).astype(np.int64)) for p in parts])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    offsets = offsets.astype(np.uint64).tobytes()
    flat = np.frombuffer(ids, np.uint32)
    bounds = np.frombuffer(offsets, np.uint64).astype(np.int64)
    # Not timed: the same token stream as the idxmaps (int32, EOD after each non-empty text),
    # hashed, so the caller can check that the ceiling did exactly dataprep's work.
    keep = np.diff(bounds) > 0
    stream = np.insert(flat.astype(np.int32), bounds[1:][keep], tok.eos_token_id)
    print(json.dumps({"texts": len(texts), "text_bytes": sum(len(t.encode("utf-8")) for t in texts),
                      "ids": len(flat), "nonempty_texts": int(keep.sum()), "wall": wall, "cpu": cpu,
                      "stream_sha256": hashlib.sha256(stream.tobytes()).hexdigest(),
                      "threads_env": os.environ.get("FASTOKENS_BPE_THREADS")}))
    return 0


# ===========================================================================================
# Measuring subprocesses: wall time, CPU time, peak RSS of the process tree.
# ===========================================================================================

def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # fields after the command name (which may hold spaces and parentheses)
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(name))
    return children


def _tree(root: int) -> list[int]:
    children = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class RssSampler(threading.Thread):
    """Polls the VmRSS of a process and all its descendants; keeps the max of the sum and of
    the root alone."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_tree_kb = self.peak_main_kb = self.max_processes = self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            pids = _tree(self.pid)
            sizes = [_rss_kb(p) for p in pids]
            self.peak_tree_kb = max(self.peak_tree_kb, sum(sizes))
            self.peak_main_kb = max(self.peak_main_kb, sizes[0])
            self.max_processes = max(self.max_processes, sum(1 for s in sizes if s))
            self.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def run_measured(cmd: list[str], env: dict[str, str], log_path: str, sample_rss: bool) -> dict:
    """Run cmd, return wall/cpu seconds, stdout, rc and (optionally) peak RSS figures."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, cwd=ROOT)
        sampler = RssSampler(proc.pid) if sample_rss else None
        if sampler:
            sampler.start()
        stdout, _ = proc.communicate()
        wall = time.perf_counter() - t0
        if sampler:
            sampler.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"cmd": cmd, "rc": proc.returncode, "wall": wall, "cpu": cpu,
           "stdout": stdout.decode("utf-8", "replace"), "log": log_path}
    if sampler:
        out.update(peak_tree_mb=sampler.peak_tree_kb * 1024 / MB, peak_main_mb=sampler.peak_main_kb * 1024 / MB,
                   max_processes=sampler.max_processes, rss_samples=sampler.samples)
    if proc.returncode != 0:
        with open(log_path, "rb") as f:
            tail = f.read()[-3000:].decode("utf-8", "replace")
        raise SystemExit(f"command failed (rc={proc.returncode}): {shlex.join(cmd)}\n{tail}")
    return out


def command_line(cmd: list[str], env_extra: dict[str, str]) -> str:
    prefix = " ".join(f"{k}={shlex.quote(v)}" for k, v in env_extra.items())
    return (prefix + " " if prefix else "") + shlex.join(cmd)


# ===========================================================================================
# The benchmark.
# ===========================================================================================

_SPIN = "x = 0\nfor i in range(12_000_000): x += i\n"


def effective_cores(n: int) -> float:
    """CPU seconds delivered per wall second to n concurrent CPU-bound processes: n on an idle
    machine with n free cores, less when the (virtual) CPUs are shared or throttled."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([PY, "-S", "-c", _SPIN]) for _ in range(n)]
    for proc in procs:
        proc.wait()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) / wall


def ensure_corpus(size_mb: float, seed: int) -> tuple[str, dict]:
    import corpus

    path = corpus.corpus_path(size_mb, seed)
    if not (os.path.exists(path) and os.path.exists(path + ".meta.json")):
        print(f"building corpus {path} ...", flush=True)
        subprocess.run([PY, os.path.join(HERE, "corpus.py"), "--size-mb", f"{size_mb:g}",
                        "--seed", str(seed)], check=True, cwd=ROOT)
    with open(path + ".meta.json", encoding="utf-8") as f:
        meta = json.load(f)
    # Warm the page cache so no run pays for the first read from disk.
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass
    return path, meta


def parse_summary(stdout: str) -> dict:
    s: dict = {}
    m = re.search(r"done in ([\d.]+) s with the (\S+) engine on (\d+) worker", stdout)
    if m:
        s.update(seconds=float(m.group(1)), engine=m.group(2), workers=int(m.group(3)))
    m = re.search(r"records\s+read ([\d,]+) = written ([\d,]+) \+ rejected ([\d,]+) \+ empty ([\d,]+)", stdout)
    if m:
        s.update(zip(("read", "written", "rejected", "empty"), (int(g.replace(",", "")) for g in m.groups())))
    m = re.search(r"documents ([\d,]+)\s+tokens ([\d,]+)", stdout)
    if m:
        s.update(documents=int(m.group(1).replace(",", "")), tokens=int(m.group(2).replace(",", "")))
    m = re.search(r"start-up ([\d.]+) s, then ([\d.]+) s at", stdout)
    if m:
        s.update(startup_s=float(m.group(1)), steady_s=float(m.group(2)))
    m = re.search(r"\(([\d.,]+) MB/s, ([\d,]+) docs/s, ([\d.,]+) M tokens/s\)", stdout)
    if m:
        s.update(own_mb_s=float(m.group(1).replace(",", "")), own_mtok_s=float(m.group(3).replace(",", "")))
    return s


def idxmap_tokens(prefix: str) -> tuple[int, int]:
    """(documents, tokens) of an idxmap, from its .idx header and .bin size (int32 tokens)."""
    import struct

    with open(prefix + ".idx", "rb") as f:
        magic, version, code, seqs, docs = struct.unpack("<9sQBQQ", f.read(34))
    itemsize = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}[code]
    return docs - 1, os.path.getsize(prefix + ".bin") // itemsize


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            h.update(block)
    return h.hexdigest()


def _first_difference(a: str, b: str) -> int | None:
    """Byte offset of the first difference between two files, or None if identical."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while True:
            ba, bb = fa.read(1 << 20), fb.read(1 << 20)
            if ba != bb:
                n = min(len(ba), len(bb))
                for i in range(n):
                    if ba[i] != bb[i]:
                        return offset + i
                return offset + n
            if not ba:
                return None
            offset += len(ba)


def compare_outputs(classic_prefix: str, dataprep_prefix: str) -> dict:
    result = {}
    for ext in (".bin", ".idx"):
        a, b = classic_prefix + ext, dataprep_prefix + ext
        diff = _first_difference(a, b)
        result[ext] = {"identical": diff is None, "classic_bytes": os.path.getsize(a),
                       "dataprep_bytes": os.path.getsize(b), "first_difference_at": diff,
                       "sha256": _sha256(b) if diff is None else None}
    result["identical"] = all(result[e]["identical"] for e in (".bin", ".idx"))
    return result


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FASTOKENS_", "RAYON_")) and k != "TOKENIZERS_PARALLELISM"}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    env.update(extra)
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[100],
                   help="corpus sizes; the first is used for every comparison, the others for RSS flatness")
    p.add_argument("--workers", type=int, default=2, help="cores: classic pool size, dataprep --workers, engine threads")
    p.add_argument("--skip-classic", action="store_true", help="no classic reference (and no byte comparison)")
    p.add_argument("--seed", type=int, default=0, help="corpus seed")
    args = p.parse_args(argv)

    from dataprep.tokenization.tokenizers import bundled_tokenizer_dir

    tokdir = bundled_tokenizer_dir()
    os.makedirs(OUT_DIR, exist_ok=True)
    workers = args.workers
    dataprep_bin = os.path.join(os.path.dirname(PY), "dataprep")
    dataprep_cmd = [dataprep_bin] if os.path.exists(dataprep_bin) else [PY, "-m", "dataprep.cli"]
    base_env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()},
                    "tokenizer_dir": tokdir, "workers": workers, "sizes_mb": args.sizes_mb,
                    "commands": {}, "runs": {}}
    commands = report["commands"]

    corpora = {}
    for size in args.sizes_mb:
        corpora[size] = ensure_corpus(size, args.seed)
    size0 = args.sizes_mb[0]
    corpus0, meta0 = corpora[size0]
    report["effective_cores_before"] = effective_cores(workers)
    print(f"effective cores for {workers} CPU-bound processes: {report['effective_cores_before']:.2f}", flush=True)
    bytes0 = os.path.getsize(corpus0)
    report["corpora"] = {f"{s:g}": {"path": c, "bytes": os.path.getsize(c), "unique_fraction": m["unique_fraction"],
                                    "mix": {k: v["bytes"] / m["bytes"] for k, v in m["by_kind"].items()}}
                         for s, (c, m) in corpora.items()}

    def dataprep_run(inp: str, prefix: str, tag: str) -> dict:
        cmd = dataprep_cmd + ["pretrain", "--input", inp, "--tokenizer", "DeepSeekV2Tokenizer",
                              "--output-prefix", prefix, "--workers", str(workers), "--no-progress"]
        commands[tag] = command_line(cmd, base_env)
        print(f"[{tag}] {commands[tag]}", flush=True)
        r = run_measured(cmd, clean_env(), os.path.join(OUT_DIR, f"{tag}.log"), sample_rss=True)
        r["summary"] = parse_summary(r["stdout"])
        with open(r["log"], encoding="utf-8", errors="replace") as f:
            r["stderr_notes"] = [l.rstrip() for l in f if l.strip()]
        print(f"    {r['wall']:.1f} s wall, {r['cpu']:.1f} s cpu, peak RSS tree {r['peak_tree_mb']:.0f} MB "
              f"(main {r['peak_main_mb']:.0f} MB)", flush=True)
        return r

    # -- classic reference on the first size --------------------------------------------------
    classic_prefix = os.path.join(OUT_DIR, f"classic_{size0:g}mb")
    if not args.skip_classic:
        cmd = [PY, os.path.abspath(__file__), "_classic", corpus0, classic_prefix, str(workers), tokdir]
        commands["classic"] = command_line(cmd, base_env)
        print(f"[classic] {commands['classic']}", flush=True)
        r = run_measured(cmd, clean_env(), os.path.join(OUT_DIR, "classic.log"), sample_rss=True)
        docs, tokens = idxmap_tokens(classic_prefix + "_text_document")
        r.update(documents=docs, tokens=tokens)
        print(f"    {r['wall']:.1f} s wall, {r['cpu']:.1f} s cpu, {tokens:,} tokens", flush=True)
        report["runs"]["classic"] = r

    # -- start-up time: the same command on a 1-record input -------------------------------
    tiny = os.path.join(OUT_DIR, "tiny_1record.jsonl")
    with open(corpus0, "rb") as f, open(tiny, "wb") as g:
        g.write(f.readline())
    startup = dataprep_run(tiny, os.path.join(OUT_DIR, "tiny_dataprep"), "dataprep_startup_1record")
    report["runs"]["dataprep_startup"] = startup

    # -- dataprep on every size ---------------------------------------------------------------
    for size in args.sizes_mb:
        path, _ = corpora[size]
        r = dataprep_run(path, os.path.join(OUT_DIR, f"dataprep_{size:g}mb"), f"dataprep_{size:g}mb")
        r["bytes"] = os.path.getsize(path)
        docs, tokens = idxmap_tokens(os.path.join(OUT_DIR, f"dataprep_{size:g}mb_text_document"))
        r.update(documents=docs, tokens=tokens)
        report["runs"][f"dataprep_{size:g}mb"] = r

    if not args.skip_classic:
        cmp = compare_outputs(classic_prefix + "_text_document",
                              os.path.join(OUT_DIR, f"dataprep_{size0:g}mb_text_document"))
        report["byte_comparison"] = cmp
        print(f"    classic vs dataprep outputs identical: {cmp['identical']}", flush=True)

    # -- engine ceiling on the first size (1 and N threads) and on the largest (N threads) -----
    big_size = max(args.sizes_mb)
    plan = [(threads, size0) for threads in sorted({workers, 1}, reverse=True)]
    if big_size != size0:
        plan.append((workers, big_size))
    for threads, size in plan:
        corpus = corpora[size][0]
        cmd = [PY, os.path.abspath(__file__), "_engine", corpus, tokdir]
        extra = {"FASTOKENS_BPE_THREADS": str(threads)}
        tag = f"engine_{threads}thread" + ("" if size == size0 else f"_{size:g}mb")
        commands[tag] = command_line(cmd, {**base_env, **extra})
        print(f"[{tag}] {commands[tag]}", flush=True)
        r = run_measured(cmd, clean_env(**extra), os.path.join(OUT_DIR, f"{tag}.log"), sample_rss=False)
        r["result"] = json.loads(r["stdout"].strip().splitlines()[-1])
        e = r["result"]
        dp_bin = os.path.join(OUT_DIR, f"dataprep_{size:g}mb_text_document.bin")
        e["stream_matches_dataprep_bin"] = e["stream_sha256"] == _sha256(dp_bin)
        print(f"    encode {e['wall']:.2f} s wall, {e['cpu']:.2f} s cpu (cpu/wall {e['cpu'] / e['wall']:.2f})",
              flush=True)
        report["runs"][tag] = r

    report["effective_cores_after"] = effective_cores(workers)

    # -- the table ---------------------------------------------------------------------------
    print_table(report, size0, bytes0, meta0, workers)
    with open(os.path.join(OUT_DIR, "pretrain_throughput.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"\nfigures written to {os.path.relpath(os.path.join(OUT_DIR, 'pretrain_throughput.json'), ROOT)}")
    return 0


def print_table(report: dict, size0: float, bytes0: int, meta0: dict, workers: int) -> None:
    runs = report["runs"]
    dp = runs[f"dataprep_{size0:g}mb"]
    tokens = dp["tokens"]
    startup = runs["dataprep_startup"]["wall"]
    rows = []  # (name, wall s, cpu s, MB/s, tokens/s)

    def row(name, wall, cpu, n_tokens, n_bytes=bytes0):
        rows.append((name, wall, cpu, n_bytes / wall / MB, n_tokens / wall))
        return n_tokens / wall

    classic = runs.get("classic")
    if classic:
        classic_tps = row(f"classic reference (Pool({workers}) + AutoTokenizer)", classic["wall"], classic["cpu"],
                          classic["tokens"])
    dp_tps = row(f"dataprep pretrain --workers {workers} ({dp['summary'].get('engine', '?')})",
                 dp["wall"], dp["cpu"], tokens)
    # dataprep times its own start-up (tokenizer load, workers, probe) and the rest in the same run
    steady_wall = dp["summary"]["steady_s"]
    steady_tps = row(f"dataprep steady state (its summary: after {dp['summary']['startup_s']:.1f} s start-up)",
                     steady_wall, None, tokens)
    others = [k for k in runs if k.startswith("dataprep_") and k.endswith("mb") and k != f"dataprep_{size0:g}mb"]
    big = max(others, key=lambda k: runs[k]["bytes"]) if others else None
    diff_tps = None
    big_steady_tps = None
    for key in others:
        r = runs[key]
        row(f"dataprep pretrain --workers {workers}, {r['bytes'] / MB:,.0f} MB corpus", r["wall"], r["cpu"],
            r["tokens"], r["bytes"])
        if key == big:
            big_steady_tps = row(f"dataprep steady state, {r['bytes'] / MB:,.0f} MB (after "
                                 f"{r['summary']['startup_s']:.1f} s start-up)", r["summary"]["steady_s"], None,
                                 r["tokens"], r["bytes"])
    if big:
        r = runs[big]
        d_wall, d_tokens, d_bytes = r["wall"] - dp["wall"], r["tokens"] - tokens, r["bytes"] - bytes0
        if d_wall > 0:
            diff_tps = row(f"dataprep marginal rate ({big.split('_')[1]} minus {size0:g}mb run)",
                           d_wall, r["cpu"] - dp["cpu"], d_tokens, d_bytes)
    eng = {}
    eng_big = None
    for key in sorted(k for k in runs if k.startswith("engine_")):
        e = runs[key]["result"]
        n = int(key.split("_")[1].replace("thread", ""))
        if key.endswith("mb"):
            eng_big = row(f"engine ceiling: fastokens encode_batch_flat, {n} thread(s), "
                          f"{e['text_bytes'] / MB:,.0f} MB of text", e["wall"], e["cpu"],
                          e["ids"] + e["nonempty_texts"], runs[big]["bytes"] if big else bytes0)
            continue
        eng[n] = row(f"engine ceiling: fastokens encode_batch_flat, {n} thread(s)", e["wall"], e["cpu"],
                     e["ids"] + e["nonempty_texts"])
    report["engine_cpu_over_wall"] = {n: runs[f"engine_{n}thread"]["result"]["cpu"] /
                                      runs[f"engine_{n}thread"]["result"]["wall"] for n in eng}

    mix = ", ".join(f"{k} {v['bytes'] / meta0['bytes']:.0%}" for k, v in meta0["by_kind"].items())
    print()
    print(f"corpus {os.path.relpath(meta0['path'], ROOT)}: {bytes0 / MB:,.1f} MB, {meta0['documents']:,} documents "
          f"({mix}; unique {meta0['unique_fraction']:.0%}); {tokens:,} tokens incl. EOD; "
          f"tokenizer DeepSeekV2 (bundled); {workers} cores of {os.cpu_count()}")
    print(f"effective cores measured for {workers} concurrent CPU-bound processes: "
          f"{report['effective_cores_before']:.2f} before the runs, {report['effective_cores_after']:.2f} after"
          + ("  (WARNING: the CPUs are shared or throttled; wall times are inflated)"
             if min(report["effective_cores_before"], report["effective_cores_after"]) < 0.85 * workers else ""))
    print()
    w = max(len(r[0]) for r in rows)
    print(f"{'run':<{w}}  {'wall s':>8}  {'cpu s':>7}  {'MB/s':>7}  {'M tokens/s':>10}")
    print("-" * (w + 42))
    for name, wall, cpu, mbs, tps in rows:
        cpu_s = f"{cpu:7.1f}" if cpu is not None else f"{'':>7}"
        print(f"{name:<{w}}  {wall:8.2f}  {cpu_s}  {mbs:7.1f}  {tps / 1e6:10.3f}")
    print()
    ratios = {}
    if classic:
        ratios[f"dataprep / classic (tokens/s, end to end), {size0:g} MB"] = (dp_tps / classic_tps, "")
        ratios[f"dataprep steady state / classic (tokens/s), {size0:g} MB"] = (steady_tps / classic_tps, ">= 20x")
        if big:
            big_tps = runs[big]["tokens"] / runs[big]["wall"]
            ratios[f"dataprep {big.split('_')[1]} end to end / classic {size0:g}mb (tokens/s)"] = (
                big_tps / classic_tps, ">= 20x")
    if workers in eng:
        ratios[f"dataprep end to end / engine ceiling ({workers} threads)"] = (dp_tps / eng[workers], "")
        ratios[f"dataprep steady state / engine ceiling ({workers} threads)"] = (steady_tps / eng[workers],
                                                                                 ">= 0.90")
        if big_steady_tps and eng_big:
            ratios[f"dataprep steady state / engine ceiling, {big.split('_')[1]}"] = (big_steady_tps / eng_big,
                                                                                     ">= 0.90")
        if diff_tps:
            ratios[f"dataprep marginal rate / engine ceiling ({workers} threads)"] = (diff_tps / eng[workers], "")
    if 1 in eng and workers in eng and workers != 1:
        ratios[f"engine {workers} threads / 1 thread"] = (eng[workers] / eng[1], "")
    for name, (value, target) in ratios.items():
        verdict = ""
        if target:
            goal = float(target.strip(">= x"))
            verdict = f"  (target {target}: {'met' if value >= goal else 'NOT met'})"
        print(f"{name:<60} {value:8.2f}{verdict}")
    report["ratios"] = {k: v for k, (v, _) in ratios.items()}
    for n, cw in sorted(report["engine_cpu_over_wall"].items()):
        print(f"{f'engine cpu/wall with FASTOKENS_BPE_THREADS={n}':<60} {cw:8.2f}")
    if "byte_comparison" in report:
        c = report["byte_comparison"]
        detail = "" if c["identical"] else "  " + "; ".join(
            f"{e}: {c[e]['classic_bytes']:,} vs {c[e]['dataprep_bytes']:,} bytes, first difference at byte "
            f"{c[e]['first_difference_at']}" for e in (".bin", ".idx") if not c[e]["identical"])
        print(f"{'.bin/.idx byte-identical to the classic reference':<60} {'yes' if c['identical'] else 'NO'}{detail}")
    for n in sorted(eng):
        same = runs[f"engine_{n}thread"]["result"]["stream_matches_dataprep_bin"]
        print(f"{f'engine ({n} thr) ids + EOD == dataprep .bin':<60} {'yes' if same else 'NO'}")
    print(f"{'dataprep start-up (1-record input, wall)':<60} {startup:8.2f} s")
    report["steady_state"] = {"startup_wall": startup, "wall_minus_startup": steady_wall,
                              "tokens_per_s": steady_tps,
                              "marginal_tokens_per_s": diff_tps}
    print()
    print(f"{'peak RSS, dataprep':<28} {'corpus MB':>10}  {'tree MB':>8}  {'main MB':>8}  {'procs':>5}  {'wall s':>7}  target")
    for key in [k for k in runs if k.startswith("dataprep_") and k.endswith("mb")]:
        r = runs[key]
        ok = "met" if r["peak_tree_mb"] < 1000 else "NOT met"
        print(f"{key:<28} {r['bytes'] / MB:>10,.0f}  {r['peak_tree_mb']:>8.0f}  {r['peak_main_mb']:>8.0f}  "
              f"{r['max_processes']:>5}  {r['wall']:>7.1f}  < 1 GB: {ok}")
    r = runs["dataprep_startup"]
    print(f"{'dataprep (1-record input)':<28} {'':>10}  {r['peak_tree_mb']:>8.0f}  {r['peak_main_mb']:>8.0f}  "
          f"{r['max_processes']:>5}  {r['wall']:>7.1f}")
    if classic:
        print(f"{'classic reference':<28} {bytes0 / MB:>10,.0f}  {classic['peak_tree_mb']:>8.0f}  "
              f"{classic['peak_main_mb']:>8.0f}  {classic['max_processes']:>5}  {classic['wall']:>7.1f}")
    print("(tree = max over 50 ms samples of the SUM of VmRSS over the process and its descendants;"
          " shared pages count once per process)")
    notes = [l for l in dp.get("stderr_notes", []) if l.startswith("note")]
    if notes:
        print("dataprep notes: " + " | ".join(notes))
    print()
    print("commands:")
    for tag, cmd in report["commands"].items():
        print(f"  {tag}: {cmd}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_classic":
        sys.exit(classic_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]))
    if len(sys.argv) > 1 and sys.argv[1] == "_engine":
        sys.exit(engine_main(sys.argv[2], sys.argv[3]))
    sys.exit(main())
