"""Quantized linear layers on Llama-7B shapes, against the bf16 layer they replace.

Cases: ``y = x W^T`` for x ``[M, K]`` bf16 and a ``[N, K]`` weight, with
(K, N) in {4096 x 11008, 11008 x 4096, 4096 x 4096} (Llama-7B's MLP up/down
and attention projections) at M in {1, 16, 128, 4096}, plus 8192^3:

* ``int8_dynamic_linear`` (W8A8: per-token activation quantization included),
* ``weight_int8_linear`` per channel and with group_size 128 (W8A16),
* ``fp8_dynamic_linear`` (e4m3, per-row scales, quantization included).

Providers: ``torch-bf16`` (cuBLAS ``F.linear`` on the bf16 weight, the baseline
every ratio is against); ``torch-int-mm`` (eager per-token quantization,
``torch._int_mm``, eager dequantization; it refuses M <= 16 on a GPU);
``torch-compile`` (that unfused pipeline, or dequantize-then-matmul for
weight-only, under ``torch.compile``); ``torch-scaled-mm`` (eager fp8
quantization + ``torch._scaled_mm``); ``torchao`` when it imports; and each
slimops backend. Rows quote µs, TFLOP/s and the ratio to bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slimops.bench.harness import Case, Provider, Suite, Unavailable, slimops_providers
from slimops.reference import quant_mm as ref
from slimops.reference.quant_mm import FP8_MAX

LLAMA_7B = ((4096, 11008), (11008, 4096), (4096, 4096))  # (K, N)
TOKENS = (1, 16, 128, 4096)
GROUP = 128

W8A8, W8A16, FP8 = "int8_dynamic_linear", "weight_int8_linear", "fp8_dynamic_linear"


def _weight(n, k, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(n, k, device=device, generator=g) * 0.02


def linear_case(op: str, m: int, k: int, n: int, *, group_size: int | None = None) -> Case:
    """One quantized linear on ``x [m, k]`` bf16; its args are the slimops op's."""

    def make_args(device):
        x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
        w = _weight(n, k, device)
        if op == W8A8:
            amax = w.abs().amax(dim=1, keepdim=True)
            scale = amax / 127
            return (x, torch.round(w / scale).to(torch.int8), scale, None)
        if op == W8A16:
            groups = 1 if group_size is None else k // group_size
            wg = w.reshape(n, groups, -1)
            scale = wg.abs().amax(dim=2) / 127
            q = torch.round(wg / scale[..., None]).to(torch.int8).reshape(n, k)
            return (x, q, scale.to(torch.bfloat16) if group_size else scale.flatten(), None)
        scale = w.abs().amax(dim=1, keepdim=True) / FP8_MAX
        return (x, (w / scale).to(torch.float8_e4m3fn), scale, None)

    weight_bytes = n * k + 4 * n * (k // group_size if group_size else 1)
    nbytes = 2 * m * k + weight_bytes + 2 * m * n
    params = f"group_size={group_size}" if group_size else ""
    return Case(op, (m, k, n), torch.bfloat16, make_args, nbytes, flops=2 * m * n * k, params=params)


def cases(device: str, quick: bool) -> list[Case]:
    """Llama-7B linear shapes; quick keeps the targets' shapes (GPU) or small ones (CPU)."""
    if quick and device == "cuda":
        # Every target's shape, and decode on both MLP orientations.
        return [
            linear_case(W8A8, 4096, 4096, 11008),
            linear_case(W8A8, 1, 4096, 11008),
            linear_case(W8A8, 16, 4096, 11008),
            linear_case(W8A8, 128, 4096, 11008),
            linear_case(W8A16, 1, 11008, 4096),
            linear_case(W8A16, 16, 11008, 4096),
            linear_case(W8A16, 1, 4096, 11008),
            linear_case(W8A16, 16, 4096, 11008),
            linear_case(W8A16, 16, 11008, 4096, group_size=GROUP),
            linear_case(W8A16, 4096, 4096, 11008),
            linear_case(FP8, 16, 4096, 11008),
            linear_case(FP8, 4096, 4096, 11008),
        ]
    if quick:
        return [
            linear_case(W8A8, 16, 2048, 2048),
            linear_case(W8A16, 1, 2048, 2048),
            linear_case(W8A16, 16, 2048, 2048, group_size=GROUP),
            linear_case(FP8, 16, 2048, 2048),
        ]
    out = []
    for k, n in LLAMA_7B:
        for m in TOKENS:
            out += [
                linear_case(W8A8, m, k, n),
                linear_case(W8A16, m, k, n),
                linear_case(W8A16, m, k, n, group_size=GROUP),
                linear_case(FP8, m, k, n),
            ]
    big = 8192
    out += [linear_case(op, big, big, big) for op in (W8A8, W8A16, FP8)]
    return out


# ---------------------------------------------------------------- baselines


def _float_weight(case: Case, args) -> torch.Tensor:
    """The bf16 weight the quantized one stands for."""
    x, w, scale, _ = args
    if case.op == W8A16:
        return (w.double() * ref.expand_group_scale(scale, w.shape[1]).double()).to(torch.bfloat16)
    return (w.double() * scale.double().reshape(-1, 1)).to(torch.bfloat16)


def _bf16(case: Case, args):
    x, w = args[0], _float_weight(case, args)
    return lambda: F.linear(x, w)


def _unfused_w8a8(x, w, w_scale):
    """Per-token quantization, torch._int_mm, dequantization: the eager ops a user would write."""
    s = x.abs().amax(dim=-1, keepdim=True).float() / 127
    q = torch.round(x / s).clamp(-127, 127).to(torch.int8)
    return (torch._int_mm(q, w.t()).float() * s * w_scale.reshape(1, -1)).to(x.dtype)


def _dequant_then_mm(x, w, scale):
    """The weight dequantized to x's dtype in memory, then the float matmul."""
    n, k = w.shape
    groups = scale.shape[1] if scale.dim() == 2 else 1
    w_deq = (w.reshape(n, groups, -1).to(x.dtype) * scale.reshape(n, groups, 1).to(x.dtype)).reshape(n, k)
    return F.linear(x, w_deq)


def _scaled_mm_fp8(x, w, w_scale):
    s = x.abs().amax(dim=-1, keepdim=True).float() / FP8_MAX
    q = (x.float() / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return torch._scaled_mm(q, w.t(), scale_a=s, scale_b=w_scale.reshape(1, -1), out_dtype=torch.bfloat16)


_UNFUSED = {W8A8: _unfused_w8a8, W8A16: _dequant_then_mm, FP8: _scaled_mm_fp8}


def _int_mm(case: Case, args):
    if case.op != W8A8:
        raise Unavailable("torch._int_mm is the W8A8 baseline")
    x, w, s, _ = args
    try:
        _unfused_w8a8(x, w, s)
    except RuntimeError as e:  # M <= 16 on CUDA
        raise Unavailable(f"torch._int_mm refuses this shape: {str(e).strip()[:200]}") from e
    return lambda: _unfused_w8a8(x, w, s)


def _scaled_mm(case: Case, args):
    if case.op != FP8:
        raise Unavailable("torch._scaled_mm is the fp8 baseline")
    x, w, s, _ = args
    try:
        _scaled_mm_fp8(x, w, s)
    except RuntimeError as e:
        raise Unavailable(f"torch._scaled_mm failed: {str(e).strip()[:200]}") from e
    return lambda: _scaled_mm_fp8(x, w, s)


def _compiled(case: Case, args):
    torch._dynamo.reset()  # a static graph per shape, and no recompile limit over a long run
    x, w, s, _ = args
    try:
        fn = torch.compile(_UNFUSED[case.op], dynamic=False)
        fn(x, w, s)
    except Exception as e:
        raise Unavailable(f"torch.compile failed: {type(e).__name__}: {str(e).strip()[:300]}") from e
    return lambda: fn(x, w, s)


def _torchao(case: Case, args):
    try:
        import torchao.quantization as aoq
    except ImportError as e:
        raise Unavailable(f"torchao is not installed ({e})") from e
    x = args[0]
    layer = torch.nn.Linear(x.shape[-1], args[1].shape[0], bias=False, device=x.device, dtype=x.dtype)
    layer.weight.data = _float_weight(case, args)
    try:
        if case.op == W8A8:
            aoq.quantize_(layer, aoq.Int8DynamicActivationInt8WeightConfig())
        elif case.op == W8A16:
            group = case.params and int(case.params.split("=")[1])
            aoq.quantize_(layer, aoq.Int8WeightOnlyConfig(group_size=group or None))
        else:
            aoq.quantize_(layer, aoq.Float8DynamicActivationFloat8WeightConfig(granularity=aoq.PerRow()))
        fn = torch.compile(layer, dynamic=False)
        fn(x)
    except Exception as e:
        raise Unavailable(f"torchao failed: {type(e).__name__}: {str(e).strip()[:300]}") from e
    return lambda: fn(x)


def _slimops(case: Case, args):
    from slimops.backend import current_override

    if case.op != W8A16 and current_override() == "cuda":
        raise Unavailable(f"{case.op} runs Triton GEMMs (int8_mm / _scaled_mm): no CUDA C++ path to force")
    op = getattr(torch.ops.slimops, case.op).default
    return lambda: op(*args)


PROVIDERS = [
    Provider("torch-bf16", ("cpu", "cuda"), _bf16),
    Provider("torch-int-mm", ("cpu", "cuda"), _int_mm),
    Provider("torch-scaled-mm", ("cpu", "cuda"), _scaled_mm),
    Provider("torch-compile", ("cpu", "cuda"), _compiled),
    Provider("torchao", ("cuda",), _torchao),
    *slimops_providers(_slimops),
]

SUITE = Suite(
    name="quant",
    description="W8A8 / W8A16 / fp8 dynamic linear layers on Llama-7B shapes, against bf16 F.linear",
    cases=cases,
    providers=PROVIDERS,
    baseline="torch-bf16",
)
