#!/usr/bin/env bash
# Short check of graphinterp on a machine with a GPU (under 5 minutes on one GPU), from the repository root:
#
#     bash benchmarks/gpu_check.sh            # fails at once if torch sees no CUDA device
#     bash benchmarks/gpu_check.sh cpu        # the same commands on the CPU (a dry run of the script)
#
# 1. the tests that need CUDA (their names or parameter ids contain "cuda", e.g. tests/test_cuda_paths.py[cuda];
#    they skip without a GPU, so here they must run),
# 2. GPU variants of the benchmarks, briefly (BSGC at 1024 and 4096; the MNIST training pipeline on a
#    subset when ../shared/datasets is there),
# 3. `graphinterp train --device cuda` on digits and `graphinterp analyze` of the result; with two or
#    more GPUs also `torchrun --nproc-per-node 2` (NCCL, one GPU per process).
# Every step prints its start time; any failure stops the script with a non-zero exit (set -euo pipefail).
set -euo pipefail

DEVICE="${1:-cuda}"
PY="${PYTHON:-python}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
START=$SECONDS

step() { printf '\n== %s (%s, %ds)\n' "$*" "$(date +%T)" "$((SECONDS - START))"; }

if [[ "$DEVICE" == cuda* ]]; then
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_check: error: torch finds no CUDA device (torch.cuda.is_available() is False)" >&2
        exit 1
    fi
    NGPU="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
    "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "-", torch.cuda.get_device_name(0))'
else
    NGPU=0
fi

step "1. tests that need CUDA"
# -rs lists skips: on a GPU machine none of these may say "needs CUDA"
"$PY" -m pytest -q -p no:cacheprovider -rs -k "cuda" tests/ | tee "$OUT/tests.txt"
if [[ "$DEVICE" == cuda* ]] && grep -q "needs CUDA" "$OUT/tests.txt"; then
    echo "gpu_check: error: CUDA tests were skipped although a GPU is present" >&2
    exit 1
fi

step "2a. BSGC benchmark on $DEVICE (1024, 4096; one round)"
"$PY" benchmarks/bench_bsgc.py --sizes 1024 4096 --no-wide --repeats 1 --gap 0 --device "$DEVICE"

step "2b. training pipeline benchmark on $DEVICE (MNIST subset, 1 epoch; skipped without ../shared/datasets)"
"$PY" benchmarks/bench_train.py --max-train 4096 --epochs 1 --warmup-epochs 1 --timing-steps 20 \
    --timing-blocks 2 --device "$DEVICE" --quiet

step "3a. graphinterp train --device $DEVICE on digits"
"$PY" -m graphinterp.cli train --dataset digits --k 4 --warmup-epochs 1 --epochs 3 --device "$DEVICE" --quiet \
    --out "$OUT/digits.pt"

step "3b. graphinterp analyze --device $DEVICE of the result"
"$PY" -m graphinterp.cli analyze "$OUT/digits.pt" --k 4 --device "$DEVICE"

if (( NGPU >= 2 )); then
    step "3c. torchrun --nproc-per-node 2 (NCCL, one GPU per process)"
    "$PY" -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29517 \
        -m graphinterp.cli train --dataset digits --k 4 --warmup-epochs 1 --epochs 3 --device cuda --quiet \
        --out "$OUT/ddp.pt"
    "$PY" -m graphinterp.cli analyze "$OUT/ddp.pt" --k 4 --device cuda
fi

step "gpu_check: all steps passed on $DEVICE"
