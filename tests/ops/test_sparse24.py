"""2:4 semi-structured sparsity: what the op test table (tests/ops/op_db.py) cannot say.

Hand-made metadata, weights that are not 2:4, empty shapes, bad input, and the GPU kernels at
real layer shapes. compress and linear against the reference, opcheck, torch.compile and CUDA
graphs run from the table.

The CPU tests run everywhere. ``-m gpu`` runs the same checks on the CUDA
``mma.sp`` kernels (decode kernel for small M, tiled kernel for large M, the
natural-order path for K % 64 != 0), where only fp16 and bf16 exist.
"""

from __future__ import annotations

import pytest
import torch

from slimops import _build
from slimops.ops import sparse24 as s24
from slimops.reference import sparse as ref
from tests.ops.op_db import OP_DB_BY_NAME, ref_compress

pytestmark = pytest.mark.usefixtures("poison_empty")

OPS = torch.ops.slimops
EPS = {torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}  # half an ulp, relative
GPU_DTYPES = (torch.float16, torch.bfloat16)

DEVICES = [
    pytest.param("cpu"),
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not _build.HAS_CUDA_KERNELS, reason=_build.missing_backends().get("cuda", "")),
        ],
    ),
]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def weight_24(n, k, dtype=torch.float32, seed=0, device="cpu"):
    """A random 2:4 weight [n, k]: groups with 0, 1 or 2 non-zeros (mostly 2) at random positions."""
    g = torch.Generator(device=device).manual_seed(seed)
    scores = torch.rand(n, k // 4, 4, generator=g, device=device)
    keep = torch.zeros(n, k // 4, 4, dtype=torch.bool, device=device).scatter_(-1, scores.topk(2, dim=-1).indices, True)
    drop = torch.rand(n, k // 4, 4, generator=g, device=device) < 0.1  # some groups keep 1 or 0
    w = torch.randn(n, k // 4, 4, generator=g, device=device) * (keep & ~drop)
    return w.reshape(n, k).to(dtype)


def activations(shape, dtype, seed, device="cpu"):
    """Rows of magnitudes 10^-2 .. 10^1, never zero: sums stay far inside fp16's range."""
    g = torch.Generator(device=device).manual_seed(seed)
    *lead, k = shape
    rows = 1
    for d in lead:
        rows *= d
    mag = 10.0 ** torch.empty(rows, 1, device=device).uniform_(-2, 1, generator=g)
    x = torch.randn(rows, k, generator=g, device=device) * mag
    x = torch.where(x == 0, torch.full_like(x, 0.25), x)
    return x.reshape(*lead, k).to(dtype)


def decode_meta(meta):
    """uint8 [N, K/8] -> positions [N, K/2] (entry e of byte j in bits 2e..2e+1)."""
    shifts = torch.arange(0, 8, 2, device=meta.device)
    return ((meta.long().unsqueeze(-1) >> shifts) & 3).reshape(meta.shape[0], -1).to(torch.uint8)


def exact_linear(x, w, bias):
    out = x.double() @ w.double().t()
    return out if bias is None else out + bias.double()


def assert_within(got, x, w, bias, dtype):
    """fp32 accumulation of K products of ``dtype`` inputs, then one rounding to ``dtype``."""
    exact = exact_linear(x, w, bias).cpu()
    k = x.shape[-1]
    mag = (x.double().abs() @ w.double().abs().t()).cpu()
    bound = (k + 2) * EPS[torch.float32] * mag * 1.01 + EPS[dtype] * exact.abs() * 1.01 + 2.0**-24
    assert got.dtype == dtype and got.shape == exact.shape
    err = (got.double().cpu() - exact).abs()
    bad = ~(err <= bound)
    if bad.any():
        i = bad.flatten().nonzero()[0].item()
        raise AssertionError(
            f"{bad.sum().item()} of {bad.numel()} out of bound; e.g. flat index {i}: got {got.flatten()[i].item()}, "
            f"exact {exact.flatten()[i].item()}, bound {bound.flatten()[i].item()}"
        )


# ---------------------------------------------------------------- compress


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_compress_round_trip(device, dtype):
    """The table holds sparse24_compress to the reference; this decodes what it made back to the
    weight (the reference's decoder and slimops.ops.sparse24_to_dense), on the table's samples."""
    for sample in OP_DB_BY_NAME["sparse24_compress"].sample_inputs(device, dtype, seed=0):
        (w,) = sample.args
        values, meta = s24.sparse24_compress(w)
        assert values.is_contiguous() and meta.is_contiguous(), sample.desc
        dense = ref.sparse24_to_dense(values.cpu(), decode_meta(meta.cpu()))
        torch.testing.assert_close(dense, w.cpu(), rtol=0, atol=0, msg=sample.desc)
        assert torch.equal(s24.sparse24_to_dense(values, meta).cpu(), w.cpu()), sample.desc


def test_compress_meta_bytes_by_hand():
    w = torch.zeros(2, 16)
    w[0, 0], w[0, 2] = 1.0, 2.0  # group 0: positions (0, 2); group 1 empty: (0, 1)
    w[0, 11] = 3.0  # group 2: one non-zero at 3: (0, 3); group 3 empty
    w[1, 5], w[1, 6] = 4.0, 5.0  # row 1 group 1: (1, 2)
    values, meta = s24.sparse24_compress(w)
    nib = lambda p0, p1: p0 | p1 << 2
    assert meta.tolist() == [
        [nib(0, 2) | nib(0, 1) << 4, nib(0, 3) | nib(0, 1) << 4],
        [nib(0, 1) | nib(1, 2) << 4, nib(0, 1) | nib(0, 1) << 4],
    ]
    assert values.tolist() == [[1, 2, 0, 0, 0, 3, 0, 0], [0, 0, 4, 5, 0, 0, 0, 0]]


@pytest.mark.parametrize("device", DEVICES)
def test_compress_rejects_a_weight_that_is_not_2_4(device):
    w = weight_24(6, 32, seed=1)
    w[3, 8:12] = torch.tensor([1.0, 2.0, 3.0, 0.0])
    w[4, 0:4] = 1.0  # a later row: the first offending group is named
    message = r"slimops.sparse24_compress: weight is not 2:4: row 3, inputs 8..11 hold 3 non-zeros"
    with pytest.raises(RuntimeError, match=message):
        s24.sparse24_compress(w.to(device))
    w = weight_24(2, 16, seed=2)
    w[1, 12:16] = torch.tensor([float("nan"), 1.0, 0.0, 2.0])  # NaN counts as non-zero
    with pytest.raises(RuntimeError, match=r"row 1, inputs 12..15 hold 3 non-zeros"):
        s24.sparse24_compress(w.to(device))
    w = torch.zeros(3, 8)
    w[0, 4:8] = 1.0
    with pytest.raises(RuntimeError, match=r"row 0, inputs 4..7 hold 4 non-zeros"):
        s24.sparse24_compress(w.to(device))


def test_compress_bad_input():
    with pytest.raises(RuntimeError, match=r"weight has in_features K = 12, which must be a multiple of 8"):
        s24.sparse24_compress(torch.zeros(4, 12))
    with pytest.raises(RuntimeError, match=r"weight must be 2-D \[out_features, in_features\]"):
        s24.sparse24_compress(torch.zeros(16))
    with pytest.raises(RuntimeError, match=r"weight must be float32, float16 or bfloat16"):
        s24.sparse24_compress(torch.zeros(4, 16, dtype=torch.int32))


def test_compress_empty():
    values, meta = s24.sparse24_compress(torch.zeros(0, 16))
    assert values.shape == (0, 8) and meta.shape == (0, 2)
    values, meta = s24.sparse24_compress(torch.zeros(3, 0))
    assert values.shape == (3, 0) and meta.shape == (3, 0)


# ---------------------------------------------------------------- linear


@pytest.mark.parametrize("device", DEVICES)
def test_linear_empty_shapes(device):
    dtype = torch.float16
    values, meta = s24.sparse24_compress(weight_24(8, 16, dtype, seed=1, device=device))
    assert s24.sparse24_linear(torch.zeros(0, 16, dtype=dtype, device=device), values, meta).shape == (0, 8)
    # K = 0: an empty sum, out = bias
    v0, m0 = s24.sparse24_compress(torch.zeros(3, 0, dtype=dtype, device=device))
    b = torch.tensor([1.0, -2.0, 3.0], device=device)
    out = s24.sparse24_linear(torch.zeros(2, 0, dtype=dtype, device=device), v0, m0, b)
    assert out.tolist() == [[1.0, -2.0, 3.0]] * 2


def test_cpu_rejects_metadata_not_from_compress():
    values, meta = s24.sparse24_compress(weight_24(4, 32, seed=3))
    bad = meta.clone()
    bad[2, 1] = 0b00_00_01_01  # inputs 8..11: positions (1, 1)
    with pytest.raises(RuntimeError, match=r"meta is not 2:4 metadata: row 2, inputs 8..11 have positions \(1, 1\)"):
        s24.sparse24_linear(torch.randn(3, 32), values, bad)


# ---------------------------------------------------------------- contract


def _bad_inputs(device):
    d = lambda t: t.to(device)
    dtype = torch.float16
    values, meta = (d(t) for t in ref_compress(weight_24(16, 32, seed=4)))
    values = values.to(dtype)
    x = d(torch.randn(4, 32)).to(dtype)
    return [
        ((x.int(), values, meta, None), "x must be float32, float16 or bfloat16"),
        ((x, values.float(), meta, None), "values must have x's dtype"),
        ((x[:, :16], values, meta, None), r"values has 16 columns but x has K = 16 \(mismatched K\)"),
        ((x[:, :12], values, meta, None), "x has K = 12, which must be a multiple of 8"),
        ((x, values[0], meta, None), r"values must be 2-D \[N, K/2\]"),
        ((x, values, meta.to(torch.int8), None), "meta must be"),
        ((x, values, meta.int(), None), "meta must be"),
        ((x, values, meta[:, :2], None), r"meta must have shape \[N, K/8\] = \[16, 4\], got \[16, 2\]"),
        ((x, values, meta[:8], None), r"meta must have shape \[N, K/8\] = \[16, 4\], got \[8, 4\]"),
        ((x, values, meta, d(torch.randn(15))), r"bias must have shape \[16\]"),
        ((x, values, meta, d(torch.randn(16)).int()), "bias must be float32, float16 or bfloat16"),
        ((x[0, 0], values, meta, None), "x must have at least 1 dimension"),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_gets_a_clear_error(device):
    for args, pattern in _bad_inputs(device):
        with pytest.raises((RuntimeError, ValueError), match=pattern):
            s24.sparse24_linear(*args)
        with pytest.raises((RuntimeError, ValueError), match="slimops.sparse24_linear"):
            s24.sparse24_linear(*args)


def test_bad_input_under_fake_tensors():
    """The fakes check what the C++ checks, with the same messages."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for args, pattern in _bad_inputs("cpu"):
        with FakeTensorMode() as mode:
            fake = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            with pytest.raises((RuntimeError, ValueError), match=pattern):
                OPS.sparse24_linear.default(*fake)
    with FakeTensorMode() as mode, pytest.raises((RuntimeError, ValueError), match="which must be a multiple of 8"):
        OPS.sparse24_compress.default(mode.from_tensor(torch.zeros(4, 12)))


# ---------------------------------------------------------------- GPU only


@pytest.mark.gpu
@pytest.mark.skipif(not _build.HAS_CUDA_KERNELS, reason=_build.missing_backends().get("cuda", ""))
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize(
    "m,n,k",
    [(m, 4096, 4096) for m in (1, 2, 7, 8, 9, 16, 17, 32, 33, 64)]
    + [(65, 4096, 4096), (128, 11008, 4096), (4096, 1024, 4096), (300, 4100, 1024), (16, 4096, 11008)]
    + [(5, 4096, 4136), (100, 1000, 200)],  # K % 64 != 0: natural order, at small and large M
)
def test_cuda_layer_shapes(m, n, k, dtype):
    w = weight_24(n, k, dtype, seed=m + n, device="cuda")
    x = activations((m, k), dtype, seed=m, device="cuda")
    b = torch.randn(n, device="cuda")
    values, meta = s24.sparse24_compress(w)
    assert_within(s24.sparse24_linear(x, values, meta, b), x, w, b, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not _build.HAS_CUDA_KERNELS, reason=_build.missing_backends().get("cuda", ""))
def test_cuda_compress_matches_cpu():
    w = weight_24(300, 512, torch.bfloat16, seed=9)
    v_cpu, m_cpu = s24.sparse24_compress(w)
    v_gpu, m_gpu = s24.sparse24_compress(w.cuda())
    assert torch.equal(v_gpu.cpu(), v_cpu) and torch.equal(m_gpu.cpu(), m_cpu)


@pytest.mark.gpu
@pytest.mark.skipif(not _build.HAS_CUDA_KERNELS, reason=_build.missing_backends().get("cuda", ""))
def test_cuda_rejects_float32_and_mixed_devices():
    values, meta = s24.sparse24_compress(weight_24(16, 64, seed=1, device="cuda"))
    with pytest.raises(RuntimeError, match="on CUDA x and values must be float16 or bfloat16"):
        s24.sparse24_linear(torch.randn(2, 64, device="cuda"), values, meta)
    with pytest.raises(RuntimeError, match="x and meta must be on the same device"):
        s24.sparse24_linear(torch.randn(2, 64, device="cuda").half(), values.half(), meta.cpu())


@pytest.mark.gpu
@pytest.mark.skipif(not _build.HAS_CUDA_KERNELS, reason=_build.missing_backends().get("cuda", ""))
@pytest.mark.parametrize("m", [4, 256])  # decode and tiled kernels
def test_cuda_graph_capture_and_replay(m):
    values, meta = s24.sparse24_compress(weight_24(512, 256, torch.bfloat16, seed=3, device="cuda"))
    b = torch.randn(512, device="cuda")
    x = activations((m, 256), torch.bfloat16, seed=1, device="cuda")
    s24.sparse24_linear(x, values, meta, b)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = s24.sparse24_linear(x, values, meta, b)
    x.copy_(activations((m, 256), torch.bfloat16, seed=2, device="cuda"))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, s24.sparse24_linear(x, values, meta, b), rtol=0, atol=0)
