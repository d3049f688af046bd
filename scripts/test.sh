#!/usr/bin/env bash
# The whole check, as CI runs it (.ci/run): setup; the Release tree build/ with every ctest (the
# `gpu` label reports itself skipped without a GPU, run one process per executable by
# scripts/gpu_label_once.py there; the `mpi` label runs under mpirun with 1, 2 and 4 ranks, the
# `slurm` label under srun on a one-node Slurm cluster it starts, scripts/slurm_local.sh); the
# static kernel checks (nvcc, ptxas spills); an ASan/UBSan tree build-asan/ (clang) with the op,
# core, data and checkpoint suites and the fuzz targets of tests/fuzz; the emulated-CUDA tree
# build-emu/ under ThreadSanitizer with the `emu` label; then pytest against the package that
# pip installed from build/.
#   NURI_TEST_SKIP_ASAN=1  skips the ASan tree (quick local runs; never set in CI).
#   NURI_TEST_SKIP_EMU=1   skips the emulated-CUDA tree (quick local runs; never set in CI).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

start=$SECONDS
jobs=$(nproc)
logs=$(mktemp -d)
on_exit() {
  local rc=$?
  rm -rf "$logs"
  if ((rc != 0)); then
    printf '\n==== FAILED (exit %d) after %ds ====\n' "$rc" "$((SECONDS - start))"
  fi
}
trap on_exit EXIT

section() { printf '\n==== %s  [%ds] ====\n' "$*" "$((SECONDS - start))"; }

section "setup"
bash scripts/setup.sh --test

# nvcc lives in /usr/local/cuda/bin, which CI may not have on PATH; NURI_CUDA=AUTO finds it there.
if [[ -d /usr/local/cuda/bin && ":$PATH:" != *":/usr/local/cuda/bin:"* ]]; then
  export PATH="$PATH:/usr/local/cuda/bin"
fi
printf 'cores: %s  cmake: %s  nvcc: %s\n' "$jobs" "$(cmake --version | head -n1)" \
  "$(command -v nvcc || echo none)"
# The emulated-CUDA tree (build-emu/, near the end) compiles against the CUDA toolkit's headers,
# which Debian's main archive does not have: said now, not after the other trees' hour.
if [[ ${NURI_TEST_SKIP_EMU:-0} != 1 ]] &&
  [[ ! -f ${CUDA_HOME:-/usr/local/cuda}/include/cuda_runtime.h ]] &&
  [[ ! -f /usr/include/cuda_runtime.h ]]; then
  echo "test.sh: the emulated-CUDA tests need the CUDA toolkit's headers" \
    "(${CUDA_HOME:-/usr/local/cuda}/include/cuda_runtime.h is missing): install the toolkit" \
    "(NVIDIA's cuda-toolkit package) or set CUDA_HOME, or run with NURI_TEST_SKIP_EMU=1" >&2
  exit 2
fi

# ---- Release tree: build everything, run every test --------------------------------------------
section "configure build/ (Release, with the Python extension)"
# NURI_PTXAS_REPORT: ptxas's report of each kernel object kept beside it, for check-kernels below.
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DNURI_CUDA=AUTO -DNURI_MPI=ON \
  -DNURI_PYTHON=ON -DPython_EXECUTABLE="$root/.venv/bin/python" -DNURI_PTXAS_REPORT=ON
section "build build/"
cmake --build build --parallel "$jobs"
# The Python package from this tree: nuri._C and libnuri as just built (CUDA backend and MPI
# included), installed as users install it, for the pytest suite at the end. (ctest's tests that
# run Python import the tree's own build/python.)
section "pip install . from build/ (.venv)"
.venv/bin/pip install --quiet --disable-pip-version-check . \
  --config-settings=cmake.define.NURI_PREBUILT_TREE="$root/build"
section "ctest build/"
# Serial on purpose: each test uses every core through OpenMP/BLAS, and two tests sharing the
# cores make each OpenMP barrier wait for a descheduled thread (tens of times slower).
# The multi-process labels (dist, tcp, mpi, slurm) come after, one test per core: their ranks
# run one OpenMP thread each, and much of their time is waiting (rendezvous, hang timeouts).
# Without a GPU the `gpu` label is run by scripts/gpu_label_once.py, one process per executable
# (each case reports itself skipped either way; ~430 process starts cost a minute of CI).
multi='^(dist|tcp|mpi|slurm)$'
if nvidia-smi -L >/dev/null 2>&1; then
  ctest --test-dir build -LE "$multi" --output-on-failure --no-tests=error 2>&1 |
    tee "$logs/release.log"
  section "ctest -L 'dist|tcp|mpi|slurm' build/ (--parallel $jobs)"
  ctest --test-dir build -L "$multi" --parallel "$jobs" --output-on-failure --no-tests=error 2>&1 |
    tee "$logs/release_multi.log"
else
  ctest --test-dir build -LE "^gpu$|$multi" --output-on-failure --no-tests=error 2>&1 |
    tee "$logs/release.log"
  section "ctest -L 'dist|tcp|mpi|slurm' build/ (--parallel $jobs)"
  ctest --test-dir build -L "$multi" -LE '^gpu$' --parallel "$jobs" --output-on-failure \
    --no-tests=error 2>&1 | tee "$logs/release_multi.log"
  section "gpu label of build/ without a GPU (scripts/gpu_label_once.py)"
  python3 scripts/gpu_label_once.py build 2>&1 | tee "$logs/gpu_label.log"
fi

# ---- ASan/UBSan tree (clang): the op, core, data and checkpoint suites, and the fuzz targets ----
if [[ "${NURI_TEST_SKIP_ASAN:-0}" == 1 ]]; then
  section "build-asan/ skipped (NURI_TEST_SKIP_ASAN=1)"
else
  section "configure build-asan/ (clang 16, ASan/UBSan, libFuzzer, -O1 -g1)"
  # clang for libFuzzer (the readers of users' files are fuzzed here, tests/fuzz); -O1 -g1 (line
  # tables: enough for symbolized reports) compiles the sanitized library in half the time of
  # -O2 -g; the test files themselves are -O0 there (tests/CMakeLists.txt).
  CC=clang-16 CXX=clang++-16 cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DNURI_SANITIZE=ON -DNURI_FUZZ=ON -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" \
    -DNURI_BUILD_BENCHMARKS=OFF -DNURI_BUILD_EXAMPLES=OFF -DNURI_CUDA=OFF -DNURI_MPI=OFF
  # Only what these suites need: their executables (tests/CMakeLists.txt) and libnuri.
  section "build build-asan/ (test_ops, test_core, test_data, test_ckpt(_dist), the fuzz targets)"
  cmake --build build-asan --parallel "$jobs" --target test_ops test_core test_data test_ckpt \
    test_ckpt_dist \
    fuzz_targets
  section "ctest -L 'ops|core|data|ckpt|fuzz' build-asan/"
  # The suites one at a time (their ops use every core through OpenMP), then the fuzz tests
  # (label fuzz), one per core: each replays its committed seed corpus, then mutates it for
  # NURI_FUZZ_SECONDS (tests/fuzz/CMakeLists.txt) on one thread.
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  export ASAN_SYMBOLIZER_PATH=/usr/lib/llvm-16/bin/llvm-symbolizer
  ctest --test-dir build-asan -L '^(ops|core|data|ckpt)$' --output-on-failure \
    --no-tests=error 2>&1 | tee "$logs/asan.log"
  ctest --test-dir build-asan -L '^fuzz$' --parallel "$jobs" --output-on-failure \
    --no-tests=error 2>&1 | tee "$logs/asan_fuzz.log"
  unset ASAN_OPTIONS UBSAN_OPTIONS ASAN_SYMBOLIZER_PATH
fi

# ---- static checks of the real GPU build: registers, shared memory, spills -----------------------
# From build/'s kernel objects (sm_80 and sm_90a) and the ptxas reports kept beside them: no
# kernel compiled a second time.
if command -v nvcc >/dev/null; then
  section "scripts/check-kernels.sh --build build (sm_80, sm_90a)"
  bash scripts/check-kernels.sh --build build "$logs/kernels" 2>&1 | tee "$logs/kernels.log"
else
  section "scripts/check-kernels.sh skipped: no nvcc"
fi

# ---- emulated CUDA under ThreadSanitizer: the kernels and the emulator's self-tests -------------
if [[ "${NURI_TEST_SKIP_EMU:-0}" == 1 ]]; then
  section "build-emu/ skipped (NURI_TEST_SKIP_EMU=1)"
else
  section "configure build-emu/ (CUDA emulation, TSan, -O2 -g1)"
  # -g1 (line tables, all a race report's stacks need) compiles ~30 % faster than -g.
  cmake -S . -B build-emu -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" -DNURI_CUDA=OFF \
    -DNURI_CUDA_EMULATION=ON -DNURI_TSAN=ON -DNURI_NATIVE=OFF -DNURI_BUILD_BENCHMARKS=OFF \
    -DNURI_BUILD_EXAMPLES=OFF -DNURI_MPI=OFF
  section "build build-emu/ (test_ops on cuda-emu, test_emu, test_device_train, test_dp_device)"
  cmake --build build-emu --parallel "$jobs" --target test_ops test_emu test_device_train \
    test_dp_device
  section "ctest -L emu build-emu/"
  # Each emulated test is one OS thread (a block's threads are fibers): one per core.
  ctest --test-dir build-emu -L '^emu$' --parallel "$jobs" --output-on-failure --no-tests=error 2>&1 |
    tee "$logs/emu.log"
  # Under ThreadSanitizer no emulated test skips: a skip here is a race check that did not run
  # (a tree configured without NURI_TSAN skips them all), which must not pass as green.
  skipped=$(grep -c '\*\*\*Skipped' "$logs/emu.log" || true)
  if ((skipped > 0)); then
    echo "test.sh: $skipped emulated tests reported Skipped under build-emu/ (expected 0: is" \
      "NURI_TSAN on?)" >&2
    exit 1
  fi

  # The same emulated CUDA backend without TSan (whose per-thread cost makes a training step take
  # ~30 s): the 20-step training comparison against the CPU (tests/model/test_device_train.cpp)
  # and 8 data-parallel steps over the emulated NCCL (tests/dist/test_dp_device.cpp), and
  # nuri-train --backend cuda-emu on 1 process against 2 GPU ranks (tests/dist/same_run.sh), and
  # bench_comm_gpu's checked collectives on 2 emulated GPU ranks.
  section "configure build-emu-fast/ (CUDA emulation, no sanitizer)"
  cmake -S . -B build-emu-fast -G Ninja -DCMAKE_BUILD_TYPE=Release -DNURI_CUDA=OFF \
    -DNURI_CUDA_EMULATION=ON -DNURI_TSAN=OFF -DNURI_NATIVE=OFF -DNURI_BUILD_BENCHMARKS=ON \
    -DNURI_BUILD_EXAMPLES=ON -DNURI_MPI=OFF
  section "build build-emu-fast/ (test_device_train, test_dp_device, nuri-train, bench_comm_gpu)"
  cmake --build build-emu-fast --parallel "$jobs" --target test_device_train test_dp_device \
    test_memory_limit_device test_plan_device nuri-train bench_comm_gpu
  section "ctest -L emu build-emu-fast/ (training on cuda-emu vs the CPU; over emulated NCCL)"
  # Two at a time: the 2-rank jobs start first (their COST), the one-process tests beside them.
  ctest --test-dir build-emu-fast -L '^emu$' -R 'DeviceTraining|Recomputation|Stages|emu\.(dp|tp|pp)\.|emu\.plan|emu\.bench\.' \
    --parallel "$jobs" --output-on-failure --no-tests=error 2>&1 | tee "$logs/emu_fast.log"
fi

# ---- Python: the pytest suite against the package installed from build/ ----------------------
section "pytest python/tests"
# NURI_BUILD_DIR: where tests find the C++ programs they compare against (build/examples/...).
# NURI_EXPECT_CUDA: the package was built where nvcc was found, so it must hold the CUDA backend.
expect_cuda=0
command -v nvcc >/dev/null && expect_cuda=1
NURI_EXPECT_CUDA=$expect_cuda NURI_BUILD_DIR="$root/build" .venv/bin/python -m pytest -q -p no:cacheprovider --durations=10 python/tests 2>&1 |
  tee "$logs/pytest.log"

# ---- summary ------------------------------------------------------------------------------------
section "summary"
if [[ -f "$logs/release.log" ]]; then
  echo "build/ (Release), all tests but the multi-process labels, then those:"
  grep -E 'tests passed|tests failed' "$logs/release.log" | tail -n 1
  grep -E 'tests passed|tests failed' "$logs/release_multi.log" | tail -n 1
fi
if [[ -f "$logs/release.log" ]]; then
  echo "  of which reported Skipped: $(cat "$logs"/release*.log | grep -c '\*\*\*Skipped' || true)" \
    "(the gpu label where run per case without a GPU)"
fi
if [[ -f "$logs/gpu_label.log" ]]; then
  tail -n 1 "$logs/gpu_label.log"
fi
if [[ -f "$logs/kernels.log" ]]; then
  echo "check-kernels.sh:"
  tail -n 1 "$logs/kernels.log"
fi
if [[ -f "$logs/emu.log" ]]; then
  echo "build-emu/ (CUDA emulation, TSan), -L emu:"
  grep -E 'tests passed|tests failed' "$logs/emu.log" | tail -n 1
  echo "  of which reported Skipped: $(grep -c '\*\*\*Skipped' "$logs/emu.log" || true)" \
    "(expected 0)"
fi
if [[ -f "$logs/emu_fast.log" ]]; then
  echo "build-emu-fast/ (CUDA emulation), training on cuda-emu vs the CPU and over emulated NCCL:"
  grep -E 'tests passed|tests failed' "$logs/emu_fast.log" | tail -n 1
fi
if [[ -f "$logs/asan.log" ]]; then
  echo "build-asan/ (clang ASan/UBSan), -L 'ops|core|data|ckpt', then -L fuzz:"
  grep -E 'tests passed|tests failed' "$logs/asan.log" | tail -n 1
  grep -E 'tests passed|tests failed' "$logs/asan_fuzz.log" | tail -n 1
fi
if [[ -f "$logs/pytest.log" ]]; then
  echo "pytest python/tests:"
  grep -E '[0-9]+ (passed|failed)' "$logs/pytest.log" | tail -n 1
fi
printf 'total time: %ds\n' "$((SECONDS - start))"
