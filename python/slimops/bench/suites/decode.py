"""Decode-size linears (issue 12): every slimops weight format against the bf16 ``nn.Linear`` it replaces.

Each case is one layer made the way a user makes it (``slimops.convert`` of a
bias-free bf16 ``nn.Linear``, or a ``MaskedLinear`` for training with a mask),
on a Llama-7B shape (4096→11008, 11008→4096) at M in {1, 16, 64, 128, 256, 4096},
ordered by M so a time limit keeps the decode rows:

* ``W8A16`` per channel and ``W8A16-g128`` (``Int8WeightOnlyConfig``),
* ``W8A8`` (``Int8DynamicConfig``: the activation quantization is in the time),
* ``fp8`` (``Fp8DynamicConfig``), ``int4-g128`` (``Int4WeightOnlyConfig``),
* ``2:4`` (``SparseConfig(0.5, "2:4")`` → ``Sparse24Linear``),
* ``block64-75`` / ``block64-90`` (64x64 tiles, 75% / 90% of them zero),
* ``masked-fwd-bwd`` (forward + both backward GEMMs, M = 4096 only).

Providers: ``torch-bf16`` (the dense bf16 layer, forward + backward for the masked
case: the baseline), ``torch-2:4`` (cuSPARSELt on the same 2:4 weight, for the 2:4
rows) and each slimops backend. The providers of a case are timed in turn, call by
call (CUDA events, L2 flushed before each call), with a 512 MB device copy (a
256 MB buffer read and written) among them: each row's ``frac_of_copy_bw`` is its
bytes per second over that copy's. ``bytes`` is what the row's layer must move
at least: the activation in, every tensor the layer holds, the output out.

Rows carry the issue's target for their case (``target``, ``target_met``). On a
CPU the shapes are tiny and bf16 is emulated: those rows test the plumbing only.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from slimops.bench.harness import Case, Provider, Suite, Target, Unavailable, slimops_providers

LLAMA_7B = ((4096, 11008), (11008, 4096))  # (in_features, out_features): MLP up and down
TOKENS = (1, 16, 64, 128, 256, 4096)
MASKED_TOKENS = 4096
COPY_BYTES = 512 << 20  # a 256 MB buffer read and written

W8A16, W8A16_G128, W8A8, FP8, INT4 = "W8A16", "W8A16-g128", "W8A8", "fp8", "int4-g128"
S24, BLOCK75, BLOCK90, MASKED = "2:4", "block64-75", "block64-90", "masked-fwd-bwd"
FORMATS = (W8A16, W8A16_G128, W8A8, FP8, INT4, S24, BLOCK75, BLOCK90, MASKED)


def _config(fmt: str):
    import slimops

    return {
        W8A16: lambda: slimops.Int8WeightOnlyConfig(),
        W8A16_G128: lambda: slimops.Int8WeightOnlyConfig(group_size=128),
        W8A8: lambda: slimops.Int8DynamicConfig(),
        FP8: lambda: slimops.Fp8DynamicConfig(),
        INT4: lambda: slimops.Int4WeightOnlyConfig(group_size=128),
        S24: lambda: slimops.SparseConfig(0.5, pattern="2:4"),
        BLOCK75: lambda: slimops.SparseConfig(0.75, pattern="block", block_size=64),
        BLOCK90: lambda: slimops.SparseConfig(0.9, pattern="block", block_size=64),
    }[fmt]()


def make_layer(fmt: str, linear: nn.Linear) -> nn.Module:
    """The slimops layer for ``fmt``, made from (a copy of) ``linear`` the way a user makes it."""
    if fmt == MASKED:
        from slimops.nn import MaskedLinear

        w = linear.weight.detach().clone()
        g = torch.Generator(device=w.device).manual_seed(1)
        mask = torch.rand(w.shape, device=w.device, generator=g) >= 0.5
        return MaskedLinear(nn.Parameter(w * mask), None, mask)
    import slimops

    layer = slimops.convert(nn.Sequential(copy.deepcopy(linear)), _config(fmt))[0]
    if isinstance(layer, nn.Linear):  # convert left it as it was: the row would time bf16 against itself
        raise Unavailable(f"slimops.convert left the {fmt} layer as nn.Linear (see its summary)")
    return layer


def layer_bytes(module: nn.Module) -> int:
    """Bytes of every tensor a layer holds (weights, scales, masks, indices): what one call must read."""
    return sum(t.nbytes for t in module.state_dict().values() if isinstance(t, torch.Tensor))


def target(fmt: str, m: int) -> Target | None:
    """Issue 12's target for ``fmt`` at ``m`` tokens (DESIGN.md's for W8A8 / fp8 at large M), or None."""
    small = m <= 16
    if fmt == W8A16 and small:
        return Target("<= 16 us, >= 70% of copy BW, >= 2.0x bf16", min_speedup=2.0, max_us=16.0,
                      min_frac_of_copy=0.7)
    if fmt == W8A16_G128 and small:
        return Target(">= 1.8x bf16", min_speedup=1.8)
    if fmt == W8A8 and small:
        return Target(">= 1.8x bf16 (activation quantization included)", min_speedup=1.8)
    if fmt in (W8A8, W8A16, W8A16_G128) and 64 <= m <= 256:
        return Target(">= 1.3x bf16", min_speedup=1.3)
    if fmt in (W8A16, W8A16_G128) and m == 4096:
        return Target(">= 1.0x bf16", min_speedup=1.0)
    if fmt == W8A8 and m == 4096:
        return Target(">= 1.45x bf16 (DESIGN.md)", min_speedup=1.45)
    if fmt == FP8 and small:
        return Target(">= 1.6x bf16", min_speedup=1.6)
    if fmt == FP8 and m == 4096:
        return Target(">= 1.6x bf16 incl. quant (DESIGN.md)", min_speedup=1.6)
    if fmt == S24 and m <= 32:
        return Target(">= 1.5x dense bf16", min_speedup=1.5)
    if fmt == S24 and m == 4096:
        return Target(">= cuSPARSELt, same run", min_speedup=1.0, against="torch-2:4")
    if fmt == BLOCK90 and small:
        return Target(">= 4x dense", min_speedup=4.0)
    if fmt == BLOCK75 and m == 4096:
        return Target(">= 2.5x dense", min_speedup=2.5)
    if fmt == MASKED:
        return Target("<= 1.15x dense fwd+bwd time", min_speedup=1 / 1.15)
    return None


def decode_case(fmt: str, m: int, k: int, n: int) -> Case:
    """``fmt``'s layer on ``x [m, k]`` bf16 with a ``[n, k]`` weight; args ``(x, linear)``."""
    dtype = torch.bfloat16

    def make_args(device):
        g = torch.Generator(device=device).manual_seed(0)
        linear = nn.Linear(k, n, bias=False, device=device, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(n, k, device=device, generator=g) * 0.02)
        x = torch.randn(m, k, device=device, dtype=dtype, generator=g)
        return (x, linear)

    train = 3 if fmt == MASKED else 1  # forward + two backward GEMMs
    nbytes = 2 * (m * k + n * k + m * n) * train  # the dense bf16 layer's
    return Case(fmt, (m, k, n), dtype, make_args, nbytes, flops=2 * m * n * k * train, target=target(fmt, m))


def cases(device: str, quick: bool) -> list[Case]:
    """GPU: every format on both Llama-7B shapes at every M (quick: the rows with a target), by M."""
    if device != "cuda":
        # Tiny shapes (multiples of 128 for int4's groups, of 64 for the tiles): plumbing only.
        shapes, tokens = ((256, 384),) if quick else ((256, 384), (384, 256)), (1, 16) if quick else (1, 16, 64)
        out = [decode_case(f, m, k, n) for m in tokens for k, n in shapes for f in FORMATS if f != MASKED]
        return out + [decode_case(MASKED, 16, k, n) for k, n in shapes]
    out = []
    for m in TOKENS:
        for k, n in LLAMA_7B:
            for fmt in FORMATS:
                if fmt == MASKED and m != MASKED_TOKENS:
                    continue
                if quick and target(fmt, m) is None:
                    continue
                out.append(decode_case(fmt, m, k, n))
    return out


def _forward(module: nn.Module, x: torch.Tensor, nbytes: int):
    def fn():
        with torch.no_grad():
            return module(x)

    fn.nbytes = nbytes
    return fn


def _train_step(module: nn.Module, x: torch.Tensor, nbytes: int):
    """Forward, then the input and weight gradients, as a training step of the layer runs them."""
    x = x.detach().requires_grad_()
    params = [p for p in module.parameters() if p.requires_grad]
    grad = torch.randn(x.shape[0], module.out_features, device=x.device, dtype=x.dtype)

    def fn():
        return torch.autograd.grad(module(x), (x, *params), grad)

    fn.nbytes = nbytes
    return fn


def _io_bytes(case: Case) -> int:
    m, k, n = case.shape
    return 2 * (m * k + m * n)


def _bf16(case: Case, args):
    x, linear = args
    if case.op == MASKED:
        return _train_step(linear, x, 3 * (_io_bytes(case) + layer_bytes(linear)))
    return _forward(linear, x, _io_bytes(case) + layer_bytes(linear))


def _cusparselt(case: Case, args):
    if case.op != S24:
        raise Unavailable("cuSPARSELt is the 2:4 rows' second baseline")
    x, linear = args
    w = linear.weight.detach()
    # The same 2:4 pattern slimops' magnitude pruning keeps: the 2 largest of every 4.
    groups = w.reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    try:
        from torch.sparse import to_sparse_semi_structured

        w24 = to_sparse_semi_structured(w * keep.reshape(w.shape))
        F.linear(x, w24)
        names, _ = w24.__tensor_flatten__()  # its packed values and metadata
        held = sum(getattr(w24, name).nbytes for name in names)
    except Exception as e:
        raise Unavailable(f"to_sparse_semi_structured failed: {type(e).__name__}: {str(e).strip()[:200]}") from e
    fn = lambda: F.linear(x, w24)  # noqa: E731
    fn.nbytes = _io_bytes(case) + held
    return fn


def _slimops(case: Case, args):
    x, linear = args
    layer = make_layer(case.op, linear)
    if case.op == MASKED:
        return _train_step(layer, x, 3 * (_io_bytes(case) + layer_bytes(linear)) + layer.mask.nbytes)
    return _forward(layer, x, _io_bytes(case) + layer_bytes(layer))


SUITE = Suite(
    name="decode",
    description="issue 12: every slimops weight format at decode sizes (Llama-7B, M = 1..4096) against bf16, "
    "with the copy bandwidth and the issue's target per row",
    cases=cases,
    providers=[
        Provider("torch-bf16", ("cpu", "cuda"), _bf16),
        Provider("torch-2:4", ("cuda",), _cusparselt),
        *slimops_providers(_slimops),
    ],
    baseline="torch-bf16",
    interleave=True,
    copy_bytes=COPY_BYTES,
)
