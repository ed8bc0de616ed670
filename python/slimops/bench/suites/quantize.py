"""int8 quantize / dequantize on LLM shapes (Llama-7B: hidden 4096, MLP 11008).

Cases:

* ``quantize_per_token``: activations ``[M, K]``, M tokens from decode (1, 16)
  to prefill (128, 4096), K = 4096 / 11008; plus 8192×8192 on a GPU.
* ``quantize_per_channel``: weights 4096×11008 and 11008×4096, axis 0
  (one scale per output row), symmetric and asymmetric.
* ``dequantize``: int8 ``[M, K]`` with per-token fp32 scales to bf16 / fp32.

Providers: ``torch-eager`` (the pure-PyTorch reference, the baseline),
``torch-compile`` (that reference under ``torch.compile``), and slimops: the C++
kernel on CPU; ``slimops-cuda``, ``slimops-triton`` (forced) and
``slimops-auto`` (the per-shape rule) on a GPU. All are memory bound, so rows
quote GB/s over the compulsory bytes.
"""

from __future__ import annotations

import torch

from slimops.bench.harness import Case, Provider, Suite, Unavailable, slimops_providers
from slimops.reference import quantize as ref

HIDDEN, MLP = 4096, 11008  # Llama-7B


def _nbytes(numel: int, dtype: torch.dtype) -> int:
    return numel * dtype.itemsize


def per_token_case(m: int, k: int, dtype: torch.dtype) -> Case:
    """``quantize_per_token`` of an ``[m, k]`` activation: reads x, writes int8 q and fp32 scales."""

    def make_args(device):
        return (torch.randn(m, k, device=device, dtype=dtype),)

    nbytes = _nbytes(m * k, dtype) + m * k + 4 * m
    return Case("quantize_per_token", (m, k), dtype, make_args, nbytes)


def per_channel_case(n: int, k: int, dtype: torch.dtype, symmetric: bool) -> Case:
    """``quantize_per_channel`` of an ``[n, k]`` weight along axis 0: writes q, scale and zero point."""

    def make_args(device):
        return (torch.randn(n, k, device=device, dtype=dtype) * 0.02, 0, symmetric)

    # The op returns int32 zero points in the symmetric case too (all zero).
    nbytes = _nbytes(n * k, dtype) + n * k + 4 * n + 4 * n
    params = "axis=0 sym" if symmetric else "axis=0 asym"
    return Case("quantize_per_channel", (n, k), dtype, make_args, nbytes, params=params)


def dequantize_case(m: int, k: int, out_dtype: torch.dtype) -> Case:
    """``dequantize`` of int8 ``[m, k]`` with a per-token fp32 scale ``[m, 1]`` to ``out_dtype``."""

    def make_args(device):
        q = torch.randint(-127, 128, (m, k), device=device, dtype=torch.int8)
        scale = torch.rand(m, 1, device=device) * 0.01 + 1e-4
        return (q, scale, None, out_dtype)

    nbytes = m * k + 4 * m + _nbytes(m * k, out_dtype)
    return Case("dequantize", (m, k), out_dtype, make_args, nbytes, params="per-token")


def cases(device: str, quick: bool) -> list[Case]:
    """The suite's cases: Llama-7B shapes; quick keeps a few (and on a GPU the 8192x8192 acceptance case)."""
    bf16, fp32 = torch.bfloat16, torch.float32
    if quick and device == "cuda":
        # 8192x8192 bf16 per-token is the acceptance figure: always in the quick set.
        return [
            per_token_case(16, HIDDEN, bf16),
            per_token_case(4096, HIDDEN, bf16),
            per_token_case(8192, 8192, bf16),
            per_channel_case(MLP, HIDDEN, bf16, True),
            per_channel_case(MLP, HIDDEN, bf16, False),
            dequantize_case(4096, HIDDEN, bf16),
            dequantize_case(4096, HIDDEN, fp32),
        ]
    if quick:
        # A 2-core CPU runs these in seconds; the weight is one Llama-1B (hidden 2048) projection.
        return [
            per_token_case(16, HIDDEN, fp32),
            per_token_case(16, HIDDEN, bf16),
            per_channel_case(2048, 2048, fp32, True),
            per_channel_case(2048, 2048, fp32, False),
            dequantize_case(16, HIDDEN, bf16),
            dequantize_case(16, HIDDEN, fp32),
        ]
    dtypes = (bf16, torch.float16) if device == "cuda" else (fp32, bf16)
    tokens = (1, 16, 128, 4096)
    out = [per_token_case(m, k, dt) for dt in dtypes for k in (HIDDEN, MLP) for m in tokens]
    if device == "cuda":
        out.append(per_token_case(8192, 8192, bf16))
    weights = ((HIDDEN, MLP), (MLP, HIDDEN))
    out += [per_channel_case(n, k, dt, sym) for dt in dtypes for sym in (True, False) for n, k in weights]
    out += [dequantize_case(m, k, dt) for dt in (bf16, fp32) for k in (HIDDEN, MLP) for m in tokens]
    return out


# ---------------------------------------------------------------- providers

_REFERENCE = {
    "quantize_per_token": ref.quantize_per_token,
    "quantize_per_channel": ref.quantize_per_channel,
    "dequantize": ref.dequantize,
}


def _eager(case: Case, args: tuple):
    fn = _REFERENCE[case.op]
    return lambda: fn(*args)


def _compiled(case: Case, args: tuple):
    # A fresh dynamo state per case: each shape gets its own static graph (what a
    # user with fixed shapes gets), and a long run never hits the recompile limit,
    # past which torch.compile silently falls back to eager.
    torch._dynamo.reset()
    try:
        fn = torch.compile(_REFERENCE[case.op], dynamic=False)
        fn(*args)  # compiles here, outside the timed region
    except Exception as e:
        raise Unavailable(f"torch.compile failed: {type(e).__name__}: {str(e).strip()[:300]}") from e
    return lambda: fn(*args)


def _slimops(case: Case, args: tuple):
    # The overload, as slimops.ops' wrappers call it: no per-call overload resolution.
    op = getattr(torch.ops.slimops, case.op).default
    return lambda: op(*args)


PROVIDERS = [
    Provider("torch-eager", ("cpu", "cuda"), _eager),
    Provider("torch-compile", ("cpu", "cuda"), _compiled),
    *slimops_providers(_slimops),
]

SUITE = Suite(
    name="quantize",
    description="int8 quantize_per_token / quantize_per_channel / dequantize on Llama shapes",
    cases=cases,
    providers=PROVIDERS,
    baseline="torch-eager",
)
