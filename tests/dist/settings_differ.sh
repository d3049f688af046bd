#!/usr/bin/env bash
# Ranks of one job started with settings other than rank 0's: every rank stops before training
# with status 2 (a config error), the differing rank naming each setting that differs and rank 0
# naming that rank (status 1 where a rank cannot load the checkpoint or write the run directory). What may differ by rank (the output-only quiet and log_every, the time
# limit) does not stop the job.
#   settings_differ.sh TORCHRUN_OR_MPIRUN... -- NURI_TRAIN_BINARY
set -uo pipefail
launch=()
while [[ $1 != -- ]]; do launch+=("$1"); shift; done
bin=$(realpath "$2")
export OMP_NUM_THREADS=1
args=(--model gpt2-tiny --micro-batch 2 --seq-len 16 --eval-batches 1 --max-new-tokens 0
      --steps 2)
# Runs the job on 2 ranks, rank 1 with the extra arguments given.
job() {
  "${launch[@]}" -np 2 bash -c \
    'if [[ ${RANK:-${OMPI_COMM_WORLD_RANK:-0}} == 1 ]]; then exec "$0" "$@" '"$*"'; fi; exec "$0" "$@"' \
    "$bin" "${args[@]}" 2>&1
}
fail() { echo "$out"; echo "FAIL: $1"; exit 1; }
# The job's status ($rc) is $status (2 unless set) and both ranks' was, and its output ($out) has
# each line given.
stopped_with() {
  local want_rc=${status:-2}
  ((rc == want_rc)) || fail "status $rc, not $want_rc"
  for want in "rank 0 exited $want_rc" "rank 1 exited $want_rc" "$@"; do
    grep -qF -- "$want" <<<"$out" || fail "no '$want'"
  done
  grep -qE "step +[1-9][0-9]*/" <<<"$out" && fail "a rank trained"
}

out=$(job --lr 0.5 --seq-len 32 --quiet)
rc=$?
stopped_with \
  "nuri-train: rank 1 started with other settings than rank 0 (its output names them); start every rank of a job with the same command, config file and overrides" \
  "[rank 1] nuri-train: rank 1 started with other settings than rank 0: train.lr is 0.5 here and 0.002 on rank 0, train.seq_len is 32 here and 16 on rank 0; start every rank"

# The same settings, but rank 1's relative --out names a file where it runs: both stop, rank 0
# naming rank 1, rather than rank 0 waiting for rank 1 in a collective.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/0" "$work/1"
echo x >"$work/1/run"
out=$("${launch[@]}" -np 2 bash -c \
  'cd "$1/${RANK:-${OMPI_COMM_WORLD_RANK:-0}}" && shift && exec "$0" "$@"' \
  "$bin" "$work" "${args[@]}" --out run 2>&1)
rc=$?
stopped_with "nuri-train: rank 1 cannot use the run's directories (its output says why)" \
  "[rank 1] nuri-train: out: run exists and is not a directory"

# The same settings, but rank 1's relative --data names another copy of the text, one byte
# changed: both stop before training, rank 1 saying how its data differs from rank 0's.
text=$(for i in $(seq 60); do printf 'the cluster checkpoints a preempted job at night. '; done)
printf '%s' "$text" >"$work/0/data.txt"
printf '%s' "${text/night/nighT}" >"$work/1/data.txt"
out=$("${launch[@]}" -np 2 bash -c \
  'cd "$1/${RANK:-${OMPI_COMM_WORLD_RANK:-0}}" && shift && exec "$0" "$@"' \
  "$bin" "$work" "${args[@]}" --data data.txt 2>&1)
rc=$?
stopped_with "nuri-train: rank 1 reads other data than rank 0 (its output says how); every rank" \
  "[rank 1] nuri-train: rank 1 reads other data than rank 0: training data 2700 tokens" \
  "same to the byte"

# Rank 1's copy of a token file cut short (an interrupted copy): rank 1 says what is wrong with
# it, rank 0 names rank 1, and neither waits for the other.
"$bin" tokenize "$work/0/data.txt" "$work/0/data.bin" >/dev/null || fail "tokenize failed"
head -c 2000 "$work/0/data.bin" >"$work/1/data.bin"
out=$("${launch[@]}" -np 2 bash -c \
  'cd "$1/${RANK:-${OMPI_COMM_WORLD_RANK:-0}}" && shift && exec "$0" "$@"' \
  "$bin" "$work" "${args[@]}" --data data.bin 2>&1)
rc=$?
stopped_with "nuri-train: rank 1 cannot read the data (its output says why)" \
  "[rank 1] nuri-train: data.bin: the header promises 3001 tokens"

# A checkpoint of ZeRO 3 slices whose rank-1 file has a flipped byte: rank 1 reads only its own
# slices and fails the checksum, rank 0 (whose file is sound) names rank 1, and both stop with
# status 1 (an error, not a setting) rather than rank 0 waiting for rank 1 in the first step.
plain=("${args[@]}")
args+=(--zero-stage 3 --ckpt-dir "$work/ck3")
out=$(job)
rc=$?
((rc == 0)) || fail "status $rc for the 2 steps whose checkpoint the next job resumes"
python3 - "$work/ck3/step-00000002/rank-00001-of-00002.safetensors" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(f.seek(0, 2) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x10]))
PY
args+=(--steps 3)
out=$(job)
rc=$?
status=1 stopped_with "nuri-train: rank 1 cannot load the checkpoint (its output says why)" \
  "rank-00001-of-00002.safetensors fails its checksum"
args=("${plain[@]}")
# Rank 0 cannot write its run directory (a directory where its config.json goes; only rank 0
# writes there): both stop with status 1, rank 1 naming rank 0, rather than waiting for it.
mkdir -p "$work/0/outdir/config.json"
out=$("${launch[@]}" -np 2 bash -c \
  'cd "$1/${RANK:-${OMPI_COMM_WORLD_RANK:-0}}" && shift && exec "$0" "$@"' \
  "$bin" "$work" "${args[@]}" --out outdir 2>&1)
rc=$?
status=1 stopped_with \
  "[rank 1] nuri-train: rank 0 cannot write the run directory or the ledger (its output says why)" \
  "outdir/config.json"

args+=(--ckpt-dir "$work/ck")  # a time limit stops to checkpoint, so it needs a checkpoint.dir
out=$(job --quiet --log-every 1 --time-limit 1000)
rc=$?
((rc == 0)) || fail "status $rc with only output settings differing"
grep -q "done in" <<<"$out" || fail "the job with only output settings differing did not finish"
echo "PASS: ranks with other settings or data stop with status 2 naming them, and with status 1 where one cannot load the checkpoint or write the run directory; output settings may differ"
