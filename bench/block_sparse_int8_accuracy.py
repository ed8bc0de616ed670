"""Block-sparse int8 (issue #17): which scale granularity, measured on the weight.

Why ``BlockSparseInt8Linear`` keeps one scale per output row: on the bench's pruned Gaussian
4096 -> 11008 weights (``block_sparse_int8_cpu.pruned_weight``, 75% zero tiles), the weight SQNR of
symmetric int8 (absmax / 127, round half to even) with one scale per output row, per tile, and per
row of each tile. Per row costs nothing in the kernels (one multiply per finished dot product) and
4 bytes per row; per tile needs a multiply per tile in the inner loop and 4 bytes per tile; per
tile row, one multiply per tile row and 4 bytes per ``block_k`` weights.

Usage::

    python bench/block_sparse_int8_accuracy.py [--json bench/results/block-sparse-int8-accuracy-cpu-<date>.json]
"""

from __future__ import annotations

import argparse
import datetime
import pathlib
import sys

import torch

from slimops import _measure
from slimops.info import versions

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from block_sparse_int8_cpu import pruned_weight  # noqa: E402  (the bench's weights)


def _quantize(w: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    s = absmax / 127
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(w / s).clamp(-127, 127) * s


def granularity_row(block: int, zero_share: float = 0.75) -> dict:
    w = pruned_weight(block, zero_share)
    n, k = w.shape
    tiles = w.reshape(n // block, block, k // block, block)
    deq = {
        "per_row": _quantize(w, w.abs().amax(1, keepdim=True)),
        "per_tile": _quantize(tiles, tiles.abs().amax(dim=(1, 3), keepdim=True)).reshape(n, k),
        "per_tile_row": _quantize(tiles, tiles.abs().amax(dim=3, keepdim=True)).reshape(n, k),
    }
    return {
        "k": k, "n": n, "block": f"{block}x{block}", "zero_tiles": zero_share,
        "weight_sqnr_db": {name: round(_measure.sqnr_db(*_measure.signal_and_noise(w, d)), 2) for name, d in deq.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    out = {
        "suite": "block-sparse-int8-accuracy",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "rows": [granularity_row(b) for b in (64, 32, 16)],
    }
    for r in out["rows"]:
        print(r)
    if args.json:
        _measure.write_json(out, args.json, 2)
    return out


if __name__ == "__main__":
    main()
