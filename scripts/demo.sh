#!/usr/bin/env bash
# The demo: installs what is missing, builds nuri, and trains a small GPT-2-style model (3.3M
# parameters) for about two minutes on text every Debian system has, then samples from it.
#   bash scripts/demo.sh                      # the default corpus, no download
#   bash scripts/demo.sh --data FILE [...]    # any text or token file; options: --help
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
here=$PWD  # the user's relative paths (--data, --out, --config) are theirs
cd "$root"

bash scripts/setup.sh
mkdir -p build
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release > build/demo-configure.log 2>&1 ||
  { cat build/demo-configure.log; exit 1; }
cmake --build build --target nuri-train --parallel "$(nproc)"
cd "$here"
exec "$root/build/examples/nuri-train" "$@"
