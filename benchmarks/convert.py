"""Conversion time and peak memory of `python -m trainer_bridge.convert` on a ~0.5B model.

A Qwen3 model of about 0.5B parameters (Qwen3-0.6B's shape with 20 layers, untied embeddings)
is randomly initialised with `transformers`, saved in bf16 as sharded safetensors (1 GB
shards), then converted hf2mcore and back mcore2hf, each in a fresh process whose peak RSS is
read from the kernel (the child's VmHWM). The figures are set against the largest input
shard and the model's size, and the round trip is checked tensor by tensor.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/convert.py [--layers 20]

Figures also go to benchmarks/out/convert.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable


def make_model(path: str, layers: int) -> int:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                         max_position_embeddings=40960)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size="1GB")
    return sum(p.numel() for p in model.parameters())


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork+exec, so a child would report this
# parent's peak (the model it just built); VmHWM belongs to the child's own address space
_PEAK = ("import runpy, sys\nsys.argv = sys.argv[1:]\n"
         "try:\n    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
         "except SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
         "print('PEAK_KB', open('/proc/self/status').read().split('VmHWM:')[1].split()[0], file=sys.stderr)\n"
         "sys.exit(code)\n")


def timed(module: str, args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of `python -m module args` in a fresh process."""
    t0 = time.perf_counter()
    done = subprocess.run([PY, "-c", _PEAK, module, *args], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed: {module} {' '.join(args)}\n{done.stderr[-3000:]}")
    peak_kb = int(next(x for x in done.stderr.splitlines() if x.startswith("PEAK_KB")).split()[1])
    return wall, peak_kb / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=20)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="dataprep-convert-", dir=os.path.join(HERE, "data"))
    try:
        hf, mc, back = (os.path.join(work, n) for n in ("hf", "mcore", "back"))
        params = make_model(hf, args.layers)
        shards = [os.path.getsize(os.path.join(hf, n)) for n in os.listdir(hf) if n.endswith(".safetensors")]
        model_mb, largest_mb = sum(shards) / 1e6, max(shards) / 1e6
        print(f"model: {params / 1e9:.3f} B parameters, {model_mb:,.0f} MB bf16 in {len(shards)} shards "
              f"(largest {largest_mb:,.0f} MB)", flush=True)
        figures = {"parameters": params, "model_mb": model_mb, "largest_shard_mb": largest_mb}
        small = os.path.join(work, "back-small")
        runs = (("hf2mcore", ["hf2mcore", "--load", hf, "--save", mc, "--precision", "bf16"]),
                ("mcore2hf", ["mcore2hf", "--load", mc, "--save", back, "--precision", "bf16", "--max-shard-size", "1GB"]),
                # memory follows the output shard size, not the model
                ("mcore2hf_300MB_shards", ["mcore2hf", "--load", mc, "--save", small, "--precision", "bf16",
                                           "--max-shard-size", "300MB"]))
        for name, cmd in runs:
            wall, peak = timed("trainer_bridge.convert", cmd)
            figures[name] = {"seconds": round(wall, 2), "peak_rss_mb": round(peak)}
            print(f"  {name}: {wall:6.1f} s, peak RSS {peak:,.0f} MB = {peak / largest_mb:.1f}x the largest shard, "
                  f"{peak / model_mb:.1f}x the model", flush=True)
        from safetensors.torch import load_file

        original, converted = {}, {}
        for directory, into in ((hf, original), (back, converted)):
            for n in os.listdir(directory):
                if n.endswith(".safetensors"):
                    into.update(load_file(os.path.join(directory, n)))
        same = sorted(original) == sorted(converted) and all(
            bool((original[k] == converted[k]).all()) for k in original)
        figures["round_trip_identical"] = same
        print(f"  round trip: every tensor identical: {same}")
        os.makedirs(os.path.join(HERE, "out"), exist_ok=True)
        with open(os.path.join(HERE, "out", "convert.json"), "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
