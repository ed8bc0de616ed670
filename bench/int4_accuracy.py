"""int4 weight-only accuracy on a GPT-2-style model with random (Gaussian, std 0.02) weights (issue #17).

transformers' ``GPT2LMHeadModel`` with ``n_embd=768, n_layer=4`` (so every K is >= 768 and group
size 128 really groups), seeded; logits SQNR in dB of the converted model against fp32 on 2 x 32
random tokens, for int4 g128 asym / sym, int4 g32 asym, and int8 weight-only per channel for scale.
Target (issue #17): int4 g128 >= 22 dB.

Usage::

    python bench/int4_accuracy.py [--json bench/results/int4-accuracy-cpu-<date>.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import warnings

import torch

import slimops
from slimops import _measure
from slimops.info import versions


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return (10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean())).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=1024, n_positions=64, n_embd=768, n_layer=4, n_head=12,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    x = torch.randint(0, 1024, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).logits
    configs = {
        "int4_g128_asym": slimops.Int4WeightOnlyConfig(),
        "int4_g128_sym": slimops.Int4WeightOnlyConfig(scheme="sym"),
        "int4_g32_asym": slimops.Int4WeightOnlyConfig(group_size=32),
        "int8_weight_only_per_channel": slimops.Int8WeightOnlyConfig(),
    }
    rows = {}
    for name, config in configs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = slimops.convert(copy.deepcopy(model), config)
        with torch.no_grad():
            rows[name] = round(sqnr_db(ref, converted(x).logits), 2)
        print(name, rows[name], "dB")
    out = {
        "suite": "int4-accuracy",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "model": "GPT2LMHeadModel(n_embd=768, n_layer=4, n_head=12, vocab 1024), random init (seed 0)",
        "input": "2 x 32 random tokens (seed 1)",
        "logits_sqnr_db": rows,
        "target": {"int4_g128": 22.0},
    }
    if args.json:
        _measure.write_json(out, args.json, 2)


if __name__ == "__main__":
    main()
