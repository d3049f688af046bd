#!/usr/bin/env bash
# Builds here what `scripts/gpu-check.sh` runs, for a lent GPU machine that cannot build it: one
# with CUDA, CMake and Python but none of nuri's Debian packages (OpenBLAS, GoogleTest,
# toml++, ...), no network, and minutes of device time that a build would eat.
#   usage: bash scripts/device-kit.sh [BUILD_DIR (build-device)] [KIT_DIR (.device-kit)]
# after `bash scripts/setup.sh --test` on a fresh machine (the Debian packages it links, and
# .venv's cuDNN frontend headers).
# BUILD_DIR: a Release tree for that machine: CUDA for NURI_KIT_ARCHS (default 90a: the H100s
# and H200s lent here; "80;90a" (or "80 90a") for an A100 or RTX 3090/4090 too), no -march=native (the GPU
# machine's CPU is another), Eigen instead of OpenBLAS, no MPI, the Python extension for
# NURI_KIT_PYTHON (default: a python3.12 found here, the version the lent machines run; none
# found: no extension, and the Python test of the gpu label is not run there). Only the
# targets gpu-check.sh runs are built.
# KIT_DIR/kit.tar.xz: those targets, the tree's ctest files, kit-lib/ with the shared libraries
# they need that a CUDA machine may lack (found with ldd; the CUDA libraries themselves are
# the machine's own) and kit-files.txt, the compiled sources; KIT_DIR/kit.txt: where it was
# built from (root, tree, commit) and a hash of those sources, which `scripts/gpu-lease.sh`
# reads there. Carry KIT_DIR (it is git-ignored) with the call:
#   device run: carry [".device-kit"], command "bash scripts/gpu-lease.sh"
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
tree=${1:-build-device}
kit=${2:-.device-kit}
[[ $tree == /* ]] || tree=$root/$tree
[[ $kit == /* ]] || kit=$root/$kit
archs=${NURI_KIT_ARCHS:-90a}
archs=${archs// /;}  # CMake's list: "80 90a" given as it reads more easily becomes "80;90a"

py=${NURI_KIT_PYTHON:-}
if [[ -z $py ]]; then
  # The first python3.12 that runs (a pyenv shim of a version not selected does not).
  for c in "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 \
    "$(command -v python3.12 || true)"; do
    if [[ -x $c ]] && "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
      py=$c
      break
    fi
  done
fi
pyargs=(-DNURI_PYTHON=OFF)
if [[ -n $py ]]; then
  pyargs=(-DNURI_PYTHON=ON -DPython_EXECUTABLE="$py")
  echo "device-kit.sh: the Python extension for $("$py" --version) ($py)"
else
  echo "device-kit.sh: no python3.12 here (NURI_KIT_PYTHON): the kit has no Python extension"
fi

mkdir -p "$tree"
cmake -S . -B "$tree" -G Ninja -DCMAKE_BUILD_TYPE=Release -DNURI_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$archs" -DNURI_NATIVE=OFF -DNURI_BLAS=eigen -DNURI_MPI=OFF \
  -DNURI_BUILD_EXAMPLES=OFF "${pyargs[@]}" >"$tree/kit-configure.log" 2>&1 ||
  { cat "$tree/kit-configure.log"; exit 1; }
targets=(nuri test_ops_gpu test_device_train_gpu bench_matmul_gpu bench_attention_gpu bench_train)
[[ -n $py ]] && targets+=(_C)
cmake --build "$tree" --parallel "${NURI_KIT_JOBS:-$(nproc)}" --target "${targets[@]}"

# What travels: the built files, and every CTestTestfile.cmake and gtest_discover_tests list of
# the tree (ctest -L gpu reads them; the tests of targets not built stay out of that label).
rm -rf "$kit"
mkdir -p "$kit/stage"
files=(CMakeCache.txt)
while IFS= read -r f; do files+=("$f"); done < <(cd "$tree" && find . \( -name CTestTestfile.cmake \
  -o -name '*_tests.cmake' -o -name '*_include.cmake' \) -printf '%P\n')
bins=(tests/test_ops_gpu tests/test_device_train_gpu benchmarks/bench_matmul_gpu
  benchmarks/bench_attention_gpu benchmarks/bench_train)
files+=("${bins[@]}")
while IFS= read -r f; do files+=("$f"); done < <(cd "$tree" && find . -maxdepth 1 -name 'libnuri.so*' -printf '%P\n')
[[ -n $py ]] && files+=(python/nuri)
(cd "$tree" && tar -cf - "${files[@]}") | tar -xf - -C "$kit/stage"

# Shared libraries outside the CUDA toolkit, libc and the C++ runtime (which a CUDA machine
# has), as ldd resolves them here; gpu-lease.sh uses each only where that machine lacks it.
mkdir -p "$kit/stage/kit-lib"
objs=("${bins[@]/#/$tree/}" "$tree"/libnuri.so)
[[ -n $py ]] && objs+=("$tree"/python/nuri/_C*.so)
ldd "${objs[@]}" 2>/dev/null | awk '/=> \// {print $1, $3}' | sort -u |
  while read -r name path; do
    case $name in
      libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libstdc++.so* | \
        libgcc_s.so* | libcuda.so* | libcudart.so* | libcublas*.so* | libcudnn*.so* | libnccl.so* | \
        libnvrtc*.so* | libnvJitLink*.so* | linux-vdso*) ;;
      libnuri.so*) ;;
      *) cp -L "$path" "$kit/stage/kit-lib/$name" ;;
    esac
  done
# The sources compiled into it, listed with a hash of their contents, which gpu-lease.sh checks
# against the tree it is given there (a kit of other sources would measure another code).
git ls-files -co --exclude-standard -- CMakeLists.txt cmake csrc include kernels python/src \
  python/CMakeLists.txt tests benchmarks | grep -E '\.(cpp|h|hpp|cu|cuh|cmake|in)$|CMakeLists\.txt$' |
  sort >"$kit/stage/kit-files.txt"
sources=$(tr '\n' '\0' <"$kit/stage/kit-files.txt" | xargs -0 sha256sum 2>&1 | sha256sum | cut -c1-16)
{
  echo "root=$root"
  echo "tree=$tree"
  echo "commit=$(git rev-parse HEAD) $(git status --short | wc -l) changed files"
  echo "sources=$sources ($(wc -l <"$kit/stage/kit-files.txt") files)"
  echo "archs=$archs"
  echo "python=${py:+$("$py" --version 2>&1)}"
  echo "built=$(date -u +%FT%TZ)"
} >"$kit/stage/kit.txt"
cp "$kit/stage/kit.txt" "$kit/kit.txt"
XZ_OPT=-6T0 tar -cJf "$kit/kit.tar.xz" -C "$kit/stage" .
rm -rf "$kit/stage"
size=$(stat -c %s "$kit/kit.tar.xz")
echo "device-kit.sh: $kit/kit.tar.xz, $((size / 1024 / 1024)) MiB; libraries carried: $(tar -tJf "$kit/kit.tar.xz" | grep -c '^./kit-lib/.' || true)"
cat "$kit/kit.txt"
# The device tool takes 64 MiB with the working tree; keep room for the tree.
if ((size > 56 * 1024 * 1024)); then
  echo "device-kit.sh: the kit is over 56 MiB, too large to carry beside the working tree" >&2
  exit 1
fi
