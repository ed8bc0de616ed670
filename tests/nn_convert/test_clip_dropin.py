"""slimops.clip_grad_norm_ is a drop-in for torch.nn.utils.clip_grad_norm_ on every call torch takes.

install() swaps it in process-wide, so what the fused kernels do not take (float64
and complex gradients, non-dense strided views, norm_type 0 / negative / -inf,
max_norm < 0) must give torch's own result. Every case runs both functions on
identical copies of fresh random, never-zero gradients.
"""

from __future__ import annotations

import math
import os
import random
import socket

import pytest
import torch

import slimops

torch_clip = torch.nn.utils.clip_grad.clip_grad_norm_  # captured before any install()

NORM_TYPES = [0.0, 1.0, 2.0, 3.5, math.inf, -math.inf]
SIZES = [(1,), (5,), (17,), (123,), (769,), (5, 17), (3, 1, 7)]
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]

# Relative tolerance per dtype, for norms and clipped gradients (a product rounded once).
RTOL = {torch.float64: 1e-12, torch.complex128: 1e-12, torch.float32: 2e-6, torch.complex64: 2e-6,
        torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # fmt: skip


def never_zero(shape, dtype, gen, device="cpu"):
    """|x| in [0.1, 1.1) * 10^k with a random sign (and phase for complex): no element is zero."""
    mag = (torch.rand(shape, generator=gen, dtype=torch.float64) + 0.1) * 10 ** (
        torch.randint(-1, 2, (), generator=gen).item()
    )
    if dtype.is_complex:
        phase = torch.rand(shape, generator=gen, dtype=torch.float64) * 2 * math.pi
        return torch.polar(mag, phase).to(dtype=dtype, device=device)
    sign = torch.randint(0, 2, shape, generator=gen, dtype=torch.float64) * 2 - 1
    return (mag * sign).to(dtype=dtype, device=device)


def make_params(seed, dtypes, device="cpu", n=6, none_frac=0.2):
    """n leaf parameters with contiguous never-zero grads (some None); the same list for the same seed."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(n):
        dtype = rng.choice(dtypes)
        g = never_zero(rng.choice(SIZES), dtype, gen, device)
        p = torch.nn.Parameter(torch.zeros(g.shape, dtype=dtype, device=device))
        p.grad = None if rng.random() < none_frac else g
        params.append(p)
    if all(p.grad is None for p in params):
        params[0].grad = never_zero(params[0].shape, params[0].dtype, gen, device)
    return params


def make_strided(seed, dtypes, device="cpu", n=5):
    """Parameters whose grads are non-dense strided views; returns (params, bases of the views)."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    params, bases = [], []
    views = [
        lambda b: b[:, ::2],  # every other column
        lambda b: b[1::3],  # every third row
        lambda b: b.t()[::2],  # transposed and sliced
        lambda b: b[:, 1:-1],  # rows with gaps
    ]
    for i in range(n):
        dtype = rng.choice(dtypes)
        base = never_zero((rng.choice([5, 17, 123]), rng.choice([5, 17, 123])), dtype, gen, device)
        view = views[i % len(views)](base)
        assert not view.is_contiguous()
        p = torch.nn.Parameter(torch.zeros(view.shape, dtype=dtype, device=device))
        p.grad = view
        params.append(p)
        bases.append(base)
    # and a contiguous fp32 one beside them: a list mixes what the kernels take with what they do not
    p = torch.nn.Parameter(torch.zeros(769, device=device))
    p.grad = never_zero((769,), torch.float32, gen, device)
    params.append(p)
    bases.append(p.grad)
    return params, bases


def assert_same_clip(got, want, mine, theirs):
    """Same norm (dtype, device, value) and the same gradients, in place, as torch's."""
    assert got.dtype == want.dtype and got.device == want.device and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=RTOL[want.dtype], atol=0, equal_nan=True)
    for p, q in zip(mine, theirs):
        if q.grad is None:
            assert p.grad is None
            continue
        assert p.grad.dtype == q.grad.dtype and p.grad.stride() == q.grad.stride()
        torch.testing.assert_close(p.grad, q.grad, rtol=RTOL[q.grad.dtype], atol=1e-30, equal_nan=True)


def float64_norm(grads, norm_type):
    """The norm of the per-tensor norms, in float64: the norm of all elements, except for p = 0 (torch's
    is then the number of tensors with a non-zero element)."""
    wide = [g.detach().cpu().to(torch.complex128 if g.is_complex() else torch.float64) for g in grads]
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, norm_type) for g in wide]), norm_type)


# ------------------------------------------------------------- dtypes the kernels do not take


# torch's own warning on a complex list with p = 0 (its per-tensor norms are cast to real)
@pytest.mark.filterwarnings("ignore:Casting complex values to real discards the imaginary part")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("dtypes", [[torch.float64], [torch.complex64], [torch.complex128],
                                    [torch.float64, torch.float32], [torch.complex64, torch.float32]])  # fmt: skip
@pytest.mark.parametrize("seed", range(3))
def test_float64_and_complex_grads_match_torch(seed, dtypes, norm_type, device):
    mine, theirs = make_params(seed, dtypes, device), make_params(seed, dtypes, device)
    max_norm = [0.05, 1e4][seed % 2]  # clipped, and left alone
    got = slimops.clip_grad_norm_(mine, max_norm, norm_type)
    want = torch_clip(theirs, max_norm, norm_type)
    assert_same_clip(got, want, mine, theirs)
    if dtypes == [torch.float64]:
        exact = float64_norm([p.grad for p in make_params(seed, dtypes, device) if p.grad is not None], norm_type)
        torch.testing.assert_close(got.cpu(), exact, rtol=1e-12, atol=0)


# ------------------------------------------------------------- non-dense strided gradients


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("dtypes", [[torch.float32], [torch.float16, torch.bfloat16], [torch.float64]])
@pytest.mark.parametrize("seed", range(3))
def test_strided_grads_match_torch(seed, dtypes, norm_type, device):
    mine, mine_bases = make_strided(seed, dtypes, device)
    theirs, their_bases = make_strided(seed, dtypes, device)
    untouched = [b.clone() for b in mine_bases]
    got = slimops.clip_grad_norm_(mine, 0.05, norm_type)
    want = torch_clip(theirs, 0.05, norm_type)
    assert_same_clip(got, want, mine, theirs)
    for p, base, before, theirs_base in zip(mine, mine_bases, untouched, their_bases):
        # scaled in place, through the view: the base outside the view is as it was
        torch.testing.assert_close(base, theirs_base, rtol=RTOL[base.dtype], atol=1e-30)
        outside = torch.ones_like(base, dtype=torch.bool)
        mask_view = outside.as_strided(p.grad.shape, p.grad.stride(), p.grad.storage_offset() - base.storage_offset())
        mask_view.fill_(False)
        assert torch.equal(base[outside], before[outside])


def test_parameter_that_is_a_strided_view_trains_like_torch():
    """A Parameter made from a strided view: its grad from backward, and a strided grad set on it."""

    def run(clip):
        gen = torch.Generator().manual_seed(3)
        base = never_zero((17, 10), torch.float32, gen)
        w = torch.nn.Parameter(base[:, ::2])  # shares the strided storage
        b = torch.nn.Parameter(never_zero((5,), torch.float32, gen))
        assert not w.is_contiguous()
        x = never_zero((7, 17), torch.float32, gen)
        (x @ w + b).square().sum().backward()
        v = torch.nn.Parameter(torch.zeros(5, 3))
        v.grad = never_zero((5, 9), torch.float32, gen)[:, ::3]
        params = [w, b, v]
        return clip(params, 0.5, 2.0), params

    got, mine = run(slimops.clip_grad_norm_)
    want, theirs = run(torch_clip)
    assert_same_clip(got, want, mine, theirs)


# ------------------------------------------------------------- norm types and max norms the kernels do not take


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("norm_type", [0.0, -math.inf, -1.0, -2.0, float("nan")])
@pytest.mark.parametrize("dtypes", [[torch.float32], [torch.float32, torch.bfloat16], [torch.float16]])
@pytest.mark.parametrize("seed", range(3))
def test_norm_types_torch_takes_match_torch(seed, dtypes, norm_type, device):
    """0 (torch: the norm of the per-tensor non-zero counts), -inf (min |x|), negative p, NaN."""
    mine, theirs = make_params(seed, dtypes, device), make_params(seed, dtypes, device)
    got = slimops.clip_grad_norm_(mine, 0.5, norm_type)
    want = torch_clip(theirs, 0.5, norm_type)
    assert_same_clip(got, want, mine, theirs)
    if dtypes == [torch.float32] and not math.isnan(norm_type):
        exact = float64_norm([p.grad for p in make_params(seed, dtypes, device) if p.grad is not None], norm_type)
        torch.testing.assert_close(got.double().cpu(), exact, rtol=2e-6, atol=0)


@pytest.mark.parametrize("max_norm", [-1.0, float("nan"), torch.tensor(-0.5), torch.tensor([float("nan")])])
def test_max_norms_torch_takes_match_torch(max_norm):
    """torch does not refuse a negative or NaN max_norm: the coefficient flips or NaNs the gradients."""
    mine, theirs = make_params(4, [torch.float32, torch.float16]), make_params(4, [torch.float32, torch.float16])
    got = slimops.clip_grad_norm_(mine, max_norm)
    want = torch_clip(theirs, max_norm)
    assert_same_clip(got, want, mine, theirs)


# ------------------------------------------------------------- the rest of torch's contract, on the torch path


@pytest.mark.parametrize("foreach", [None, True, False])
def test_contract_on_the_torch_path(foreach):
    """A single tensor, None grads, max_norm as a tensor, foreach: as torch, with grads the kernels do not take."""
    # a single tensor (not a list)
    gen = torch.Generator().manual_seed(1)
    p, q = (torch.nn.Parameter(torch.zeros(17, dtype=torch.float64)) for _ in range(2))
    p.grad = never_zero((17,), torch.float64, gen)
    q.grad = p.grad.clone()
    assert_same_clip(slimops.clip_grad_norm_(p, 0.1, foreach=foreach), torch_clip(q, 0.1, foreach=foreach), [p], [q])
    # None grads skipped, max_norm a 0-d tensor, a generator of parameters
    mine, theirs = make_params(2, [torch.complex64], none_frac=0.5), make_params(2, [torch.complex64], none_frac=0.5)
    got = slimops.clip_grad_norm_((x for x in mine), torch.tensor(0.3), 3.5, foreach=foreach)
    want = torch_clip((x for x in theirs), torch.tensor(0.3), 3.5, foreach=foreach)
    assert_same_clip(got, want, mine, theirs)
    # only None grads of a kind the kernels do not take: torch's empty result
    none_only = [torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))]
    assert torch.equal(slimops.clip_grad_norm_(none_only, 1.0, -math.inf), torch_clip(none_only, 1.0, -math.inf))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("norm_type", [2.0, 0.0, -math.inf])
def test_error_if_nonfinite_on_the_torch_path(bad, norm_type):
    """Raises (and scales nothing) exactly when torch's does; otherwise torch's result."""

    def poisoned():
        params = make_params(5, [torch.float64], none_frac=0.0)
        params[1].grad.view(-1)[0] = bad
        return params

    def outcome(clip, params):
        try:
            return clip(params, 1.0, norm_type, error_if_nonfinite=True)
        except RuntimeError as e:
            return str(e)

    mine, theirs = poisoned(), poisoned()
    before = [p.grad.clone() for p in mine]
    got, want = outcome(slimops.clip_grad_norm_, mine), outcome(torch_clip, theirs)
    if isinstance(want, str):
        assert got == want and "is non-finite, so it cannot be clipped" in got
        for p, b in zip(mine, before):  # nothing scaled
            torch.testing.assert_close(p.grad, b, rtol=0, atol=0, equal_nan=True)
        mine, theirs = poisoned(), poisoned()
        got, want = slimops.clip_grad_norm_(mine, 1.0, norm_type), torch_clip(theirs, 1.0, norm_type)
    assert_same_clip(got, want, mine, theirs)


def test_install_routes_what_the_kernels_do_not_take_to_torch():
    """After install(), torch.nn.utils.clip_grad_norm_ on float64 grads is torch's own answer (no recursion)."""
    mine, theirs = make_params(6, [torch.float64]), make_params(6, [torch.float64])
    slimops.install()
    try:
        got = torch.nn.utils.clip_grad_norm_(mine, 0.05, -math.inf)
    finally:
        slimops.uninstall()
    want = torch_clip(theirs, 0.05, -math.inf)
    assert_same_clip(got, want, mine, theirs)


# ------------------------------------------------------------- torch.compile(fullgraph=True)


def _model(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(17, 33), torch.nn.ReLU(), torch.nn.Linear(33, 5)).to(dtype)


def _training_step(clip, model, norm_type):
    def step():
        norm = clip(model.parameters(), 0.05, norm_type)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p.grad, alpha=-0.1)
        return norm

    return step


@pytest.mark.parametrize(
    "dtype, norm_type, layout, fused",
    [(torch.float32, 2.0, "contiguous", True), (torch.float32, math.inf, "contiguous", True),
     (torch.bfloat16, 1.0, "contiguous", True), (torch.float32, 3.5, "permuted", True),
     (torch.float32, 0.0, "contiguous", False), (torch.float32, -math.inf, "contiguous", False),
     (torch.float64, 2.0, "contiguous", False), (torch.float32, 2.0, "strided", False)],
)  # fmt: skip
def test_training_step_compiles_fullgraph(dtype, norm_type, layout, fused):
    """One graph (fullgraph=True raises on a break), the fused op in it when the kernels take the call,
    and the compiled step gives the eager step's norm and parameters."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    x = torch.randn(8, 17, generator=torch.Generator().manual_seed(1)).to(dtype)
    eager_model, compiled_model = _model(dtype), _model(dtype)
    for m in (eager_model, compiled_model):
        m(x).square().mean().backward()
        g = m[0].weight.grad  # the same values, laid out otherwise
        if layout == "permuted":  # dense, not contiguous: the kernels take it
            m[0].weight.grad = g.t().contiguous().t()
        elif layout == "strided":  # not dense: torch's path
            m[0].weight.grad = torch.cat([g, g], dim=1)[:, ::2]
    counter = CompileCounterWithBackend("aot_eager")
    step = torch.compile(_training_step(slimops.clip_grad_norm_, compiled_model, norm_type), fullgraph=True,
                         backend=counter)  # fmt: skip
    got = step()
    want = _training_step(slimops.clip_grad_norm_, eager_model, norm_type)()
    assert counter.frame_count == 1
    targets = {str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert any("clip_grad_norm_fused_" in t for t in targets) == fused, targets
    torch.testing.assert_close(got, want, rtol=RTOL[dtype], atol=0)
    for p, q in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p, q, rtol=RTOL[dtype], atol=1e-7)
        torch.testing.assert_close(p.grad, q.grad, rtol=RTOL[dtype], atol=1e-7)


def test_training_step_compiles_fullgraph_inductor():
    """The default backend too: same norm and update as eager (and as torch's own, compiled or not)."""
    torch._dynamo.reset()
    x = torch.randn(8, 17, generator=torch.Generator().manual_seed(2))
    models = [_model(torch.float32) for _ in range(3)]
    for m in models:
        m(x).square().mean().backward()
    got = torch.compile(_training_step(slimops.clip_grad_norm_, models[0], 2.0), fullgraph=True)()
    eager = _training_step(slimops.clip_grad_norm_, models[1], 2.0)()
    want = _training_step(torch_clip, models[2], 2.0)()
    torch.testing.assert_close(got, eager, rtol=2e-6, atol=0)
    torch.testing.assert_close(got, want, rtol=2e-6, atol=0)
    for p, q, r in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(p, q, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(p, r, rtol=2e-6, atol=1e-7)


# ------------------------------------------------------------- GradScaler


def _amp_setup(dtype=torch.float32):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(17, 33), torch.nn.ReLU(), torch.nn.Linear(33, 5)).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(8, 17, dtype=dtype)).square().mean().backward()
    return model, opt


def test_never_used_scaler_raises_torchs_error_and_changes_nothing():
    """An enabled GradScaler that has not scaled a loss: scaler.unscale_'s AssertionError, nothing touched."""
    model, opt = _amp_setup()
    before = [p.grad.clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(AssertionError) as torchs:
        scaler.unscale_(opt)
    with pytest.raises(AssertionError) as mine:
        slimops.amp.unscale_clip_grad_norm_(scaler, opt, 0.1)
    assert str(mine.value) == str(torchs.value) and "_scale is None" in str(mine.value)
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before))
    assert len(scaler._per_optimizer_states) == 0  # nothing recorded for the optimizer


@pytest.mark.parametrize("dtype, norm_type", [(torch.float64, 2.0), (torch.float32, 0.0), (torch.float32, -math.inf)])
def test_disabled_scaler_is_plain_clipping(dtype, norm_type):
    """A disabled scaler's unscale_ is a no-op: plain clipping, whatever gradients and norm type torch takes."""
    results = []
    for fused in (True, False):
        model, opt = _amp_setup(dtype)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        if fused:
            norm = slimops.amp.unscale_clip_grad_norm_(scaler, opt, 0.05, norm_type)
        else:
            scaler.unscale_(opt)
            norm = torch_clip(model.parameters(), 0.05, norm_type)
        scaler.step(opt)
        scaler.update()
        results.append((norm, [p.detach().clone() for p in model.parameters()]))
    (n1, p1), (n2, p2) = results
    torch.testing.assert_close(n1, n2, rtol=RTOL[dtype], atol=0)
    for a, b in zip(p1, p2):
        torch.testing.assert_close(a, b, rtol=RTOL[dtype], atol=1e-7)


@pytest.mark.parametrize("case", ["float64", "strided", "norm_type=0", "norm_type=-inf"])
def test_scaler_with_grads_the_kernels_do_not_take_matches_unscale_then_clip(case):
    def run(fused, poison):
        dtype = torch.float64 if case == "float64" else torch.float32
        norm_type = {"norm_type=0": 0.0, "norm_type=-inf": -math.inf}.get(case, 2.0)
        model, opt = _amp_setup(dtype)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        model.zero_grad()
        scaler.scale(model(torch.randn(8, 17, dtype=dtype)).square().mean()).backward()
        if case == "strided":
            w = model[0].weight
            w.grad = torch.cat([w.grad, w.grad], dim=1)[:, ::2]  # same values, non-dense
        if poison:
            model[2].weight.grad[0, 0] = float("inf")
        if fused:
            norm = slimops.amp.unscale_clip_grad_norm_(scaler, opt, 0.1, norm_type)
        else:
            scaler.unscale_(opt)
            norm = torch_clip(model.parameters(), 0.1, norm_type)
        scaler.step(opt)
        scaler.update()
        return norm, [p.detach().clone() for p in model.parameters()], scaler.get_scale()

    for poison in (False, True):
        n1, p1, s1 = run(True, poison)
        n2, p2, s2 = run(False, poison)
        assert s1 == s2  # the step skipped (and the scale backed off) exactly when torch's was
        torch.testing.assert_close(n1, n2, rtol=1e-6, atol=0, equal_nan=True)
        for a, b in zip(p1, p2):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- DTensor gradients the kernels do not take


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# (case, dtype, norm_type): what the kernels do not take, on sharded gradients
DTENSOR_CASES = [
    ("float64", torch.float64, 2.0),
    ("norm_type=0", torch.float32, 0.0),
    ("norm_type=-inf", torch.float32, -math.inf),
    ("strided shard", torch.float32, 2.0),  # a local shard that is a non-dense view: copied for the norm
    ("strided shard", torch.float32, 3.5),
    ("2-D mesh, Shard and Replicate", torch.float32, 2.0),  # HSDP-style placements: torch's path
]


def _dtensor_worker(rank: int, port: int, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

        mesh_1d, mesh_2d = init_device_mesh("cpu", (2,)), init_device_mesh("cpu", (2, 1))
        out = {}
        for case, dtype, norm_type in DTENSOR_CASES:
            gen = torch.Generator().manual_seed(0)  # every rank builds the same full gradients
            full = [never_zero(s, dtype, gen) for s in [(6, 5), (9,), (4, 6), (7, 2)]]
            if case.startswith("2-D"):
                mesh, placements = mesh_2d, [[Shard(0), Replicate()]] * 4
            else:
                mesh, placements = mesh_1d, [[Shard(0)], [Shard(0)], [Shard(1)], [Replicate()]]
            params = []
            for i, (g, pl) in enumerate(zip(full, placements)):
                p = torch.nn.Parameter(distribute_tensor(torch.zeros_like(g), mesh, pl))
                if case == "strided shard" and i == 2:  # this rank's columns of a [4, 6], as a strided view
                    p.grad = DTensor.from_local(g[:, rank::2], mesh, [Shard(1)], run_check=False)
                else:
                    p.grad = distribute_tensor(g.clone(), mesh, pl)
                params.append(p)
            if case == "strided shard":  # the columns each rank holds, in the order the full tensor has them
                full[2] = torch.cat([full[2][:, 0::2], full[2][:, 1::2]], dim=1)
            total = slimops.clip_grad_norm_(params, 0.1, norm_type)
            ref = [torch.nn.Parameter(torch.zeros_like(g)) for g in full]
            for p, g in zip(ref, full):
                p.grad = g.clone()
            want = torch_clip(ref, 0.1, norm_type)
            total = total.full_tensor() if isinstance(total, DTensor) else total
            ok_norm = torch.allclose(total, want, rtol=2e-6, atol=0)
            ok_grads = all(
                torch.allclose(p.grad.full_tensor(), q.grad, rtol=2e-6, atol=1e-9) for p, q in zip(params, ref)
            )
            out[f"{case} p={norm_type}"] = (ok_norm, ok_grads)
        results[rank] = out
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_dtensor_grads_the_kernels_do_not_take_match_torch():
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    results = mp.Manager().dict()
    mp.start_processes(_dtensor_worker, args=(_free_port(), results), nprocs=2, start_method="spawn")
    assert len(results) == 2
    for rank in range(2):
        for case, (ok_norm, ok_grads) in results[rank].items():
            assert ok_norm and ok_grads, f"rank {rank}, {case}: norm ok {ok_norm}, grads ok {ok_grads}"
