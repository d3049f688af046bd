#!/usr/bin/env bash
# CMake's compiler launcher for kernels/*.cu when NURI_PTXAS_REPORT=ON (CMakeLists.txt): runs the
# nvcc command it is given (built with -Xptxas=-v), keeps ptxas's report in <object>.ptxas.log
# for scripts/check-kernels.sh --build, and passes on everything else nvcc and ptxas print
# (warnings, errors) as the build would have shown it. Exits with nvcc's status.
set -uo pipefail
obj=
args=("$@")
for ((i = 0; i + 1 < ${#args[@]}; i++)); do
  [[ ${args[i]} == -o ]] && obj=${args[i + 1]}
done
if [[ -z "$obj" ]]; then
  exec "$@"
fi
"$@" >"$obj.ptxas.tmp" 2>&1
rc=$?
# The report's lines (those -v adds): gmem, each entry function's name, properties, registers
# and compile time, and the stack and spill line under its properties. Everything else passes,
# the "ptxas info" notices that come without -v included (e.g. wgmma serialized, C7515).
grep -vE '^ptxas info +: ([0-9]+ bytes gmem|Compiling entry function|Function properties for|Used [0-9]+ registers|Compile time)|^ +[0-9]+ bytes stack frame' \
  "$obj.ptxas.tmp" >&2
mv "$obj.ptxas.tmp" "$obj.ptxas.log"
exit "$rc"
