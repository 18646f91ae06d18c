#!/usr/bin/env bash
# Every CUDA-only path of the project, checked in one run on one H100/H200 within 10 minutes, with a summary
# table of each check's status and a non-zero exit status if any failed.
#
#   bash gpu_checks.sh [LOG_DIR]               # on a GPU machine (default LOG_DIR: runs/gpu_checks)
#   bash gpu_checks.sh --cpu-smoke [LOG_DIR]   # every part at tiny scale on the CPU: checks this script
#
# The checks, in order (expected time on one H100/H200, not measured; each part is cut off at its
# limit, and the whole script at 590 s, so a slow part fails instead of overrunning):
#   env           the GPU, torch and transformers versions                                  ~5 s (30)
#   kernels       gpu-marked tests: the length-aware decode kernel inside a CUDA graph at every named
#                 head layout (qwen-1.5b 12/2, head dim 128, bf16, ..., 7/1, 5/1, 3/1) against the
#                 dense kernel, inductor choosing flex's decoding kernel; prefill without SDPA's
#                 math kernel; the CUDA graph (compiled or not) against the eager step    ~120 s (170)
#   compile28     compile=True on a 28-layer model: no recompilation, tokens equal eager  ~40 s (90)
#   gpu-tests     the other gpu-marked tests (one bf16 training step)                      ~20 s (60)
#   train         3 steps of qwen-1.5b at random weights (rewards forced to alternate, so that every row
#                 is updated) with a held-out evaluation, then --resume for
#                 one more step (CUDA resume, fused AdamW state), then eval.py on the checkpoint
#                                                                                           ~100 s (140)
#   fsdp          torchrun --nproc_per_node 1 train.py --fsdp (FSDP2 over NCCL): 2 steps, resumed for a
#                 third                                                                     ~60 s (100)
#   memory        the pre-flight's estimate against each run's measured peak_mem_gb, side by side; fails
#                 outside 0.85..1.35 (the CPU test's tolerance)                             ~1 s (30)
#   bench-train   bench/bench_train.py: update phase, ours vs transformers, compile on and off  ~90 s (120)
#   bench-fixed   bench/bench_sampler.py fixed shape (64 x 8, 128 + 256 tokens), ours (CUDA graph,
#                 compiled, whole-buffer) vs transformers generate                           ~60 s (100)
#   bench-rl      bench/bench_sampler.py --workload rl (64 prompts x 8, lengths ~geometric, cap 3072),
#                 static vs refill, compile on and off                                      ~80 s (100)
#
# GPU_CHECKS_ONLY=name,name,... runs only those checks (e.g. to repeat one).
#
# Data, found as the programs find it: MATH train and MATH-500 in the data folder ($CASP_DATA, else
# ~/.cache/casp/data: `python data.py prepare math_train math500`), the Qwen2.5 tokenizer in
# $CASP_QWEN_TOKENIZER, else qwen-1.5b's folder in the Hugging Face cache (`hf download
# Qwen/Qwen2.5-Math-1.5B config.json tokenizer.json` is enough). Without them: the project's character
# tokenizer (tiny.make_tiny_tokenizer) and built-in synthetic problems written as JSONL, which the output
# says. Everything is written under LOG_DIR: one log per check, summary.txt (the table) and the run folders.
set -u -o pipefail
cd "$(dirname "$0")"

SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=1; shift; fi
LOG=$(python -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "${1:-runs/gpu_checks}")
mkdir -p "$LOG"
# where the data and the tokenizer are, looked up before CASP_HOME points into LOG below
DATA_DIR=$(python -c 'import data; print(data.default_data_dir())')
TOKENIZER=${CASP_QWEN_TOKENIZER:-$(python -c 'import model; print(model.resolve_model_path("qwen-1.5b"))' 2>/dev/null)}
DEADLINE=$(( $(date +%s) + 590 ))
if [ $SMOKE = 1 ]; then DEADLINE=$(( $(date +%s) + 3600 )); DEVICE=cpu; else DEVICE=cuda; fi
export CASP_HOME="$LOG/casp_home" PYTHONUNBUFFERED=1

NAMES=(); STATUS=(); SECONDS_TAKEN=()
# check NAME LIMIT_S COMMAND...: runs COMMAND with its output in $LOG/NAME.log, cut off at LIMIT_S or at
# the deadline, whichever comes first; records ok / FAILED (exit status) / TIMEOUT / SKIPPED.
check() {
    local name=$1 limit=$2; shift 2
    if [ -n "${GPU_CHECKS_ONLY:-}" ] && [[ ",$GPU_CHECKS_ONLY," != *",$name,"* ]]; then return; fi
    local left=$(( DEADLINE - $(date +%s) )) start rc status
    [ "$left" -lt "$limit" ] && limit=$left
    start=$(date +%s)
    if [ "$limit" -le 0 ]; then
        status="SKIPPED (no time left)"
    else
        echo "=== $name (limit ${limit}s): $*" > "$LOG/$name.log"
        timeout --signal=INT --kill-after=10 "$limit" "$@" >> "$LOG/$name.log" 2>&1
        rc=$?
        case $rc in
            0) status=ok ;;
            124|137) status="TIMEOUT after ${limit}s" ;;
            *) status="FAILED (exit $rc)" ;;
        esac
        tail -n 25 "$LOG/$name.log"
    fi
    NAMES+=("$name"); STATUS+=("$status"); SECONDS_TAKEN+=($(( $(date +%s) - start )))
    echo "--- $name: $status"
}

# ----------------------------------------------------------------------------- data and sizes
DATA_NOTE="Qwen2.5 tokenizer from $TOKENIZER, MATH data from $DATA_DIR"
TRAIN_DATA="$DATA_DIR/math_train.jsonl"
HELDOUT_DATA="$DATA_DIR/math500.jsonl"
if [ $SMOKE = 1 ] || [ ! -f "$TOKENIZER/tokenizer.json" ] || [ ! -f "$TRAIN_DATA" ] || [ ! -f "$HELDOUT_DATA" ]; then
    WHY="no Qwen2.5 tokenizer.json at '$TOKENIZER' or no math_train / math500 in $DATA_DIR"
    [ $SMOKE = 1 ] && WHY="--cpu-smoke"
    DATA_NOTE="NOT the real data ($WHY): the runs use the project's character tokenizer and built-in synthetic problems"
    TOKENIZER="$LOG/fallback/tokenizer"
    TRAIN_DATA="$LOG/fallback/train.jsonl"
    HELDOUT_DATA="$LOG/fallback/heldout.jsonl"
    python - "$LOG/fallback" <<'EOF' || { echo "could not write the fallback data"; exit 2; }
import json, sys
from pathlib import Path
import data, tiny
out = Path(sys.argv[1])
tiny.make_tiny_tokenizer(out / "tokenizer")
for name, n, split in (("train.jsonl", 512, "train"), ("heldout.jsonl", 64, "heldout")):
    rows = tiny.synthetic_problems(n, seed=0, split=split)
    (out / name).write_text("".join(json.dumps({"problem": r["problem"], "answer": r["answer"]}) + "\n" for r in rows))
EOF
fi
echo "data: $DATA_NOTE" | tee "$LOG/data.txt"

if [ $SMOKE = 1 ]; then
    # a 2-layer Qwen2-shaped model folder with random weights and the character tokenizer
    MODEL="$LOG/fallback/smoke_model"
    python - "$MODEL" "$TOKENIZER" <<'EOF' || exit 2
import sys
from model import ModelConfig, Transformer, save_model
cfg = ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)
m = Transformer(cfg)
m.init_weights()
save_model(m, sys.argv[1], tokenizer_dir=sys.argv[2])
EOF
    RUN=(--model "$MODEL" --device cpu --dtype float32 --prompts-per-step 4 --group-size 4 --mini-batches 2
         --max-response-len 16 --max-prompt-len 256 --rollout-batch 16 --eval-prompts 4 --grad-checkpoint)
    FSDP_RUN=("${RUN[@]}")
    EVAL_N=2 EVAL_LIMIT=4 EVAL_NEW=16
    BENCH_TRAIN=(--device cpu --smoke --compile off)
    BENCH_FIXED=(--device cpu --tiny)
    BENCH_RL=(--device cpu --tiny --prompts 8 --new-tokens 60 --mean-len 20)
    TESTS_KERNELS=(tests/test_sampler.py -k "prefix_attention_kernel_matches")
    TESTS_COMPILE=(tests/test_sampler.py -k "compile_failure_falls_back")
    TESTS_REST=(tests/test_train.py -k "no_gradient_outlives")
else
    RUN=(--model qwen-1.5b --init random --tokenizer "$TOKENIZER" --device cuda --prompts-per-step 16
         --group-size 8 --mini-batches 2 --max-response-len 256 --rollout-batch 128 --eval-prompts 32
         --grad-checkpoint)
    FSDP_RUN=("${RUN[@]}")
    EVAL_N=4 EVAL_LIMIT=32 EVAL_NEW=256
    BENCH_TRAIN=(--batch 8 --seq 1024 --iters 2 --compile on,off)
    BENCH_FIXED=(--shapes 64x8 --new-tokens 256)
    BENCH_RL=(--prompts 64 --static-batches 1)
    TESTS_KERNELS=(tests/test_sampler.py -m gpu -k "prefix_kernel or prefill or cuda_graph_matches")
    TESTS_COMPILE=(tests/test_sampler.py -m gpu -k "compiles_once_28")
    TESTS_REST=(tests/ -m gpu -k "not prefix_kernel and not prefill and not cuda_graph_matches and not compiles_once_28")
fi
COMMON=(--data "$TRAIN_DATA" --heldout "$HELDOUT_DATA" --save-every 0)
# train.py with every group's rewards forced to alternate 0, 1, 0, 1 (random weights never answer right):
# without it no row would have an advantage, and the update, AdamW's state and its resume would go unchecked.
# (The logged rewards and held-out pass@1 are then 0.5 by construction.)
TRAIN="$LOG/train_mixed_rewards.py"
cat > "$TRAIN" <<EOF
import sys, torch
sys.path.insert(0, "$(pwd)")
import rollout, train
rollout.training_rewards = lambda verdicts, finish, zero: torch.tensor([float(i % 2) for i in range(len(verdicts))])
train.main(sys.argv[1:])
EOF
export LOG DEVICE TOKENIZER HELDOUT_DATA EVAL_N EVAL_LIMIT EVAL_NEW TRAIN

# 3 steps with a held-out evaluation, --resume for a 4th, eval.py on the checkpoint (arguments: train.py's)
train_part() {
    python "$TRAIN" "$@" --steps 3 --eval-every 3 --out "$LOG/train" --overwrite &&
    python "$TRAIN" "$@" --steps 4 --eval-every 3 --out "$LOG/train" --resume &&
    python eval.py --model "$LOG/train/ckpt-000004/model" --tokenizer "$TOKENIZER" --data "$HELDOUT_DATA" \
        --device "$DEVICE" --n "$EVAL_N" --limit "$EVAL_LIMIT" --max-new-tokens "$EVAL_NEW" --out "$LOG/eval" \
        --no-plot --no-progress
}
# FSDP2 through torchrun on one process: 2 steps, --resume for a 3rd (arguments: train.py's)
fsdp_part() {
    torchrun --standalone --nproc_per_node 1 "$TRAIN" "$@" --fsdp --steps 2 --eval-every 0 --out "$LOG/fsdp" --overwrite &&
    torchrun --standalone --nproc_per_node 1 "$TRAIN" "$@" --fsdp --steps 3 --eval-every 0 --out "$LOG/fsdp" --resume
}
export -f train_part fsdp_part

# ----------------------------------------------------------------------------- the checks
check env 30 python -c "
import torch, transformers
print('torch', torch.__version__, '| transformers', transformers.__version__)
if torch.cuda.is_available():
    print('GPU:', torch.cuda.get_device_name(), '|', round(torch.cuda.get_device_properties(0).total_memory / 2**30), 'GiB')
else:
    assert $SMOKE == 1, 'no CUDA device'
    print('no GPU (--cpu-smoke)')
"
check kernels 170 python -m pytest -q -rA -p no:cacheprovider "${TESTS_KERNELS[@]}"
check compile28 90 python -m pytest -q -rA -p no:cacheprovider "${TESTS_COMPILE[@]}"
check gpu-tests 60 python -m pytest -q -rA -p no:cacheprovider "${TESTS_REST[@]}"
check train 140 bash -c 'train_part "$@"' train_part "${RUN[@]}" "${COMMON[@]}"
check fsdp 100 bash -c 'fsdp_part "$@"' fsdp_part "${FSDP_RUN[@]}" "${COMMON[@]}"
check memory 30 python - "$LOG/train" "$LOG/fsdp" <<'EOF'
# the pre-flight's expected peak against the measured peak of every step of each run (CUDA: the allocator's
# peak within the step; CPU: the process's peak RSS), with the CPU test's tolerance
import json, sys
from pathlib import Path
bad = 0
print(f"{'run':8s} {'step':>4s} {'measured GB':>12s} {'estimated GB':>13s} {'estimate / measured':>20s}")
for run in sys.argv[1:]:
    lines = [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    assert lines, f"{run}: no step logged"
    for m in lines:
        ratio = m["peak_mem_estimate_gb"] / m["peak_mem_gb"]
        ok = 0.85 < ratio < 1.35
        bad += not ok
        print(f"{Path(run).name:8s} {m['step']:4d} {m['peak_mem_gb']:12.2f} {m['peak_mem_estimate_gb']:13.2f} "
              f"{ratio:19.2f}{'' if ok else '  outside 0.85..1.35'}")
sys.exit(1 if bad else 0)
EOF
check bench-train 120 python bench/bench_train.py "${BENCH_TRAIN[@]}"
check bench-fixed 100 python bench/bench_sampler.py "${BENCH_FIXED[@]}"
check bench-rl 100 python bench/bench_sampler.py --workload rl "${BENCH_RL[@]}"

# ----------------------------------------------------------------------------- summary
failed=0
{
    echo "gpu_checks.sh $( [ $SMOKE = 1 ] && echo '--cpu-smoke ' )$(date -u +%Y-%m-%dT%H:%M:%SZ) | logs: $LOG"
    echo "data: $DATA_NOTE"
    printf '| %-12s | %-24s | %8s |\n' check status seconds
    printf '| %-12s | %-24s | %8s |\n' ------------ ------------------------ --------
    for i in "${!NAMES[@]}"; do
        printf '| %-12s | %-24s | %8s |\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECONDS_TAKEN[$i]}"
    done
} > "$LOG/summary.txt"
for st in "${STATUS[@]}"; do [ "$st" = ok ] || failed=$((failed + 1)); done
echo "$failed of ${#NAMES[@]} checks did not pass" >> "$LOG/summary.txt"
cat "$LOG/summary.txt"
[ "$failed" = 0 ]
