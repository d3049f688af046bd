#!/usr/bin/env bash
# Static checks of the real GPU build, which need no GPU: registers, shared memory and spill bytes
# per kernel from ptxas's -v report of every kernel instantiation unit (kernels/*.cu) for sm_80
# and sm_90a; fails if any kernel spills (hot kernels must keep everything in registers); reads
# the PTX for the instructions the kernels are built on, and the SASS of the tensor-core kernels'
# main loops and their occupancy (scripts/kernel_report.py).
# Usage: bash scripts/check-kernels.sh [--build DIR] [out-dir]
#   --build DIR  reads the objects of the build tree DIR (configured with NURI_CUDA and
#                NURI_PTXAS_REPORT=ON, as scripts/test.sh configures build/; brought up to date
#                first) instead of compiling each kernels/*.cu twice more: what CI runs.
#   without it, compiles each kernels/*.cu with nvcc for each arch (-O3, the build's
#   architecture flags, without its defines).
set -euo pipefail

build=
if [[ "${1:-}" == --build ]]; then
  build=${2:?"check-kernels: --build needs the build tree's directory"}
  shift 2
  build=$(cd "$build" && pwd) || exit 1  # relative to where it was called from
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [[ ! -x "$nvcc" ]]; then
  echo "check-kernels: nvcc not found (install the CUDA toolkit or put it on PATH)" >&2
  exit 1
fi
out=${1:-$(mktemp -d)}
mkdir -p "$out"
archs=(80 90a)
sources=(kernels/*.cu)
# cuobjdump and the nvdisasm it runs come from PyPI (nvidia-cuda-cuobjdump, nvidia-cuda-nvdisasm,
# in scripts/requirements.txt) when the toolkit has none.
for bin in "$root"/.venv/lib/python3*/site-packages/nvidia/cu*/bin; do
  [[ -x "$bin/cuobjdump" ]] && PATH="$PATH:$bin"
done
if ! command -v cuobjdump >/dev/null; then
  echo "check-kernels: cuobjdump not found (bash scripts/setup.sh --test installs it into .venv)" >&2
  exit 1
fi

compile() {  # compile <source> <arch>: ptxas report in $out/<name>.sm<arch>.log, seconds in .time,
             # the PTX nvcc made on the way in $out/<name>.sm<arch>.ptx (checked below)
  local src=$1 arch=$2 name start keep
  name=$(basename "$src" .cu)
  keep="$out/keep.$name.sm$arch"
  mkdir -p "$keep"
  start=$(date +%s.%N)
  if ! "$nvcc" -std=c++20 -O3 --expt-relaxed-constexpr -Iinclude -Ikernels \
      -gencode "arch=compute_${arch},code=sm_${arch}" -Xptxas -v -c "$src" \
      --keep --keep-dir "$keep" \
      -o "$out/$name.sm$arch.o" >"$out/$name.sm$arch.log" 2>&1; then
    cat "$out/$name.sm$arch.log" >&2
    echo "check-kernels: nvcc failed on $src for sm_$arch" >&2
    return 1
  fi
  mv "$keep/$name.ptx" "$out/$name.sm$arch.ptx"
  rm -rf "$keep"
  python3 -c 'import sys; print(float(sys.argv[1]) - float(sys.argv[2]))' "$(date +%s.%N)" "$start" \
    >"$out/$name.sm$arch.time"
}
export -f compile
export nvcc out

# From a build tree: its objects hold the SASS and PTX of both archs (kernel_report.py reads one
# arch at a time), the launcher kept ptxas's report beside each, and .ninja_log has the times.
from_build() {
  local objdir src name obj arch
  objdir="$build/CMakeFiles/nuri.dir/kernels"
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    echo "check-kernels: $build is not a configured build tree" >&2
    return 1
  fi
  if ! grep -q '^NURI_PTXAS_REPORT:BOOL=ON' "$build/CMakeCache.txt"; then
    echo "check-kernels: $build was configured without ptxas's report; reconfigure it with" \
      "-DNURI_PTXAS_REPORT=ON, or run without --build" >&2
    return 1
  fi
  if ! cmake --build "$build" --target nuri >"$out/build.log" 2>&1; then
    cat "$out/build.log" >&2
    echo "check-kernels: building $build's library failed" >&2
    return 1
  fi
  for src in "${sources[@]}"; do
    name=$(basename "$src" .cu)
    [[ "$name" == ptx_probe ]] && continue
    obj="$objdir/$name.cu.o"
    if [[ ! -f "$obj" || ! -f "$obj.ptxas.log" ]]; then
      echo "check-kernels: $build has no $obj and its .ptxas.log: is it a real CUDA build" \
        "(NURI_CUDA=AUTO or ON, nvcc found)?" >&2
      return 1
    fi
    cp "$obj.ptxas.log" "$out/$name.log"
    local listing
    listing=$(cuobjdump -lelf -lptx "$obj")
    for arch in "${archs[@]}"; do
      if [[ "$listing" != *".sm_$arch.cubin"* || "$listing" != *".sm_$arch.ptx"* ]]; then
        echo "check-kernels: $obj lacks the sm_$arch code or PTX; configure $build with" \
          "CMAKE_CUDA_ARCHITECTURES '80;90a' (the default)" >&2
        return 1
      fi
      ln -sf "$(cd "$(dirname "$obj")" && pwd)/$(basename "$obj")" "$out/$name.sm$arch.o"
      cuobjdump -ptx -arch "sm_$arch" "$obj" >"$out/$name.sm$arch.ptx"
    done
    # ninja's log: start and end in ms, then the object; the last line for it is the newest
    # (0 where the tree is not ninja's).
    if [[ -f "$build/.ninja_log" ]]; then
      awk -v o="CMakeFiles/nuri.dir/kernels/$name.cu.o" \
        '$4 == o { t = ($2 - $1) / 1000 } END { print t + 0 }' "$build/.ninja_log" >"$out/$name.time"
    else
      echo 0 >"$out/$name.time"
    fi
  done
}

compile_all() {  # compile_all <source>...: each for each arch, nproc jobs at a time
  printf '%s\n' "$@" | while read -r src; do
    for arch in "${archs[@]}"; do printf '%s %s\n' "$src" "$arch"; done
  done | xargs -P "$(nproc)" -n 2 bash -c 'compile "$0" "$1"'
}

# kernels/ptx_probe.cu (every wrapper of ptx.cuh, in no library) is compiled here either way.
if [[ -n "$build" ]]; then
  compile_all kernels/ptx_probe.cu
  from_build
else
  compile_all "${sources[@]}"
fi

# The PTX wrappers (kernels/ptx.cuh) must become the instructions they name.
for arch in "${archs[@]}"; do
  for instr in mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 \
               mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 \
               ldmatrix.sync.aligned.m8n8.x4.shared.b16 ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 \
               cp.async.cg.shared.global cp.async.ca.shared.global cp.async.commit_group \
               cp.async.wait_group "], 16, p;" "bar.arrive 1, 32" "bar.sync 2, 32" xor.b32; do
    if ! grep -q "$instr" "$out/ptx_probe.sm$arch.ptx"; then
      echo "check-kernels: $instr missing from the PTX of kernels/ptx_probe.cu (sm_$arch)" >&2
      exit 1
    fi
  done
done
echo "ptx.cuh: mma.sync (bf16, f16), ldmatrix, cp.async, bar.arrive/bar.sync present in the PTX for sm_${archs[*]}"

# The sm_90 wrappers (mbarrier, cp.async.bulk, TMA, and wgmma, which needs sm_90a) assembled by
# ptxas for sm_90a, and present.
for instr in mbarrier.init.shared::cta.b64 mbarrier.inval.shared::cta.b64 \
             mbarrier.arrive.shared::cta.b64 mbarrier.arrive.expect_tx.shared::cta.b64 \
             mbarrier.expect_tx.relaxed.cta.shared::cta.b64 mbarrier.try_wait.parity.shared::cta.b64 \
             cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes \
             cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes \
             cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes \
             cp.async.bulk.tensor.4d.global.shared::cta.tile.bulk_group \
             cp.async.bulk.commit_group cp.async.bulk.wait_group fence.proxy.async.shared::cta \
             wgmma.fence.sync.aligned wgmma.commit_group.sync.aligned wgmma.wait_group.sync.aligned \
             wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 \
             wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 \
             wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 \
             setmaxnreg.inc.sync.aligned.u32 setmaxnreg.dec.sync.aligned.u32; do
  if ! grep -qF "$instr" "$out/ptx_probe.sm90a.ptx"; then
    echo "check-kernels: $instr missing from the sm_90a PTX of kernels/ptx_probe.cu" >&2
    exit 1
  fi
done
echo "ptx.cuh: mbarrier, cp.async.bulk, tensor-map loads and stores, wgmma assembled for sm_90a"

# The attention and GEMM kernels must run on tensor cores with asynchronous tile loads; the
# attention kernels must fit the shared memory of every GPU nuri targets (the sizes are dynamic,
# so ptxas cannot report them). The PTX is what the compile above kept.
for arch in "${archs[@]}"; do
  for src in kernels/attention_fwd.cu kernels/attention_bwd.cu kernels/matmul.cu; do
    ptx="$out/$(basename "$src" .cu).sm$arch.ptx"
    for instr in mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 \
                 mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 ldmatrix.sync.aligned \
                 cp.async.cg.shared.global; do
      if ! grep -q "$instr" "$ptx"; then
        echo "check-kernels: $instr missing from the PTX of $src (sm_$arch)" >&2
        exit 1
      fi
    done
  done
done
echo "attention, matmul: mma.sync (bf16, f16), ldmatrix, cp.async present in the PTX for sm_${archs[*]}"
c++ -std=c++20 -Iinclude -Ikernels -I"$(dirname "$nvcc")/../include" \
  kernels/smem_report.cpp -o "$out/smem_report"
"$out/smem_report"
attn_seconds=$(cat "$out"/attention_*.time | python3 -c 'import sys; print(sum(map(float, sys.stdin)))')
how="one job each"
[[ -n "$build" ]] && how="as $build built them, from its .ninja_log"
printf 'attention: nvcc time %.0f s for %s (sum over the sources and archs, -O3; %s)\n' \
  "$attn_seconds" "$(ls kernels/attention_*.cu | xargs -n1 basename | paste -sd' ')" "$how"

# Registers, shared memory, stack and spills per kernel (fails on any spill); the main loop of
# every tensor-core kernel from its SASS (tensor-core instructions against the rest) and the
# occupancy it allows on A100, RTX 3090/4090 and H100.
# ...and the SASS has the Hopper units' instructions (tensor-core HGMMA, the TMA's UTMALDG and
# UTMASTG, the mbarrier's SYNCS).
sass90a=$(cuobjdump -sass "$out/ptx_probe.sm90a.o")
for op in HGMMA UTMALDG UTMASTG SYNCS.PHASECHK; do
  if ! grep -q "$op" <<<"$sass90a"; then
    echo "check-kernels: $op missing from the sm_90a SASS of kernels/ptx_probe.cu" >&2
    exit 1
  fi
done
echo "ptx.cuh: HGMMA, UTMALDG, UTMASTG and SYNCS in the sm_90a SASS"
"$out/smem_report" --tsv >"$out/smem.tsv"
python3 scripts/kernel_report.py "$out" "$out/smem.tsv" "${archs[@]}"
