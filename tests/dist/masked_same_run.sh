#!/usr/bin/env bash
# Fine-tuning data on every layout (issue #25): prompt/response rows (one line of a license text
# and the next), tokenized by `nuri tokenize --kind prompt-response` into shards with a loss mask,
# trained by same_run.sh on 1, 2 and 4 ranks whose micro-batches split the global batch
# differently (4 sequences at once; 2 a rank; 1 a rank). The masked-out targets fall unevenly in
# the micro-batches, so the layouts agree only because each micro-batch is weighted by its share
# of the global batch's counted targets (DataLoader::micro_shares); the validation loss, on the
# masked val shards, likewise.
#   masked_same_run.sh PYTHON SAME_RUN_ARGS...   (same_run.sh's arguments; PYTHONPATH: the package)
set -uo pipefail
python=$1
shift
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$python" - "$dir/rows.jsonl" <<'PY' || exit 1
import json, sys
lines = [l.strip() for l in open("/usr/share/common-licenses/GPL-3", encoding="utf-8") if l.strip()]
with open(sys.argv[1], "w") as f:
    for i in range(0, len(lines) - 1, 2):  # a prompt of one line, a response of the next
        f.write(json.dumps({"prompt": lines[i] + "\n", "response": lines[i + 1]}) + "\n")
PY
"$python" -m nuri tokenize "$dir/rows.jsonl" --out "$dir/shards" --kind prompt-response \
  --val-every 10 --quiet || exit 1
bash "$(dirname "${BASH_SOURCE[0]}")/same_run.sh" "$@" --data "$dir/shards" --eval-batches 2
