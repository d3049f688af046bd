#!/usr/bin/env python3
"""What the compiler's output says about nuri's kernels, for scripts/check-kernels.sh.

1. From the ptxas reports (`-Xptxas -v` logs in OUT): registers, static shared memory, stack and
   spill bytes of every kernel; fails if any kernel spills.
2. From the SASS (`cuobjdump -sass -arch` of the objects OUT/<source>.sm<ARCH>.o, one arch each
   or links to a build tree's objects, which hold every arch; cuobjdump and nvdisasm come from the
   PyPI packages nvidia-cuda-cuobjdump and nvidia-cuda-nvdisasm): for every tensor-core kernel,
   its main loop (the loop, found by its backward branch, with the most HMMA instructions) and
   what that loop body holds: tensor-core instructions against everything else, ldmatrix,
   cp.async, special-function, shuffle and barrier instructions. Static counts in the body, not
   executed ones. Fails if an attention or GEMM kernel has no HMMA (HGMMA: wgmma) in a loop.
3. Occupancy: resident blocks and warps per SM from registers, threads and dynamic shared
   memory (SMEM_TSV from kernels/smem_report.cpp --tsv) for the GPUs nuri targets: A100
   (sm_80), RTX 3090 (sm_86) and RTX 4090 (sm_89) run the sm_80 binary, H100 the sm_90a one.
4. The sm_90a attention and GEMM kernels: HGMMA (wgmma), UTMALDG (TMA loads) and SYNCS (mbarrier) in
   their SASS, the register split they were designed with (USETMAXREG: the producer down to
   24, the consumers up to 240) and the launch register count that split needs (the block's
   pool: 168 a thread for 384 threads, which ptxas must have given the kernel), the forward's
   warpgroup scheduler (BAR.SYNC and BAR.ARV on named barriers 1 and 2 of 256 threads) and
   TMA-store epilogue (UTMASTG, barriers 3 and 4 of 128 threads), and no "wgmma ... serialized"
   in any ptxas report.

Usage: kernel_report.py OUT SMEM_TSV ARCH... (e.g. 80 90a)
"""
import glob
import os
import re
import shutil
import subprocess
import sys
from collections import Counter

# Per-SM limits, from the CUDA C++ Programming Guide's table of compute capabilities: threads,
# resident blocks, 32-bit registers, shared memory (bytes; 1 KiB of it is reserved per block).
DEVICES = {
    "A100 (sm_80)": dict(binary="sm_80", threads=2048, blocks=32, regs=65536, smem=167936),
    "RTX3090 (sm_86)": dict(binary="sm_80", threads=1536, blocks=16, regs=65536, smem=102400),
    "RTX4090 (sm_89)": dict(binary="sm_80", threads=1536, blocks=24, regs=65536, smem=102400),
    "H100 (sm_90)": dict(binary="sm_90a", threads=2048, blocks=32, regs=65536, smem=233472),
}
TENSOR_CORE_SOURCES = ("attention_fwd", "attention_fwd_sm90", "attention_bwd", "attention_bwd_sm90",
                       "matmul")
SM90_SOURCES = ("attention_fwd_sm90", "attention_bwd_sm90")
TENSOR_CORE_OPS = ("HMMA", "HGMMA")  # mma.sync, wgmma
SM90_FORWARD_REGS = {"producer": "USETMAXREG.DEALLOC.CTAPOOL 0x18",
                     "consumer": "USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xf0"}
# The forward's warpgroup scheduler (each consumer waits for its turn at its named barrier, 1 or
# 2, 256 threads, and passes the turn with an arrival at the other's) and its epilogue (each
# consumer's own barrier, 3 or 4, 128 threads, around O staged for a TMA store).
SM90_FORWARD_EXTRA = ("BAR.SYNC.DEFER_BLOCKING 0x1, 0x100", "BAR.SYNC.DEFER_BLOCKING 0x2, 0x100",
                      "BAR.ARV 0x1, 0x100", "BAR.ARV 0x2, 0x100",
                      "BAR.SYNC.DEFER_BLOCKING 0x3, 0x80", "BAR.SYNC.DEFER_BLOCKING 0x4, 0x80",
                      "UTMASTG")


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True)
    return out.stdout.splitlines()


def short(name):
    name = re.sub(r"^void ", "", name)
    for prefix in ("nuri::kernels::", "mm::", "attn::", "act::"):
        name = name.replace(prefix, "")
    name = name.replace("__nv_bfloat16", "bf16").replace("__half", "f16").replace(", ", ",")
    return re.sub(r"\(.*\)$", "", name)


def ptxas_rows(out):
    """Per (mangled kernel, arch): registers, static smem, stack and spill bytes."""
    rows = []
    for log in sorted(glob.glob(os.path.join(out, "*.log"))):
        cur = None
        for line in open(log):
            m = re.search(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'", line)
            if m:
                cur = {"mangled": m.group(1), "arch": m.group(2), "regs": 0, "smem": 0,
                       "stack": 0, "spill_st": 0, "spill_ld": 0}
                rows.append(cur)
                continue
            if cur is None:
                continue
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, "
                          r"(\d+) bytes spill loads", line)
            if m:
                cur["stack"], cur["spill_st"], cur["spill_ld"] = map(int, m.groups())
            m = re.search(r"Used (\d+) registers", line)
            if m:
                cur["regs"] = int(m.group(1))
                s = re.search(r"(\d+) bytes smem", line)
                cur["smem"] = int(s.group(1)) if s else 0
    for r, n in zip(rows, demangle([r["mangled"] for r in rows])):
        r["name"] = short(n)
    return rows


def sass_functions(cuobjdump, obj, arch):
    """{mangled name: [(address, opcode, text)]} from cuobjdump -sass, for one arch (e.g. "90a";
    a build tree's objects hold the code of every arch it was configured with)."""
    text = subprocess.run([cuobjdump, "-sass", "-arch", f"sm_{arch}", obj], capture_output=True,
                          text=True, check=True)
    funcs, cur = {}, None
    for line in text.stdout.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)(.*?);", line)
        if m and cur is not None:
            cur.append((int(m.group(1), 16), m.group(3), m.group(4)))
    return funcs


def main_loop(instrs):
    """The loop body [start, end] holding the most HMMA/HGMMA (ties: the shortest), or None."""
    best = None
    for addr, op, rest in instrs:
        if not op.startswith("BRA"):
            continue
        m = re.search(r"0x([0-9a-f]+)", rest)
        if not m or int(m.group(1), 16) >= addr:
            continue
        start = int(m.group(1), 16)
        body = [(a, o) for a, o, _ in instrs if start <= a <= addr]
        hmma = sum(o.startswith(TENSOR_CORE_OPS) for _, o in body)
        key = (hmma, -len(body))
        if hmma and (best is None or key > best[0]):
            best = (key, body)
    return best[1] if best else None


def rescale_skips(instrs):
    """How many times a VOTE.ANY is followed by a forward branch over a block of FMUL alone: the
    online softmax's rescale of O, which a warp skips where every row's max held
    (attn::rescale_rows)."""
    found = 0
    for i, (_, op, _) in enumerate(instrs):
        if not op.startswith("VOTE.ANY"):
            continue
        for addr, op2, rest in instrs[i + 1:i + 200]:
            if not op2.startswith("BRA"):
                continue
            m = re.search(r"0x([0-9a-f]+)", rest)
            target = int(m.group(1), 16) if m else 0
            block = [o for a, o, _ in instrs if addr < a < target and not o.startswith("NOP")]
            fmul = sum(o.startswith("FMUL") for o in block)
            found += fmul >= 32 and fmul >= 0.9 * len(block)
            break
    return found


def loop_summary(body):
    ops = [o for _, o in body if not o.startswith("NOP")]
    kinds = Counter()
    for o in ops:
        base = o.split(".")[0]
        kinds[{"HMMA": "hmma", "HGMMA": "hmma", "LDSM": "ldsm", "LDGSTS": "ldgsts", "MUFU": "mufu",
               "SHFL": "shfl", "BAR": "bar"}.get(base, "other")] += 1
    return len(ops), kinds


def occupancy(dev, regs, threads, smem):
    warps = (threads + 31) // 32
    regs_per_warp = (regs * 32 + 255) // 256 * 256
    by_regs = (dev["regs"] // regs_per_warp) // warps if regs_per_warp else dev["blocks"]
    by_smem = dev["smem"] // (smem + 1024)
    by_threads = dev["threads"] // threads
    blocks = min(by_regs, by_smem, by_threads, dev["blocks"])
    limit = min((by_regs, "registers"), (by_smem, "shared memory"), (by_threads, "threads"),
                (dev["blocks"], "blocks"))[1]
    return blocks, blocks * warps / (dev["threads"] / 32), limit


def main():
    out, smem_tsv, archs = sys.argv[1], sys.argv[2], sys.argv[3:]
    failures = []

    rows = ptxas_rows(out)
    # ptxas serializes wgmma (a wait after every one) where the code would break its rules, and
    # says so only in its report; that would quietly undo the sm_90a kernels' pipelining.
    for log in sorted(glob.glob(os.path.join(out, "*.log"))):
        for line in open(log):
            if "wgmma" in line and "serializ" in line:
                failures.append(f"{os.path.basename(log)}: {line.strip()}")
    if not rows:
        print("check-kernels: no kernels found in the ptxas output", file=sys.stderr)
        return 1
    print(f"{'kernel':<64} {'arch':<6} {'regs':>5} {'smem B':>7} {'stack B':>7} {'spill st/ld B':>14}")
    spills = 0
    for r in sorted(rows, key=lambda r: (r["name"], r["arch"])):
        spill = r["spill_st"] + r["spill_ld"]
        spills += spill > 0
        flag = "  <- SPILLS" if spill else ""
        print(f"{r['name'][:64]:<64} {r['arch']:<6} {r['regs']:>5} {r['smem']:>7} {r['stack']:>7} "
              f"{r['spill_st']:>6}/{r['spill_ld']:<7}{flag}")
    summary = (f"{len(rows)} kernel builds ({len(set(r['name'] for r in rows))} kernels x "
               f"{len(archs)} archs), {spills} with spills")
    print(f"\n{summary}")
    if spills:
        failures.append(f"{spills} kernel builds spill registers")

    # Dynamic shared memory and block size by (family, head dim or tile edge).
    config = {}
    for line in open(smem_tsv):
        family, key, nbytes, threads = line.split("\t")
        config[(family, int(key))] = (int(nbytes), int(threads))

    def config_of(name):
        # Longest family first: attn_bwd_dkdv is also a prefix of attn_bwd_dkdv_sm90_kernel.
        for (family, key), v in sorted(config.items(), key=lambda kv: -len(kv[0][0])):
            # "family/N": only the kernels of the family whose last template argument is N.
            family, _, last = family.partition("/")
            if family in name and (not last or re.search(r",\s*" + last + r">", name)):
                if family == "gemm_sm90_kernel":  # one tile shape (mm::Sm90Config)
                    return v
                # The GEMM's tiles by their column edge (TcConfig<kBlockM, kBlockN, ...>).
                m = re.search(r"TcConfig<\d+, ?(\d+)" if family == "gemm_tc_kernel"
                              else r"<[^,]+, ?(\d+)", name)
                if m and int(m.group(1)) == key:
                    return v
        return None

    cuobjdump = shutil.which("cuobjdump")
    loops_read = 0
    if not cuobjdump:
        failures.append("cuobjdump not found (scripts/setup.sh --test installs it into .venv)")
    else:
        regs = {(r["mangled"], r["arch"]): r["regs"] for r in rows}
        print("\nMain loops of the tensor-core kernels (static SASS instructions in the loop body;"
              " occupancy per SM with the block's registers, threads and dynamic shared memory):")
        header = (f"{'kernel':<58} {'arch':<6} {'regs':>4} {'smem B':>7} {'body':>5} "
                  f"{'HMMA':>5} {'HMMA%':>6} {'LDSM':>5} {'LDGSTS':>6} {'MUFU':>5} {'SHFL':>5} "
                  f"{'BAR':>4}  occupancy (blocks/SM, warps%, limited by)")
        print(header)
        for arch in archs:
            for src in TENSOR_CORE_SOURCES:
                obj = os.path.join(out, f"{src}.sm{arch}.o")
                funcs = sass_functions(cuobjdump, obj, arch)
                names = dict(zip(funcs, demangle(list(funcs))))
                for mangled in sorted(funcs, key=lambda m: short(names[m])):
                    instrs = funcs[mangled]
                    if not any(op.startswith(TENSOR_CORE_OPS) for _, op, _ in instrs):
                        continue
                    if src in SM90_SOURCES or "gemm_sm90_kernel" in names[mangled]:
                        text = "\n".join(op + rest for _, op, rest in instrs)
                        extra = SM90_FORWARD_EXTRA if src == "attention_fwd_sm90" else ()
                        for need in ("HGMMA", "UTMALDG", "SYNCS", *SM90_FORWARD_REGS.values(),
                                     *extra):
                            if need not in text:
                                failures.append(
                                    f"{short(names[mangled])} (sm_{arch}): no {need} in its SASS")
                    name = short(names[mangled])
                    if name.startswith("attention_fwd") and not rescale_skips(instrs):
                        failures.append(f"{name} (sm_{arch}): its rescale of O is not skipped "
                                        "by a warp vote (no VOTE.ANY and branch over FMULs)")
                    body = main_loop(instrs)
                    if body is None:
                        failures.append(f"{name} (sm_{arch}): no HMMA/HGMMA inside a loop")
                        continue
                    total, kinds = loop_summary(body)
                    loops_read += 1
                    r = regs.get((mangled, f"sm_{arch}"), 0)
                    cfg = config_of(name)
                    if cfg and any(op.startswith("USETMAXREG") for _, op, _ in instrs):
                        # setmaxnreg.inc takes registers from the block's pool, what it was
                        # launched with (regs x threads); the split (24 + 2 x 240 for 384
                        # threads) is made to fill the largest pool that block size allows. A
                        # kernel compiled to fewer registers would wait forever in its .inc.
                        want = min(65536 // cfg[1] // 8 * 8, 256)
                        if r != want:
                            failures.append(
                                f"{name} (sm_{arch}): uses setmaxnreg, but ptxas gave it {r} "
                                f"registers, not the {want} a block of {cfg[1]} threads is "
                                f"launched with; its setmaxnreg.inc would wait for registers "
                                f"its block's pool does not have")
                    occ = ""
                    if cfg:
                        parts = []
                        for dev_name, dev in DEVICES.items():
                            if dev["binary"] != f"sm_{arch}":
                                continue
                            blocks, frac, limit = occupancy(dev, r, cfg[1], cfg[0])
                            parts.append(f"{dev_name.split()[0]} {blocks}, {frac:.0%}, {limit}")
                        occ = "; ".join(parts)
                    print(f"{name[:58]:<58} sm_{arch:<3} {r:>4} {cfg[0] if cfg else 0:>7} "
                          f"{total:>5} {kinds['hmma']:>5} {kinds['hmma'] / total:>6.1%} "
                          f"{kinds['ldsm']:>5} {kinds['ldgsts']:>6} {kinds['mufu']:>5} "
                          f"{kinds['shfl']:>5} {kinds['bar']:>4}  {occ}")
                    if not cfg:
                        failures.append(f"{name}: no shared-memory size in {smem_tsv}")
    print(f"\n{summary}; {loops_read} tensor-core main loops read from the SASS")
    for f in failures:
        print(f"check-kernels: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
