#!/usr/bin/env bash
# The GPU checks in one call of a lent machine, on the kit `scripts/device-kit.sh` built here:
# unpacks it, makes its paths and libraries resolve there, runs `scripts/gpu-check.sh --quick`
# within a deadline, and leaves the results in OUT_DIR as 3 files (the device tool brings back
# at most 8). Run from the repository root there:
#   usage: bash scripts/gpu-lease.sh [KIT_DIR (.device-kit)] [OUT_DIR ($OUT, else gpu-lease-out)]
#   NURI_LEASE_SECONDS   the deadline for gpu-check.sh (default 480: a 10-minute command limit
#                        less the unpacking and a margin)
#   NURI_GPU_STEPS       passed on; default here "matmul_sm90 attention_sm90 attention matmul
#                        tests train": the Hopper kernels' suite and timings first, since they
#                        are what only this machine can show, the whole gpu label after the
#                        benchmarks, which check their own outputs (generate in a lease of its
#                        own: NURI_GPU_STEPS=generate)
#   NURI_LEASE_FULL=1    without --quick
#   NURI_LEASE_STALE_OK=1  run a kit built from other sources than this tree's (refused
#                        otherwise: its numbers would be another code's)
# OUT_DIR: summary.txt (the kit, the libraries used, gpu-check's steps), gpu-check.tar.gz (all
# of gpu-check.sh's output), gpu-check.log (what it printed). Exit status: gpu-check.sh's (3: the
# deadline left steps out), 2 when the kit cannot be used.
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
kit=${1:-.device-kit}
out=${2:-${OUT:-$root/gpu-lease-out}}
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
say() { echo "$*" | tee -a "$summary"; }
[[ -f $kit/kit.tar.xz && -f $kit/kit.txt ]] || {
  say "gpu-lease.sh: no kit at $kit (build it with bash scripts/device-kit.sh and carry it)"
  exit 2
}
t0=$SECONDS
built_root=$(sed -n 's/^root=//p' "$kit/kit.txt")
built_tree=$(sed -n 's/^tree=//p' "$kit/kit.txt")
say "kit: $(tr '\n' ' ' <"$kit/kit.txt")"
say "here: $root"

# The kit's sources are this tree's: the hash of the files device-kit.sh listed, here.
want=$(sed -n "s/^sources=\([0-9a-f]*\).*/\1/p" "$kit/kit.txt")
have=$(tar -xJOf "$kit/kit.tar.xz" ./kit-files.txt | tr '\n' '\0' | xargs -0 sha256sum 2>&1 |
  sha256sum | cut -c1-16)
if [[ $want != "$have" ]]; then
  say "gpu-lease.sh: the kit was built from other sources than this tree's (hash $want, here $have):" \
    "rebuild it (bash scripts/device-kit.sh) or set NURI_LEASE_STALE_OK=1"
  [[ ${NURI_LEASE_STALE_OK:-0} == 1 ]] || exit 2
fi

# The tree's files name the paths they were built at (ctest's lists, RUNPATHs, the Python
# package's links to python/nuri). Unpacked at the same place relative to the root, and the
# build's root linked to this one where that path is free, every one of them resolves.
rel=${built_tree#"$built_root"/}
tree=$root/$rel
if [[ -e $tree && ! -f $tree/kit.txt ]]; then
  # The checkout the kit was built in (its tree is already there, built): nothing to unpack.
  say "gpu-lease.sh: $tree exists and was not unpacked from a kit; run scripts/gpu-check.sh on it"
  exit 2
fi
rm -rf "$tree" "$root/gpu-check-out"
mkdir -p "$tree"
tar -xJf "$kit/kit.tar.xz" -C "$tree" || { say "gpu-lease.sh: the kit did not unpack"; exit 2; }
if [[ $built_root != "$root" ]]; then
  if [[ -L $built_root && $(readlink -f "$built_root") == "$(readlink -f "$root")" ]]; then
    say "$built_root already links to $root"
  elif [[ ! -e $built_root && ! -L $built_root ]] && mkdir -p "$(dirname "$built_root")" &&
    ln -s "$root" "$built_root"; then
    say "linked $built_root -> $root"
  else
    # Taken: rewrite the paths in ctest's files instead (libnuri comes from the tree through
    # LD_LIBRARY_PATH, below, either way); the Python package's links stay broken, so its test
    # fails rather than importing something else.
    say "the build's root $built_root is taken here; rewriting ctest's paths to $root"
    find "$tree" -name '*.cmake' -exec sed -i "s#$built_root#$root#g" {} +
  fi
fi
# The gpu label's Python test runs the tree's .venv/bin/python: here, the machine's python3
# (a wrapper, not a link, so that a virtual environment's python keeps its packages).
if [[ ! -x $root/.venv/bin/python ]]; then
  mkdir -p "$root/.venv/bin"
  printf '#!/bin/sh\nexec %q "$@"\n' "$(command -v python3)" >"$root/.venv/bin/python"
  chmod +x "$root/.venv/bin/python"
fi

# Libraries: LD_LIBRARY_PATH gets only the folders that hold what the binaries lack (and cuDNN,
# which nuri opens at run time), the machine's own first (its Python packages' NVIDIA folders,
# then the CUDA toolkit's), the kit's copies last, so that torch in the same processes keeps
# finding its own.
cands=()
for d in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
  for l in "$d"/nvidia/*/lib "$d"/nvidia/cu*/lib; do [[ -d $l ]] && cands+=("$l"); done
done
for l in /usr/local/cuda/lib64 /usr/local/cuda/lib "$tree/kit-lib"; do [[ -d $l ]] && cands+=("$l"); done
path=$tree
use_dir_of() {  # a library name: the first candidate folder holding it joins the path
  local d
  for d in "${cands[@]}"; do
    if [[ -e $d/$1 ]]; then
      [[ :$path: == *":$d:"* ]] || path=$path:$d
      say "$1: $d"
      return 0
    fi
  done
  say "$1: not found here nor in the kit"
  return 1
}
bins=("$tree"/tests/test_ops_gpu "$tree"/tests/test_device_train_gpu "$tree"/benchmarks/bench_*
  "$tree"/libnuri.so)
[[ -n $(ls "$tree"/python/nuri/_C*.so 2>/dev/null) ]] && bins+=("$tree"/python/nuri/_C*.so)
for name in $(LD_LIBRARY_PATH=$tree ldd "${bins[@]}" 2>/dev/null | awk '/not found/ {print $1}' | sort -u); do
  use_dir_of "$name"
done
use_dir_of libcudnn.so.9 || say "(the cudnn attention path and its tests will say so)"
export LD_LIBRARY_PATH=$path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if LD_LIBRARY_PATH=$LD_LIBRARY_PATH ldd "${bins[@]}" 2>/dev/null | grep -q 'not found'; then
  say "gpu-lease.sh: still unresolved:"
  ldd "${bins[@]}" 2>/dev/null | grep 'not found' | sort -u | tee -a "$summary"
fi
say "python3: $(python3 -c 'import torch; t = torch.ones(4, device="cuda"); print("torch", torch.__version__, "on", torch.cuda.get_device_name(), "sum", float(t.sum()))' 2>&1 | tail -n 1)"

q=(--quick)
[[ ${NURI_LEASE_FULL:-0} == 1 ]] && q=()
export NURI_GPU_STEPS=${NURI_GPU_STEPS:-matmul_sm90 attention_sm90 attention matmul tests train}
export NURI_GPU_DEADLINE=${NURI_LEASE_SECONDS:-480}
say "unpacked in $((SECONDS - t0)) s; gpu-check.sh ${q[*]} $rel, steps: $NURI_GPU_STEPS, deadline $NURI_GPU_DEADLINE s"
bash scripts/gpu-check.sh "${q[@]}" "$tree" "$root/gpu-check-out" >"$out/gpu-check.log" 2>&1
rc=$?
say "gpu-check.sh exited $rc after $((SECONDS - t0)) s"
[[ -f $root/gpu-check-out/steps.txt ]] && tee -a "$summary" <"$root/gpu-check-out/steps.txt"
tar -czf "$out/gpu-check.tar.gz" -C "$root" gpu-check-out
exit "$rc"
