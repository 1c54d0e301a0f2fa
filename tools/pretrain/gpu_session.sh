#!/bin/bash
# One lease of the GPU machine, start to end, run detached (setsid) so that it outlives the
# 10-minute limit of one command: trains the student and the teacher (train_pair.sh), runs
# icl_eval.py on both on the GPU, and cuts the results into parts of 16,000,000 bytes that
# the machine's file transfer can carry back (OUT/parts/part-NN, with OUT/parts/SHA256SUMS).
#
#   setsid nohup tools/pretrain/gpu_session.sh OUT MINUTES_STUDENT MINUTES_TEACHER >LOG 2>&1 &
#
# OUT/DONE appears when everything is written. Put the parts back together with
#   cat part-* | tar -x     (then: sha256sum -c SHA256SUMS inside the unpacked folder)
set -u
out=${1:?OUT}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
SAVE_EVERY=${SAVE_EVERY:-4} bash "$here/train_pair.sh" "$out" "${2:?MINUTES_STUDENT}" "${3:?MINUTES_TEACHER}"
echo "training finished: $(date -u +%T)"
for m in student teacher; do
    f="$out/$m/$m.safetensors"
    [ -f "$f" ] || continue
    python3 "$here/icl_eval.py" --model "$f" --device cuda --n 100 --n-tasks 40 \
        --json "$out/$m/$m.icl_eval.json" >"$out/$m/icl_eval.txt" 2>&1
    python3 "$here/icl_eval.py" --model "$f" --device cuda --named-curve 200 \
        --json "$out/$m/$m.icl_named.json" >"$out/$m/icl_named.txt" 2>&1
done
echo "evaluation finished: $(date -u +%T)"
(cd "$out" && rm -f student/*.partial.safetensors teacher/*.partial.safetensors \
    && find student teacher -type f | sort | xargs sha256sum >SHA256SUMS \
    && mkdir -p parts && tar -cf - SHA256SUMS student teacher | split -b 16000000 -d -a 2 - parts/part-)
ls -la "$out/parts"
touch "$out/DONE"
