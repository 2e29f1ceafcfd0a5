#!/bin/sh
# Drop-in for Pai-Megatron-Patch's examples/qwen3/run_mcore_qwen3.sh: the same 27 positional
# parameters and MP_* variables (MP_DATASET_TYPE, MP_SFT_PACKING, MP_AC_LAYERS, MP_PP0_LAYERS, MP_VP),
# our training entry underneath (python -m trainer_bridge.launcher; see its docstring).
#
#   sh run_mcore.sh ENV MODEL_SIZE BATCH_SIZE GLOBAL_BATCH_SIZE LR MIN_LR SEQ_LEN PAD_LEN PR TP PP CP \
#      ETP EP SP DO FL SFT AC OPTIMIZER_OFFLOAD SAVE_INTERVAL DATASET_PATH VALID_DATASET_PATH \
#      PRETRAIN_CHECKPOINT_PATH TRAIN_TOKENS_OR_ITERS WARMUP_TOKENS_OR_ITERS OUTPUT_BASEPATH
#
# PYTHON picks the interpreter (default: python). DATAPREP_DRY_RUN=1 prints the torchrun command
# instead of running it. A bad parameter prints "error: ..." and exits 2 before anything starts.
set -e
if [ "${DATAPREP_DRY_RUN:-0}" = 1 ]; then
  exec ${PYTHON:-python} -m trainer_bridge.launcher --dry-run "$@"
fi
exec ${PYTHON:-python} -m trainer_bridge.launcher "$@"
