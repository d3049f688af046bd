#!/usr/bin/env bash
# scripts/gpu-check.sh's own logic without a GPU: its refusals, the order of NURI_GPU_STEPS, the
# _sm90 steps left out on another device, the deadline, steps.txt and the exit status. A
# stand-in nvidia-smi reports a device of compute capability FAKE_CC, and the benchmarks then
# find none and exit 77, which the script must report as their failure.
#   usage: gpu_check_selftest.sh BUILD_DIR (a real-CUDA tree with bench_matmul_gpu)
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "$1" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/bin"
cat >"$tmp/bin/nvidia-smi" <<'EOF'
#!/bin/sh
case "$*" in
  *compute_cap*) echo "$FAKE_CC" ;;
  *) echo "GPU 0: a stand-in for gpu_check_selftest.sh (no device)" ;;
esac
EOF
chmod +x "$tmp/bin/nvidia-smi"
fails=0
check() {  # what, condition...
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; fails=$((fails + 1)); fi
}
gc() {  # out dir, then env assignments; runs gpu-check.sh with the stand-in first on PATH
  local o=$1
  shift
  env PATH="$tmp/bin:$PATH" "$@" bash "$root/scripts/gpu-check.sh" --quick "$build" "$tmp/$o" \
    >"$tmp/$o.log" 2>&1
}

gc bad_step FAKE_CC=9.0 NURI_GPU_STEPS="tests trian"
check "an unknown step is refused (exit 2) by name" \
  test $? -eq 2 -a "$(grep -c "unknown step 'trian'" "$tmp/bad_step.log")" -eq 1
gc bad_deadline FAKE_CC=9.0 NURI_GPU_DEADLINE=8m
check "a deadline that is not whole seconds is refused (exit 2)" \
  test $? -eq 2 -a "$(grep -c "NURI_GPU_DEADLINE must be a whole number" "$tmp/bad_deadline.log")" -eq 1

# On an sm_86 device the _sm90 step is left out; the matmul benchmark runs and, finding no
# device, exits 77: the script's status.
gc sm86 FAKE_CC=8.6 NURI_GPU_STEPS="matmul_sm90 matmul"
rc=$?
check "a failing benchmark's status is the script's (77)" test $rc -eq 77
check "steps.txt: the _sm90 step left out on compute capability 8.6, then matmul's failure" \
  diff <(printf '%s\n' "matmul_sm90: not run, the device is not compute capability 9.0" \
    "bench_matmul_gpu: exited 77") "$tmp/sm86/steps.txt"

# Under a deadline that leaves under 30 s for the first step, nothing starts, in order.
gc deadline FAKE_CC=9.0 NURI_GPU_STEPS="matmul attention_sm90" NURI_GPU_DEADLINE=44
rc=$?
check "steps left out by the deadline are not a pass (exit 3)" test $rc -eq 3
check "steps.txt: each step not run for the deadline, in the order given" \
  test "$(sed -E 's/, [0-9]+ s left/, N s left/' "$tmp/deadline/steps.txt" | tr '\n' '|')" = \
  "bench_matmul_gpu: not run, N s left of NURI_GPU_DEADLINE=44|attention_gpu.py, NURI_ATTENTION=sm90: not run, N s left of NURI_GPU_DEADLINE=44|"

if ((fails)); then
  for f in "$tmp"/*.log; do echo "---- $f"; cat "$f"; done
  exit 1
fi
echo "gpu_check_selftest.sh: all checks passed"
