"""`dataprep`: the command line. Parses, builds a config, calls the library, prints one line on error.

Megatron-LM / Pai-Megatron-Patch spellings are accepted so existing scripts port with a rename:
`--patch-tokenizer-type`/`--tokenizer-type` for `--tokenizer`, `--load`/`--hf-tokenizer-path`/
`--tokenizer-model` for `--tokenizer-path`; `--partitions` and `--keep-sequential-samples` are
accepted (output is always in input order, parallelism is `--workers`); options we do not
support fail with a message that says what to do instead.

Each command imports its module when it runs, so `dataprep --help` and every command start
without loading the others (the pretrain path never loads torch or transformers up front).
"""

from __future__ import annotations

import argparse
import sys

from dataprep import __version__
from dataprep.errors import DataprepError, debug_requested, run_command


def _add_tokenizer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", "--patch-tokenizer-type", dest="tokenizer", default=None,
                   help="tokenizer name as in Pai: DeepSeekV2Tokenizer, Qwen2Tokenizer, Qwen3Tokenizer, "
                        "LLama3Tokenizer, HuggingFaceTokenizer, ...")
    p.add_argument("--tokenizer-type", dest="tokenizer_type", default=None,
                   help="Megatron's spelling; used when --tokenizer is not given")
    p.add_argument("--tokenizer-path", "--load", "--hf-tokenizer-path", "--tokenizer-model",
                   dest="tokenizer_path", default=None,
                   help="local Hugging Face directory with tokenizer.json/tokenizer_config.json "
                        "(DeepSeek names default to the bundled DeepSeek tokenizer)")
    p.add_argument("--tokenizer-backend", default="auto",
                   choices=["auto", "fastokens", "gigatoken", "hf", "transformers"],
                   help="encoding engine; auto picks the fastest one that matches the reference")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow Python code shipped in the tokenizer directory")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="record fields to tokenize")


def _size(text: str) -> int:
    """A byte count: 1048576, 512K, 256M, 4G (powers of 1024)."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    try:
        return int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M)") from None


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """Options every tokenizing run shares: parallelism, engines, resuming, bad records."""
    p.add_argument("--workers", type=int, default=None,
                   help="processes (default: the cores available); with --engine ray: Ray CPUs "
                        "of the local instance it starts")
    p.add_argument("--engine", dest="executor", default="local", choices=["local", "ray"],
                   help="local: worker processes on this machine (default); ray: Ray tasks, one per "
                        "shard, on a Ray cluster (pip install 'megatron-dataprep[ray]')")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join (auto, host:port, ray://host:10001); default: a local instance")
    p.add_argument("--shard-bytes", type=_size, default="256M",
                   help="input bytes per shard, the unit of resuming and of Ray tasks (default 256M)")
    p.add_argument("--keep-work", action="store_true",
                   help="keep {PREFIX}.work (finished shards and markers) after success")
    p.add_argument("--restart", action="store_true",
                   help="discard an unfinished run's {PREFIX}.work instead of resuming it")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="write bad records to {PREFIX}.rejects.jsonl and go on")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_options(args: argparse.Namespace) -> dict:
    from dataprep.runs.pool import available_cores

    return dict(inputs=tuple(args.input), output_prefix=args.output_prefix, tokenizer=_tokenizer_name(args),
                tokenizer_path=args.tokenizer_path, workers=args.workers or available_cores(),
                skip_bad_records=args.skip_bad_records, backend=args.tokenizer_backend,
                trust_remote_code=args.trust_remote_code, progress=not args.no_progress,
                executor=args.executor, ray_address=args.ray_address, shard_bytes=args.shard_bytes,
                keep_work=args.keep_work, restart=args.restart)


def _tokenizer_name(args: argparse.Namespace) -> str:
    name = args.tokenizer or args.tokenizer_type
    if not name:
        raise DataprepError("--tokenizer is required (e.g. --tokenizer DeepSeekV2Tokenizer)")
    return name


def _unsupported(args: argparse.Namespace) -> None:
    if getattr(args, "split_sentences", False):
        raise DataprepError("--split-sentences is not supported: split documents before dataprep, "
                            "or give a list of strings per record (one sequence per item)")
    if getattr(args, "vocab_file", None) or getattr(args, "merge_file", None):
        raise DataprepError("--vocab-file/--merge-file are not supported: pass --tokenizer-path, "
                            "a Hugging Face tokenizer directory")
    impl = getattr(args, "dataset_impl", None)
    if impl not in (None, "mmap"):
        raise DataprepError(f"--dataset-impl {impl!r} is not supported: dataprep writes mmap idxmaps")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from dataprep.pretrain.run import PretrainConfig, run_pretrain

    _unsupported(args)
    config = PretrainConfig(json_keys=tuple(args.json_keys), append_eod=args.append_eod, **_run_options(args))
    if args.partitions and args.partitions > 1:
        print(f"note: --partitions {args.partitions} has no effect: dataprep reads inputs in order "
              "and parallelises with --workers", file=sys.stderr)
    summary = run_pretrain(config, log=lambda m: print(m, file=sys.stderr))
    print("dataprep pretrain: " + "\n".join(summary.lines()))
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from dataprep.sft.run import SFTConfig, run_sft

    _unsupported(args)
    config = SFTConfig(
        seq_length=args.seq_length, fmt=args.format, template=args.template, system=args.system,
        layout=args.layout, packing=args.packing, packing_algorithm=args.packing_algorithm, seed=args.seed,
        drop_long=args.drop_long, **_run_options(args))
    summary = run_sft(config, log=lambda m: print(m, file=sys.stderr))
    print("dataprep sft: " + "\n".join(summary.lines()))
    return 0


def cmd_verify_tokenizer(args: argparse.Namespace) -> int:
    from dataprep.tools.verify import verify_tokenizer

    ok, lines = verify_tokenizer(
        name=_tokenizer_name(args), path=args.tokenizer_path, inputs=args.input,
        json_keys=tuple(args.json_keys), limit=args.limit, backend=args.tokenizer_backend,
        trust_remote_code=args.trust_remote_code)
    print("\n".join(lines))
    return 0 if ok else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from dataprep.tools.inspect import inspect_idxmap

    print("\n".join(inspect_idxmap(args.prefix, samples=args.sample, decode=args.decode,
                                   tokenizer_path=args.tokenizer_path, plot=args.plot)))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from dataprep.tools.integrity import verify_idxmaps

    results = verify_idxmaps(args.prefix, vocab_size=args.vocab_size)
    for result in results:
        print("\n".join(result.lines()))
    failed = sum(not r.ok for r in results)
    if len(results) > 1:
        print(f"dataprep verify: {len(results) - failed} of {len(results)} OK")
    return 1 if failed else 0


def cmd_merge(args: argparse.Namespace) -> int:
    from dataprep.tools.merge import merge_idxmaps

    summary = merge_idxmaps(args.input, args.output_prefix)
    print("dataprep merge: " + "\n".join(summary.lines()))
    return 0


def cmd_build_index(args: argparse.Namespace) -> int:
    # the one command that needs torch and megatron-core (the indices use its C++ helpers);
    # its import warns about optional GPU libraries that index building never uses
    import warnings

    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    from dataset_engine.gpt import GPTDataConfig, build_index_cache, megatron_num_samples

    if args.train_samples is not None:
        samples = [args.train_samples, args.valid_samples, args.test_samples]
    elif args.train_iters is not None and args.global_batch_size is not None:
        samples = megatron_num_samples(args.train_iters, args.global_batch_size, args.eval_interval,
                                       args.eval_iters)
    else:
        raise DataprepError("give --train-samples (and --valid-samples/--test-samples), or --train-iters "
                            "and --global-batch-size as in Megatron")
    try:
        config = GPTDataConfig(
            data_path=tuple(args.data_path), seq_length=args.seq_length, eod=args.eod, split=args.split,
            seed=args.seed, add_extra_token=not args.no_extra_token,
            cache_dir=args.cache_dir or GPTDataConfig.__dataclass_fields__["cache_dir"].default_factory())
        lines = build_index_cache(config, samples)
    except (ValueError, OSError) as exc:
        raise DataprepError(str(exc)) from exc
    print(f"dataprep build-index: samples [train, valid, test] = {samples} in {config.cache_dir}")
    print("\n".join(lines))
    return 0


def _add_pretrain(sub, common: argparse.ArgumentParser) -> None:
    """`dataprep pretrain`: Megatron's preprocess_data.py / Pai's options, and ours."""
    p = sub.add_parser("pretrain", parents=[common], help="jsonl/json/parquet text → Megatron idxmap (.bin/.idx)")
    p.add_argument("--input", nargs="+", required=True,
                   help="files, directories or globs; local paths or URLs (s3://, gs://, file://)")
    p.add_argument("--output-prefix", required=True,
                   help="writes {PREFIX}_{key}_document.bin/.idx/.json (a path or a URL)")
    _add_tokenizer_args(p)
    _add_run_args(p)
    eod = p.add_mutually_exclusive_group()
    eod.add_argument("--append-eod", dest="append_eod", action="store_true", default=True,
                     help="append the eos id after each document (default)")
    eod.add_argument("--no-append-eod", dest="append_eod", action="store_false")
    # Megatron / Pai options kept for drop-in use
    p.add_argument("--partitions", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--keep-sequential-samples", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--split-sentences", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dataset-impl", default=None, help=argparse.SUPPRESS)
    p.add_argument("--log-interval", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--vocab-file", "--vocab", dest="vocab_file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--merge-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--lang", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_pretrain)


def _add_sft(sub, common: argparse.ArgumentParser) -> None:
    """`dataprep sft`: Pai's build_idxmap_sft_dataset.py options, and ours."""
    s = sub.add_parser("sft", parents=[common],
                       help="alpaca / messages / ShareGPT records → SFT idxmaps with loss masks")
    s.add_argument("--input", nargs="+", required=True,
                   help="files, directories or globs; local paths or URLs (s3://, gs://, file://)")
    s.add_argument("--output-prefix", required=True,
                   help="writes {PREFIX}_text_document.bin/.idx/.json (+ {PREFIX}_loss_mask_document for "
                        "native); a path or a URL")
    _add_tokenizer_args(s)
    s.add_argument("--seq-length", type=int, default=None,
                   help="truncate records to this many tokens (drop those whose prompt fills it); "
                        "the row length for --layout pai")
    s.add_argument("--format", default="auto", choices=["auto", "alpaca", "messages", "sharegpt"],
                   help="record format (default: told per record by its keys)")
    s.add_argument("--template", default="auto",
                   help="chat template: auto (the tokenizer's own, else its family's), tokenizer, "
                        "chatml, qwen, deepseek, llama3, alpaca-plain")
    s.add_argument("--system", default=None, help="system prompt for records that have none")
    s.add_argument("--layout", default="native", choices=["native", "pai"],
                   help="native: records + loss masks, packed at load time (default); "
                        "pai: Pai-Megatron-Patch's rows (tokens ++ labels)")
    s.add_argument("--packing", "--sequence-packing", dest="packing", action="store_true",
                   help="pai: pack records into rows; native: report packing at --seq-length")
    s.add_argument("--packing-algorithm", default="bfd", choices=["bfd", "next-fit"],
                   help="bfd: best-fit-decreasing (default); next-fit: Pai's, in file order")
    s.add_argument("--seed", type=int, default=1234, help="order of the packed rows (default 1234)")
    s.add_argument("--drop-long", action="store_true", help="drop records longer than --seq-length "
                                                             "instead of truncating them")
    _add_run_args(s)
    # Pai's build_idxmap_sft_dataset.py options kept for drop-in use
    s.add_argument("--partitions", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--keep-sequential-samples", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--dataset-impl", default=None, help=argparse.SUPPRESS)
    s.add_argument("--append-eod", action="store_true", help=argparse.SUPPRESS)
    s.add_argument("--log-interval", type=int, default=None, help=argparse.SUPPRESS)
    s.set_defaults(func=cmd_sft)


def _add_verify_tokenizer(sub, common: argparse.ArgumentParser) -> None:
    """`dataprep verify-tokenizer`."""
    v = sub.add_parser("verify-tokenizer", parents=[common],
                       help="check each tokenizer engine against the reference on your data")
    v.add_argument("--input", nargs="+", required=True)
    v.add_argument("--limit", type=int, default=2000, help="records to check (default 2000)")
    _add_tokenizer_args(v)
    v.set_defaults(func=cmd_verify_tokenizer)


def _add_inspect(sub, common: argparse.ArgumentParser) -> None:
    """`dataprep inspect`."""
    i = sub.add_parser("inspect", parents=[common], help="counts, lengths, metadata and decoded samples of an idxmap")
    i.add_argument("prefix", help="idxmap prefix (path without .bin/.idx)")
    i.add_argument("--sample", type=int, nargs="*", default=[], help="documents to show")
    i.add_argument("--decode", action="store_true", help="decode the samples to text")
    i.add_argument("--tokenizer-path", default=None,
                   help="tokenizer directory for --decode (default: the one in the sidecar)")
    i.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also write a PNG histogram of tokens per document")
    i.set_defaults(func=cmd_inspect)


def _add_verify(sub, common: argparse.ArgumentParser) -> None:
    """`dataprep verify`."""
    c = sub.add_parser("verify", parents=[common],
                       help="full integrity check of idxmaps: index, sizes, token ids in the vocabulary, "
                            "SFT masks and rows")
    c.add_argument("prefix", nargs="+", help="idxmap prefixes (paths without .bin/.idx)")
    c.add_argument("--vocab-size", type=int, default=None,
                   help="token ids must be below this (default: tokenizer.vocab_size of the sidecar)")
    c.set_defaults(func=cmd_verify)


def _add_merge(sub, common: argparse.ArgumentParser) -> None:
    """`dataprep merge`."""
    m = sub.add_parser("merge", parents=[common],
                       help="concatenate idxmaps into one (as Megatron's tools/merge_datasets.py)")
    m.add_argument("--input", nargs="+", required=True,
                   help="idxmap prefixes, or directories (every *.idx with its .bin, by name)")
    m.add_argument("--output-prefix", required=True, help="writes {PREFIX}.bin/.idx/.json")
    m.set_defaults(func=cmd_merge)


def _add_build_index(sub, common: argparse.ArgumentParser) -> None:
    """`dataprep build-index`."""
    b = sub.add_parser("build-index", parents=[common],
                       help="build the pretrain sample indices (megatron-core GPTDataset's) ahead of training")
    b.add_argument("--data-path", nargs="+", required=True,
                   help="prefixes, or weights and prefixes: 0.3 a_text_document 0.7 b_text_document")
    b.add_argument("--seq-length", type=int, required=True)
    b.add_argument("--split", default="969,30,1", help="train,valid,test shares (default 969,30,1)")
    b.add_argument("--seed", type=int, default=1234)
    b.add_argument("--eod", type=int, default=0, help=argparse.SUPPRESS)  # does not change the indices
    b.add_argument("--train-samples", type=int, default=None)
    b.add_argument("--valid-samples", type=int, default=None)
    b.add_argument("--test-samples", type=int, default=None)
    b.add_argument("--train-iters", type=int, default=None, help="with --global-batch-size: Megatron's counts")
    b.add_argument("--global-batch-size", type=int, default=None)
    b.add_argument("--eval-interval", type=int, default=1000)
    b.add_argument("--eval-iters", type=int, default=100)
    b.add_argument("--no-extra-token", action="store_true",
                   help="samples of seq_length tokens, not seq_length + 1 (megatron's add_extra_token_to_sequence=False)")
    b.add_argument("--cache-dir", default=None, help="default: $DATAPREP_CACHE/gpt or ~/.cache/dataprep/gpt")
    b.set_defaults(func=cmd_build_index)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dataprep", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"dataprep {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    _add_pretrain(sub, common)
    _add_sft(sub, common)
    _add_verify_tokenizer(sub, common)
    _add_inspect(sub, common)
    _add_verify(sub, common)
    _add_merge(sub, common)
    _add_build_index(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resumable = " (rerun the same command to resume from the finished shards)" \
        if args.command in ("pretrain", "sft") else ""
    return run_command(lambda: args.func(args), debug=args.debug or debug_requested([]),
                       interrupted=f"interrupted; no output was finalized{resumable}")


if __name__ == "__main__":
    sys.exit(main())
