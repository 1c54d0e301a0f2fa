#!/bin/sh
# Regenerates every file in tests/data/ (see README.md there). Run from the
# repository root: sh tests/data/regen.sh
set -eu
PY=${PYTHON:-/usr/bin/python3}
D=tests/data

# random initial state for MODEL: per layer att_shift ~ N(0, 0.5^2),
# wkv ~ N(0, 0.1^2), ffn_shift ~ N(0, 0.5^2), drawn in file order from
# numpy default_rng(SEED) (float64 normals, scaled, stored as float32)
rand_state() { # MODEL SEED OUT
    "$PY" - "$1" "$2" "$3" <<'EOF'
import json, struct, sys
import numpy as np
path, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "rb") as f:
    hdr = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
C = hdr["emb.weight"]["shape"][1]
H = hdr["blocks.0.att.r_k"]["shape"][0]
L = sum(1 for k in hdr if k.endswith(".ln1.weight"))
rng = np.random.default_rng(seed)
parts = []
for _ in range(L):
    parts.append(rng.standard_normal(C) * 0.5)
    parts.append(rng.standard_normal(H * 64 * 64) * 0.1)
    parts.append(rng.standard_normal(C) * 0.5)
np.concatenate(parts).astype("<f4").tofile(out)
EOF
}

fixture() { # NAME TOKENS STATE_SEED
    m=$D/$1.safetensors
    printf '%s\n' "$2" > $D/$1.tokens.txt
    "$PY" tools/ref_rwkv7.py $m --tokens "$2" --all \
        --out-logits $D/$1.logits-all.f32 --out-state $D/$1.state.f32
    rand_state $m $3 $D/$1.state-in.f32
    "$PY" tools/ref_rwkv7.py $m --tokens "$2" --state-in $D/$1.state-in.f32 \
        --out-logits $D/$1.logits-from-state.f32 \
        --out-state $D/$1.state-out-from-state.f32
}

"$PY" tools/gen_model.py --layers 2 --embd 192 --vocab 384 \
    --dw 32 --da 32 --dv 16 --dg 48 --dtype f32 --seed 7001 \
    --out $D/rand-mh.safetensors
"$PY" tools/gen_model.py --layers 3 --embd 128 --vocab 300 \
    --dw 24 --da 16 --dv 8 --dg 40 --dtype bf16 --seed 7002 \
    --out $D/rand-mh-bf16.safetensors

fixture rand-mh \
    1,383,0,17,42,42,42,199,256,7,300,128,5,64,64,311,2,90,377,150,33,250,101,11 \
    8001
fixture rand-mh-bf16 \
    0,299,3,141,59,26,53,58,97,93,238,46,26,43,38,32,79,50,288,41,97,169,39,9 \
    8002

# a kernel state (format_version 2, written by the NumPy tool) and the float64
# loss and central differences that tests/unit/test_kernel.c compares with
"$PY" tools/ref_rwkv7.py $D/rand-mh.safetensors --make-kernel $D/kernel-mh.safetensors \
    --kernel-m 16 --kernel-fade mean --seed 1
"$PY" tools/ref_rwkv7.py $D/rand-mh.safetensors --tokens 5,17,200,33,91,4,250,120,7,64,300,12 \
    --kernel $D/kernel-mh.safetensors --loss-fd $D/kernel-mh.fd.txt

# the .pth copy of the bf16 model (see README.md)
"$PY" tools/make_pth.py $D/rand-mh-bf16.safetensors $D/rand-mh-bf16.pth \
    --f32 'ln[0-9x_]*\.(weight|bias)$|ln_out' --f16 'att\.(k_k|r_k)$'
