"""trainer_bridge.launcher: Pai's run_mcore_qwen3.sh parameters → torchrun + trainer_bridge.train (no launching)."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_bridge import launcher
from trainer_bridge.launcher import LaunchError, main, pai_to_entry
from trainer_bridge.presets import ModelPreset, get_preset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "trainer_bridge" / "scripts" / "run_mcore.sh"

# Qwen3-30B-A3B's published shape (and a dense Qwen3-8B-like one), built here: the repository's
# presets for these are written elsewhere.
A3B = ModelPreset(name="A3B", num_layers=48, hidden_size=2048, ffn_hidden_size=6144, num_attention_heads=32,
                  num_query_groups=4, kv_channels=128, vocab_size=151936, max_position_embeddings=40960,
                  num_experts=128, moe_router_topk=8, moe_ffn_hidden_size=768, hf_model_type="qwen3_moe")
DENSE = ModelPreset(name="8B", num_layers=36, hidden_size=4096, ffn_hidden_size=12288, num_attention_heads=32,
                    num_query_groups=8, kv_channels=128, vocab_size=151936, max_position_embeddings=40960)
PRESETS = {"tiny": get_preset("tiny"), "A3B": A3B, "8B": DENSE}


def gpus(n: int) -> str:
    return ",".join(map(str, range(n)))


# PAI-DLC on one 8-GPU node, as the examples assume.
DLC = {"MASTER_ADDR": "dlc-job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "1", "RANK": "0",
       "CUDA_VISIBLE_DEVICES": gpus(8)}

# Pai's pretrain example from pai-qwen3-moe.md, parameter by parameter.
PRETRAIN = dict(ENV="dlc", MODEL_SIZE="A3B", BATCH_SIZE="1", GLOBAL_BATCH_SIZE="8", LR="1e-5", MIN_LR="1e-6",
                SEQ_LEN="128", PAD_LEN="128", PR="bf16", TP="4", PP="2", CP="1", ETP="1", EP="4", SP="true",
                DO="true", FL="true", SFT="false", AC="sel", OPTIMIZER_OFFLOAD="false", SAVE_INTERVAL="100000",
                DATASET_PATH="/mnt/qwen-datasets/mmap_qwen3_datasets_text_document",
                VALID_DATASET_PATH="/mnt/qwen-datasets/mmap_qwen3_datasets_text_document",
                PRETRAIN_CHECKPOINT_PATH="/mnt/qwen-ckpts/Qwen3-30B-A3B-to-mcore", TRAIN_TOKENS_OR_ITERS="10000",
                WARMUP_TOKENS_OR_ITERS="100", OUTPUT_BASEPATH="/mnt/logs/output_mcore_qwen3_pretrain")
SFT = dict(PRETRAIN, SFT="true", DATASET_PATH="/mnt/qwen-datasets/path_to_your_dataset",
           VALID_DATASET_PATH="/mnt/qwen-datasets/path_to_your_dataset",
           PRETRAIN_CHECKPOINT_PATH="/path/to/pretraining/checkpoint",
           OUTPUT_BASEPATH="/workspace/output_mcore_qwen3_finetune")
RAW = dict(SFT, DATASET_PATH="/mnt/qwen-datasets/alpaca_zh-train-general.json",
           VALID_DATASET_PATH="/mnt/qwen-datasets/alpaca_zh-valid-general.json",
           PRETRAIN_CHECKPOINT_PATH="/mnt/qwen-ckpts/Qwen3-30B-A3B-to-mcore")


def argv(params: dict, **changes) -> list[str]:
    merged = dict(params, **changes)
    assert list(merged) == list(launcher.PARAMS)
    return list(merged.values())


def launch(params=PRETRAIN, env=DLC, gpu_counter=lambda: None, **changes):
    return pai_to_entry(argv(params, **changes), env, presets=PRESETS, gpu_counter=gpu_counter, python="python")


def opt(entry: list[str], flag: str):
    """The value(s) after ``flag`` in an option list (None when absent, True for a bare flag)."""
    if flag not in entry:
        return None
    i = entry.index(flag) + 1
    values = []
    while i < len(entry) and not entry[i].startswith("--"):
        values.append(entry[i])
        i += 1
    return True if not values else values[0] if len(values) == 1 else values


# -- Pai's documented examples ------------------------------------------------------------------------

@pytest.mark.slow
def test_pai_pretrain_example():
    run = launch()
    name = ("pretrain-mcore-A3B-lr-1e-5-minlr-1e-6-bs-1-gbs-8-seqlen-128-pr-bf16-tp-4-pp-2-cp-1-ac-sel-do-true"
            "-sp-true-ti-9-wi-0")
    assert run.name == name
    data = "/mnt/qwen-datasets/mmap_qwen3_datasets_text_document"
    assert run.entry == [
        "--model-size", "A3B", "--micro-batch-size", "1", "--global-batch-size", "8", "--lr", "1e-5",
        "--min-lr", "1e-6", "--seq-length", "128", "--pad-length", "128", "--precision", "bf16",
        "--tensor-model-parallel-size", "4", "--pipeline-model-parallel-size", "2", "--context-parallel-size", "1",
        "--expert-tensor-parallel-size", "1", "--expert-model-parallel-size", "4",
        "--sequence-parallel", "--use-distributed-optimizer", "--use-flash-attn", "--recompute", "sel",
        "--save-interval", "100000", "--save", f"/mnt/logs/output_mcore_qwen3_pretrain/checkpoint/{name}",
        "--data-path", data, "--valid-data-path", data, "--load", "/mnt/qwen-ckpts/Qwen3-30B-A3B-to-mcore",
        # 10000 tokens / 8 / 128 = 9 iterations; 100 warmup tokens = 0 iterations; decay = train
        "--train-iters", "9", "--lr-warmup-iters", "0", "--lr-decay-iters", "9", "--dataset-type", "idxmap",
        "--tokenizer", "Qwen3Tokenizer", "--tokenizer-path", "/mnt/qwen-ckpts/Qwen3-30B-A3B-to-mcore",
        "--tensorboard-dir", f"/mnt/logs/output_mcore_qwen3_pretrain/tensorboard/{name}",
        "--log-interval", "1", "--eval-interval", "10000", "--eval-iters", "10"]
    assert run.torchrun == ["python", "-m", "torch.distributed.run", "--nproc-per-node", "8", "--nnodes", "1",
                            "--node-rank", "0", "--master-addr", "dlc-job-master-0", "--master-port", "23456"]
    assert run.argv[len(run.torchrun):len(run.torchrun) + 2] == ["-m", "trainer_bridge.train"]
    assert run.env == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}  # no NVTE_*: megatron-core rejects mismatched ones
    assert run.notes == []


def test_pai_sft_example():
    run = launch(SFT)
    assert opt(run.entry, "--sft") is True
    # SFT=true: iterations as given; Pai decays over train - warmup
    assert (opt(run.entry, "--train-iters"), opt(run.entry, "--lr-warmup-iters"),
            opt(run.entry, "--lr-decay-iters")) == ("10000", "100", "9900")
    assert run.name.startswith("finetune-mcore-A3B-lr-1e-5-") and run.name.endswith("-ti-10000-wi-100")
    assert opt(run.entry, "--save") == f"/workspace/output_mcore_qwen3_finetune/checkpoint/{run.name}"
    assert opt(run.entry, "--load") == "/path/to/pretraining/checkpoint"
    assert opt(run.entry, "--dataset-type") == "idxmap"
    assert opt(run.entry, "--data-path") == "/mnt/qwen-datasets/path_to_your_dataset"


def test_pai_raw_json_example():
    run = launch(RAW, env=dict(DLC, MP_DATASET_TYPE="raw"))
    assert opt(run.entry, "--dataset-type") == "raw"
    assert opt(run.entry, "--data-path") == "/mnt/qwen-datasets/alpaca_zh-train-general.json"
    assert opt(run.entry, "--valid-data-path") == "/mnt/qwen-datasets/alpaca_zh-valid-general.json"
    assert opt(run.entry, "--sft") is True and opt(run.entry, "--sft-packing") is None


def test_entry_parses_the_options():
    """The options are ones trainer_bridge.train accepts (when its parser is there)."""
    train = pytest.importorskip("trainer_bridge.train")
    if not hasattr(train, "parse_args"):
        pytest.skip("trainer_bridge.train has no parse_args yet")
    run = launch(PRETRAIN, env={"CUDA_VISIBLE_DEVICES": "", "DATAPREP_NPROC": "1"}, ENV="dsw", MODEL_SIZE="tiny",
                 TP="1", PP="1", EP="1", SP="false", PR="fp32")
    config = train.parse_args(run.entry)
    assert (config.train_iters, config.lr_decay_iters, config.model_size) == (9, 9, "tiny")


# -- tokens → iterations ------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens, gbs, seq, iters", [
    (10000, 8, 128, 9),                 # Pai's example: rounded down
    (1_000_000_000, 8, 1024, 122070),   # the Moonlight example
    (8 * 2048 * 500, 8, 2048, 500),     # exact
])
def test_tokens_to_iterations(tokens, gbs, seq, iters):
    run = launch(GLOBAL_BATCH_SIZE=str(gbs), SEQ_LEN=str(seq), PAD_LEN=str(seq), TRAIN_TOKENS_OR_ITERS=str(tokens),
                 WARMUP_TOKENS_OR_ITERS=str(gbs * seq * 3 + 1))
    assert opt(run.entry, "--train-iters") == str(iters)
    assert opt(run.entry, "--lr-decay-iters") == str(iters)
    assert opt(run.entry, "--lr-warmup-iters") == "3"


def test_name_is_deterministic():
    assert launch().name == launch().name  # no timestamp: a rerun saves into (and resumes from) the same place
    assert launch(LR="2e-5").name != launch().name
    assert launch(AC="false").name == launch(AC="none").name


# -- the distributed layout -----------------------------------------------------------------------------

@pytest.mark.slow
def test_dsw_layout_from_visible_devices():
    run = launch(ENV="dsw", env={"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"})
    assert run.torchrun[3:] == ["--nproc-per-node", "8", "--nnodes", "1", "--node-rank", "0",
                                "--master-addr", "localhost", "--master-port", "29500"]
    run = launch(ENV="dsw", env={"CUDA_VISIBLE_DEVICES": gpus(8), "MASTER_PORT": "31000"})
    assert opt(run.torchrun, "--master-port") == "31000"


@pytest.mark.slow
def test_dsw_gpu_count_nvidia_smi_then_cpu():
    assert opt(launch(ENV="dsw", env={}, gpu_counter=lambda: 16).torchrun, "--nproc-per-node") == "16"
    tiny = dict(ENV="dsw", MODEL_SIZE="tiny", TP="1", PP="1", EP="1", SP="false", PR="fp32")
    assert opt(launch(env={"DATAPREP_NPROC": "2"}, **tiny).torchrun, "--nproc-per-node") == "2"
    assert opt(launch(env={}, **tiny).torchrun, "--nproc-per-node") == "1"
    # CUDA_VISIBLE_DEVICES="" hides every GPU: a CPU run even where nvidia-smi lists some
    no_gpu = launch(env={"CUDA_VISIBLE_DEVICES": "", "DATAPREP_NPROC": "4"}, gpu_counter=lambda: 8, **tiny)
    assert opt(no_gpu.torchrun, "--nproc-per-node") == "4"


@pytest.mark.slow
def test_dlc_layout_from_pai_environment():
    env = {"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "23456", "WORLD_SIZE": "4", "RANK": "2",
           "KUBERNETES_CONTAINER_RESOURCE_GPU": "8"}
    run = launch(env=env, GLOBAL_BATCH_SIZE="32", TRAIN_TOKENS_OR_ITERS=str(32 * 128 * 10))
    assert run.torchrun[3:] == ["--nproc-per-node", "8", "--nnodes", "4", "--node-rank", "2",
                                "--master-addr", "10.0.0.1", "--master-port", "23456"]


# -- the other parameters -------------------------------------------------------------------------------

def test_recompute_and_optimizer_offload():
    assert opt(launch(AC="false").entry, "--recompute") == "none"
    assert opt(launch(AC="none").entry, "--recompute-num-layers") is None
    full = launch(AC="full", env=dict(DLC, MP_AC_LAYERS="4")).entry
    assert (opt(full, "--recompute"), opt(full, "--recompute-num-layers")) == ("full", "4")
    off = launch(AC="offload").entry
    assert (opt(off, "--recompute"), opt(off, "--recompute-num-layers")) == ("offload", "1")
    run = launch(OPTIMIZER_OFFLOAD="0.5", DO="false")
    assert opt(run.entry, "--optimizer-offload-fraction") == "0.5"
    assert opt(run.entry, "--use-distributed-optimizer") is True and "-do-true-" in run.name
    assert run.notes and "DO=true" in run.notes[0]
    assert opt(launch(DO="false").entry, "--use-distributed-optimizer") is None


def test_mp_variables():
    run = launch(TP="2", PP="4", EP="2", env=dict(DLC, MP_PP0_LAYERS="9", MP_SFT_PACKING="true"), SFT="true")
    assert opt(run.entry, "--decoder-first-pipeline-num-layers") == "9"  # 9 + 3 * 13 = 48
    assert opt(run.entry, "--sft-packing") is True
    # MP_VP is layers per virtual stage: 48 / PP 2 / 6 = 4 virtual stages per rank
    run = launch(env=dict(DLC, MP_VP="6"))
    assert opt(run.entry, "--virtual-pipeline-model-parallel-size") == "4"
    assert opt(launch(env=dict(DLC, MP_VP="24")).entry, "--virtual-pipeline-model-parallel-size") is None


def test_data_blend_and_tokenizer():
    run = launch(DATASET_PATH="0.5 /d/a_text_document 0.5 /d/b_text_document", VALID_DATASET_PATH="none",
                 PRETRAIN_CHECKPOINT_PATH="none")
    assert opt(run.entry, "--data-path") == ["0.5", "/d/a_text_document", "0.5", "/d/b_text_document"]
    assert opt(run.entry, "--valid-data-path") is None
    assert opt(run.entry, "--load") is None and opt(run.entry, "--tokenizer-path") is None
    run = launch(env=dict(DLC, DATAPREP_TOKENIZER="DeepSeekV2Tokenizer", DATAPREP_TOKENIZER_PATH="/tok"))
    assert (opt(run.entry, "--tokenizer"), opt(run.entry, "--tokenizer-path")) == ("DeepSeekV2Tokenizer", "/tok")
    assert opt(run.entry, "--load") == "/mnt/qwen-ckpts/Qwen3-30B-A3B-to-mcore"
    dense = launch(MODEL_SIZE="8B", EP="1", FL="false")
    assert opt(dense.entry, "--expert-model-parallel-size") is None
    assert opt(dense.entry, "--use-flash-attn") is None


# -- validation -------------------------------------------------------------------------------------------

ERRORS = [
    # (changes to Pai's pretrain example, extra environment, expected text)
    (dict(BATCH_SIZE="one"), {}, "BATCH_SIZE='one' is not a whole number"),
    (dict(LR="fast"), {}, "LR='fast' is not a number"),
    (dict(TRAIN_TOKENS_OR_ITERS="1e9"), {}, "TRAIN_TOKENS_OR_ITERS='1e9' is not a whole number"),
    (dict(TP="0"), {}, "TP=0 is too small"),
    (dict(ENV="local"), {}, "ENV='local' must be dsw"),
    (dict(PR="int8"), {}, "PR='int8' must be one of"),
    (dict(SP="yes"), {}, "SP='yes' must be true or false"),
    (dict(AC="partial"), {}, "AC='partial' must be sel, full"),
    (dict(OPTIMIZER_OFFLOAD="1.5"), {}, "OPTIMIZER_OFFLOAD=1.5 must be false or a fraction"),
    (dict(OPTIMIZER_OFFLOAD="true"), {}, "OPTIMIZER_OFFLOAD='true' is not a number"),
    (dict(MODEL_SIZE="A4B"), {}, "unknown MODEL_SIZE 'A4B'; known: tiny, A3B, 8B"),
    (dict(TP="3"), {}, "TP=3 must divide A3B's 32 attention heads and 4 query groups; use TP in 1, 2, 4"),
    (dict(TP="8", PP="1"), {}, "TP=8 must divide A3B's 32 attention heads and 4 query groups"),
    (dict(PP="5"), {}, "PP=5 does not divide A3B's 48 layers"),
    (dict(TP="2", PP="4"), {"MP_PP0_LAYERS": "10"}, "MP_PP0_LAYERS=10 leaves 38"),
    (dict(TP="4", PP="1"), {"MP_PP0_LAYERS": "10"}, "MP_PP0_LAYERS=10 needs PP > 1"),
    (dict(EP="3"), {}, "EP=3 does not divide A3B's 128 experts"),
    (dict(MODEL_SIZE="8B"), {}, "EP=4/ETP=1 on 8B, a dense model"),
    (dict(EP="8"), {}, "8 processes are not divisible by ETP*EP*PP = 1*8*2 = 16"),
    (dict(TP="1"), {}, "SP=true needs TP > 1"),
    (dict(SEQ_LEN="130", PAD_LEN="128", SP="false", CP="2", TP="1"), {}, "CP=2 needs SEQ_LEN=130 divisible by 2*CP=4"),
    (dict(CP="2", TP="1", SP="false", SFT="true"), {"MP_SFT_PACKING": "true"},
     "MP_SFT_PACKING=true with CP=2 is not supported"),
    (dict(BATCH_SIZE="3"), {}, "GLOBAL_BATCH_SIZE=8 is not a multiple of BATCH_SIZE*data-parallel = 3*1"),
    (dict(GLOBAL_BATCH_SIZE="5"), {"CUDA_VISIBLE_DEVICES": gpus(16)},
     "GLOBAL_BATCH_SIZE=5 is not a multiple of BATCH_SIZE*data-parallel = 1*2"),
    (dict(), {"CUDA_VISIBLE_DEVICES": gpus(6)}, "6 processes (1 node(s) x 6) are not divisible by TP*PP*CP"),
    (dict(), {"MP_DATASET_TYPE": "json"}, "MP_DATASET_TYPE='json' must be idxmap or raw"),
    (dict(), {"MP_DATASET_TYPE": "raw"}, "MP_DATASET_TYPE=raw reads SFT json; set SFT=true"),
    (dict(), {"MP_SFT_PACKING": "1"}, "MP_SFT_PACKING='1' must be true or false"),
    (dict(PAD_LEN="256"), {}, "PAD_LEN=256 exceeds SEQ_LEN=128"),
    (dict(MIN_LR="1e-4"), {}, "MIN_LR=1e-4 exceeds LR=1e-5"),
    (dict(TRAIN_TOKENS_OR_ITERS="1000"), {}, "TRAIN_TOKENS_OR_ITERS=1000 tokens give 0 iterations"),
    (dict(WARMUP_TOKENS_OR_ITERS="20000"), {}, "gives 19 warmup iterations, not below the 9 lr decay"),
    (dict(SFT="true", WARMUP_TOKENS_OR_ITERS="5000"), {}, "gives 5000 warmup iterations, not below the 5000"),
    (dict(AC="full"), {"MP_AC_LAYERS": "5"}, "AC=full with MP_AC_LAYERS=5: the layers per pipeline stage (24)"),
    (dict(AC="offload"), {"MP_AC_LAYERS": "48"}, "AC=offload with MP_AC_LAYERS=48"),
    (dict(TP="4", PP="1"), {"MP_VP": "4"}, "MP_VP=4 (layers per virtual stage) needs PP > 1"),
    (dict(), {"MP_VP": "5"}, "MP_VP=5 does not divide the 24 layers per pipeline stage"),
    (dict(TP="2", PP="4"), {"MP_VP": "3", "MP_PP0_LAYERS": "9"}, "MP_VP with MP_PP0_LAYERS is not supported"),
    (dict(DATASET_PATH="0.5 a b"), {}, "DATASET_PATH='0.5 a b' is not a blend"),
    (dict(DATASET_PATH=" "), {}, "DATASET_PATH is empty"),
    (dict(), {"RANK": ""}, "ENV=dlc needs RANK from PAI-DLC"),
    (dict(), {"RANK": "1"}, "RANK=1 is not below WORLD_SIZE=1"),
    (dict(ENV="dsw"), {"MASTER_PORT": "http"}, "MASTER_PORT='http' is not a whole number"),
]


@pytest.mark.parametrize("changes, env, message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_validation_errors(changes, env, message):
    with pytest.raises(LaunchError) as info:
        launch(env=dict(DLC, **env), **changes)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ValueError)


def test_uneven_first_stage_allows_pp_not_dividing_layers():
    run = launch(PP="5", env=dict(DLC, MP_PP0_LAYERS="8", CUDA_VISIBLE_DEVICES=gpus(20)))  # 8 + 4 * 10
    assert opt(run.entry, "--pipeline-model-parallel-size") == "5"


@pytest.mark.parametrize("count, message", [
    (26, "got 26: missing OUTPUT_BASEPATH ($27)"),
    (3, "got 3: missing $4-$27 (GLOBAL_BATCH_SIZE ... OUTPUT_BASEPATH)"),
    (28, "got 28: extra extra after OUTPUT_BASEPATH"),
])
def test_parameter_count(count, message):
    params = argv(PRETRAIN) + ["extra"]
    with pytest.raises(LaunchError, match=r"expected 27 positional parameters") as info:
        pai_to_entry(params[:count], DLC, presets=PRESETS)
    assert message in str(info.value)


# -- main and the shell script -------------------------------------------------------------------------

TINY_ARGS = ["dsw", "tiny", "1", "8", "1e-5", "1e-6", "128", "128", "fp32", "1", "1", "1", "1", "1", "false",
             "false", "false", "false", "sel", "false", "100", "0.5 /data/a 0.5 /data/b", "/data/a", "none",
             str(8 * 128 * 20), "0", "/tmp/out dir"]
CPU_ENV = {"CUDA_VISIBLE_DEVICES": "", "DATAPREP_NPROC": "2"}


@pytest.mark.slow
def test_main_dry_run_and_exec(monkeypatch, capsys):
    for key, value in CPU_ENV.items():
        monkeypatch.setenv(key, value)
    assert main(["--dry-run", *TINY_ARGS]) == 0
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "--nproc-per-node 2" in line
    calls = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: calls.append((file, args, env)))
    main(TINY_ARGS)
    (file, args, env), = calls
    assert args[:3] == [sys.executable, "-m", "torch.distributed.run"] and file == sys.executable
    assert shlex.split(line)[1:] == args  # the dry run prints exactly what runs, after the environment
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "1" and env["DATAPREP_NPROC"] == "2"


def _script(args, **env):
    full_env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **CPU_ENV, **env)
    return subprocess.run(["sh", str(SCRIPT), *args], check=False, env=full_env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_script_dry_run_prints_the_command():
    done = _script(TINY_ARGS, DATAPREP_DRY_RUN="1")
    assert done.returncode == 0, done.stderr
    words = shlex.split(done.stdout)
    assert done.stdout.count("\n") == 1
    assert words[0] == "CUDA_DEVICE_MAX_CONNECTIONS=1"
    assert words[1:4] == [sys.executable, "-m", "torch.distributed.run"]
    assert words[words.index("-m", 4):][:2] == ["-m", "trainer_bridge.train"]
    assert opt(words, "--data-path") == ["0.5", "/data/a", "0.5", "/data/b"]
    assert opt(words, "--train-iters") == "20" and opt(words, "--load") is None
    assert opt(words, "--save").startswith("/tmp/out dir/checkpoint/pretrain-mcore-tiny-")


def test_script_wrong_parameter_count_exits_2():
    done = _script(TINY_ARGS[:-1], DATAPREP_DRY_RUN="1")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("error: expected 27 positional parameters, got 26: missing OUTPUT_BASEPATH")


def test_model_size_hf_takes_the_checkpoints_architecture(tmp_path):
    """MODEL_SIZE=hf: the architecture of PRETRAIN_CHECKPOINT_PATH (an HF directory's config.json or
    an hf2mcore checkpoint's hf_config.json), e.g. Qwen2.5-7B, which has no preset."""
    import json

    qwen25_7b = {"model_type": "qwen2", "num_hidden_layers": 28, "hidden_size": 3584, "intermediate_size": 18944,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                 "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                 "tie_word_embeddings": False}
    for name in ("config.json", "hf_config.json"):
        ckpt = tmp_path / name.split(".")[0]
        ckpt.mkdir()
        (ckpt / name).write_text(json.dumps(qwen25_7b))
        dense = dict(MODEL_SIZE="hf", PRETRAIN_CHECKPOINT_PATH=str(ckpt), EP="1", ETP="1")
        run = launch(**dense)
        assert opt(run.entry, "--model-size") == "hf" and opt(run.entry, "--load") == str(ckpt)
        with pytest.raises(LaunchError, match="TP=8 must divide hf's 28 attention heads"):
            launch(**dict(dense, TP="8", PP="1"))
    with pytest.raises(LaunchError, match=r"MODEL_SIZE hf takes the architecture from the checkpoint: \(none\) is neither"):
        launch(MODEL_SIZE="hf", PRETRAIN_CHECKPOINT_PATH="none")
