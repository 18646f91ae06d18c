#!/usr/bin/env bash
# The GPU checks in one script (for a machine with one H100/H200): GPU-only tests, the sampler and
# update-phase benchmarks against transformers, the sampler on RL-shaped lengths (static vs refill
# scheduling, whole-buffer vs length-aware attention; issue 14's target: refill >= 3x static tokens/s),
# and one full RL step of qwen-1.5b at random weights with the real tokenizer on MATH train prompts
# (64 prompts x 8 samples x 512 new tokens).
# Usage: bash gpu_checks.sh [LOG_DIR]     (SHARED defaults to ../shared)
set -uo pipefail
cd "$(dirname "$0")"
LOG=${1:-runs/gpu_checks}
SHARED=${SHARED:-../shared}
mkdir -p "$LOG"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$LOG/gpu.txt"
python -m pytest -q -m gpu 2>&1 | tee "$LOG/pytest_gpu.txt"
python bench/bench_sampler.py 2>&1 | tee "$LOG/bench_sampler.txt"   # the fixed 8x8 and 64x8 shapes, 128 + 512 tokens
# qwen-1.5b bf16, 512 prompts x 8 samples on 128 slots, lengths ~geometric with mean 700, cap 3072;
# the static variants run 2 batches of 128 (a rate), refill the whole queue
python bench/bench_sampler.py --workload rl 2>&1 | tee "$LOG/bench_rl.txt"
python bench/bench_train.py 2>&1 | tee "$LOG/bench_train.txt"
# random weights give reward 0 everywhere, so this step exercises sampling and old log-probs at full
# size; the update phase at full size is bench/bench_train.py above
python train.py --model qwen-1.5b --init random --tokenizer "$SHARED/tokenizers/qwen2.5" \
  --data "$SHARED/data/math_train.jsonl" --heldout "$SHARED/data/math500.jsonl" --prompts-per-step 64 \
  --mini-batches 4 --max-response-len 512 --steps 1 --eval-every 0 --save-every 0 --grad-checkpoint \
  --out "$LOG/full_step" --overwrite 2>&1 | tee "$LOG/full_step.txt"
