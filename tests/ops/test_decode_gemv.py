"""The CUDA decode GEMV family (csrc/cuda/decode_gemv.cuh) before a GPU runs it: its plan and
format policies, run on the CPU by the host emulator (slimops._C._decode_gemv_emulate, the same
C++ functions the kernel calls), for every variant the sweep may pick and every weight format,
against the float64 references. Plus the checks, and the variant table's shape."""

from __future__ import annotations

import pytest
import torch

from slimops import _C
from slimops.reference.decode_gemv import dequantize, random_layer
from slimops.reference.int4 import unpack_int4, weight_int4_linear
from slimops.reference.quant_mm import weight_int8_linear
from tests.backends import gen

FORMATS = tuple(_C._decode_gemv_formats())
VARIANTS = tuple(_C._decode_gemv_variants())


def test_variant_table_is_what_the_header_lists():
    assert FORMATS == ("int8_channel", "int8_group", "int4_asym", "int4_sym", "codebook4", "fp8_channel")
    assert [v["id"] for v in VARIANTS] == list(range(len(VARIANTS)))
    shapes = {(v["rows"], v["warps"], v["unroll"]) for v in VARIANTS}
    assert len(shapes) * 4 == len(VARIANTS)
    assert {v["ksplit"] for v in VARIANTS} == {1, 2, 4, 8}


def _problem(fmt, n, k, group_size, seed, shared_codebook=False):
    """(qweight, scale, zero_point, codebook, float64 weight [N, K]) of a random layer in `fmt`."""
    q, scale, zero, codebook = random_layer(fmt, n, k, group_size, gen(seed), shared_codebook=shared_codebook)
    return q, scale, zero, codebook, dequantize(fmt, q, scale, zero, codebook, group_size, k)


def _check(out, x, w, bias):
    """out against x @ w^T + bias in float64: one rounding to x's dtype, plus fp32 accumulation."""
    ref = x.double() @ w.t()
    if bias is not None:
        ref = ref + bias.double()
    mag = x.double().abs() @ w.abs().t() + (0 if bias is None else bias.double().abs())
    ulp = 2.0**-10 if x.dtype == torch.float16 else 2.0**-7
    tol = ulp * ref.abs() + 1e-5 * mag + 1e-6
    assert out.dtype == x.dtype and out.shape == ref.shape
    err = (out.double() - ref).abs()
    assert torch.isfinite(out).all(), "an element was not written (poisoned NaN) or overflowed"
    assert (err <= tol).all(), f"max error {err.max().item():.3g}, tolerance there {tol[err.argmax() // ref.shape[-1]].max().item():.3g}"


def _run(fmt, variant, x, q, scale, zero, codebook, bias, group_size):
    return _C._decode_gemv_emulate(FORMATS.index(fmt), variant, x, q, scale, zero, codebook, bias, group_size)


# Odd N, K tails (nibble formats: K not a multiple of 32; byte formats: K a multiple of 16 but
# not of the CTA's stride), and groups; M = 1..17 covers every tokens-per-CTA template (1..16)
# and a second token chunk.
SHAPES = {
    "int8_channel": (5, 112, None),
    "int8_group": (7, 96, 32),
    "int4_asym": (9, 100, 32),
    "int4_sym": (5, 77, 64),
    "codebook4": (7, 45, 32),
    "fp8_channel": (3, 48, None),
}


@pytest.mark.parametrize("variant", [v["id"] for v in VARIANTS])
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_variant_matches_the_reference(poison_empty, fmt, variant):
    n, k, group_size = SHAPES[fmt]
    q, scale, zero, codebook, w = _problem(fmt, n, k, group_size or k, seed=variant * 31 + len(fmt))
    bias = torch.randn(n, generator=gen(variant + 7))
    # Every tokens-per-CTA template (M = 1, 2, 3-4, 5-8, 9-16, and 17: two chunks) in both dtypes.
    runs = [(m, torch.float16 if m % 2 else torch.bfloat16) for m in range(1, 18)]
    for m, dtype in runs + [(1, torch.bfloat16), (2, torch.float16)]:
        x = torch.randn(m, k + 3, generator=gen(m)).to(dtype)[:, :k]  # row-strided: read in place
        out = _run(fmt, variant, x, q, scale, zero, codebook, bias if m % 3 else None, group_size or k)
        _check(out, x, w, bias if m % 3 else None)


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_reference_weights(fmt):
    """reference/decode_gemv.py's float64 weights: the library references' (int8, int4), and
    codebook4 / fp8 from first principles, on a layer small enough to write out."""
    n, k, group_size = SHAPES[fmt]
    q, scale, zero, codebook, w = _problem(fmt, n, k, group_size or k, seed=3)
    x = torch.randn(2, k, generator=gen(4), dtype=torch.float64)
    if fmt.startswith("int8"):
        torch.testing.assert_close(weight_int8_linear(x, q, scale), x @ w.t())
    elif fmt.startswith("int4"):
        torch.testing.assert_close(weight_int4_linear(x, q, scale, zero, group_size), x @ w.t())
    elif fmt == "codebook4":
        nib = unpack_int4(q, k)
        for i, j in ((0, 0), (n - 1, k - 1), (3, 40)):
            want = codebook[i, int(nib[i, j])].double() * scale[i, j // group_size].double()
            assert w[i, j].item() == want.item()
    else:
        assert torch.equal(w, q.double() * scale.double())
    assert torch.isfinite(w).all() and (w != 0).any()


@pytest.mark.parametrize("shared", [True, False])
def test_codebook_shared_and_per_row(poison_empty, shared):
    q, scale, _, codebook, w = _problem("codebook4", 11, 200, 64, seed=5, shared_codebook=shared)
    x = torch.randn(4, 200, generator=gen(6)).half()
    _check(_run("codebook4", 2, x, q, scale, None, codebook, None, 64), x, w, None)


def test_large_k_every_split_and_leading_dims(poison_empty):
    q, scale, zero, _, w = _problem("int4_asym", 13, 1000, 128, seed=8)
    x = torch.randn(2, 3, 1000, generator=gen(9)).half()
    for v in VARIANTS:
        out = _run("int4_asym", v["id"], x, q, scale, zero, None, None, 128)
        assert out.shape == (2, 3, 13)
        _check(out.reshape(6, 13), x.reshape(6, 1000), w, None)


def test_transposed_x_is_copied_and_fp8_nan_stays_nan(poison_empty):
    q, scale, _, _, w = _problem("fp8_channel", 4, 32, None, seed=10)
    x = torch.randn(32, 3, generator=gen(11)).half().t()  # element stride 3
    _check(_run("fp8_channel", 0, x, q, scale, None, None, None, 32), x, w, None)
    q = q.clone()
    q.view(torch.uint8)[1, 5] = 0x7F  # e4m3fn NaN
    out = _run("fp8_channel", 0, x, q, scale, None, None, None, 32)
    assert out[:, 1].isnan().all() and not out[:, [0, 2, 3]].isnan().any()


@pytest.mark.parametrize("fmt,change,match", [
    ("int8_channel", {"x": torch.randn(2, 32)}, "x must be float16 or bfloat16"),
    ("int8_channel", {"k": 40}, "K must be a multiple of 16"),
    ("int8_group", {"group_size": 24}, "group_size must be a positive multiple of 16"),
    ("int4_asym", {"zero": None}, "zero_point is required"),
    ("int4_sym", {"zero": torch.zeros(3, 1)}, "zero_point is not taken"),
    # the codebook's own checks are weight_codebook4_linear's (one validator for the op and the kernel)
    ("codebook4", {"codebook": torch.zeros(2, 16)}, r"codebook must be \[1, 16\] \(one table for the layer\) or \[3, 16\]"),
    ("codebook4", {"codebook": None}, "codebook is required"),
    ("fp8_channel", {"q": torch.zeros(3, 32, dtype=torch.int8)}, "qweight must be Float8_e4m3fn"),
    ("int8_channel", {"scale": torch.ones(4)}, r"scale must be \[3\] or \[3, 1\]"),
    ("int8_channel", {"bias": torch.ones(2)}, r"bias must be \[3\]"),
    ("int8_channel", {"variant": 99}, r"variant must be in \[0, 16\)"),
    ("int4_sym", {"group_size": 48}, "group_size must be a positive multiple of 32"),
])
def test_bad_input_names_the_argument(fmt, change, match):
    k = change.get("k", 32)
    q, scale, zero, codebook, _ = _problem(fmt, 3, k, 32, seed=12)
    args = dict(x=torch.randn(2, k).half(), q=q, scale=scale, zero=zero, codebook=codebook, bias=None,
                group_size=32, variant=0)
    args.update({a: b for a, b in change.items() if a != "k"})
    with pytest.raises(RuntimeError, match=match):
        _run(fmt, args["variant"], args["x"], args["q"], args["scale"], args["zero"], args["codebook"],
             args["bias"], args["group_size"])


def test_fp8_weight_only_is_a_path_but_no_default_rule():
    from slimops.nn import Fp8DynamicLinear, routing

    assert "fp8_weight_only" in routing.PATHS
    assert not any(r.path == "fp8_weight_only" for r in routing.RULES)  # until the H200 sweep measures it
    layer = Fp8DynamicLinear.from_float(torch.nn.Linear(32, 8))
    if not hasattr(_C, "_fp8_weight_only_linear"):
        rule = routing.Rule("Fp8DynamicLinear", "cpu", 1, 16, "fp8_weight_only", "test")
        with routing.rules([rule]), pytest.raises(RuntimeError, match="needs slimops built with CUDA kernels"):
            layer(torch.randn(2, 32))
