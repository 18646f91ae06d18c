#!/usr/bin/env bash
# The GPU checks in one script (for a machine with one H100/H200): GPU-only tests, the sampler and
# update-phase benchmarks against transformers, and one full RL step of qwen-1.5b at random weights with
# the real tokenizer on MATH train prompts (64 prompts x 8 samples x 512 new tokens).
# Usage: bash gpu_checks.sh [LOG_DIR]     (SHARED defaults to ../shared)
set -uo pipefail
cd "$(dirname "$0")"
LOG=${1:-runs/gpu_checks}
SHARED=${SHARED:-../shared}
mkdir -p "$LOG"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$LOG/gpu.txt"
python -m pytest -q -m gpu 2>&1 | tee "$LOG/pytest_gpu.txt"
python bench.py 2>&1 | tee "$LOG/bench_sampler.txt"
python bench_train.py 2>&1 | tee "$LOG/bench_train.txt"
# random weights give reward 0 everywhere, so this step exercises sampling and old log-probs at full
# size; the update phase at full size is bench_train.py above
python train.py --model qwen-1.5b --init random --tokenizer "$SHARED/tokenizers/qwen2.5" \
  --data "$SHARED/data/math_train.jsonl" --heldout "$SHARED/data/math500.jsonl" --prompts-per-step 64 \
  --mini-batches 4 --max-response-len 512 --steps 1 --eval-every 0 --save-every 0 --grad-checkpoint \
  --out "$LOG/full_step" 2>&1 | tee "$LOG/full_step.txt"
