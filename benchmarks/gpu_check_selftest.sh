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
# A stand-in ctest that records its arguments and exits as `timeout` reports a command it
# stopped (124).
cat >"$tmp/bin/ctest" <<EOF
#!/bin/sh
echo "\$*" >"$tmp/ctest.args"
exit 124
EOF
chmod +x "$tmp/bin/nvidia-smi" "$tmp/bin/ctest"
fails=0
check() {  # what, condition...
  local what=$1
  shift
  if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; fails=$((fails + 1)); fi
}
gc() {  # out dir, then env assignments; runs gpu-check.sh with the stand-in first on PATH
  local o=$1
  shift
  env PATH="$tmp/bin:$PATH" CUDA_VISIBLE_DEVICES= "$@" bash "$root/scripts/gpu-check.sh" --quick "$build" "$tmp/$o" \
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

# A deadline with a leading zero is decimal seconds ("08": 8), here too short for any step.
gc octal FAKE_CC=9.0 NURI_GPU_STEPS="matmul" NURI_GPU_DEADLINE=08
rc=$?
check "NURI_GPU_DEADLINE=08 is 8 s: the step not run, exit 3" \
  test $rc -eq 3 -a "$(grep -c "left of NURI_GPU_DEADLINE=8$" "$tmp/octal/steps.txt")" -eq 1

# The tests step stopped: by the deadline (not a failure: left out, exit 3; ctest was told
# to stop starting tests in time, --stop-time), or at its own 30-minute limit (exit 4).
gc cut FAKE_CC=9.0 NURI_GPU_STEPS="tests" NURI_GPU_DEADLINE=60
rc=$?
check "a step cut short by the deadline is left out (exit 3), ctest given --stop-time" \
  test $rc -eq 3 -a "$(grep -c -- "--stop-time [0-9][0-9]:[0-9][0-9]:[0-9][0-9]$" "$tmp/ctest.args")" -eq 1
check "steps.txt: the tests step not finished, stopped by the deadline" \
  test "$(sed -E 's/after [0-9]+ s/after N s/' "$tmp/cut/steps.txt")" = \
  "ctest -L gpu: not finished, stopped after N s by NURI_GPU_DEADLINE=60"
gc own_limit FAKE_CC=9.0 NURI_GPU_STEPS="tests"
rc=$?
check "a step stopped at its own limit fails with 4 (not 124), no --stop-time" \
  test $rc -eq 4 -a "$(grep -c -- "--stop-time" "$tmp/ctest.args")" -eq 0
check "steps.txt: the tests step stopped at its limit" \
  test "$(cat "$tmp/own_limit/steps.txt")" = "ctest -L gpu (stopped at its limit, 1800 s): exited 4"
check "without the matmul_sm90 step the label runs whole but the benchmarks (-E ^bench\\.)" \
  grep -qF -- '-E ^bench\. -j' "$tmp/ctest.args"
# With the matmul_sm90 step in the run on an sm_90 device, that step runs the matmul suite on
# NURI_GEMM=sm90 itself, and the label's copy (sm90gemm.*) is left out of the tests step.
gc sm90_suite_once FAKE_CC=9.0 NURI_GPU_STEPS="tests matmul_sm90" NURI_GPU_DEADLINE=60
check "with the matmul_sm90 step, ctest leaves out sm90gemm.* too" \
  grep -qF -- '-E ^(bench|sm90gemm)\. -j' "$tmp/ctest.args"

if ((fails)); then
  for f in "$tmp"/*.log; do echo "---- $f"; cat "$f"; done
  exit 1
fi
echo "gpu_check_selftest.sh: all checks passed"
