"""Multi-tensor clip-norm: the ops' edge cases and bad input, and slimops.clip_grad_norm_ against torch's.

The ops against the reference on random tensor lists, opcheck, torch.compile and CUDA graphs run
from the op test table (tests/ops/test_op_db.py).
"""

from __future__ import annotations

import math
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


