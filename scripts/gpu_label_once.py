#!/usr/bin/env python3
"""Runs the `gpu` label of a build tree on a machine without a GPU, one process per executable.

ctest starts every gtest case in a process of its own; each gpu case then finds no device and
reports itself skipped, and on a 2-core CI machine the ~430 process starts cost about a minute
for nothing. This script asks ctest for the label's tests (`--show-only=json-v1`), runs each
gtest executable once per environment with a --gtest_filter naming exactly its cases, and every
other test (the GPU benchmarks) as ctest would. It fails if a process fails, or if a case neither
passed nor reported itself skipped. With a GPU, run `ctest -L gpu` (scripts/gpu-check.sh) instead.

  scripts/gpu_label_once.py BUILD_DIR
"""
import json
import os
import re
import subprocess
import sys


def prop(test, name, default=None):
    for p in test.get("properties", []):
        if p["name"] == name:
            return p["value"]
    return default


def run(cmd, cwd, env, timeout):
    """cmd's result; one that outlives `timeout` seconds (ctest's TIMEOUT) is killed and fails
    (exit 124), its output so far kept."""
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        def text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return subprocess.CompletedProcess(cmd, 124, text(e.stdout),
                                           text(e.stderr) + f"\n(killed after {timeout:.0f} s)")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    build = sys.argv[1]
    listing = subprocess.run(
        ["ctest", "--test-dir", build, "-L", "^gpu$", "--show-only=json-v1"],
        check=True, capture_output=True, text=True).stdout
    tests = json.loads(listing)["tests"]
    groups = {}  # (executable, environment) -> [cwd, case names, skip regexes]
    others = []
    for t in tests:
        cmd = t["command"]
        env = tuple(prop(t, "ENVIRONMENT", []))
        cwd = prop(t, "WORKING_DIRECTORY", build)
        filt = [a for a in cmd if a.startswith("--gtest_filter=")]
        if filt:
            g = groups.setdefault((cmd[0], env), [cwd, [], set()])
            g[1].append(filt[0][len("--gtest_filter="):])
            g[2].update(prop(t, "SKIP_REGULAR_EXPRESSION", []))
        else:
            others.append((t["name"], cmd, env, cwd))
    failed = 0
    passed = skipped = 0
    for (exe, env), (cwd, cases, regexes) in groups.items():
        e = dict(os.environ)
        e.update(kv.split("=", 1) for kv in env)
        r = run([exe, "--gtest_filter=" + ":".join(cases)], cwd, e, 60 + 10 * len(cases))
        out = r.stdout + r.stderr
        ran = re.search(r"\[==========\] (\d+) tests? from .* ran", out)
        p = re.search(r"\[  PASSED  \] (\d+) test", out)
        s = re.search(r"\[  SKIPPED \] (\d+) test", out)
        n_ran, n_p, n_s = (int(m.group(1)) if m else 0 for m in (ran, p, s))
        if not ran and r.returncode == 0 and any(re.search(rx, out) for rx in regexes):
            n_ran = n_s = len(cases)  # the executable skips as a whole (no device), as ctest reads it
        label = os.path.basename(exe) + (" " + " ".join(env) if env else "")
        print(f"{label}: {len(cases)} cases, {n_p} passed, {n_s} skipped, exit {r.returncode}")
        if r.returncode != 0 or n_ran != len(cases) or n_p + n_s != len(cases):
            print(out[-4000:])
            failed += 1
        passed += n_p
        skipped += n_s
    for name, cmd, env, cwd in others:
        e = dict(os.environ)
        e.update(kv.split("=", 1) for kv in env)
        t = next(t for t in tests if t["name"] == name)
        r = run(cmd, cwd, e, float(prop(t, "TIMEOUT", 300)))
        out = r.stdout + r.stderr
        skip = (any(re.search(rx, out) for rx in prop(t, "SKIP_REGULAR_EXPRESSION", [])) or
                r.returncode == prop(t, "SKIP_RETURN_CODE", None))
        print(f"{name}: exit {r.returncode}{', skipped' if skip else ''}")
        if skip:
            skipped += 1
        elif r.returncode != 0:
            print(out[-4000:])
            failed += 1
        else:
            passed += 1
    print(f"gpu label, one process per executable: {len(tests)} tests, {passed} passed, "
          f"{skipped} reported skipped (no GPU), {failed} processes failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
