"""Multi-tensor clip-norm: the ops against the reference, and slimops.clip_grad_norm_ against torch's."""

from __future__ import annotations

import math
import os
import random

import pytest
import torch

import slimops
from slimops import reference as ref
from tests.backends import IMPLS, get_impl

pytestmark = pytest.mark.usefixtures("poison_empty")

NORM_TYPES = [0.5, 1.0, 2.0, 3.5, math.inf]
SIZES = [(0,), (1,), (5,), (17,), (123,), (769,), (4097,), (3, 5), (7, 1, 9)]
torch_clip = torch.nn.utils.clip_grad.clip_grad_norm_  # captured before any install()


@pytest.fixture(params=IMPLS)
def impl(request):
    return get_impl(request.param)


def random_tensors(seed, dtypes, device, n=None, sizes=SIZES):
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    n = rng.randint(1, 9) if n is None else n
    out = []
    for _ in range(n):
        shape = rng.choice(sizes)
        t = torch.randn(shape, generator=g) * 10 ** rng.uniform(-2, 1)
        t = t.to(dtype=rng.choice(dtypes), device=device)
        if t.dim() == 2 and rng.random() < 0.3:
            t = t.t().contiguous().t()  # permuted-dense: must be handled in place
        out.append(t)
    return out


def _dtypes(impl):
    return [torch.float32, torch.float16] + ([torch.bfloat16] if impl.bf16 else [])


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("seed", range(6))
def test_multi_tensor_norm_matches_reference(impl, norm_type, seed):
    ts = random_tensors(seed, _dtypes(impl), impl.device)
    for root in (True, False):
        got = impl.multi_tensor_norm(ts, norm_type, root)
        want = ref.multi_tensor_norm([t.cpu() for t in ts], norm_type, root)
        assert got.dtype == torch.float32 and got.shape == () and got.device.type == impl.device
        torch.testing.assert_close(got.cpu(), want, rtol=2e-6 if norm_type in (1.0, 2.0, math.inf) else 1e-5, atol=0)


def test_multi_tensor_norm_edge_cases(impl):
    assert impl.multi_tensor_norm([], 2.0, True).item() == 0.0
    empty = [torch.empty(0, device=impl.device), torch.empty(0, 3, device=impl.device)]
    assert impl.multi_tensor_norm(empty, 2.0, True).item() == 0.0
    x = torch.randn(100, device=impl.device)
    for bad, p, want in [(float("nan"), 2.0, "nan"), (float("inf"), 2.0, "inf"), (float("nan"), math.inf, "nan"),
                         (float("-inf"), math.inf, "inf"), (float("nan"), 1.0, "nan")]:
        y = x.clone()
        y[37] = bad
        got = impl.multi_tensor_norm([x, y], p, True).item()
        assert (math.isnan(got) if want == "nan" else got == math.inf), (bad, p, got)


@pytest.mark.parametrize("max_norm_factor", [0.3, 2.0])
@pytest.mark.parametrize("seed", range(4))
def test_multi_tensor_scale_matches_reference(impl, seed, max_norm_factor):
    ts = random_tensors(seed, _dtypes(impl), impl.device)
    total = impl.multi_tensor_norm(ts, 2.0, True)
    want = [t.cpu().clone() for t in ts]
    ref.multi_tensor_scale_(want, total.cpu(), total.item() * max_norm_factor)
    impl.multi_tensor_scale_(ts, total, total.item() * max_norm_factor)
    for t, w in zip(ts, want):
        torch.testing.assert_close(t.cpu(), w, rtol=0, atol=0)
    if max_norm_factor > 1:  # coefficient clamped to 1: nothing changes
        assert all(torch.equal(t.cpu(), w) for t, w in zip(ts, want))


@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("with_scaler", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_fused_clip_matches_reference(impl, norm_type, with_scaler, seed):
    ts = random_tensors(seed, _dtypes(impl), impl.device)
    want = [t.cpu().clone() for t in ts]
    inv = torch.tensor([1 / 256.0], device=impl.device) if with_scaler else None
    found = torch.zeros(1, device=impl.device) if with_scaler else None
    ref_found = torch.zeros(1) if with_scaler else None
    max_norm = 0.5
    total = impl.clip_grad_norm_fused_(ts, max_norm, norm_type, inv, found)
    want_total = ref.clip_grad_norm_fused_(want, max_norm, norm_type, None if inv is None else inv.cpu(), ref_found)
    torch.testing.assert_close(total.cpu(), want_total, rtol=2e-6, atol=0)
    for t, w in zip(ts, want):
        # the coefficient comes from the kernel's own fp32 norm (held to 2e-6 above; a GPU
        # sums in another order): that, plus one rounding of the dtype
        torch.testing.assert_close(t.cpu(), w, rtol=torch.finfo(t.dtype).eps + 2e-6, atol=0)
    if with_scaler:
        assert found.item() == 0.0


def test_fused_clip_sets_found_inf_and_never_resets_it(impl):
    ts = random_tensors(3, [torch.float32], impl.device, n=4)
    ts[2].view(-1)[0] = float("inf")
    inv, found = torch.tensor([0.5], device=impl.device), torch.zeros(1, device=impl.device)
    impl.clip_grad_norm_fused_(ts, 1.0, 2.0, inv, found)
    assert found.item() == 1.0
    clean = random_tensors(4, [torch.float32], impl.device, n=2)
    impl.clip_grad_norm_fused_(clean, 1.0, 2.0, inv, found)
    assert found.item() == 1.0


def test_bad_input_scales_nothing(impl):
    d = impl.device
    good = [torch.randn(10, device=d), torch.randn(3, 3, device=d)]
    cases = [
        (lambda: impl.multi_tensor_norm([good[0], torch.ones(4, dtype=torch.int64, device=d)], 2.0, True),
         r"tensors\[1\] must be float32, float16 or bfloat16"),
        (lambda: impl.multi_tensor_norm(good, 0.0, True), "norm_type must be > 0"),
        (lambda: impl.multi_tensor_norm(good, float("nan"), True), "norm_type must be > 0"),
        (lambda: impl.multi_tensor_norm([torch.randn(4, 4, device=d)[:, ::2]], 2.0, True),
         "must be non-overlapping and dense"),
        (lambda: impl.multi_tensor_scale_(good, torch.ones(1, device=d), -1.0), "max_norm must be >= 0"),
        (lambda: impl.multi_tensor_scale_(good, torch.ones(1, device=d), float("nan")), "max_norm must be >= 0"),
        (lambda: impl.multi_tensor_scale_(good, torch.ones(2, device=d), 1.0), "total_norm must be a one-element"),
        (lambda: impl.multi_tensor_scale_(good, torch.ones(1, dtype=torch.float64, device=d), 1.0),
         "total_norm must be a one-element float32"),
        (lambda: impl.clip_grad_norm_fused_(good, 1.0, -2.0, None, None), "norm_type must be > 0"),
        (lambda: impl.clip_grad_norm_fused_(good + [torch.ones(2, dtype=torch.int32, device=d)], 1.0, 2.0, None, None),
         r"tensors\[2\] must be float32"),
        (lambda: impl.clip_grad_norm_fused_(good, 1.0, 2.0, torch.ones(1, dtype=torch.float16, device=d), None),
         "inv_scale must be a one-element float32"),
    ]
    before = [t.clone() for t in good]
    for call, pattern in cases:
        with pytest.raises((RuntimeError, ValueError), match=pattern):
            call()
        assert all(torch.equal(a, b) for a, b in zip(good, before)), pattern


def test_mixed_devices_in_one_call_are_rejected():
    ts = [torch.randn(4), torch.randn(4, device="meta")]
    with pytest.raises(RuntimeError, match=r"tensors\[1\] is on meta but tensors\[0\] is on cpu"):
        slimops.ops.multi_tensor_norm(ts, 2.0)


def test_sparse_is_rejected():
    with pytest.raises((RuntimeError, NotImplementedError), match="multi_tensor_norm"):
        slimops.ops.multi_tensor_norm([torch.randn(4, 4).to_sparse()], 2.0)


# ------------------------------------------------------------- op contract


def _op_samples():
    ts = random_tensors(11, [torch.float32, torch.float16, torch.bfloat16], "cpu", n=5)
    return [
        (torch.ops.slimops.multi_tensor_norm.default, (ts, 2.0, True)),
        (torch.ops.slimops.multi_tensor_norm.default, (ts, math.inf, False)),
        (torch.ops.slimops.multi_tensor_scale_.default, (ts, torch.tensor(3.0), 1.0)),
        (torch.ops.slimops.clip_grad_norm_fused_.default, (ts, 1.0, 2.0, None, None)),
        (torch.ops.slimops.clip_grad_norm_fused_.default, (ts, 1.0, 1.0, torch.tensor([0.5]), torch.zeros(1))),
    ]


def test_opcheck():
    for op, args in _op_samples():
        torch.library.opcheck(op, args)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(grads):
        return slimops.ops.clip_grad_norm_fused_(grads, 1.0, 2.0)

    compiled = torch.compile(step, fullgraph=True)
    a = random_tensors(5, [torch.float32, torch.bfloat16], "cpu", n=6)
    b = [t.clone() for t in a]
    torch.testing.assert_close(compiled(a), step(b), rtol=0, atol=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_graph_capture_and_replay(backend):
    if backend not in slimops.backend.built_gpu_backends():
        pytest.skip(f"{backend} backend not built")
    grads = random_tensors(21, [torch.float32, torch.bfloat16], "cuda", n=40)
    with slimops.use_backend(backend):
        slimops.ops.clip_grad_norm_fused_([g.clone() for g in grads], 1.0, 2.0)  # warm-up outside capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            total = slimops.ops.clip_grad_norm_fused_(grads, 1.0, 2.0)
    gen = torch.Generator().manual_seed(22)
    for g in grads:  # new values, same tensors: what a captured training step sees
        g.copy_(torch.randn(g.shape, generator=gen).to(g.dtype))
    want = [g.cpu().clone() for g in grads]
    want_total = ref.clip_grad_norm_fused_(want, 1.0, 2.0)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(total.cpu(), want_total, rtol=2e-6, atol=0)
    for g, w in zip(grads, want):
        # the replayed norm may differ from the reference's by its 2e-6 allowance (summation order)
        torch.testing.assert_close(g.cpu(), w, rtol=torch.finfo(g.dtype).eps + 2e-6, atol=0)


# ------------------------------------------------------------- the drop-in vs torch


NONEMPTY = [s for s in SIZES if s != (0,)]


def _params(seed, dtypes, device="cpu", none_frac=0.2, n=None, sizes=SIZES):
    rng = random.Random(seed)
    grads = random_tensors(seed, dtypes, device, n=n, sizes=sizes)
    params = []
    for g in grads:
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=g.dtype, device=device))
        p.grad = None if rng.random() < none_frac else g.clone()
        params.append(p)
    return params


def _clone_params(params):
    out = []
    for p in params:
        q = torch.nn.Parameter(p.detach().clone())
        q.grad = None if p.grad is None else p.grad.clone()
        out.append(q)
    return out


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("seed", range(10))
def test_clip_grad_norm_matches_torch_fp32(seed, norm_type):
    # torch's inf norm refuses empty tensors (no identity for max); slimops skips them.
    mine = _params(seed, [torch.float32], sizes=NONEMPTY if math.isinf(norm_type) else SIZES)
    theirs = _clone_params(mine)
    max_norm = random.Random(seed).choice([0.1, 1.0, 1e3])
    exact = ref.multi_tensor_norm([p.grad for p in mine if p.grad is not None], norm_type)
    got = slimops.clip_grad_norm_(mine, max_norm, norm_type)
    want = torch_clip(theirs, max_norm, norm_type)
    assert got.dtype == want.dtype and got.device == want.device
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=0)
    # torch's own fp32 error grows for p < 1 (the 1/p root amplifies it): 1.7e-6 seen at p = 0.5
    torch.testing.assert_close(got, want, rtol=1e-6 if norm_type >= 1 else 4e-6, atol=0)
    for p, q in zip(mine, theirs):
        if q.grad is None:
            assert p.grad is None
        else:
            # the coefficient inherits the norm's 1e-6 (accumulation order), plus one rounding
            torch.testing.assert_close(p.grad, q.grad, rtol=2e-6, atol=1e-12)


@pytest.mark.parametrize("dtypes", [[torch.bfloat16], [torch.float16], [torch.float32, torch.bfloat16],
                                    [torch.float16, torch.bfloat16]])
@pytest.mark.parametrize("seed", range(4))
def test_clip_grad_norm_mixed_precision(seed, dtypes):
    """Same dtype and device as torch's result; closer to the exact norm than torch (fp32 accumulation)."""
    mine = _params(seed, dtypes, none_frac=0.0)
    theirs = _clone_params(mine)
    exact = ref.multi_tensor_norm([p.grad for p in mine], 2.0)
    got = slimops.clip_grad_norm_(mine, 0.5, 2.0)
    want = torch_clip(theirs, 0.5, 2.0)
    assert got.dtype == want.dtype and got.device == want.device
    torch.testing.assert_close(got.float(), exact, rtol=max(torch.finfo(got.dtype).eps, 2e-6), atol=0)
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p.grad.float(), q.grad.float(), rtol=2e-2, atol=1e-6)


def test_inf_norm_skips_empty_tensors():
    mine = _params(2, [torch.float32], none_frac=0.0, n=5, sizes=NONEMPTY)
    mine.append(torch.nn.Parameter(torch.zeros(0)))
    mine[-1].grad = torch.zeros(0)
    want = max(p.grad.abs().max().item() for p in mine[:-1])
    assert slimops.clip_grad_norm_(mine, 1e9, math.inf).item() == want


def test_clip_grad_norm_contract_edges():
    assert torch.equal(slimops.clip_grad_norm_([], 1.0), torch_clip([], 1.0))
    with pytest.warns(UserWarning, match="empty generator"):
        slimops.clip_grad_norm_((p for p in []), 1.0)
    p = torch.nn.Parameter(torch.randn(5))
    p.grad = torch.full((5,), 3.0)
    q = _clone_params([p])[0]
    torch.testing.assert_close(slimops.clip_grad_norm_(p, 1.0), torch_clip(q, 1.0))  # a single tensor
    torch.testing.assert_close(p.grad, q.grad)
    none_only = [torch.nn.Parameter(torch.randn(3))]
    assert slimops.clip_grad_norm_(none_only, 1.0).item() == 0.0


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("norm_type", [2.0, math.inf])
def test_clip_grad_norm_nonfinite(bad, norm_type):
    mine = _params(7, [torch.float32], none_frac=0.0, n=4, sizes=NONEMPTY)
    mine[1].grad.view(-1)[0] = bad
    theirs = _clone_params(mine)
    before = [p.grad.clone() for p in mine]
    with pytest.raises(RuntimeError, match="is non-finite, so it cannot be clipped"):
        slimops.clip_grad_norm_(mine, 1.0, norm_type, error_if_nonfinite=True)
    for p, b in zip(mine, before):  # nothing scaled
        torch.testing.assert_close(p.grad, b, rtol=0, atol=0, equal_nan=True)
    got = slimops.clip_grad_norm_(mine, 1.0, norm_type)
    want = torch_clip(theirs, 1.0, norm_type)
    torch.testing.assert_close(got, want, equal_nan=True)
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p.grad, q.grad, equal_nan=True)


def test_clip_grad_norm_refuses_what_torch_refuses():
    """A sparse gradient: torch's error, nothing scaled. (A max_norm < 0 or NaN, or a norm_type <= 0 or NaN,
    torch takes, and so does slimops: tests/nn_convert/test_clip_dropin.py.)"""
    params = _params(1, [torch.float32], none_frac=0.0, n=3)
    before = [p.grad.clone() for p in params]
    sparse = torch.nn.Parameter(torch.randn(4, 4))
    sparse.grad = torch.randn(4, 4).to_sparse()
    with pytest.raises((RuntimeError, NotImplementedError)) as torchs:
        torch_clip(_clone_params(params) + [sparse], 1.0)
    with pytest.raises(type(torchs.value)):
        slimops.clip_grad_norm_(params + [sparse], 1.0)
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
    # inv_scale is slimops' own (not torch's): it needs a call the kernels take
    for kwargs in ({"norm_type": 0.0}, {"max_norm": -1.0}):
        with pytest.raises(ValueError, match="inv_scale/found_inf need"):
            slimops.clip_grad_norm_(params, **{"max_norm": 1.0, **kwargs}, inv_scale=torch.ones(1))
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))


def test_clip_grad_norm_several_devices_path():
    """error_if_nonfinite=True takes the per-device path (norm, sync, scale): same answer."""
    mine = _params(9, [torch.float32, torch.bfloat16], none_frac=0.0)
    theirs = _clone_params(mine)
    got = slimops.clip_grad_norm_(mine, 0.5, 3.0, error_if_nonfinite=True)
    want = slimops.clip_grad_norm_(theirs, 0.5, 3.0)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=0)
    for p, q in zip(mine, theirs):
        torch.testing.assert_close(p.grad, q.grad, rtol=2e-6, atol=0)


def test_clip_grad_value_matches_torch():
    mine = _params(3, [torch.float32, torch.bfloat16])
    theirs = _clone_params(mine)
    slimops.clip_grad_value_(mine, 0.05)
    torch.nn.utils.clip_grad.clip_grad_value_(theirs, 0.05)
    for p, q in zip(mine, theirs):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad)


def test_install_and_uninstall():
    original = torch.nn.utils.clip_grad_norm_
    slimops.install()
    try:
        assert torch.nn.utils.clip_grad_norm_ is slimops.clip_grad_norm_
        assert torch.nn.utils.clip_grad.clip_grad_norm_ is slimops.clip_grad_norm_
        assert torch.nn.utils.clip_grad_value_ is slimops.clip_grad_value_
        slimops.install()  # twice is harmless
    finally:
        slimops.uninstall()
    assert torch.nn.utils.clip_grad_norm_ is original
    assert torch.nn.utils.clip_grad.clip_grad_norm_ is original


def test_grad_scaler_fused_unscale_and_clip():
    def run(fused, poison):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(17, 33), torch.nn.ReLU(), torch.nn.Linear(33, 5))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        loss = model(torch.randn(8, 17)).square().mean()
        scaler.scale(loss).backward()
        if poison:
            model[0].weight.grad[0, 0] = float("inf")
        if fused:
            norm = slimops.amp.unscale_clip_grad_norm_(scaler, opt, 0.1)
        else:
            scaler.unscale_(opt)
            norm = torch_clip(model.parameters(), 0.1)
        scaler.step(opt)
        scaler.update()
        return norm, [p.detach().clone() for p in model.parameters()], scaler.get_scale()

    for poison in (False, True):
        n1, p1, s1 = run(True, poison)
        n2, p2, s2 = run(False, poison)
        assert s1 == s2  # the step was skipped (and the scale backed off) exactly when torch's was
        if not poison:
            torch.testing.assert_close(n1, n2, rtol=1e-6, atol=0)
        for a, b in zip(p1, p2):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs TRITON_INTERPRET=1 (CPU machines)")
def test_opcheck_triton_launchers_under_interpreter():
    ts = random_tensors(13, [torch.float32, torch.float16], "cpu", n=4, sizes=[(5,), (17,), (3, 5)])
    # The real ops with Triton forced on CPU tensors: C++ checks, launcher and fake together.
    with slimops.use_backend("triton"):
        torch.library.opcheck(torch.ops.slimops.multi_tensor_norm.default, (ts, 2.0, True))
        torch.library.opcheck(
            torch.ops.slimops.clip_grad_norm_fused_.default, (ts, 1.0, 2.0, torch.tensor([0.5]), torch.zeros(1))
        )
