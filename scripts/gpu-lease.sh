#!/usr/bin/env bash
# The GPU checks in one call of a lent machine, on the kit `scripts/device-kit.sh` built here:
# unpacks it, makes its paths and libraries resolve there, runs `scripts/gpu-check.sh --quick`
# within a deadline, and leaves the results in OUT_DIR as at most 8 files (the device tool
# brings back no more). Run from the repository root there:
#   usage: bash scripts/gpu-lease.sh [KIT_DIR (.device-kit)] [OUT_DIR ($OUT, else gpu-lease-out)]
#   NURI_LEASE_SECONDS  the deadline for gpu-check.sh (default 480: a 10-minute command limit
#                       less the unpacking and a margin)
#   NURI_GPU_STEPS      passed on; default here "matmul_sm90 attention_sm90 attention matmul
#                       tests train": the Hopper kernels' suite and timings first, since they
#                       are what only this machine can show, the whole gpu label after the
#                       benchmarks that check their own outputs
#   NURI_LEASE_FULL=1   without --quick
# OUT_DIR: summary.txt (the kit, the libraries used, gpu-check's steps), gpu-check.tar.gz (all
# of gpu-check.sh's output), gpu-check.log (what it printed).
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
say "here: $root, commit $(git rev-parse HEAD 2>/dev/null || echo '?')"

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
rm -rf "$tree"
mkdir -p "$tree"
tar -xJf "$kit/kit.tar.xz" -C "$tree" || { say "gpu-lease.sh: the kit did not unpack"; exit 2; }
if [[ $built_root != "$root" ]]; then
  if [[ -e $built_root || -L $built_root ]]; then
    # Taken: rewrite the paths in ctest's files instead, and find libnuri through
    # LD_LIBRARY_PATH (below); the Python package's links stay broken, so its test fails
    # rather than importing something else.
    say "the build's root $built_root exists here; rewriting ctest's paths to $root"
    find "$tree" -name '*.cmake' -exec sed -i "s#$built_root#$root#g" {} +
  else
    mkdir -p "$(dirname "$built_root")" && ln -s "$root" "$built_root" &&
      say "linked $built_root -> $root"
  fi
fi
# The gpu label's Python test runs the tree's .venv/bin/python: here, the machine's python3.
if [[ ! -x $root/.venv/bin/python ]]; then
  mkdir -p "$root/.venv/bin" && ln -sf "$(command -v python3)" "$root/.venv/bin/python"
fi

# Libraries: the machine's own where it has them (the CUDA ones from its toolkit or its Python
# packages), the kit's copies for the rest.
libdirs=()
add_dir() { [[ -d $1 ]] && [[ " ${libdirs[*]-} " != *" $1 "* ]] && libdirs+=("$1"); }
add_dir /usr/local/cuda/lib64
for d in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
  for l in "$d"/nvidia/*/lib "$d"/nvidia/cu*/lib; do add_dir "$l"; done
done
fallback=$tree/kit-lib-used
mkdir -p "$fallback"
export LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]-}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
missing=$(ldd "$tree"/tests/test_ops_gpu "$tree"/tests/test_device_train_gpu "$tree"/benchmarks/bench_* \
  "$tree"/libnuri.so "$tree"/python/nuri/_C*.so 2>/dev/null | awk '/not found/ {print $1}' | sort -u)
for name in $missing; do
  if [[ -f $tree/kit-lib/$name ]]; then
    ln -sf "$tree/kit-lib/$name" "$fallback/$name"
    say "library from the kit: $name"
  else
    say "library missing here and not in the kit: $name"
  fi
done
# The tree itself last: libnuri where the binaries' RUNPATH (the build's path) does not resolve.
export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$fallback:$tree
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
cudnn=$(ls "${libdirs[@]/%//libcudnn.so.9}" 2>/dev/null | head -n 1)
say "cuDNN (opened at run time): ${cudnn:-not found: the cudnn attention path and its tests will say so}"
if ldd "$tree"/tests/test_ops_gpu | grep -q 'not found'; then
  say "gpu-lease.sh: test_ops_gpu still lacks libraries:"
  ldd "$tree"/tests/test_ops_gpu | grep 'not found' | tee -a "$summary"
fi

q=(--quick)
[[ ${NURI_LEASE_FULL:-0} == 1 ]] && q=()
export NURI_GPU_STEPS=${NURI_GPU_STEPS:-matmul_sm90 attention_sm90 attention matmul tests train}
export NURI_GPU_DEADLINE=${NURI_LEASE_SECONDS:-480}
say "unpacked in $((SECONDS - t0)) s; gpu-check.sh ${q[*]} $rel, steps: $NURI_GPU_STEPS, deadline $NURI_GPU_DEADLINE s"
bash scripts/gpu-check.sh "${q[@]}" "$tree" "$root/gpu-check-out" >"$out/gpu-check.log" 2>&1
rc=$?
say "gpu-check.sh exited $rc after $((SECONDS - t0)) s"
if [[ -f $root/gpu-check-out/steps.txt ]]; then
  tee -a "$summary" <"$root/gpu-check-out/steps.txt"
fi
tar -czf "$out/gpu-check.tar.gz" -C "$root" gpu-check-out
exit "$rc"
