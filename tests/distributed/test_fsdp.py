"""Training with masks under FSDP2 (``fully_shard``; gloo, 2 CPU processes) equals one process.

The Pruner's masks stay whole on every rank (buffers are not sharded) and are the same on
both; pruned weights stay exactly zero in every shard; ``slimops.clip_grad_norm_`` over the
sharded gradients gives the single-process norm and clipped gradients with one all_reduce;
``slimops.amp.unscale_clip_grad_norm_`` does the same under a GradScaler. Layer widths are
odd (17, 5) so that the two shards of a weight differ in size.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.distributed as dist
from torch import nn

import slimops
from slimops import prune as P
from slimops.distributed import local_part, local_tensor
from tests.distributed.launch import spawn

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 6


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 17), nn.ReLU(), nn.Linear(17, 5))


def _batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 12, generator=g), torch.randint(0, 5, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]


class _CountAllReduce:
    """Counts ``torch.distributed.all_reduce`` calls while active (clip.py calls it through the module)."""

    def __enter__(self):
        self.calls, self._orig = 0, dist.all_reduce

        def counting(*args, **kwargs):
            self.calls += 1
            return self._orig(*args, **kwargs)

        dist.all_reduce = counting
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self._orig


def _whole(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t.clone()


def _train(criterion: str, amp: bool, rank: int | None) -> dict:
    """``rank`` None: one process on the whole batches; else this rank's share under fully_shard."""
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = P.Pruner(model, criterion, "unstructured", 0.5, schedule=P.gradual(end_step=STEPS - 1, frequency=1))
    if rank is not None:
        from torch.distributed.fsdp import fully_shard

        for layer in pruner.layers.values():
            fully_shard(layer)
        fully_shard(model)
        assert all(hasattr(l.weight, "device_mesh") for l in pruner.layers.values()), "weights are not sharded"
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8) if amp else None
    out = {"norms": [], "clip_all_reduces": [], "masks": [], "zeros_ok": True}
    for step, (x, y) in enumerate(_batches()):
        if rank is not None:
            share = GLOBAL_BATCH // WORLD
            x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        loss = nn.functional.cross_entropy(model(x), y)
        with _CountAllReduce() as count:
            if amp:
                scaler.scale(loss).backward()
                norm = slimops.amp.unscale_clip_grad_norm_(scaler, opt, 0.5)
            else:
                loss.backward()
                norm = slimops.clip_grad_norm_(model.parameters(), 0.5)
        out["norms"].append(float(norm))
        out["clip_all_reduces"].append(count.calls)
        if step == 0:
            out["clipped"] = {n: _whole(p.grad) for n, p in model.named_parameters()}
        if amp:
            scaler.step(opt)
            pruner.step(scaler)
            scaler.update()
        else:
            opt.step()
            pruner.step()
        opt.zero_grad()
        out["masks"].append({fqn: layer.mask.clone() for fqn, layer in pruner.layers.items()})
        for layer in pruner.layers.values():
            w = local_tensor(layer.weight)
            out["zeros_ok"] &= bool((w[~local_part(layer.mask, layer.weight)] == 0).all())
    out["params"] = {n: _whole(p.detach()) for n, p in model.named_parameters()}
    if rank is not None:
        with pytest.raises(RuntimeError, match=r"finalize\(\): the weights of 0, 2 are sharded") as e:
            pruner.finalize()
        out["finalize_error"] = str(e.value)
    return out


def _overflow_on_one_rank(rank: int, amp: bool) -> dict:
    """An inf in rank 0's shard of one gradient: both ranks drop the step (the scaler's found_inf
    and the Pruner's finite check are judged over the whole gradient), so they stay alike."""
    from torch.distributed.fsdp import fully_shard

    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = P.Pruner(model, "gradient", "unstructured", 0.5, schedule=P.one_shot(step=1))
    for layer in pruner.layers.values():
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=amp)
    x, y = _batches()[0]
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    if rank == 0:
        local_tensor(model[0].weight.grad)[0, 0] = float("inf")
    before = {n: _whole(p.detach()) for n, p in model.named_parameters()}
    if amp:
        slimops.amp.unscale_clip_grad_norm_(scaler, opt, 0.5)
        scaler.step(opt)  # skipped: found_inf
        pruner.step(scaler)
        scaler.update()
    else:
        pruner.step()
    moved = any(not torch.equal(_whole(p.detach()), before[n]) for n, p in model.named_parameters())
    return {"dropped": pruner.dropped_steps, "moved": moved}


def _fsdp_worker(rank: int, world: int, cases) -> dict:
    out = {case: _train(*case, rank) for case in cases}
    out["overflow"] = {amp: _overflow_on_one_rank(rank, amp) for amp in (False, True)}
    return out


CASES = [("taylor", False), ("fisher", False), ("magnitude", False), ("gradient", True)]


@pytest.fixture(scope="module")
def runs():
    return spawn(_fsdp_worker, WORLD, CASES), {case: _train(*case, None) for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[f"{c}{'-amp' if amp else ''}" for c, amp in CASES])
def test_fsdp2_training_with_the_pruner_matches_one_process(runs, case):
    ranks, one = runs
    r0, r1, want = ranks[0][case], ranks[1][case], one[case]
    assert sum(int((~m).sum()) for m in want["masks"][-1].values()) > 0, "nothing was pruned"
    for step, (m0, m1, m) in enumerate(zip(r0["masks"], r1["masks"], want["masks"])):
        for fqn in m:
            assert torch.equal(m0[fqn], m1[fqn]), f"rank masks differ at step {step}, {fqn}"
            assert torch.equal(m0[fqn], m[fqn]), f"FSDP2 mask != one process at step {step}, {fqn}"
    assert r0["zeros_ok"] and r1["zeros_ok"], "a pruned weight moved off zero in a shard"
    assert "slimops.save" in r0["finalize_error"], r0["finalize_error"]
    for name, p in want["params"].items():
        torch.testing.assert_close(r0["params"][name], p, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(r1["params"][name], p, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("case", CASES, ids=[f"{c}{'-amp' if amp else ''}" for c, amp in CASES])
def test_clip_over_sharded_gradients_is_the_one_process_clip_with_one_all_reduce(runs, case):
    ranks, one = runs
    want = one[case]
    for r in ranks:
        got = r[case]
        torch.testing.assert_close(torch.tensor(got["norms"]), torch.tensor(want["norms"]), rtol=1e-5, atol=0)
        assert want["norms"][0] > 0.5, "the first step's norm must exceed max_norm, or nothing was clipped"
        assert got["clip_all_reduces"] == [1] * STEPS, got["clip_all_reduces"]
        for name, g in want["clipped"].items():
            torch.testing.assert_close(got["clipped"][name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("amp", [False, True], ids=["pruner", "amp"])
def test_an_inf_in_one_rank_shard_drops_the_step_on_every_rank(runs, amp):
    ranks, _ = runs
    for rank, r in enumerate(ranks):
        got = r["overflow"][amp]
        assert got["dropped"] == 1, f"rank {rank} observed a step whose gradient holds inf on rank 0"
        if amp:
            assert not got["moved"], f"rank {rank}: the scaler did not skip the step"
