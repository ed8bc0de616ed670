"""The op test table: one entry per op of ``torch.ops.slimops`` (OpInfo-style).

Each :class:`OpInfo` says how to test one op: its typed wrapper, the samples it
runs on (fresh random, never-zero values at odd shapes, strided views among
them), its pure-PyTorch reference (``slimops.reference``, float64 or exact
integer), the error each output dtype is allowed, whether it has a gradient,
and (from the op table, through ``tests.backends``) where it runs.
``tests/ops/test_op_db.py`` runs correctness, opcheck, torch.compile, gradient
and CUDA-graph tests from it; ``test_every_op_has_an_entry`` fails for an op
added to ``csrc/ops.cpp`` without an entry here.

What a table row cannot say (bad-input messages, NaN/inf rows, the int32 limit
of K, hand-made layouts) stays in the family files beside this one.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

import slimops
from slimops import reference as ref
from slimops.reference import sparse as sref
from slimops.reference.quant_mm import expand_group_scale
from tests.backends import EPS, OPS, TRITON_OPS, gen, random_rows

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
FLOATS = (F32, F16, BF16)
LAYOUTS_2D = ("sliced", "transposed", "stepped")


@dataclass
class Sample:
    """One call: ``op(*args)``. ``desc`` names it in failure messages."""

    args: tuple
    desc: str


@dataclass(frozen=True)
class Tol:
    """Bound on |got - exact| for one output dtype: ``rtol * |exact| + atol`` (plus the op's ``slack``)."""

    rtol: float = 0.0
    atol: float = 0.0


EXACT = {d: Tol() for d in (*FLOATS, torch.int8, torch.int32, torch.uint8, torch.float8_e4m3fn)}


def rounding(factor: float = 1.01, atol: float = 2.0**-24) -> dict:
    """One rounding to each float output dtype (and fp16's subnormal spacing)."""
    return {d: Tol(EPS[d] * factor, atol) for d in FLOATS}


@dataclass(frozen=True)
class Grad:
    """The wrapper is differentiable in ``args[i] for i in wrt``; ``fn`` (float64, linear in
    each of them) is the function whose gradient it must give (straight-through: the exact
    linear of the stored weight, without the activation rounding)."""

    wrt: tuple[int, ...]
    fn: Callable[..., torch.Tensor]
    rtol: float = 1e-5
    # fn at |args| bounds the rounding unless the weight's sign is not that of a float argument
    # (packed nibbles minus a zero point): then this (at |args|) gives the bound instead.
    magnitude: Callable[..., torch.Tensor] | None = None


@dataclass(frozen=True)
class OpInfo:
    name: str
    wrapper: Callable
    sample_inputs: Callable[..., Iterator[Sample]]  # (device, dtype, *, seed) -> samples
    reference: Callable  # (*args) -> outputs in the dtypes the op returns
    dtypes: tuple[torch.dtype, ...]  # what ``dtype`` means is the sample generator's (x, out_dtype, ...)
    tol: dict  # output dtype -> Tol
    exact: Callable | None = None  # (*args) -> float64 outputs; None: the reference is exact
    slack: Callable | None = None  # (*args) -> per compared output, an extra elementwise allowance (float64)
    outputs: tuple[int, ...] | None = None  # which returned outputs to compare; None: all
    mutates: tuple[int, ...] = ()  # args written in place: compared after the call, before the outputs
    grad: Grad | None = None
    composes: tuple[str, ...] = ()  # a composite op: runs wherever all of these run
    gpu_dtypes: tuple[torch.dtype, ...] | None = None  # dtypes its CUDA kernel takes (None: dtypes)
    opcheck_utils: tuple[str, ...] | None = None  # None: all of opcheck's tests
    cuda_graph: bool = True  # capturable: no host sync, no data-dependent output size
    notes: str = ""

    @property
    def op(self):
        return getattr(torch.ops.slimops, self.name).default

    def impls(self) -> list[str]:
        """The implementations (tests.backends.IMPLS names) this op runs on, from the op table."""
        row = OPS[self.name]
        if row["composite"] and self.composes:
            triton = all(n in TRITON_OPS for n in self.composes)
            cuda = all(OPS[n]["cuda_cpp"] for n in self.composes)
        else:
            triton = row["triton"]
            cuda = row["cuda_cpp"] or row["composite"]
        out = ["cpu"]
        if triton:
            out.append("triton-interpret")
        if cuda:
            out.append("cuda")
        if triton:
            out.append("triton")
        return out


# ----------------------------------------------------------------- sample helpers


def _seed(seed: int, *parts) -> int:
    return (seed * 1000003 + hash(parts)) % 2**31


def _int8(shape, seed, *, layout="contiguous", lo=-127):
    g = gen(seed)
    v = torch.randint(lo, 128, shape, generator=g, dtype=torch.int8)
    if layout == "transposed":
        return v.t().contiguous().t()
    if layout == "stepped":  # last-dim stride 2, inside a wider buffer
        wide = torch.randint(lo, 128, (shape[0], 2 * shape[1]), generator=g, dtype=torch.int8)
        wide[:, ::2] = v
        return wide[:, ::2]
    return v


def _scales(n, seed, shape=None):
    """Positive scales over 2^-12 .. 2^-4, never zero: products of two stay inside fp16's range."""
    return torch.exp2(torch.empty(n).uniform_(-12, -4, generator=gen(seed))).reshape(shape or (n,))


def _on(device, *ts):
    return tuple(None if t is None else t.to(device) for t in ts)


def _acc(k: int) -> float:
    """fp32 accumulation of k products (and two more roundings), relative to sum |products|."""
    return (k + 2) * EPS[F32] * 1.01


# ----------------------------------------------------------------- quantize family

TOKEN_SHAPES = [(1, 1), (1, 5), (5, 17), (17, 123), (3, 5, 769), (2, 4097), (123,)]


def quantize_per_token_samples(device, dtype, *, seed):
    for shape in TOKEN_SHAPES:
        for layout in ("contiguous", *LAYOUTS_2D) if len(shape) > 1 else ("contiguous",):
            x = random_rows(shape, dtype, device, seed=_seed(seed, shape, layout), layout=layout)
            yield Sample((x,), f"x {tuple(shape)} {layout}")


CHANNEL_SHAPES = [(5,), (7, 17), (17, 5), (3, 5, 123), (2, 3, 4, 5), (1, 769)]


def quantize_per_channel_samples(device, dtype, *, seed):
    for shape in CHANNEL_SHAPES:
        layouts = ("contiguous", "transposed") if len(shape) == 2 else ("contiguous",)
        for layout in layouts:
            x = random_rows(shape, dtype, device, seed=_seed(seed, shape, layout), layout=layout)
            for symmetric in (True, False):
                # an offset, so the zero point matters
                xs = x if symmetric else x + x.abs().amax() * 0.3
                for axis in range(-x.dim(), x.dim()):
                    yield Sample((xs, axis, symmetric), f"x {tuple(shape)} {layout} axis {axis} sym {symmetric}")


def dequantize_samples(device, out_dtype, *, seed):
    g = gen(_seed(seed, "dequantize"))
    q = torch.randint(-128, 128, (3, 5, 123), generator=g, dtype=torch.int8)
    shapes = {"per-tensor": (1, 1, 1), "per-token": (3, 5, 1), "per-channel-0": (3, 1, 1),
              "per-channel-1": (1, 5, 1), "per-channel-2": (1, 1, 123), "leading-run": (3, 5, 1)}
    for name, shape in shapes.items():
        scale = torch.rand(shape, generator=g) * 0.1 + 1e-3
        zp = torch.randint(-128, 128, shape, generator=g, dtype=torch.int32)
        for with_zp in (False, True):
            yield Sample((*_on(device, q, scale, zp if with_zp else None), out_dtype), f"{name} zp {with_zp}")
    # a strided q: every other column, transposed
    qs = torch.randint(-128, 128, (40, 18), generator=g, dtype=torch.int8)[:, ::2].t()
    yield Sample((*_on(device, qs, torch.rand(9, 1, generator=g) + 0.5, None), out_dtype), "strided q [9, 40]")


def _dequantize_exact(q, scale, zero_point, out_dtype):
    return (q.double() - (0 if zero_point is None else zero_point.double())) * scale.double()


# ----------------------------------------------------------------- quantized matmul family

INT8_MM_SHAPES = [(1, 17, 64), (5, 33, 37), (17, 5, 100), (123, 17, 16), (1, 1, 1), (7, 769, 64)]


def int8_mm_samples(device, out_dtype, *, seed):
    for m, n, k in INT8_MM_SHAPES:
        for layout in ("contiguous", "transposed", "stepped"):
            for bias_dtype in (None, F32, F16):
                s = _seed(seed, m, n, k, layout, bias_dtype)
                a = _int8((m, k), s, layout=layout)
                b = _int8((n, k), s + 1, layout="transposed" if layout == "stepped" else "contiguous")
                a_scale = _scales(m, s + 2, (m, 1)) if layout != "stepped" else _scales(m, s + 2)
                bias = None if bias_dtype is None else (torch.randn(n, generator=gen(s + 3)) * 100).to(bias_dtype)
                yield Sample((*_on(device, a, b, a_scale, _scales(n, s + 4), bias), out_dtype),
                             f"{m}x{n}x{k} {layout} bias {bias_dtype}")


def _int8_mm_slack(a, b, a_scale, b_scale, bias, out_dtype):
    # fp32 epilogue: the acc conversion, two products and the bias add round once each.
    product = (a.cpu().long() @ b.cpu().long().t()).double().abs()
    product = product * a_scale.cpu().double().reshape(-1, 1) * b_scale.cpu().double().reshape(1, -1)
    bias_mag = 0 if bias is None else bias.cpu().double().abs()
    return [4 * EPS[F32] * (product + bias_mag) * 1.01]


W8A16_CASES = (
    [((m, 64), 17, None) for m in range(1, 18)]
    + [((m, 96), 33, 32) for m in (1, 5, 16, 17)]
    + [((2, 3, 37), 5, None), ((4, 128), 1, 64), ((123, 64), 17, 16), ((9, 256), 769, 128), ((3, 64), 6, 64)]
)


def weight_int8_linear_samples(device, dtype, *, seed):
    for xshape, n, group_size in W8A16_CASES:
        k = xshape[-1]
        s = _seed(seed, xshape, n, group_size)
        # x spans 6 decades per row; 2^-8 keeps K=256 sums inside fp16's range (exact scaling).
        x = random_rows(xshape, dtype, "cpu", seed=s) * 2**-8
        groups = 1 if group_size is None else k // group_size
        scale = _scales(n * groups, s + 1, (n, groups) if group_size else (n,))
        bias = torch.randn(n, generator=gen(s + 2)).to(dtype)
        yield Sample(_on(device, x, _int8((n, k), s + 3), scale, bias), f"x {xshape} N={n} gs={group_size}")
    for layout in LAYOUTS_2D:
        for scale_dtype in (F32, F16):
            s = _seed(seed, layout, scale_dtype)
            x = random_rows((7, 64), dtype, "cpu", seed=s, layout=layout) * 2**-8
            w = _int8((33, 64), s + 1, layout="transposed")  # a non-contiguous weight works too
            scale = _scales(66, s + 2, (33, 2)).to(scale_dtype)
            yield Sample(_on(device, x, w, scale, None), f"x [7, 64] {layout}, scale {scale_dtype}")
            bias = torch.randn(66, generator=gen(s + 3)).to(dtype)[::2]  # found by tests/ops/fuzz_ops.py
            yield Sample(_on(device, x, w, scale, bias), f"x [7, 64] {layout}, scale {scale_dtype}, strided bias")


def _w8a16_weight(w, scale, k):
    return w.cpu().double() * expand_group_scale(scale.cpu(), k).double()


def _weight_int8_linear_slack(x, w, scale, bias):
    # The dequantized weight may be rounded to x's dtype before the dot, products and sums
    # accumulate in fp32 over K terms; a bias of x's dtype rounds once more.
    k = x.shape[-1]
    mag = x.cpu().double().abs() @ _w8a16_weight(w, scale, k).abs().t()
    out = (2 * EPS[x.dtype] + (k + 2) * EPS[F32]) * mag * 1.01
    return [out if bias is None else out + EPS[x.dtype] * bias.cpu().double().abs()]


FP8_SHAPES = TOKEN_SHAPES


def quantize_fp8_per_row_samples(device, dtype, *, seed):
    for shape in FP8_SHAPES:
        for layout in ("contiguous", "transposed", "stepped") if len(shape) > 1 else ("contiguous",):
            x = random_rows(shape, dtype, device, seed=_seed(seed, shape, layout), layout=layout)
            yield Sample((x,), f"x {tuple(shape)} {layout}")


def int8_dynamic_linear_samples(device, dtype, *, seed):
    for xshape in [(m, 64) for m in range(1, 18)] + [(2, 3, 37), (123, 16), (5, 769)]:
        k, n = xshape[-1], 17
        s = _seed(seed, xshape)
        x = random_rows(xshape, dtype, "cpu", seed=s)
        w, w_scale, _ = ref.quantize_per_channel(torch.randn(n, k, generator=gen(s + 1)), 0)
        bias = torch.randn(n, generator=gen(s + 2)).to(dtype)
        yield Sample(_on(device, x, w, w_scale, bias), f"x {xshape}")
    x = random_rows((9, 48), dtype, "cpu", seed=_seed(seed, "strided"), layout="sliced")
    w, w_scale, _ = ref.quantize_per_channel(torch.randn(17, 48, generator=gen(seed)), 0)
    yield Sample(_on(device, x, w, w_scale, None), "x [9, 48] sliced, no bias")


def _int8_dynamic_parts(x, w, w_scale, bias):
    k = x.shape[-1]
    q, s = ref.quantize_per_token(x.cpu())
    return q.reshape(-1, k), s.reshape(-1, 1)


def _int8_dynamic_exact(x, w, w_scale, bias):
    # The activation quantization is bit-exact, so the only slack is int8_mm's epilogue.
    q, s = _int8_dynamic_parts(x, w, w_scale, bias)
    out = ref.int8_mm(q, w.cpu(), s, w_scale.cpu(), None if bias is None else bias.cpu(), torch.float64)
    return out.reshape(*x.shape[:-1], w.shape[0])


def _int8_dynamic_slack(x, w, w_scale, bias):
    q, s = _int8_dynamic_parts(x, w, w_scale, bias)
    return [_int8_mm_slack(q, w, s, w_scale, bias, None)[0].reshape(*x.shape[:-1], w.shape[0])]


def fp8_dynamic_linear_samples(device, dtype, *, seed):
    for xshape in [(1, 64), (5, 32), (17, 16), (2, 3, 48), (123, 32)]:
        k, n = xshape[-1], 32
        s = _seed(seed, xshape)
        x = random_rows(xshape, dtype, "cpu", seed=s)
        w, w_scale = ref.quantize_fp8_per_row(torch.randn(n, k, generator=gen(s + 1)))
        bias = torch.randn(n, generator=gen(s + 2)).to(dtype)
        yield Sample(_on(device, x, w, w_scale, bias), f"x {xshape}")
    x = random_rows((7, 48), dtype, "cpu", seed=_seed(seed, "strided"), layout="transposed")
    w, w_scale = ref.quantize_fp8_per_row(torch.randn(16, 48, generator=gen(seed)))
    yield Sample(_on(device, x, w, w_scale, None), "x [7, 48] transposed, no bias")


def _fp8_dynamic_exact(x, w, w_scale, bias):
    args = (x.cpu().double(), w.cpu(), w_scale.cpu().double(), None if bias is None else bias.cpu().double())
    return ref.fp8_dynamic_linear(*args)


def _fp8_dynamic_slack(x, w, w_scale, bias):
    # The GEMM writes bf16 (cuBLAS rowwise scaling), with a bf16 bias: two bf16 roundings,
    # then x's dtype; fp32 accumulation of K products.
    k = x.shape[-1]
    q, s = ref.quantize_fp8_per_row(x.cpu())
    mag = (q.reshape(-1, k).double().abs() @ w.cpu().double().abs().t()) * s.reshape(-1, 1).double()
    mag = (mag * w_scale.cpu().double().reshape(1, -1)).reshape(*x.shape[:-1], w.shape[0])
    if bias is not None:
        mag = mag + bias.cpu().double().abs()
    return [(2 * EPS[BF16] + (k + 2) * EPS[F32]) * mag * 1.01]


def _scaled_weight(w, w_scale):
    return w.double() * w_scale.double().reshape(-1, 1)


def _linear64(x, w, b):
    out = x @ w.t()
    return out if b is None else out + b


# ----------------------------------------------------------------- sparse family


def _mask(n, k, density, seed):
    return torch.rand(n, k, generator=gen(seed)) < density


MASKED_CASES = [((m, 37), 17, 0.5) for m in range(1, 18)] + [
    ((2, 3, 64), 5, 0.1), ((123, 16), 33, 0.9), ((4, 5), 1, 0.5), ((3, 769), 5, 0.3)]


def _masked_parts(device, dtype, seed):
    """(desc, x, w, mask, bias, grad) for the masked-linear cases, strided ones last."""
    for xshape, n, density in MASKED_CASES:
        k = xshape[-1]
        s = _seed(seed, xshape, n)
        x = random_rows(xshape, dtype, "cpu", seed=s) * 2**-6
        w = torch.randn(n, k, generator=gen(s + 1)).to(dtype)
        grad = random_rows((*xshape[:-1], n), dtype, "cpu", seed=s + 2) * 2**-6
        bias = torch.randn(n, generator=gen(s + 3)).to(dtype)
        yield (f"x {xshape} N={n} density {density}", *_on(device, x, w, _mask(n, k, density, s + 4), bias, grad))
    for layout in LAYOUTS_2D:
        s = _seed(seed, layout)
        x = random_rows((9, 48), dtype, "cpu", seed=s, layout=layout) * 2**-6
        w = torch.randn(20, 48, generator=gen(s + 1)).to(dtype).t().contiguous().t()  # a non-contiguous weight
        grad = random_rows((9, 20), dtype, "cpu", seed=s + 2, layout=layout) * 2**-6
        yield (f"x [9, 48] {layout}", *_on(device, x, w, _mask(20, 48, 0.3, s + 3), None, grad))


def masked_linear_samples(device, dtype, *, seed):
    for desc, x, w, mask, bias, _ in _masked_parts(device, dtype, seed):
        yield Sample((x, w, mask, bias), desc)


def masked_linear_grad_input_samples(device, dtype, *, seed):
    for desc, _, w, mask, _, grad in _masked_parts(device, dtype, seed):
        yield Sample((grad, w, mask), desc)


def masked_linear_grad_weight_samples(device, dtype, *, seed):
    for desc, x, _, mask, _, grad in _masked_parts(device, dtype, seed):
        yield Sample((grad, x, mask), desc)


def _masked_w(w, mask):
    return sref._masked(w.cpu(), mask.cpu())


def _masked_linear_slack(x, w, mask, bias):
    k = x.shape[-1]
    out = _acc(k) * (x.cpu().double().abs() @ _masked_w(w, mask).abs().t())
    return [out if bias is None else out + EPS[x.dtype] * bias.cpu().double().abs()]


def _masked_grad_input_slack(grad, w, mask):
    return [_acc(grad.shape[-1]) * (grad.cpu().double().abs() @ _masked_w(w, mask).abs())]


def _masked_grad_weight_slack(grad, x, mask):
    n, k = grad.shape[-1], x.shape[-1]
    mag = grad.cpu().reshape(-1, n).double().abs().t() @ x.cpu().reshape(-1, k).double().abs()
    # zero where pruned: a pruned weight must get an exact zero gradient
    return [(_acc(x.numel() // k) * mag + 2.0**-24) * mask.cpu()]


def _block_weight(n, k, bn, bk, density, seed, dtype=F32):
    g = gen(seed)
    keep = torch.rand(n // bn, k // bk, generator=g) < density
    mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    return (torch.randn(n, k, generator=g) * mask).to(dtype), mask


def block_sparse_pack_samples(device, dtype, *, seed):
    for density in (0.0, 0.25, 1.0):
        for bn, bk in ((16, 16), (32, 16), (16, 32)):
            w, mask = _block_weight(64, 96, bn, bk, density, seed=_seed(seed, density, bn, bk), dtype=dtype)
            # a mask that keeps some zero weights' tiles too
            wider = mask | _mask(64, 96, 0.01, _seed(seed, "m", density))
            for m in (None, wider):
                yield Sample((*_on(device, w, m), bn, bk), f"64x96 {bn}x{bk} density {density} mask {m is not None}")


def _block_packed(m, density, seed, dtype):
    bn, bk = (16, 32) if m % 2 else (32, 16)
    w, _ = _block_weight(64, 96, bn, bk, density=density, seed=seed, dtype=dtype)
    return w, sref.block_sparse_pack(w, None, bn, bk)


def block_sparse_linear_samples(device, dtype, *, seed):
    cases = [((m, 96), 0.4) for m in (*range(1, 18), 123)] + [((2, 3, 96), 0.0), ((3, 96), 1.0)]
    for xshape, density in cases:
        s = _seed(seed, xshape, density)
        _, packed = _block_packed(xshape[0], density, s, dtype)
        x = random_rows(xshape, dtype, "cpu", seed=s + 1) * 2**-6
        bias = torch.randn(64, generator=gen(s + 2)).to(dtype)
        yield Sample(_on(device, x, *packed, bias), f"x {xshape} density {density}")
    for layout in LAYOUTS_2D:
        s = _seed(seed, layout)
        _, packed = _block_packed(8, 0.5, s, dtype)
        x = random_rows((7, 96), dtype, "cpu", seed=s + 1, layout=layout) * 2**-6
        yield Sample(_on(device, x, *packed, None), f"x [7, 96] {layout}")


def _block_dense(values, row_ptr, col_idx, k):
    return sref.block_sparse_to_dense(values.cpu(), row_ptr.cpu(), col_idx.cpu(), k).double()


def _block_sparse_linear_slack(x, values, row_ptr, col_idx, bias):
    k = x.shape[-1]
    out = _acc(k) * (x.cpu().double().abs() @ _block_dense(values, row_ptr, col_idx, k).abs().t())
    return [out if bias is None else out + EPS[x.dtype] * bias.cpu().double().abs()]


def weight_24(n, k, dtype=F32, seed=0):
    """A random 2:4 weight [n, k]: groups with 0, 1 or 2 non-zeros (mostly 2) at random positions."""
    g = gen(seed)
    scores = torch.rand(n, k // 4, 4, generator=g)
    keep = torch.zeros(n, k // 4, 4, dtype=torch.bool).scatter_(-1, scores.topk(2, dim=-1).indices, True)
    drop = torch.rand(n, k // 4, 4, generator=g) < 0.1  # some groups keep 1 or 0
    w = torch.randn(n, k // 4, 4, generator=g) * (keep & ~drop)
    return w.reshape(n, k).to(dtype)


def ref_compress(w):
    """(values, meta) from the reference split, packed as the schema says."""
    values, idx = sref.sparse24_split(w)
    shifts = torch.arange(0, 8, 2)
    meta = (idx.long().reshape(w.shape[0], w.shape[1] // 8, 4) << shifts).sum(-1).to(torch.uint8)
    return values, meta


def sparse24_compress_samples(device, dtype, *, seed):
    for n, k in [(1, 8), (5, 16), (17, 64), (33, 200), (64, 1024)]:
        yield Sample(_on(device, weight_24(n, k, dtype, seed=_seed(seed, n, k))), f"weight [{n}, {k}]")
    w = weight_24(24, 64, dtype, seed=_seed(seed, "t")).t().contiguous().t()
    yield Sample(_on(device, w), "weight [24, 64] transposed")


def _sparse24_compress_ref(w):
    return ref_compress(w.cpu())


def sparse24_linear_samples(device, dtype, *, seed):
    cases = [((m, 64), 17) for m in range(1, 18)] + [((2, 3, 40), 33), ((5, 128), 1), ((7, 200), 31),
                                                         ((123, 64), 5), ((3, 768), 9)]
    for xshape, n in cases:
        k = xshape[-1]
        s = _seed(seed, xshape, n)
        values, meta = ref_compress(weight_24(n, k, dtype, seed=s))
        x = random_rows(xshape, dtype, "cpu", seed=s + 1) * 2**-4
        for bias in (None, torch.randn(n, generator=gen(s + 2))):  # an fp32 bias on any x
            yield Sample(_on(device, x, values, meta, bias), f"x {xshape} N={n} bias {bias is not None}")
    for layout in LAYOUTS_2D:
        s = _seed(seed, layout)
        values, meta = ref_compress(weight_24(24, 64, dtype, seed=s))
        x = random_rows((9, 64), dtype, "cpu", seed=s + 1, layout=layout) * 2**-4
        bias = torch.randn(48, generator=gen(s + 2)).to(dtype)[::2]  # a strided bias of x's dtype
        yield Sample(_on(device, x, values, meta, bias), f"x [9, 64] {layout}, strided bias")


def _sparse24_dense(values, meta):
    return slimops.ops.sparse24_to_dense(values.cpu(), meta.cpu()).double()


def _sparse24_linear_ref(x, values, meta, bias):
    return sref.sparse24_linear(x, _sparse24_dense(values, meta).to(x.dtype), bias)


def _sparse24_linear_exact(x, values, meta, bias):
    return sref.sparse24_linear(x.cpu().double(), _sparse24_dense(values, meta),
                                None if bias is None else bias.cpu().double())


def _sparse24_linear_slack(x, values, meta, bias):
    k = x.shape[-1]
    out = _acc(k) * (x.cpu().double().abs() @ _sparse24_dense(values, meta).abs().t())
    return [out if bias is None else out + EPS[x.dtype] * bias.cpu().double().abs()]


# ----------------------------------------------------------------- clip family

CLIP_SIZES = [(0,), (1,), (5,), (17,), (123,), (769,), (4097,), (3, 5), (7, 1, 9)]


def random_tensors(seed, dtypes, device, n=None, sizes=CLIP_SIZES):
    """1..9 tensors of random sizes (empty ones too) and of the given dtypes, some permuted-dense."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    n = rng.randint(1, 9) if n is None else n
    out = []
    for _ in range(n):
        shape = rng.choice(sizes)
        t = torch.randn(shape, generator=g) * 10 ** rng.uniform(-2, 1)
        t = torch.where(t == 0, torch.full_like(t, 0.25), t).to(dtype=rng.choice(dtypes), device=device)
        if t.dim() == 2 and rng.random() < 0.3:
            t = t.t().contiguous().t()  # permuted-dense: must be handled in place
        out.append(t)
    return out


def _clip_lists(device, dtype, seed):
    for i in range(6):
        # one dtype, mixed with fp32, mixed with fp16 and fp32
        dtypes = [[dtype], [dtype, F32], [dtype, F16, F32]][i % 3]
        yield f"list {i} of {dtypes}", random_tensors(_seed(seed, i), dtypes, device)


NORM_TYPES = [0.5, 1.0, 2.0, 3.5, math.inf]


def multi_tensor_norm_samples(device, dtype, *, seed):
    for desc, ts in _clip_lists(device, dtype, seed):
        for p in NORM_TYPES:
            for root in (True, False):
                yield Sample((ts, p, root), f"{desc} p={p} root={root}")


def _multi_tensor_norm_slack(ts, p, root):
    # sum(|x|^p) over many terms in fp32: 2e-6 for p in (1, 2, inf) (the tolerance), 1e-5 otherwise.
    extra = 0.0 if p in (1.0, 2.0, math.inf) else 8e-6
    return [extra * ref.multi_tensor_norm([t.cpu() for t in ts], p, root).double().abs()]


def multi_tensor_scale_samples(device, dtype, *, seed):
    for desc, ts in _clip_lists(device, dtype, seed):
        total = ref.multi_tensor_norm([t.cpu() for t in ts], 2.0).to(device)
        for factor in (0.3, 2.0):  # clipped, and a coefficient clamped to 1
            yield Sample(([t.clone() for t in ts], total, total.item() * factor), f"{desc} max_norm x{factor}")


def clip_grad_norm_fused_samples(device, dtype, *, seed):
    for desc, ts in _clip_lists(device, dtype, seed):
        for p in (1.0, 2.0, math.inf):
            yield Sample(([t.clone() for t in ts], 0.5, p, None, None), f"{desc} p={p}")
            inv = torch.tensor([1 / 256.0], device=device)
            yield Sample(([t.clone() for t in ts], 0.5, p, inv, torch.zeros(1, device=device)),
                         f"{desc} p={p} with inv_scale")


def _clip_ref(grads, max_norm, p, inv, found):
    grads = [g.cpu() for g in grads]
    found = None if found is None else found.cpu()
    return ref.clip_grad_norm_fused_(grads, max_norm, p, None if inv is None else inv.cpu(), found)


def _clip_tol():
    # the coefficient comes from the kernel's own fp32 norm (held to 2e-6; a GPU sums in
    # another order): that, plus one rounding of the dtype
    return {d: Tol(torch.finfo(d).eps + 2e-6) for d in FLOATS}


# ----------------------------------------------------------------- int4 weight-only family

# (x shape, N, group_size): M = 1..17, K odd / not a multiple of the 32-input chunk or of the
# vector width, groups ending inside a chunk's tail, several group sizes.
W4A16_CASES = (
    [((m, 96), 17, 32) for m in range(1, 18)]
    + [((1, 5), 1, 32), ((5, 17), 7, 64), ((2, 3, 123), 5, 32), ((17, 769), 5, 128), ((3, 256), 33, 128),
       ((4, 160), 9, 96), ((1, 300), 6, 256), ((19, 64), 3, 32), ((2, 1), 4, 32)]
)


def _int4_parts(n, k, group_size, seed, *, asym, scale_dtype=F32):
    from slimops.reference.int4 import pack_int4

    g = gen(seed)
    groups = -(-k // group_size)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = _scales(n * groups, seed + 1, (n, groups)).to(scale_dtype)
    zero = (torch.rand(n, groups, generator=g) * 15).to(scale_dtype) if asym else None
    return pack_int4(q), scale, zero


def weight_int4_linear_samples(device, dtype, *, seed):
    for i, (xshape, n, group_size) in enumerate(W4A16_CASES):
        k = xshape[-1]
        s = _seed(seed, xshape, n, group_size)
        # x spans 6 decades per row; 2^-10 keeps K=769 sums inside fp16's range.
        x = random_rows(xshape, dtype, "cpu", seed=s) * 2**-10
        qweight, scale, zero = _int4_parts(n, k, group_size, s + 1, asym=i % 2 == 0)
        bias = torch.randn(n, generator=gen(s + 2)).to(dtype) if i % 3 else None
        yield Sample((*_on(device, x, qweight, scale, zero), group_size, *_on(device, bias)),
                     f"x {xshape} N={n} gs={group_size} asym={zero is not None} bias={bias is not None}")
    for layout in LAYOUTS_2D:
        for scale_dtype in (F32, F16):
            s = _seed(seed, "int4", layout, scale_dtype)
            x = random_rows((7, 75), dtype, "cpu", seed=s, layout=layout) * 2**-10
            qweight, scale, zero = _int4_parts(11, 75, 64, s + 1, asym=True, scale_dtype=scale_dtype)
            bias = torch.randn(22, generator=gen(s + 3)).to(dtype)[::2]  # a strided bias
            yield Sample((*_on(device, x, qweight.t().contiguous().t(), scale, zero), 64, *_on(device, bias)),
                         f"x [7, 75] {layout}, column-major qweight, scale {scale_dtype}, strided bias")


def _int4_weight(qweight, scale, zero_point, group_size, k):
    from slimops.reference.int4 import dequantize_int4

    return dequantize_int4(qweight.cpu(), scale.cpu(), None if zero_point is None else zero_point.cpu(), group_size, k)


def _weight_int4_linear_slack(x, qweight, scale, zero_point, group_size, bias):
    # fp32 sums over K terms of x * q and of x * z (the zero point enters through the group sums of x),
    # so the bound counts (|q| + |z|) * s rather than |q - z| * s; a bias of x's dtype rounds once more.
    from slimops.reference.int4 import unpack_int4

    k = x.shape[-1]
    group = torch.arange(k) // group_size
    z = torch.full((1, k), 8.0, dtype=torch.float64) if zero_point is None else zero_point.cpu().double()[:, group]
    mag_w = (unpack_int4(qweight.cpu(), k).double() + z.abs()) * scale.cpu().double()[:, group]
    mag = x.cpu().double().abs() @ mag_w.t()
    out = (2 * EPS[x.dtype] + (k + 4) * EPS[F32]) * mag * 1.01
    return [out if bias is None else out + EPS[x.dtype] * bias.cpu().double().abs()]


# ----------------------------------------------------------------- codebook 4-bit weight-only family

def _codebook4_parts(n, k, group_size, seed, *, per_row, dtype=F32):
    from slimops.reference.int4 import pack_int4

    g = gen(seed)
    groups = -(-k // group_size)
    q = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    # entries of either sign in 1/16 .. 1 (never zero), like a normalised NF4 / k-means table
    sign = torch.randint(0, 2, (n if per_row else 1, 16), generator=g) * 2 - 1
    codebook = (sign * torch.empty(sign.shape).uniform_(1 / 16, 1, generator=g)).to(dtype)
    scale = _scales(n * groups, seed + 1, (n, groups)).to(dtype)
    return pack_int4(q), codebook, scale


def weight_codebook4_linear_samples(device, dtype, *, seed):
    # int4's cases (M = 1..17, odd K, K not a multiple of 32, several group sizes), C = 1 and C = N in turn
    for i, (xshape, n, group_size) in enumerate(W4A16_CASES):
        k = xshape[-1]
        s = _seed(seed, "codebook4", xshape, n, group_size)
        x = random_rows(xshape, dtype, "cpu", seed=s) * 2**-10
        qweight, codebook, scale = _codebook4_parts(n, k, group_size, s + 1, per_row=i % 2 == 1)
        bias = torch.randn(n, generator=gen(s + 2)).to(dtype) if i % 3 else None
        yield Sample((*_on(device, x, qweight, codebook, scale), group_size, *_on(device, bias)),
                     f"x {xshape} N={n} gs={group_size} C={codebook.shape[0]} bias={bias is not None}")
    for layout in LAYOUTS_2D:
        for per_row, part_dtype in ((True, F32), (False, F16)):
            s = _seed(seed, "codebook4", layout, part_dtype)
            x = random_rows((7, 75), dtype, "cpu", seed=s, layout=layout) * 2**-10
            qweight, codebook, scale = _codebook4_parts(11, 75, 64, s + 1, per_row=per_row, dtype=part_dtype)
            bias = torch.randn(22, generator=gen(s + 3)).to(dtype)[::2]  # a strided bias
            yield Sample((*_on(device, x, qweight.t().contiguous().t(), codebook, scale), 64, *_on(device, bias)),
                         f"x [7, 75] {layout}, column-major qweight, C={codebook.shape[0]} {part_dtype}, strided bias")


def _codebook4_weight(qweight, codebook, scale, group_size, k):
    from slimops.reference.codebook4 import dequantize_codebook4

    return dequantize_codebook4(qweight.cpu(), codebook.cpu(), scale.cpu(), group_size, k)


def _weight_codebook4_linear_slack(x, qweight, codebook, scale, group_size, bias):
    # fp32 sums over K terms of x * T[q] (scaled per block), the entries rounded to x's dtype on the
    # Triton path (one more rounding of x's dtype), and a bias of x's dtype rounded once more.
    k = x.shape[-1]
    mag = x.cpu().double().abs() @ _codebook4_weight(qweight, codebook, scale, group_size, k).abs().t()
    out = (2 * EPS[x.dtype] + (k + 4) * EPS[F32]) * mag * 1.01
    return [out if bias is None else out + EPS[x.dtype] * bias.cpu().double().abs()]


# ----------------------------------------------------------------- block-sparse int8 family

# (x shape, N, K's block shape (bn, bk), tile density): M = 1..17 on small odd-ish tiles, every block size,
# all-zero and all-dense weights, and 3-D x.
BSI8_CASES = (
    [((m, 96), 48, (16, 32) if m % 2 else (16, 16), 0.4) for m in range(1, 18)]
    + [((5, 192), 128, (64, 64), 0.5), ((3, 256), 128, (128, 128), 0.5), ((17, 128), 96, (32, 64), 0.3),
       ((4, 96), 64, (32, 32), 0.0), ((2, 3, 96), 32, (16, 16), 1.0), ((123, 64), 32, (16, 16), 0.6)]
)


def _bsi8_parts(n, k, bn, bk, density, seed, *, empty_ends=False):
    """int8 BSR tiles (values never all zero, from -127) and fp32 row scales; ``empty_ends`` drops
    the first and last block rows' tiles."""
    g = gen(seed)
    keep = torch.rand(n // bn, k // bk, generator=g) < density
    if empty_ends:
        keep[0] = keep[-1] = False
    q = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8)
    # packed by the tile mask: a kept tile stays stored even if its random values hold zeros
    mask = keep.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    values, row_ptr, col_idx = sref.block_sparse_pack(q, mask, bn, bk)
    return values, row_ptr, col_idx, _scales(n, seed + 1)


def block_sparse_int8_linear_samples(device, dtype, *, seed):
    for i, (xshape, n, (bn, bk), density) in enumerate(BSI8_CASES):
        s = _seed(seed, "bsi8", xshape, n, bn, bk, density)
        x = random_rows(xshape, dtype, "cpu", seed=s) * 2**-8
        parts = _bsi8_parts(n, xshape[-1], bn, bk, density, s + 1, empty_ends=i % 3 == 0)
        bias = torch.randn(n, generator=gen(s + 2)).to(dtype) if i % 2 else None
        yield Sample(_on(device, x, *parts, bias), f"x {xshape} N={n} block {bn}x{bk} density {density}")
    for layout in LAYOUTS_2D:
        s = _seed(seed, "bsi8", layout)
        x = random_rows((7, 96), dtype, "cpu", seed=s, layout=layout) * 2**-8
        values, row_ptr, col_idx, scale = _bsi8_parts(64, 96, 32, 16, 0.5, s + 1)
        values = values.transpose(1, 2).contiguous().transpose(1, 2)  # column-major tiles
        scale = torch.stack((scale, scale + 1)).t().reshape(-1)[::2]  # a strided scale
        bias = torch.randn(128, generator=gen(s + 3)).to(dtype)[::2]  # a strided bias
        yield Sample(_on(device, x, values, row_ptr, col_idx, scale, bias),
                     f"x [7, 96] {layout}, column-major tiles, strided scale and bias")


def _bsi8_weight(values, row_ptr, col_idx, scale, k):
    return _block_dense(values, row_ptr, col_idx, k) * scale.cpu().double()[:, None]


def _block_sparse_int8_linear_slack(x, values, row_ptr, col_idx, scale, bias):
    # Tiles converted exactly; the dot may run in x's dtype on a GPU (the tile and x both in it), fp32
    # sums over K terms, the scale multiplies once; a bias of x's dtype rounds once more.
    k = x.shape[-1]
    mag = x.cpu().double().abs() @ _bsi8_weight(values, row_ptr, col_idx, scale, k).abs().t()
    out = (2 * EPS[x.dtype] + (k + 3) * EPS[F32]) * mag * 1.01
    return [out if bias is None else out + EPS[x.dtype] * bias.cpu().double().abs()]


# ----------------------------------------------------------------- 2:4 + int8 weight-only

# (x shape, N): M = 1..17 (the in-register kernel to 16 rows, decode + GEMM above), K with every
# remainder modulo the 32-input (zmm) and 16-input (ymm) steps (K % 32 in 0, 8, 16, 24), odd N,
# 3-D x, and M = 123 (the decode + GEMM path).
S24I8_CASES = (
    [((m, 96), 17) for m in range(1, 18)]
    + [((1, 8), 1), ((5, 40), 7), ((2, 3, 72), 5), ((4, 88), 9), ((3, 112), 33), ((1, 768), 6), ((16, 200), 13),
       ((123, 64), 5), ((17, 24), 3)]
)


def _s24i8_parts(n, k, seed):
    """(values int8 [n, k/2] with -128 and 127 among them, meta from a random 2:4 pattern, scale fp32 [n])."""
    _, meta = ref_compress(weight_24(n, k, seed=seed))
    values = _int8((n, k // 2), seed + 1, lo=-128)
    values[0, 0], values[-1, -1] = -128, 127
    return values, meta, _scales(n, seed + 2)


def sparse24_int8_linear_samples(device, dtype, *, seed):
    for i, (xshape, n) in enumerate(S24I8_CASES):
        k = xshape[-1]
        s = _seed(seed, "s24i8", xshape, n)
        x = random_rows(xshape, dtype, "cpu", seed=s) * 2**-4
        values, meta, scale = _s24i8_parts(n, k, s + 1)
        bias = torch.randn(n, generator=gen(s + 2)) if i % 2 else None  # an fp32 bias on any x
        yield Sample(_on(device, x, values, meta, scale, bias), f"x {xshape} N={n} bias {bias is not None}")
    for layout in LAYOUTS_2D:
        s = _seed(seed, "s24i8", layout)
        values, meta, scale = _s24i8_parts(24, 64, s + 1)
        x = random_rows((9, 64), dtype, "cpu", seed=s, layout=layout) * 2**-4
        bias = torch.randn(48, generator=gen(s + 2)).to(dtype)[::2]  # a strided bias of x's dtype
        # strided values and meta too: the kernel takes any layout of its weight buffers
        yield Sample(_on(device, x, values.t().contiguous().t(), meta.t().contiguous().t(), scale, bias),
                     f"x [9, 64] {layout}, column-major values and meta, strided bias")


def _s24i8_dense(values, meta, scale):
    from slimops.reference.sparse24_int8 import sparse24_int8_to_dense

    return sparse24_int8_to_dense(values.cpu(), meta.cpu(), scale.cpu())


def _sparse24_int8_linear_slack(x, values, meta, scale, bias):
    k = x.shape[-1]
    out = _acc(k) * (x.cpu().double().abs() @ _s24i8_dense(values, meta, scale).abs().t())
    return [out if bias is None else out + EPS[x.dtype] * bias.cpu().double().abs()]


# ----------------------------------------------------------------- the table

_ops = slimops.ops

OP_DB: list[OpInfo] = [
    OpInfo("quantize_per_token", _ops.quantize_per_token, quantize_per_token_samples, ref.quantize_per_token,
           FLOATS, EXACT, notes="int8 values and scales bit for bit (round half to even, saturation)"),
    OpInfo("quantize_per_channel", _ops.quantize_per_channel, quantize_per_channel_samples,
           ref.quantize_per_channel, FLOATS, EXACT),
    OpInfo("dequantize", _ops.dequantize, dequantize_samples, ref.dequantize, FLOATS, EXACT,
           notes="dtype is out_dtype; the reference is the fp32 product rounded once"),
    OpInfo("int8_mm", _ops.int8_mm, int8_mm_samples, ref.int8_mm, FLOATS, rounding(),
           exact=lambda a, b, sa, sb, bias, out_dtype: ref.int8_mm(a, b, sa, sb, bias, torch.float64),
           slack=_int8_mm_slack, notes="dtype is out_dtype"),
    OpInfo("int8_dynamic_linear", _ops.int8_dynamic_linear, int8_dynamic_linear_samples, ref.int8_dynamic_linear,
           (F32, F16, BF16), rounding(), exact=_int8_dynamic_exact, slack=_int8_dynamic_slack,
           composes=("quantize_per_token", "int8_mm"),
           grad=Grad((0, 3), lambda x, w, s, b: _linear64(x, _scaled_weight(w, s), b))),
    OpInfo("weight_int8_linear", _ops.weight_int8_linear, weight_int8_linear_samples, ref.weight_int8_linear,
           FLOATS, rounding(),
           exact=lambda x, w, s, b: ref.weight_int8_linear(x.double(), w, s.double(), None if b is None else b.double()),
           slack=_weight_int8_linear_slack,
           grad=Grad((0, 3), lambda x, w, s, b: _linear64(x, _w8a16_weight(w, s, x.shape[-1]), b))),
    OpInfo("quantize_fp8_per_row", _ops.quantize_fp8_per_row, quantize_fp8_per_row_samples,
           ref.quantize_fp8_per_row, FLOATS, EXACT,
           # opcheck's test_schema compares tensors with arithmetic that CPU fp8 lacks
           # ("mul_cpu_reduced_float" not implemented for Float8_e4m3fn); the other checks run.
           opcheck_utils=("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic")),
    OpInfo("fp8_dynamic_linear", _ops.fp8_dynamic_linear, fp8_dynamic_linear_samples, ref.fp8_dynamic_linear,
           (F32, BF16), rounding(), exact=_fp8_dynamic_exact, slack=_fp8_dynamic_slack,
           composes=("quantize_fp8_per_row",),
           opcheck_utils=("test_faketensor", "test_autograd_registration", "test_aot_dispatch_dynamic"),
           grad=Grad((0, 3), lambda x, w, s, b: _linear64(x, _scaled_weight(w, s), b))),
    OpInfo("masked_linear", _ops.masked_linear, masked_linear_samples, sref.masked_linear, FLOATS, rounding(),
           exact=lambda x, w, m, b: sref.masked_linear(x.double(), w.double(), m, None if b is None else b.double()),
           slack=_masked_linear_slack, cuda_graph=False,
           grad=Grad((0, 1, 3), lambda x, w, m, b: _linear64(x, w.masked_fill(~m, 0.0), b))),
    OpInfo("masked_linear_grad_input", _ops.masked_linear_grad_input, masked_linear_grad_input_samples,
           sref.masked_linear_grad_input, FLOATS, rounding(),
           exact=lambda g, w, m: sref.masked_linear_grad_input(g.double(), w.double(), m),
           slack=_masked_grad_input_slack, cuda_graph=False),
    OpInfo("masked_linear_grad_weight", _ops.masked_linear_grad_weight, masked_linear_grad_weight_samples,
           sref.masked_linear_grad_weight, FLOATS, {d: Tol(EPS[d] * 1.01) for d in FLOATS},
           exact=lambda g, x, m: sref.masked_linear_grad_weight(g.double(), x.double(), m),
           slack=_masked_grad_weight_slack, cuda_graph=False),
    OpInfo("block_sparse_pack", _ops.block_sparse_pack, block_sparse_pack_samples, sref.block_sparse_pack,
           FLOATS, EXACT,
           # its output size depends on the data: the fake uses a dynamic size, so no
           # aot_dispatch_dynamic and no CUDA graph
           opcheck_utils=("test_schema", "test_autograd_registration", "test_faketensor"), cuda_graph=False),
    OpInfo("block_sparse_linear", _ops.block_sparse_linear, block_sparse_linear_samples, sref.block_sparse_linear,
           FLOATS, rounding(),
           exact=lambda x, v, rp, ci, b: sref.block_sparse_linear(x.double(), v.double(), rp, ci,
                                                                  None if b is None else b.double()),
           slack=_block_sparse_linear_slack, cuda_graph=False,
           grad=Grad((0, 4), lambda x, v, rp, ci, b: _linear64(x, _block_dense(v, rp, ci, x.shape[-1]), b))),
    OpInfo("sparse24_compress", _ops.sparse24_compress, sparse24_compress_samples, _sparse24_compress_ref,
           FLOATS, EXACT, cuda_graph=False, notes="reads the weight back to check it (a GPU syncs)"),
    OpInfo("sparse24_linear", _ops.sparse24_linear, sparse24_linear_samples, _sparse24_linear_ref, FLOATS, rounding(),
           exact=_sparse24_linear_exact, slack=_sparse24_linear_slack, gpu_dtypes=(F16, BF16),
           grad=Grad((0, 3), lambda x, v, m, b: _linear64(x, _sparse24_dense(v, m), b))),
    OpInfo("multi_tensor_norm", _ops.multi_tensor_norm, multi_tensor_norm_samples, ref.multi_tensor_norm,
           FLOATS, {**EXACT, F32: Tol(2e-6)}, slack=_multi_tensor_norm_slack, cuda_graph=False,
           notes="dtype: the tensors' dtype, some lists mixed with fp32; out is fp32"),
    OpInfo("multi_tensor_scale_", _ops.multi_tensor_scale_, multi_tensor_scale_samples, ref.multi_tensor_scale_,
           FLOATS, EXACT, mutates=(0,), outputs=(), cuda_graph=False),
    OpInfo("clip_grad_norm_fused_", _ops.clip_grad_norm_fused_, clip_grad_norm_fused_samples, _clip_ref,
           FLOATS, _clip_tol(), mutates=(0, 4)),
    OpInfo("weight_int4_linear", _ops.weight_int4_linear, weight_int4_linear_samples, ref.weight_int4_linear,
           FLOATS, rounding(),
           exact=lambda x, q, s, z, gs, b: ref.weight_int4_linear(x.double(), q, s, z, gs,
                                                                  None if b is None else b.double()),
           slack=_weight_int4_linear_slack,
           grad=Grad((0, 5), lambda x, q, s, z, gs, b: _linear64(x, _int4_weight(q, s, z, gs, x.shape[-1]), b),
                     magnitude=lambda x, q, s, z, gs, b: _linear64(x, _int4_weight(q, s, z, gs, x.shape[-1]).abs(), b)),
           # its CUDA C++ kernel (the decode GEMV family) stages 16-bit activations; fp32 runs on Triton
           gpu_dtypes=(F16, BF16)),
    OpInfo("weight_codebook4_linear", _ops.weight_codebook4_linear, weight_codebook4_linear_samples,
           ref.weight_codebook4_linear, FLOATS, rounding(),
           exact=lambda x, q, t, s, gs, b: ref.weight_codebook4_linear(x.double(), q, t, s, gs,
                                                                       None if b is None else b.double()),
           slack=_weight_codebook4_linear_slack,
           grad=Grad((0, 5), lambda x, q, t, s, gs, b: _linear64(x, _codebook4_weight(q, t, s, gs, x.shape[-1]), b),
                     magnitude=lambda x, q, t, s, gs, b: _linear64(
                         x, _codebook4_weight(q, t, s, gs, x.shape[-1]).abs(), b)),
           gpu_dtypes=(F16, BF16)),  # its CUDA C++ kernel (the decode GEMV family) takes 16-bit x
    OpInfo("block_sparse_int8_linear", _ops.block_sparse_int8_linear, block_sparse_int8_linear_samples,
           ref.block_sparse_int8_linear, FLOATS, rounding(),
           exact=lambda x, v, rp, ci, s, b: ref.block_sparse_int8_linear(x.double(), v, rp, ci, s,
                                                                         None if b is None else b.double()),
           slack=_block_sparse_int8_linear_slack, cuda_graph=False,
           grad=Grad((0, 5), lambda x, v, rp, ci, s, b: _linear64(x, _bsi8_weight(v, rp, ci, s, x.shape[-1]), b),
                     magnitude=lambda x, v, rp, ci, s, b: _linear64(
                         x, _bsi8_weight(v, rp, ci, s, x.shape[-1]).abs(), b))),
    OpInfo("sparse24_int8_linear", _ops.sparse24_int8_linear, sparse24_int8_linear_samples,
           ref.sparse24_int8_linear, FLOATS, rounding(),
           exact=lambda x, v, m, s, b: ref.sparse24_int8_linear(x.cpu().double(), v.cpu(), m.cpu(), s.cpu(),
                                                                None if b is None else b.cpu().double()),
           slack=_sparse24_int8_linear_slack,
           grad=Grad((0, 4), lambda x, v, m, s, b: _linear64(x, _s24i8_dense(v, m, s), b),
                     magnitude=lambda x, v, m, s, b: _linear64(x, _s24i8_dense(v, m, s).abs(), b))),
]

OP_DB_BY_NAME = {info.name: info for info in OP_DB}
