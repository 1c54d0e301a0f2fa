#!/usr/bin/env python3
"""Turn a safetensors model into a torch.save-compatible .pth, without torch.

The output is what torch.save(state_dict, path) writes: a zip archive of
stored (uncompressed) entries

    <dir>/data.pkl             pickle (protocol 2) of an OrderedDict name -> tensor
    <dir>/byteorder            "little"
    <dir>/data/<key>           raw little-endian bytes of one storage per tensor
    <dir>/version              "3"

with every entry's data aligned to 64 bytes. In the pickle each tensor is
torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False,
OrderedDict()), and each storage a persistent id ('storage',
torch.<Type>Storage, key, 'cpu', numel), exactly the objects torch.save
emits. The stand-ins below only carry torch's module and class names so that
Python's pickler writes those references; nothing of torch is needed.

Tensors keep the safetensors dtype unless --f32 / --f16 name a regular
expression of tensors to store as float32 / float16 (the value must convert
exactly, or the script stops). Used to make tests/data/*.pth for the loader
tests:

    tools/make_pth.py tests/data/rand-mh-bf16.safetensors tests/data/rand-mh-bf16.pth \
        --f32 'ln[0-9x_]*\\.(weight|bias)$|ln_out' --f16 'att\\.(k_k|r_k)$'
"""
import argparse
import collections
import io
import json
import os
import pickle
import re
import struct
import sys
import types
import zipfile

import numpy as np

ALIGN = 64
NP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}
STORAGE = {"F32": "FloatStorage", "F16": "HalfStorage", "BF16": "BFloat16Storage"}


def torch_stand_ins():
    """Modules named torch / torch._utils holding objects with torch's names."""
    if "torch" in sys.modules:
        sys.exit("make_pth.py: a real torch is loaded; run without it")
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # only its name is ever used
        raise RuntimeError("stand-in")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    classes = {}
    for name in STORAGE.values():
        cls = type(name, (), {})
        cls.__module__ = "torch"
        cls.__qualname__ = name
        setattr(torch, name, cls)
        classes[name] = cls
    sys.modules["torch"] = torch
    sys.modules["torch._utils"] = utils
    return _rebuild_tensor_v2, classes


REBUILD, STORAGE_CLASSES = torch_stand_ins()


class Storage:
    def __init__(self, dtype, key, numel):
        self.cls = STORAGE_CLASSES[STORAGE[dtype]]
        self.key = key
        self.numel = numel


class Tensor:
    def __init__(self, storage, shape):
        self.storage = storage
        self.shape = tuple(shape)

    def __reduce_ex__(self, protocol):
        stride, s = [], 1
        for d in reversed(self.shape):
            stride.append(s)
            s *= d
        return (REBUILD, (self.storage, 0, self.shape, tuple(reversed(stride)), False,
                          collections.OrderedDict()))


class StatePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    base = 8 + n
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        arr = np.frombuffer(blob[base + b:base + e], dtype=NP_DTYPES[info["dtype"]])
        out.append((b, name, info["dtype"], info["shape"], arr))
    out.sort()  # file order
    return [t[1:] for t in out]


def to_f32(dtype, arr):
    if dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def recast(name, dtype, arr, want):
    """Convert one tensor's values to `want`, insisting on exactness."""
    if want == dtype:
        return arr
    f = to_f32(dtype, arr)
    if want == "F32":
        return f
    h = f.astype(np.float16)
    if not np.array_equal(h.astype(np.float32), f):
        sys.exit(f"make_pth.py: {name} is not exactly representable as float16")
    return h


def aligned_info(zf, name):
    """A stored ZipInfo whose data will start at a multiple of ALIGN."""
    zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_STORED
    off = zf.fp.tell() + 30 + len(name.encode()) + 4
    pad = -off % ALIGN
    zi.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
    return zi


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="input .safetensors")
    ap.add_argument("dst", help="output .pth")
    ap.add_argument("--f32", help="regex of tensor names to store as float32")
    ap.add_argument("--f16", help="regex of tensor names to store as float16")
    ap.add_argument("--archive", help="top folder in the zip (default: output file stem)")
    args = ap.parse_args()

    tensors = read_safetensors(args.src)
    folder = args.archive or os.path.splitext(os.path.basename(args.dst))[0]
    state = collections.OrderedDict()
    blobs = []
    modules = collections.OrderedDict([("", {"version": 1})])
    for key, (name, dtype, shape, arr) in enumerate(tensors):
        want = dtype
        if args.f32 and re.search(args.f32, name):
            want = "F32"
        elif args.f16 and re.search(args.f16, name):
            want = "F16"
        arr = recast(name, dtype, arr, want)
        storage = Storage(want, str(key), int(arr.size))
        state[name] = Tensor(storage, shape)
        blobs.append((str(key), arr.astype(arr.dtype.newbyteorder("<")).tobytes()))
        modules.setdefault(name.rsplit(".", 1)[0], {"version": 1})
    state._metadata = modules  # torch state dicts carry this; pickled via BUILD

    buf = io.BytesIO()
    StatePickler(buf, protocol=2).dump(state)

    tmp = args.dst + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        entries = [("data.pkl", buf.getvalue()), ("byteorder", b"little")]
        entries += [("data/" + k, b) for k, b in blobs]
        entries += [("version", b"3\n")]
        for name, data in entries:
            full = folder + "/" + name
            zf.writestr(aligned_info(zf, full), data)
    os.replace(tmp, args.dst)
    print(f"{args.dst}: {len(tensors)} tensors, {os.path.getsize(args.dst)} bytes")


if __name__ == "__main__":
    main()
