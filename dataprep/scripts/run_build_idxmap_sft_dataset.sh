#!/usr/bin/env bash
# Drop-in for Pai-Megatron-Patch's toolkits/sft_data_preprocessing/run_build_idxmap_sft_dataset.sh:
# the same positional parameters, Pai's row layout (so Pai's training scripts read the output),
# our pipeline underneath (best-fit-decreasing packing instead of next-fit, multi-turn records).
#
#   bash run_build_idxmap_sft_dataset.sh INPUT TOKENIZER SEQ_LEN OUTPUT_PREFIX LOAD_DIR [PACKING]
#
# Writes ${OUTPUT_PREFIX}_text_document.{bin,idx,json}. PACKING: true packs records into rows.
# DATAPREP_WORKERS sets the worker count (default: all cores); extra options go in DATAPREP_ARGS
# (e.g. "--packing-algorithm next-fit" for Pai's own packing, "--template qwen").
set -euo pipefail
if [ $# -lt 5 ]; then
  echo "usage: $0 INPUT TOKENIZER SEQ_LEN OUTPUT_PREFIX LOAD_DIR [PACKING]" >&2
  exit 2
fi
input=$1; tokenizer=$2; seq_len=$3; output_prefix=$4; load_dir=$5; packing=${6:-false}
case "$packing" in
  true) packing_option=--packing ;;
  false) packing_option= ;;
  *) echo "PACKING must be true or false, got '$packing'" >&2; exit 2 ;;
esac
start=$SECONDS
# shellcheck disable=SC2086  # DATAPREP and DATAPREP_ARGS are word lists on purpose
${DATAPREP:-dataprep} sft \
  --input "$input" \
  --output-prefix "$output_prefix" \
  --patch-tokenizer-type "$tokenizer" \
  --load "$load_dir" \
  --seq-length "$seq_len" \
  --layout pai \
  ${packing_option} \
  ${DATAPREP_WORKERS:+--workers "$DATAPREP_WORKERS"} \
  ${DATAPREP_ARGS:-}
elapsed=$((SECONDS - start))
echo "$((elapsed / 60)) min $((elapsed % 60)) sec"
