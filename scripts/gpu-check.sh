#!/usr/bin/env bash
# What needs a real GPU, on a machine that has one: the `gpu` test label and the GPU benchmarks,
# run on an already-built real-CUDA tree (`bash scripts/test.sh` or `cmake --build build` first).
#   usage: bash scripts/gpu-check.sh [--quick] [BUILD_DIR (build)] [OUT_DIR (gpu-check-out)]
# Writes into OUT_DIR: info.txt (device and toolkit), tests.log and tests.xml (ctest -L gpu,
# JUnit), matmul.jsonl, attention.jsonl, attention_fwd_nuri.jsonl and attention_fwd_nuri128.jsonl
# (the forward on 64- and 128-row query blocks), matmul_sm90.jsonl, matmul_sm90_per_tile.jsonl
# (its grid a block a tile, not persistent) and attention_sm90.jsonl too on an H100/H200 (the
# sm_90a kernels), train.jsonl (one JSON object per measurement; see
# benchmarks/README.md) and bench.log (the benchmarks' tables and messages). Exit status: ctest's,
# or the first failing benchmark's; 77 when no CUDA device is visible.
#   NURI_GPU_JOBS      tests run at once on the device (default 4)
#   NURI_GPU_BENCH=0   run the tests only
#   NURI_GPU_BENCHES   which benchmarks (default "train matmul attention")
#   NURI_GPU_COMPILE=1 the training benchmark also times PyTorch under torch.compile (slow start)
#   NURI_GPU_PROFILE=1 also profile.csv: every kernel of two gpt2-124M B=8 T=1024 training
#                      steps under Nsight Compute (ncu, kernel durations only; clocks and caches
#                      left alone), for benchmarks/kernel_profile.py to sum by kernel
set -uo pipefail

quick=0
if [[ ${1:-} == --quick ]]; then
  quick=1
  shift
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd) || exit 2
out=${2:-$root/gpu-check-out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
py=${PYTHON:-python3}

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check.sh: no CUDA device visible (nvidia-smi -L failed); nothing to run" >&2
  exit 77
fi
{
  date -u
  nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  "$py" -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' 2>&1
  grep -E '^(CMAKE_BUILD_TYPE|NURI_CUDA|CMAKE_CUDA_ARCHITECTURES):' "$build/CMakeCache.txt"
  echo "git: $(git -C "$root" rev-parse --short HEAD 2>/dev/null) $(git -C "$root" status --short | wc -l) changed files"
} >"$out/info.txt" 2>&1
cat "$out/info.txt"

rc=0
step() { printf '\n==== %s  [%ds] ====\n' "$*" "$SECONDS"; }

step "ctest -L gpu (the benchmarks run afterwards, one at a time)"
ctest --test-dir "$build" -L gpu -E '^bench\.' -j "${NURI_GPU_JOBS:-4}" --timeout 300 \
  --output-on-failure --output-junit "$out/tests.xml" >"$out/tests.log" 2>&1
rc=$?
grep -E 'tests passed|Failed|\*\*\*|Not Run|Timeout' "$out/tests.log" | tail -n 40

if [[ ${NURI_GPU_BENCH:-1} == 0 ]]; then
  exit "$rc"
fi

bench() {  # name, seconds allowed, command...
  local name=$1 limit=$2
  shift 2
  step "$name"
  timeout "$limit" "$@" >>"$out/bench.log" 2>&1
  local r=$?
  tail -n 25 "$out/bench.log"
  if ((r != 0)); then
    echo "gpu-check.sh: $name exited $r" | tee -a "$out/bench.log"
    ((rc == 0)) && rc=$r
  fi
}
q=()
((quick)) && q=(--quick)
c=()
[[ ${NURI_GPU_COMPILE:-0} == 1 ]] && c=(--compile)
want() { [[ " ${NURI_GPU_BENCHES:-train matmul attention} " == *" $1 "* ]]; }
want train && bench "train_throughput.py --device cuda" 400 "$py" "$root/benchmarks/train_throughput.py" \
  --device cuda "${q[@]}" "${c[@]}" --bin "$build/benchmarks/bench_train" --json "$out/train.jsonl"
if [[ ${NURI_GPU_PROFILE:-0} == 1 ]]; then
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
  dump=$(mktemp -d)
  bench "ncu: two gpt2-124M training steps" 300 bash -c "printf 'step\nstep\nquit\n' | \
    '$ncu' --metrics gpu__time_duration.sum --clock-control none --cache-control none --csv \
      --page raw '$build/benchmarks/bench_train' --model gpt2-124M --B 8 --T 1024 \
      --dump '$dump' --backend cuda > '$out/profile.csv' 2>&1"
  rm -rf "$dump"
  "$py" "$root/benchmarks/kernel_profile.py" --steps 2 "$out/profile.csv" | tail -n 30
fi
want matmul && bench "bench_matmul_gpu" 240 "$build/benchmarks/bench_matmul_gpu" "${q[@]}" --json "$out/matmul.jsonl"
sm90=0
nvidia-smi --query-gpu=compute_cap --format=csv,noheader | grep -q '^9\.0' && sm90=1
# On an H100/H200 nuri's sm_90a GEMM (NURI_GEMM=sm90): the matmul suite on it, then its three
# products against cuBLASLt in the same alternation.
if want matmul && ((sm90)); then
  bench "test_ops_gpu, matmul suite on NURI_GEMM=sm90" 300 env NURI_GEMM=sm90 \
    "$build/tests/test_ops_gpu" --gtest_filter='Ops/MatmulTest.*' --gtest_brief=1
  bench "bench_matmul_gpu --nuri sm90" 240 "$build/benchmarks/bench_matmul_gpu" "${q[@]}" \
    --nuri sm90 --pass fwd,dgrad,wgrad --json "$out/matmul_sm90.jsonl"
  # The same with a block a tile instead of the persistent grid: each run's ratio to cuBLASLt
  # in its own alternation, so the two ratios show what persistence gives.
  bench "bench_matmul_gpu --nuri sm90, NURI_GEMM_SM90_GRID=tiles" 240 \
    env NURI_GEMM_SM90_GRID=tiles "$build/benchmarks/bench_matmul_gpu" "${q[@]}" \
    --nuri sm90 --pass fwd,dgrad,wgrad --json "$out/matmul_sm90_per_tile.jsonl"
fi
want attention && bench "attention_gpu.py" 240 "$py" "$root/benchmarks/attention_gpu.py" "${q[@]}" \
  --bin "$build/benchmarks/bench_attention_gpu" --json "$out/attention.jsonl"
# The sm_80-class forward on 64-row (nuri) and 128-row (nuri128) query blocks, each against SDPA
# in the same alternation: auto (above) measures both per shape; these rows show which wins.
if want attention; then
  for path in nuri nuri128; do
    bench "attention_gpu.py --passes fwd, NURI_ATTENTION=$path" 180 env NURI_ATTENTION=$path \
      "$py" "$root/benchmarks/attention_gpu.py" "${q[@]}" --passes fwd \
      --bin "$build/benchmarks/bench_attention_gpu" --json "$out/attention_fwd_$path.jsonl"
  done
fi
# On an H100/H200 the sm_90a kernels (NURI_ATTENTION=sm90) against SDPA in the same alternation.
if want attention && ((sm90)); then
  bench "attention_gpu.py, NURI_ATTENTION=sm90" 240 env NURI_ATTENTION=sm90 "$py" \
    "$root/benchmarks/attention_gpu.py" "${q[@]}" \
    --bin "$build/benchmarks/bench_attention_gpu" --json "$out/attention_sm90.jsonl"
fi
exit "$rc"
