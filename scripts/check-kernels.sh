#!/usr/bin/env bash
# Static checks of the real GPU build, which need no GPU: compiles every kernel instantiation unit
# (kernels/*.cu) with nvcc for sm_80 and sm_90 with `-Xptxas -v`, prints registers, shared memory
# and spill bytes per kernel, and fails if any kernel spills (hot kernels must keep everything in
# registers). CI runs it from scripts/test.sh. Usage: bash scripts/check-kernels.sh [out-dir]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [[ ! -x "$nvcc" ]]; then
  echo "check-kernels: nvcc not found (install the CUDA toolkit or put it on PATH)" >&2
  exit 1
fi
out=${1:-$(mktemp -d)}
mkdir -p "$out"
archs=(80 90)
sources=(kernels/*.cu)

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

jobs=$(nproc)
printf '%s\n' "${sources[@]}" | while read -r src; do
  for arch in "${archs[@]}"; do printf '%s %s\n' "$src" "$arch"; done
done | xargs -P "$jobs" -n 2 bash -c 'compile "$0" "$1"'

# The PTX wrappers (kernels/ptx.cuh) must become the instructions they name.
for arch in "${archs[@]}"; do
  "$nvcc" -std=c++20 --expt-relaxed-constexpr -Iinclude -Ikernels -arch="compute_$arch" -ptx \
    kernels/ptx_probe.cu -o "$out/ptx_probe.sm$arch.ptx"
  for instr in mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 \
               mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 \
               ldmatrix.sync.aligned.m8n8.x4.shared.b16 ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 \
               cp.async.cg.shared.global cp.async.ca.shared.global cp.async.commit_group \
               cp.async.wait_group; do
    if ! grep -q "$instr" "$out/ptx_probe.sm$arch.ptx"; then
      echo "check-kernels: $instr missing from the PTX of kernels/ptx_probe.cu (sm_$arch)" >&2
      exit 1
    fi
  done
done
echo "ptx.cuh: mma.sync (bf16, f16), ldmatrix, cp.async present in the PTX for sm_${archs[*]}"

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
  kernels/attention_smem_report.cpp -o "$out/attention_smem_report"
"$out/attention_smem_report"
attn_seconds=$(cat "$out"/attention_*.time | python3 -c 'import sys; print(sum(map(float, sys.stdin)))')
printf 'attention: nvcc time %.0f s for %s (sum over the sources and archs, -O3, one job each)\n' \
  "$attn_seconds" "$(ls kernels/attention_*.cu | xargs -n1 basename | paste -sd' ')"

# ptxas prints, per entry function: "Compiling entry function 'NAME' for 'sm_XX'", then
# "N bytes stack frame, S bytes spill stores, L bytes spill loads" and
# "Used R registers, ... [X bytes smem]".
python3 - "$out" "${archs[@]}" <<'PY'
import glob, os, re, subprocess, sys
out, archs = sys.argv[1], sys.argv[2:]
rows, spills = [], 0
for log in sorted(glob.glob(os.path.join(out, "*.log"))):
    cur = None
    for line in open(log):
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+)'", line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2), "regs": 0, "smem": 0,
                   "stack": 0, "spill_st": 0, "spill_ld": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s.group(1)) if s else 0
names = subprocess.run(["c++filt"], input="\n".join(r["mangled"] for r in rows),
                       capture_output=True, text=True).stdout.splitlines()
def short(n):
    n = re.sub(r"^void ", "", n)
    n = n.replace("nuri::kernels::", "").replace("__nv_bfloat16", "bf16")
    n = re.sub(r"\(.*\)$", "", n)
    return n
print(f"{'kernel':<64} {'arch':<6} {'regs':>5} {'smem B':>7} {'stack B':>7} {'spill st/ld B':>14}")
for r, n in sorted(zip(rows, names), key=lambda x: (short(x[1]), x[0]["arch"])):
    spill = r["spill_st"] + r["spill_ld"]
    spills += spill > 0
    flag = "  <- SPILLS" if spill else ""
    print(f"{short(n)[:64]:<64} {r['arch']:<6} {r['regs']:>5} {r['smem']:>7} {r['stack']:>7} "
          f"{r['spill_st']:>6}/{r['spill_ld']:<7}{flag}")
print(f"\n{len(rows)} kernel builds ({len(set(short(n) for n in names))} kernels x {len(archs)} archs), "
      f"{spills} with spills")
if not rows:
    print("check-kernels: no kernels found in the ptxas output", file=sys.stderr)
    sys.exit(1)
sys.exit(1 if spills else 0)
PY
