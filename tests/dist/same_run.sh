#!/usr/bin/env bash
# The same training command under mpirun with 2 ranks (ZeRO 1) and 4 ranks (ZeRO 2, small buckets
# overlapped with the backward) ends where one
# process with the same global batch does (issue #9): nuri-train on gpt2-tiny, 30 steps, global
# batch 4 × 64 tokens; the last step's training loss and the final validation loss (printed to 4
# decimals) must agree within 2e-4, i.e. to the last printed digit but a rounding.
#   same_run.sh MPIRUN_AND_FLAGS... -- NURI_TRAIN_BINARY [MORE NURI-TRAIN ARGS...]
# (or a torchrun-style start in place of mpirun: same_run.sh bash tests/dist/torchrun.sh -- ...)
# SAME_RUN_STEPS (30) changes the step count; SAME_RUN_FOUR=0 leaves out the 4-rank run;
# SAME_RUN_TP=1 runs tensor parallelism instead: 2 ranks with tp 2, 4 ranks dp 2 × tp 2 with ZeRO 3;
# SAME_RUN_PP=1 pipeline parallelism: 2 ranks pp 2 (2 micro-batches), 4 ranks dp 2 × pp 2 with
# ZeRO 1;
# SAME_RUN_COMM=nccl requires the 2-rank run's gradients to move over NCCL (label emu runs 1
# against 2 ranks with --backend cuda-emu --n-head 1, a head dimension its kernels have).
set -uo pipefail
mpirun=()
while [[ $1 != -- ]]; do mpirun+=("$1"); shift; done
bin=$2
shift 2
steps=${SAME_RUN_STEPS:-30}
args=(--model gpt2-tiny --steps "$steps" --seq-len 64 --max-new-tokens 0 --eval-every 0 --log-every 10 "$@")
export OMP_NUM_THREADS=1
summary() {  # "train_loss val_loss" from nuri-train's output
  local out=$1
  printf '%s %s\n' "$(grep -oP "step +$steps/$steps \\| loss \\K[0-9.]+" <<<"$out")" \
    "$(grep -oP 'done in .*: val loss \K[0-9.]+' <<<"$out")"
}
# (the pipeline runs take 2 micro-batches a rank: one process does too, with the same global batch)
one_args=(--micro-batch 4)
[[ -n ${SAME_RUN_PP:-} ]] && one_args=(--micro-batch 2 --grad-accum 2)
one=$("$bin" "${args[@]}" "${one_args[@]}" 2>&1) || { echo "$one"; exit 1; }
if [[ -n ${SAME_RUN_PP:-} ]]; then  # pipeline parallelism: 2 ranks pp 2; 4 ranks dp 2 × pp 2
  # (the 2-rank run also writes its last step's timeline, 2 forwards and 2 backwards a stage,
  # and samples through the stages: the sample in its output is the one in sample.txt)
  out_dir=$(mktemp -d)
  trap 'rm -rf "$out_dir"' EXIT
  two=$("${mpirun[@]}" -np 2 "$bin" "${args[@]}" --micro-batch 2 --grad-accum 2 --pp 2 \
          --pp-timeline --max-new-tokens 16 --prompt "ROMEO:" --out "$out_dir/run" 2>&1) ||
    { echo "$two"; exit 1; }
  grep -q "pipeline parallel: 2 stages, 1+1 blocks .*, grid dp=1 tp=1 pp=2" <<<"$two" ||
    { echo "$two"; echo "FAIL: the 2-rank run did not say it ran pipeline-parallel"; exit 1; }
  sample=$(sed -n '/^---- sample/,/^----$/p' <<<"$two" | sed '1d;$d')
  [[ $sample == ROMEO:* && ${#sample} -gt 6 && "$sample" == "$(cat "$out_dir/run/sample.txt")" ]] ||
    { echo "$two"; echo "FAIL: the 2-rank run did not sample through its stages into sample.txt"; exit 1; }
  [[ $(grep -o '"cat":"F"' "$out_dir/run/timeline.json" | wc -l) == 4 &&
     $(grep -o '"cat":"B"' "$out_dir/run/timeline.json" | wc -l) == 4 ]] ||
    { echo "$two"; echo "FAIL: timeline.json does not hold 2 stages x 2 forwards and backwards"; exit 1; }
elif [[ -n ${SAME_RUN_TP:-} ]]; then  # tensor parallelism: 2 ranks tp 2; 4 ranks dp 2 × tp 2, ZeRO 3
  two=$("${mpirun[@]}" -np 2 "$bin" "${args[@]}" --micro-batch 4 --tp 2 2>&1) || { echo "$two"; exit 1; }
  grep -q "tensor parallel: 2 ranks a group (.*), grid dp=1 tp=2" <<<"$two" ||
    { echo "$two"; echo "FAIL: the 2-rank run did not say it ran tensor-parallel"; exit 1; }
else
  two=$("${mpirun[@]}" -np 2 "$bin" "${args[@]}" --micro-batch 2 --zero-stage 1 2>&1) || { echo "$two"; exit 1; }
  grep -q "data parallel: 2 ranks (.*), ZeRO stage 1, global batch 4" <<<"$two" ||
    { echo "$two"; echo "FAIL: the 2-rank run did not say it ran data-parallel"; exit 1; }
fi
if [[ -n ${SAME_RUN_COMM:-} ]]; then
  grep -q "gradients over $SAME_RUN_COMM" <<<"$two" ||
    { echo "$two"; echo "FAIL: the 2-rank run's gradients did not move over $SAME_RUN_COMM"; exit 1; }
fi
runs=(two)
if [[ ${SAME_RUN_FOUR:-1} != 0 && -n ${SAME_RUN_PP:-} ]]; then
  four=$("${mpirun[@]}" -np 4 "$bin" "${args[@]}" --micro-batch 1 --grad-accum 2 --pp 2 --zero-stage 1 2>&1) ||
    { echo "$four"; exit 1; }
  grep -q "ZeRO stage 1, global batch 4 sequences" <<<"$four" &&
    grep -q "grid dp=2 tp=1 pp=2" <<<"$four" ||
    { echo "$four"; echo "FAIL: the 4-rank run did not say it ran dp 2 × pp 2 with ZeRO 1"; exit 1; }
  runs+=(four)
elif [[ ${SAME_RUN_FOUR:-1} != 0 && -n ${SAME_RUN_TP:-} ]]; then
  four=$("${mpirun[@]}" -np 4 "$bin" "${args[@]}" --micro-batch 2 --tp 2 --zero-stage 3 2>&1) ||
    { echo "$four"; exit 1; }
  grep -q "ZeRO stage 3, global batch 4 sequences" <<<"$four" &&
    grep -q "grid dp=2 tp=2" <<<"$four" ||
    { echo "$four"; echo "FAIL: the 4-rank run did not say it ran dp 2 × tp 2 with ZeRO 3"; exit 1; }
  runs+=(four)
elif [[ ${SAME_RUN_FOUR:-1} != 0 ]]; then
  four=$("${mpirun[@]}" -np 4 "$bin" "${args[@]}" --micro-batch 1 --zero-stage 2 --bucket-mb 0.05 2>&1) ||
    { echo "$four"; exit 1; }
  grep -q "ZeRO stage 2, global batch 4 sequences, 3 gradient buckets overlapped" <<<"$four" ||
    { echo "$four"; echo "FAIL: the 4-rank run did not say it ran ZeRO 2 in 3 buckets"; exit 1; }
  runs+=(four)
fi
read -r l1 v1 <<<"$(summary "$one")"
status=0
for run in "${runs[@]}"; do
  read -r l v <<<"$(summary "${!run}")"
  echo "1 process: loss $l1, val $v1 | $run ranks: loss $l, val $v"
  if [[ -z $l || -z $v ]] ||
     ! awk -v a="$l1" -v b="$l" -v c="$v1" -v d="$v" \
         'BEGIN { exit !((a - b < 2e-4 && b - a < 2e-4) && (c - d < 2e-4 && d - c < 2e-4)) }'; then
    echo "FAIL: the $run-rank run ends elsewhere"
    echo "${!run}"
    status=1
  fi
done
((status == 0)) && echo PASS
exit $status
