"""Sparse linears on Llama-7B shapes, against the dense bf16 layer.

Cases (``y = x W^T``, x ``[M, K]`` bf16, W ``[N, K]``, (K, N) from Llama-7B):

* ``masked_linear`` forward + backward (training a pruned layer), 50% and 90%
  unstructured sparsity, M in {128, 4096};
* ``block_sparse_linear`` with 64x64 tiles at 50/75/90% zero tiles, M in {1, 16, 128, 4096};
* ``sparse24_linear`` (2:4, 50%), M in {1, 16, 32, 128, 4096}.

Providers: ``torch-dense`` (cuBLAS ``F.linear`` on the dense weight, forward
and backward for the masked case: the baseline); ``torch-dense-mask`` (the
masked weight materialized each step, what ``torch.nn.utils.prune`` does);
``torch-bsr`` (``to_sparse_bsr``, torch's Triton BSR kernels); ``torch-2:4``
(cuSPARSELt through ``to_sparse_semi_structured``); and each slimops backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from slimops.bench.harness import Case, Provider, Suite, Unavailable, slimops_providers

LLAMA_7B = ((4096, 11008), (11008, 4096), (4096, 4096))  # (K, N)
MASKED, BLOCK, S24 = "masked_linear", "block_sparse_linear", "sparse24_linear"
BLOCK_SIZE = 64


def _dense_and_mask(op, n, k, sparsity, device, dtype):
    g = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(n, k, device=device, dtype=dtype, generator=g) * 0.02
    if op == BLOCK:
        keep = torch.rand(n // BLOCK_SIZE, k // BLOCK_SIZE, device=device, generator=g) >= sparsity
        mask = keep.repeat_interleave(BLOCK_SIZE, 0).repeat_interleave(BLOCK_SIZE, 1)
    elif op == S24:
        scores = torch.rand(n, k // 4, 4, device=device, generator=g)
        top = scores.topk(2, dim=-1).indices
        mask = torch.zeros(n, k // 4, 4, dtype=torch.bool, device=device).scatter_(-1, top, True).reshape(n, k)
    else:
        mask = torch.rand(n, k, device=device, generator=g) >= sparsity
    return w * mask, mask


def sparse_case(op: str, m: int, k: int, n: int, sparsity: float) -> Case:
    dtype = torch.bfloat16

    def make_args(device):
        x = torch.randn(m, k, device=device, dtype=dtype)
        w, mask = _dense_and_mask(op, n, k, sparsity, device, dtype)
        return (x, w, mask)

    train = 3 if op == MASKED else 1  # forward + two backward GEMMs
    nbytes = 2 * (m * k + n * k + m * n) * train
    return Case(op, (m, k, n), dtype, make_args, nbytes, flops=2 * m * n * k * train, params=f"{sparsity:.0%} zero")


def cases(device: str, quick: bool) -> list[Case]:
    if device != "cuda":
        k, n = 1024, 1024  # a CPU runs the small shape
        ms = (1, 16) if quick else (1, 16, 128)
        out = [sparse_case(BLOCK, m, k, n, s) for m in ms for s in (0.75, 0.9)]
        out += [sparse_case(S24, m, k, n, 0.5) for m in ms]
        return out + [sparse_case(MASKED, 128, k, n, 0.5)]
    if quick:
        k, n = 4096, 11008
        return [
            sparse_case(MASKED, 4096, k, n, 0.5),
            sparse_case(BLOCK, 4096, k, n, 0.75),
            sparse_case(BLOCK, 16, k, n, 0.9),
            sparse_case(S24, 16, k, n, 0.5),
            sparse_case(S24, 4096, k, n, 0.5),
        ]
    out = []
    for k, n in LLAMA_7B:
        out += [sparse_case(MASKED, m, k, n, s) for m in (128, 4096) for s in (0.5, 0.9)]
        out += [sparse_case(BLOCK, m, k, n, s) for m in (1, 16, 128, 4096) for s in (0.5, 0.75, 0.9)]
        out += [sparse_case(S24, m, k, n, 0.5) for m in (1, 16, 32, 128, 4096)]
    return out


def _train(fn, x, w):
    """One training step of a linear: forward, then both backward GEMMs."""
    w = w.detach().requires_grad_()
    x = x.detach().requires_grad_()
    grad = torch.randn(x.shape[0], w.shape[0], device=x.device, dtype=x.dtype)

    def step():
        y = fn(x, w)
        gx, gw = torch.autograd.grad(y, (x, w), grad)
        return gx, gw

    return step


def _dense(case: Case, args):
    x, w, mask = args
    if case.op == MASKED:
        return _train(F.linear, x, w)
    return lambda: F.linear(x, w)


def _dense_mask(case: Case, args):
    if case.op != MASKED:
        raise Unavailable("the materialized-mask baseline is for masked training")
    x, w, mask = args
    return _train(lambda x, w: F.linear(x, w * mask), x, w)


def _bsr(case: Case, args):
    if case.op != BLOCK:
        raise Unavailable("torch's BSR is the block-sparse baseline")
    x, w, _ = args
    try:
        w_bsr = w.to_sparse_bsr((BLOCK_SIZE, BLOCK_SIZE))
        F.linear(x, w_bsr)
    except Exception as e:
        raise Unavailable(f"to_sparse_bsr linear failed: {type(e).__name__}: {str(e).strip()[:200]}") from e
    return lambda: F.linear(x, w_bsr)


def _semi_structured(case: Case, args):
    if case.op != S24:
        raise Unavailable("cuSPARSELt is the 2:4 baseline")
    x, w, _ = args
    try:
        from torch.sparse import to_sparse_semi_structured

        w_24 = to_sparse_semi_structured(w)
        F.linear(x, w_24)
    except Exception as e:
        raise Unavailable(f"to_sparse_semi_structured failed: {type(e).__name__}: {str(e).strip()[:200]}") from e
    return lambda: F.linear(x, w_24)


def _slimops(case: Case, args):
    import slimops
    from slimops.backend import current_override

    x, w, mask = args
    if case.op == MASKED:
        if current_override() == "cuda":
            raise Unavailable("masked_linear is Triton only")
        return _train(lambda x, w: slimops.ops.masked_linear(x, w, mask), x, w)
    if case.op == BLOCK:
        if current_override() == "cuda":
            raise Unavailable("block_sparse_linear is Triton only")
        packed = slimops.ops.block_sparse_pack(w, mask, BLOCK_SIZE, BLOCK_SIZE)
        return lambda: slimops.ops.block_sparse_linear(x, *packed)
    if current_override() == "triton":
        raise Unavailable("sparse24_linear runs on the sparse tensor cores through CUDA C++ (mma.sp)")
    values, meta = slimops.ops.sparse24_compress(w)
    return lambda: slimops.ops.sparse24_linear(x, values, meta)


PROVIDERS = [
    Provider("torch-dense", ("cpu", "cuda"), _dense),
    Provider("torch-dense-mask", ("cpu", "cuda"), _dense_mask),
    Provider("torch-bsr", ("cuda",), _bsr),
    Provider("torch-2:4", ("cuda",), _semi_structured),
    *slimops_providers(_slimops),
]

SUITE = Suite(
    name="sparse",
    description="masked (training), block-sparse and 2:4 linears on Llama-7B shapes, against dense bf16",
    cases=cases,
    providers=PROVIDERS,
    baseline="torch-dense",
)
