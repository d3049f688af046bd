#!/usr/bin/env bash
# What needs a real GPU, on a machine that has one: the `gpu` test label and the GPU benchmarks,
# run on an already-built real-CUDA tree (`bash scripts/test.sh` or `cmake --build build` first;
# on a lent machine that cannot build, `scripts/device-kit.sh` here and `scripts/gpu-lease.sh`
# there).
#   usage: bash scripts/gpu-check.sh [--quick] [BUILD_DIR (build)] [OUT_DIR (gpu-check-out)]
# Writes into OUT_DIR: info.txt (device and toolkit), tests.log and tests.xml (ctest -L gpu,
# JUnit), matmul.jsonl, attention.jsonl, attention_fwd_nuri.jsonl and attention_fwd_nuri128.jsonl
# (the forward on 64- and 128-row query blocks), generate.jsonl; matmul_sm90.jsonl,
# matmul_sm90_per_tile.jsonl (its grid a block a tile, not persistent) and attention_sm90.jsonl
# too on an H100/H200 (the sm_90a kernels); train.jsonl (one JSON object per measurement; see
# benchmarks/README.md), bench.log (the benchmarks' tables and messages) and steps.txt (each
# step's exit status and seconds, or why it did not run). Exit status: the first failing step's
# (ctest's or a benchmark's; 4 for one stopped at its own time limit: 30 min for ctest, 3 to 7
# for a benchmark), else 3 when the deadline left a step out or cut one short; 77 when no CUDA
# device is visible.
#   NURI_GPU_STEPS     the steps, in the order given (default "tests train matmul matmul_sm90
#                      attention attention_sm90 generate"): tests = ctest -L gpu; train = the
#                      training steps against PyTorch; matmul = nuri's GEMM against cuBLASLt;
#                      matmul_sm90 = the matmul suite on the sm_90a GEMM and both its grids
#                      against cuBLASLt;
#                      attention = every path and the 64- and 128-row forwards against SDPA;
#                      attention_sm90 = the sm_90a kernels against SDPA (the _sm90 steps run on
#                      compute capability 9.0 only); generate = sampling with the key/value
#                      cache against transformers' generate() and the decoding kernel unsplit
#   NURI_GPU_DEADLINE  seconds from the start within which every step must end (default none):
#                      each step's time limit is cut to what is left, less 15 s, and a step with
#                      under 30 s left is not started (steps.txt says so), so a lease of fixed
#                      length ends with every result written
#   NURI_GPU_JOBS      tests run at once on the device (default 4)
#   NURI_GPU_BENCH=0   run the tests only; NURI_GPU_BENCHES "train matmul attention generate" (the old
#                      form of NURI_GPU_STEPS: the tests first, the _sm90 steps with theirs)
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

deadline=${NURI_GPU_DEADLINE:-0}
[[ $deadline =~ ^[0-9]+$ ]] || {
  echo "gpu-check.sh: NURI_GPU_DEADLINE must be a whole number of seconds, not '$deadline'" >&2
  exit 2
}
deadline=$((10#$deadline))  # "08" is eight seconds, not a bad octal number
if [[ -n ${NURI_GPU_STEPS:-} ]]; then
  steps=$NURI_GPU_STEPS
elif [[ ${NURI_GPU_BENCH:-1} == 0 ]]; then
  steps=tests
else
  steps=tests
  for b in ${NURI_GPU_BENCHES:-train matmul attention generate}; do
    steps+=" $b"
    [[ $b == matmul || $b == attention ]] && steps+=" ${b}_sm90"
  done
fi
for s in $steps; do
  case $s in
    tests | train | matmul | matmul_sm90 | attention | attention_sm90 | generate) ;;
    *)
      echo "gpu-check.sh: unknown step '$s' in NURI_GPU_STEPS (tests train matmul matmul_sm90" \
        "attention attention_sm90 generate)" >&2
      exit 2
      ;;
  esac
done

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check.sh: no CUDA device visible (nvidia-smi -L failed); nothing to run" >&2
  exit 77
fi
# There is a GPU: a suite that cannot use it (a driver older than the CUDA runtime) fails
# rather than skipping (tests/ops/gpu_main.cpp).
export NURI_REQUIRE_GPU=1
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
incomplete=0
: >"$out/steps.txt"
: >"$out/bench.log"
step() { printf '\n==== %s  [%ds] ====\n' "$*" "$SECONDS"; }
# The seconds a step of `limit` may take: limit, or what the deadline leaves less 15 s; 0 when
# that is under 30 s.
allowed() {
  local limit=$1 left
  ((deadline == 0)) && { echo "$limit"; return; }
  left=$((deadline - SECONDS - 15))
  ((left < 30)) && { echo 0; return; }
  echo $((left < limit ? left : limit))
}
note() { echo "$*" | tee -a "$out/steps.txt"; }
failed() {  # name, exit status: the script's status is the first failure's
  note "$1: exited $2"
  ((rc == 0)) && rc=$2
}
# A step: name, seconds allowed, log file, command... (its output appended to the log, whose
# last lines are shown). A step the deadline cut short is left out, not failed; one stopped at
# its own limit fails with 4 (not timeout's 124, which the device tool reads as its own).
run_step() {
  local name=$1 full=$2 limit log=$3 t0=$SECONDS r
  limit=$(allowed "$full")
  shift 3
  step "$name"
  if ((limit == 0)); then
    note "$name: not run, $((deadline - SECONDS)) s left of NURI_GPU_DEADLINE=$deadline"
    incomplete=1
    return
  fi
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  r=$?
  tail -n 25 "$log"
  if ((r == 124 || r == 137)) && ((limit < full)); then
    note "$name: not finished, stopped after $limit s by NURI_GPU_DEADLINE=$deadline"
    incomplete=1
  elif ((r == 124 || r == 137)); then
    failed "$name (stopped at its limit, $limit s)" 4
  elif ((r != 0)); then
    failed "$name" "$r"
  else
    note "$name: ok, $((SECONDS - t0)) s"
  fi
}
bench() { local name=$1 limit=$2; shift 2; run_step "$name" "$limit" "$out/bench.log" "$@"; }

q=()
((quick)) && q=(--quick)
c=()
[[ ${NURI_GPU_COMPILE:-0} == 1 ]] && c=(--compile)
sm90=0
nvidia-smi --query-gpu=compute_cap --format=csv,noheader | grep -q '^9\.0' && sm90=1
do_tests() {
  # Under a deadline ctest stops starting tests 20 s before its limit (--stop-time, a time of
  # day), so that it ends by itself and writes its summary and JUnit file.
  # The matmul_sm90 step runs the matmul suite on NURI_GEMM=sm90 itself (first, on a lease), so
  # the label's copy of it (sm90gemm.*) is left out when that step runs too.
  local limit stop=() skip='^bench\.'
  [[ " $steps " == *" matmul_sm90 "* ]] && ((sm90)) && skip='^(bench|sm90gemm)\.'
  limit=$(allowed 1800)
  ((deadline && limit > 40)) && stop=(--stop-time "$(date -d "+$((limit - 20)) sec" +%T)")
  : >"$out/tests.log"
  run_step "ctest -L gpu" 1800 "$out/tests.log" ctest --test-dir "$build" -L gpu -E "$skip" \
    -j "${NURI_GPU_JOBS:-4}" --timeout 300 --output-on-failure --output-junit "$out/tests.xml" \
    "${stop[@]}"
  grep -E 'tests passed|Failed|\*\*\*|Not Run|Timeout' "$out/tests.log" 2>/dev/null | tail -n 40
}
do_train() {
  bench "train_throughput.py --device cuda" 400 "$py" "$root/benchmarks/train_throughput.py" \
    --device cuda "${q[@]}" "${c[@]}" --bin "$build/benchmarks/bench_train" --json "$out/train.jsonl"
  if [[ ${NURI_GPU_PROFILE:-0} == 1 ]]; then
    local ncu dump
    ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)
    dump=$(mktemp -d)
    bench "ncu: two gpt2-124M training steps" 300 bash -c "printf 'step\nstep\nquit\n' | \
      '$ncu' --metrics gpu__time_duration.sum --clock-control none --cache-control none --csv \
        --page raw '$build/benchmarks/bench_train' --model gpt2-124M --B 8 --T 1024 \
        --dump '$dump' --backend cuda > '$out/profile.csv' 2>&1"
    rm -rf "$dump"
    "$py" "$root/benchmarks/kernel_profile.py" --steps 2 "$out/profile.csv" | tail -n 30
  fi
}
do_matmul() {
  bench "bench_matmul_gpu" 240 "$build/benchmarks/bench_matmul_gpu" "${q[@]}" --json "$out/matmul.jsonl"
}
# On an H100/H200 nuri's sm_90a GEMM (NURI_GEMM=sm90): the matmul suite on it, then its three
# products against cuBLASLt in the same alternation.
do_matmul_sm90() {
  bench "test_ops_gpu, matmul suite on NURI_GEMM=sm90" 300 env NURI_GEMM=sm90 \
    "$build/tests/test_ops_gpu" --gtest_filter='Ops/MatmulTest.*' --gtest_brief=1
  bench "bench_matmul_gpu --nuri sm90" 240 "$build/benchmarks/bench_matmul_gpu" "${q[@]}" \
    --nuri sm90 --pass fwd,dgrad,wgrad --json "$out/matmul_sm90.jsonl"
  # The same with a block a tile instead of the persistent grid: each run's ratio to cuBLASLt
  # in its own alternation, so the two ratios show what persistence gives.
  bench "bench_matmul_gpu --nuri sm90, NURI_GEMM_SM90_GRID=tiles" 240 \
    env NURI_GEMM_SM90_GRID=tiles "$build/benchmarks/bench_matmul_gpu" "${q[@]}" \
    --nuri sm90 --pass fwd,dgrad,wgrad --json "$out/matmul_sm90_per_tile.jsonl"
}
do_attention() {
  bench "attention_gpu.py" 240 "$py" "$root/benchmarks/attention_gpu.py" "${q[@]}" \
    --bin "$build/benchmarks/bench_attention_gpu" --json "$out/attention.jsonl"
  # The sm_80-class forward on 64-row (nuri) and 128-row (nuri128) query blocks, each against
  # SDPA in the same alternation: auto (above) measures both per shape; these rows show which
  # wins.
  local path
  for path in nuri nuri128; do
    bench "attention_gpu.py --passes fwd, NURI_ATTENTION=$path" 180 env NURI_ATTENTION=$path \
      "$py" "$root/benchmarks/attention_gpu.py" "${q[@]}" --passes fwd \
      --bin "$build/benchmarks/bench_attention_gpu" --json "$out/attention_fwd_$path.jsonl"
  done
}
# On an H100/H200 the sm_90a kernels (NURI_ATTENTION=sm90) against SDPA in the same alternation.
do_attention_sm90() {
  bench "attention_gpu.py, NURI_ATTENTION=sm90" 240 env NURI_ATTENTION=sm90 "$py" \
    "$root/benchmarks/attention_gpu.py" "${q[@]}" \
    --bin "$build/benchmarks/bench_attention_gpu" --json "$out/attention_sm90.jsonl"
}
# Sampling gpt2-124M with the key/value cache (one row a token: attention_decode, its keys split
# over blocks) against transformers' generate() and against the decoding kernel unsplit.
do_generate() {
  local new=448
  ((quick)) && new=192
  bench "generate.py --device cuda" 240 env PYTHONPATH="$build/python" "$py" \
    "$root/benchmarks/generate.py" --device cuda --prompt 64 --new "$new" --reps 3 --no-whole \
    --json "$out/generate.jsonl"
}

for s in $steps; do
  if [[ $s == *_sm90 ]] && ((!sm90)); then
    note "$s: not run, the device is not compute capability 9.0"
    continue
  fi
  "do_$s"
done
step "steps"
cat "$out/steps.txt"
# Every step that ran passed, but the deadline left some out: not a pass.
((rc == 0 && incomplete)) && rc=3
exit "$rc"
