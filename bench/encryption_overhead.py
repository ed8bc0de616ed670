"""What encryption costs ``slimops.save`` / ``slimops.load``: plain vs encrypted, one ~100 MB converted model.

The model is ``nn.Sequential`` of six 4096 x 4096 ``nn.Linear`` converted with
``Int8WeightOnlyConfig`` (100.7 MB of int8 weights, plus scales and biases). Each
provider (plain safetensors, AES-256-GCM) saves and loads the same model into the
same skeleton, interleaved, ``--repeat`` times; the figures are medians, with the
file in the page cache (what a second load sees; a cold load adds the disk, the
same for both). ``load_ratio`` is encrypted / plain load time: the target is <= 1.5.
``decrypt_ms`` is the part of an encrypted load that reads, authenticates and
decrypts every chunk into new tensors (``encryption.Reader.tensors``); the rest is
the copy into the skeleton that the plain load does too.

Usage::

    python bench/encryption_overhead.py [--json bench/results/encryption-cpu-<date>.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time

import torch
from torch import nn

import slimops
from slimops import encryption
from slimops.info import cpu_name


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--dir", help="where the two files are written (default: the system's temp folder)")
    args = parser.parse_args()

    import cryptography
    import safetensors
    from cryptography.hazmat.backends.openssl import backend

    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(args.width, args.width) for _ in range(args.layers)])
    slimops.convert(model, slimops.Int8WeightOnlyConfig())
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    key = slimops.generate_key()
    times: dict[str, list[float]] = {f"{op}_{kind}": [] for op in ("save", "load") for kind in ("plain", "encrypted")}
    times["decrypt"] = []

    def decrypt(path: str) -> None:
        with encryption.Reader(path, key, "bench") as reader:
            reader.tensors()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        paths = {"plain": os.path.join(tmp, "plain.safetensors"), "encrypted": os.path.join(tmp, "model.enc")}
        keys = {"plain": False, "encrypted": key}
        for kind in paths:  # warm-up: first writes, page cache, lazy imports
            slimops.save(model, paths[kind], key=keys[kind])
            slimops.load(paths[kind], model, key=keys[kind])
        for _ in range(args.repeat):
            for kind in paths:
                times[f"save_{kind}"].append(timed(lambda: slimops.save(model, paths[kind], key=keys[kind])))
                times[f"load_{kind}"].append(timed(lambda: slimops.load(paths[kind], model, key=keys[kind])))
            times["decrypt"].append(timed(lambda: decrypt(paths["encrypted"])))
        sizes = {kind: os.path.getsize(p) for kind, p in paths.items()}
    med = {name: statistics.median(ts) for name, ts in times.items()}
    row = {
        "what": "slimops.save / slimops.load, plain safetensors vs AES-256-GCM encrypted, page cache warm",
        "model": f"nn.Sequential of {args.layers} x nn.Linear({args.width}, {args.width}), Int8WeightOnlyConfig",
        "state_mb": round(state_bytes / 1e6, 1),
        "file_mb": {kind: round(n / 1e6, 3) for kind, n in sizes.items()},
        **{f"{name}_ms": round(t * 1e3, 1) for name, t in med.items()},
        "load_ratio": round(med["load_encrypted"] / med["load_plain"], 2),
        "save_ratio": round(med["save_encrypted"] / med["save_plain"], 2),
        "load_encrypted_gb_s": round(state_bytes / med["load_encrypted"] / 1e9, 2),
        "repeat": args.repeat,
        "all_ms": {name: [round(t * 1e3, 1) for t in ts] for name, ts in times.items()},
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "slimops": slimops.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    print(json.dumps(row, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    main()
