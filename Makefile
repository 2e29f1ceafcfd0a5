# Two entry points: `make demo` and `make test` (and `make test-fast` while working). All create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast bench bench-sft bench-index bench-train bench-scale bench-convert clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,ray,s3]"
	touch $(STAMP)

install: $(STAMP)

DEMO_OUT := demo-out
demo: install
	@mkdir -p $(DEMO_OUT)
	$(BIN)/dataprep pretrain --input dataprep/samples/pretrain_sample.jsonl \
	    --tokenizer DeepSeekV2Tokenizer --output-prefix $(DEMO_OUT)/mmap_deepseekv2_datasets --workers 2
	$(BIN)/dataprep inspect $(DEMO_OUT)/mmap_deepseekv2_datasets_text_document --decode --sample 0 8 16
	$(BIN)/dataprep sft --input dataprep/samples/alpaca_zh-sample.json dataprep/samples/chat_sample.jsonl \
	    --tokenizer DeepSeekV2Tokenizer --output-prefix $(DEMO_OUT)/sft_deepseekv2 --seq-length 512 --packing --workers 2
	$(BIN)/dataprep inspect $(DEMO_OUT)/sft_deepseekv2_text_document --decode --sample 3 70
	@echo "== training the tiny model on CPU: pretrain idxmap, then raw alpaca json (MP_DATASET_TYPE=raw)"
	PYTHONWARNINGS=ignore $(BIN)/python -m trainer_bridge.train --model-size tiny \
	    --data-path $(DEMO_OUT)/mmap_deepseekv2_datasets_text_document --seq-length 64 \
	    --micro-batch-size 2 --global-batch-size 4 --lr 5e-3 --min-lr 1e-4 --lr-warmup-iters 2 \
	    --train-iters 20 --log-interval 4 --eval-interval 10 --eval-iters 2
	MP_DATASET_TYPE=raw PYTHONWARNINGS=ignore $(BIN)/python -m trainer_bridge.train --model-size tiny --sft \
	    --tokenizer DeepSeekV2Tokenizer --data-path dataprep/samples/alpaca_zh-sample.json \
	    --seq-length 128 --pad-length 128 --micro-batch-size 2 --global-batch-size 4 --lr 5e-3 \
	    --min-lr 1e-4 --lr-warmup-iters 2 --train-iters 20 --log-interval 4 --eval-interval 100

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

# the in-process tier, to run while working (< 2 min): tests marked slow start processes
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

bench: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/pretrain_throughput.py

bench-sft: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/packing.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/sft_raw.py

bench-index: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/gpt_index.py

bench-scale: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/scaling.py

bench-convert: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/convert.py

bench-train: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/train_data.py

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
