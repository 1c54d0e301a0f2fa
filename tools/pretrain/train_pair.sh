#!/bin/bash
# Train the student and the teacher at the same time: one process each, on GPUs 0 and 1
# when there are two, both on GPU 0 otherwise (each model alone leaves much of an H200
# idle, so two processes on one GPU train nearly as fast as one on each).
#
#   tools/pretrain/train_pair.sh OUTDIR MINUTES_STUDENT MINUTES_TEACHER
#
# MINUTES_* are the training-loop budgets (--time-budget --adapt: the number of steps is set
# from the speed over steps 20-100 and re-fitted every 100 steps, which lets the teacher
# use the GPU time that the student leaves when it ends first; train_log.txt records each
# change of the schedule). Writes OUTDIR/student/ and OUTDIR/teacher/ (NAME.safetensors,
# NAME.ref-logits.f32, result.json, train_log.txt, stdout.txt).
set -u
out=${1:?OUTDIR}
min_s=${2:?MINUTES_STUDENT}
min_t=${3:?MINUTES_TEACHER}
here=$(cd "$(dirname "$0")" && pwd)
mix="tasks:0.45,chat:0.12,stories:0.05,austen:0.13,kjv:0.12,wordnet:0.13"
ngpu=$(python3 -c 'import torch; print(torch.cuda.device_count())')
gpu_t=0
[ "$ngpu" -ge 2 ] && gpu_t=1
mkdir -p "$out/student" "$out/teacher"
export PYTHONUNBUFFERED=1
CUDA_VISIBLE_DEVICES=0 python3 "$here/train.py" --name student --compile --tri "${TRI:-solve}" --wkv "${WKV:-auto}" --save-every "${SAVE_EVERY:-0}" ${COMPILE_WKV:-} \
    --layers 6 --dim 384 --ctx 512 --batch "${BATCH_S:-64}" --lr 1.5e-3 --lr-final 1e-4 --warmup 150 --wd 0.1 \
    --seed 1234 --mix "$mix" --time-budget "$min_s" --adapt --max-minutes "$(python3 -c "print($min_s + 0.6)")" --out "$out/student" \
    >"$out/student/stdout.txt" 2>&1 &
ps=$!
CUDA_VISIBLE_DEVICES=$gpu_t python3 "$here/train.py" --name teacher --compile --tri "${TRI:-solve}" --wkv "${WKV:-auto}" --save-every "${SAVE_EVERY:-0}" ${COMPILE_WKV:-} \
    --layers 9 --dim 640 --ctx 512 --batch "${BATCH_T:-64}" --lr 1.2e-3 --lr-final 1e-4 --warmup 150 --wd 0.1 \
    --seed 1235 --mix "$mix" --time-budget "$min_t" --adapt --max-minutes "$(python3 -c "print($min_t + 0.6)")" --out "$out/teacher" \
    >"$out/teacher/stdout.txt" 2>&1 &
pt=$!
wait $ps; rs=$?
wait $pt; rt=$?
echo "student exit $rs, teacher exit $rt"
tail -n 3 "$out/student/stdout.txt" "$out/teacher/stdout.txt"
[ $rs -eq 0 ] && [ $rt -eq 0 ]
