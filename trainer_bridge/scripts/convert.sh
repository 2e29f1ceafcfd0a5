#!/bin/sh
# Drop-in for Pai-Megatron-Patch's toolkits/distributed_checkpoints_convertor/scripts/qwen3/run_8xH20.sh
# (and its qwen2 siblings): the same positional parameters, our converter underneath
# (python -m trainer_bridge.convert; see its docstring).
#
#   sh convert.sh MODEL_SIZE LOAD_DIR SAVE_DIR MG2HF USE_CUDA PR [HF_DIR]
#
#   MODEL_SIZE  0.6B, 1.7B, 4B, 8B, 14B, 32B, A3B, A22B: checked against the HF config.json
#   MG2HF       false: HF -> megatron-core (hf2mcore); true: back (mcore2hf, needs HF_DIR)
#   USE_CUDA    accepted; conversion streams tensor by tensor on the CPU either way
#   PR          fp32, bf16 or fp16
#   HF_DIR      the original HF directory (config.json and tokenizer for mcore2hf)
#
# The checkpoint loads in any TP/PP/EP. PYTHON picks the interpreter (default: python). A bad
# parameter prints "error: ..." and exits 2 before anything is written.
set -e
exec ${PYTHON:-python} -m trainer_bridge.convert "$@"
