"""int8 convolutions and half precision on CPU (issue #13): whole models and the kernels under them.

Rows (each a set of providers timed interleaved in one run, A B C A B C ..., medians of
``--repeat`` forwards after warm-up, with ``slimops._measure.median_seconds``):

* ``resnet``: transformers' ``ResNetModel(ResNetConfig())`` (ResNet-50, random weights), one
  224 x 224 image: fp32 vs ``Int8DynamicConfig`` (every Conv2d through int8 GEMMs). Target 1.3x.
* ``demo_cnn``: the demo's CNN (``slimops.demo._cnn``) at the demo's report batch (64 digits):
  fp32 vs ``Int8DynamicConfig`` (convolutions and linears). Target: int8 faster.
* ``conv_gemm``: the GEMM of single ResNet-50 convolutions as int8 ``[M, K] x [N, K]``:
  ``slimops.ops.int8_mm`` vs ``torch._int_mm`` (oneDNN) vs fp32 / bf16 ``torch.mm``: where the
  int8 conv time goes, and what a faster int8 GEMM core would give.
* ``depthwise``: 3x3 depthwise convolutions (MobileNet shapes): fp32 ``F.conv2d`` vs an int8
  depthwise conv made of existing ops (``quantize_per_token``, int8 patches, exact int32 sums), and
  vs ``quantize_per_token`` of its input alone, a lower bound of any int8 version (which must read
  the float input to quantize it): why depthwise stays float.
* ``bert``: transformers' ``BertModel(BertConfig())`` (BERT-base, random weights), 1 x 128 tokens:
  fp32 vs ``HalfConfig`` bf16 / fp16, each computed natively (``compute="half"``) and in fp32 on
  the half weights (``compute="float32"``). Target: fp32-compute <= 1.1x fp32, at half the weights.

NOTE: the development machine is shared (2 cores, other jobs running): absolute times drift by
2x between runs, so only ratios within one row mean anything; each row records the load average.

Usage::

    python bench/conv_half_cpu.py [--threads 1 2] [--json bench/results/conv-half-cpu-<date>.json]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import warnings

import torch
import torch.nn.functional as F

import slimops
from slimops import _measure
from slimops.info import cpu_name, versions

CPU = torch.device("cpu")


def timed(fns: dict, repeat: int, warmup: int = 2) -> dict[str, float]:
    with torch.inference_mode():
        meds = _measure.median_seconds(list(fns.values()), [CPU] * len(fns), warmup=warmup, repeats=repeat)
    return {name: round(s * 1e3, 3) for name, s in zip(fns, meds)}


def sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return round(_measure.sqnr_db(*_measure.signal_and_noise(ref, out)), 2)


def weight_mb(model) -> float:
    return round(sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6, 2)


def linear_mb(model) -> float:
    """Bytes of the weights HalfConfig converts (the linear layers'; embeddings stay fp32)."""
    from slimops.nn import HalfLinear

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, HalfLinear))]
    return round(sum(m.weight.numel() * m.weight.element_size() for m in layers) / 1e6, 2)


def resnet(repeat: int) -> dict:
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    dense = ResNetModel(ResNetConfig()).eval()
    q = slimops.convert(copy.deepcopy(dense), slimops.Int8DynamicConfig())
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        acc = sqnr(dense(x).last_hidden_state, q(x).last_hidden_state)
    ms = timed({"fp32": lambda: dense(x), "int8_dynamic": lambda: q(x)}, repeat)
    return {
        "model": "transformers ResNetModel(ResNetConfig()) = ResNet-50, random weights, 1x3x224x224",
        "converted_convs": sum(v.endswith("Int8DynamicConv2d") for v in q.slimops_summary.converted.values()),
        "ms": ms,
        "speedup_int8_vs_fp32": round(ms["fp32"] / ms["int8_dynamic"], 3),
        "target": 1.3,
        "sqnr_db_last_hidden_state": acc,
        "mb": {"fp32": weight_mb(dense), "int8_dynamic": weight_mb(q)},
    }


def demo_cnn(repeat: int) -> dict:
    from slimops.demo import _cnn

    torch.manual_seed(0)
    dense = _cnn().eval()
    q = slimops.convert(copy.deepcopy(dense), slimops.Int8DynamicConfig())
    x = torch.rand(64, 1, 8, 8)
    with torch.inference_mode():
        acc = sqnr(dense(x), q(x))
    ms = timed({"fp32": lambda: dense(x), "int8_dynamic": lambda: q(x)}, repeat * 4)
    return {
        "model": "slimops.demo._cnn (2 conv + 2 linear), random weights, batch 64 of 1x8x8",
        "ms": ms,
        "speedup_int8_vs_fp32": round(ms["fp32"] / ms["int8_dynamic"], 3),
        "sqnr_db_logits": acc,
    }


# ResNet-50 convolutions at 224 as GEMMs: (what, M = Ho*Wo, K = kh*kw*Cin, N = Cout).
CONV_GEMMS = [
    ("layer1 3x3 64->64 @56x56", 3136, 576, 64),
    ("layer1 1x1 64->256 @56x56", 3136, 64, 256),
    ("layer2 3x3 128->128 @28x28", 784, 1152, 128),
    ("layer3 1x1 1024->256 @14x14", 196, 1024, 256),
    ("layer4 3x3 512->512 @7x7", 49, 4608, 512),
]


def conv_gemm(repeat: int) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(0)
    for what, m, k, n in CONV_GEMMS:
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
        b = torch.randint(-127, 128, (n, k), dtype=torch.int8, generator=g)
        bt = b.t().contiguous()
        sa, sb = torch.rand(m, generator=g) + 0.5, torch.rand(n, generator=g) + 0.5
        x, w = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
        xb, wb = x.bfloat16(), w.bfloat16()
        ms = timed(
            {
                "slimops_int8_mm": lambda: slimops.ops.int8_mm(a, b, sa, sb, None, torch.float32),
                "torch_int_mm": lambda: torch._int_mm(a, bt),
                "fp32_mm": lambda: torch.mm(x, w.t()),
                "bf16_mm": lambda: torch.mm(xb, wb.t()),
            },
            repeat * 2,
        )
        rows.append({"what": what, "M": m, "K": k, "N": n, "ms": ms,
                     "fp32_over_int8_mm": round(ms["fp32_mm"] / ms["slimops_int8_mm"], 3),
                     "fp32_over_torch_int_mm": round(ms["fp32_mm"] / ms["torch_int_mm"], 3)})
    return rows


DEPTHWISE = [(144, 56), (384, 14), (960, 7)]  # (channels, H = W), MobileNetV2-like


def depthwise(repeat: int) -> list[dict]:
    rows = []
    for c, hw in DEPTHWISE:
        x = torch.randn(1, c, hw, hw).contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, 1, 3, 3)
        flat = x.permute(0, 2, 3, 1).reshape(1, -1)
        qw, sw, _ = slimops.ops.quantize_per_channel(w.permute(0, 2, 3, 1).reshape(c, 9).contiguous(), 0, True)
        qw = qw.t().reshape(3, 3, c).to(torch.int32)  # [kh, kw, C]

        def int8_torch_ops():
            # The int8 depthwise conv from existing pieces: quantize per image, int8 patches, exact int32 sums.
            q, s = slimops.ops.quantize_per_token(flat)
            qp = F.pad(q.reshape(1, hw, hw, c), (0, 0, 1, 1, 1, 1))
            patches = qp.as_strided((1, hw, hw, 3, 3, c), (*qp.stride()[:3], qp.stride(1), qp.stride(2), 1))
            acc = (patches.to(torch.int32) * qw).sum((3, 4))  # [1, H, W, C]
            return (acc.float() * s * sw.reshape(c)).permute(0, 3, 1, 2)

        with torch.inference_mode():
            acc = sqnr(F.conv2d(x, w, None, 1, 1, 1, c), int8_torch_ops())
        ms = timed(
            {
                "fp32_conv": lambda: F.conv2d(x, w, None, 1, 1, 1, c),
                "int8_torch_ops": int8_torch_ops,
                "quantize_input_only": lambda: slimops.ops.quantize_per_token(flat),
            },
            repeat * 4,
        )
        rows.append({"channels": c, "hw": hw, "ms": ms, "sqnr_db_int8_torch_ops": acc,
                     "int8_torch_ops_over_fp32_conv": round(ms["int8_torch_ops"] / ms["fp32_conv"], 3),
                     "quantize_alone_over_fp32_conv": round(ms["quantize_input_only"] / ms["fp32_conv"], 3)})
    return rows


def bert(repeat: int) -> dict:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    dense = BertModel(BertConfig()).eval()
    models = {"fp32": dense}
    for short, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for compute in ("half", "float32"):
            name = f"{short}_{'native' if compute == 'half' else 'fp32_compute'}"
            models[name] = slimops.convert(copy.deepcopy(dense), slimops.HalfConfig(dtype, compute=compute))
    ids = torch.randint(0, 30000, (1, 128), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = dense(ids).last_hidden_state
        acc = {name: sqnr(ref, m(ids).last_hidden_state) for name, m in models.items() if name != "fp32"}
    ms = timed({name: (lambda m=m: m(ids)) for name, m in models.items()}, repeat)
    auto = slimops.convert(copy.deepcopy(dense), slimops.HalfConfig(torch.bfloat16))
    return {
        "model": "transformers BertModel(BertConfig()) = BERT-base, random weights, 1 x 128 tokens",
        "ms": ms,
        "x_fp32_time": {name: round(t / ms["fp32"], 3) for name, t in ms.items()},
        "target_fp32_compute_x_fp32_time": 1.1,
        "sqnr_db_last_hidden_state": acc,
        "mb": {"fp32": weight_mb(dense), "half": weight_mb(models["bf16_native"])},
        "linear_weight_mb": {"fp32": linear_mb(dense), "half": linear_mb(models["bf16_native"])},
        "auto_bf16_on_this_cpu": auto.encoder.layer[0].attention.self.query.slimops_note,
        "auto_fp16_on_this_cpu": slimops.convert(copy.deepcopy(dense), slimops.HalfConfig(torch.float16))
        .encoder.layer[0].attention.self.query.slimops_note,
    }


def cpu_flags() -> list[str]:
    wanted = {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
              "amx_fp16", "avx512_fp16"}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return sorted(wanted & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return []


SUITES = {"resnet": resnet, "demo_cnn": demo_cnn, "conv_gemm": conv_gemm, "depthwise": depthwise, "bert": bert}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="+", choices=sorted(SUITES), default=list(SUITES))
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    out = {
        "what": "issue #13: int8 Conv2d and HalfConfig on CPU, interleaved medians (see bench/conv_half_cpu.py)",
        "cpu": cpu_name(),
        "cpu_flags": cpu_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "versions": versions(),
        "transformers": __import__("transformers").__version__,
        "repeat": args.repeat,
        "note": "shared, noisy 2-core machine (other jobs running): compare ratios within a row only",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": {},
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.only:
            load = os.getloadavg()[0]
            row = SUITES[name](args.repeat)
            out["rows"][f"{name}@{threads}t"] = {"threads": threads, "loadavg_1min_before": round(load, 2), "result": row}
            print(f"{name}@{threads}t", json.dumps(row), flush=True)
            if args.json:  # after every row: a failure later keeps what was measured
                os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
                with open(args.json, "w") as f:
                    json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
