"""Training with masks under DistributedDataParallel (gloo, 2 CPU processes) equals one process.

Every criterion and pattern, with the cubic schedule, knowledge distillation and
``slimops.clip_grad_norm_``: the two ranks hold the same masks at every step, pruned
weights stay exactly zero, the final model equals a single-process run on the same global
batches, and ``finalize()`` packs the same model on both ranks. Also: the Pruner averages
the scores of ranks that saw different gradients (no DDP), so their masks agree.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import slimops
from slimops import prune as P
from slimops.distill import Distiller
from slimops.prune.criteria import CRITERIA as CRITERION_CLASSES
from tests.distributed.launch import spawn

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 8
CRITERIA = tuple(CRITERION_CLASSES)  # every criterion slimops has
PATTERNS = ("unstructured", "2:4", "block", "channel")


def _pattern(name: str):
    # A 4x4 tile: the layers here are small, and a block pattern needs whole tiles.
    return P.block(4) if name == "block" else name


def _sparsity(name: str) -> float | None:
    return None if name == "2:4" else 0.5


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 8),
    )


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 1, 8, 8, generator=g), torch.randint(0, 8, (GLOBAL_BATCH,), generator=g))
            for _ in range(STEPS)]


def _train(criterion: str, pattern: str, rank: int | None) -> dict:
    """Prune while distilling from the dense model; ``rank`` None is the single-process run on
    the whole batches, else this rank's half of each batch under DDP. Returns what the test compares."""
    student = _model()
    teacher = copy.deepcopy(student)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers a pattern cannot take stay dense, listed in .skipped
        pruner = P.Pruner(
            student, criterion, _pattern(pattern), _sparsity(pattern),
            schedule=P.gradual(end_step=STEPS - 1, frequency=1),  # the cubic schedule, a mask update every step
        )
    model = student if rank is None else nn.parallel.DistributedDataParallel(student)
    distiller = Distiller(teacher, model, temperature=2.0, alpha=0.5)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    masks, zeros_ok = [], True
    for x, y in _batches():
        if rank is not None:  # this rank's contiguous share of the global batch
            share = GLOBAL_BATCH // WORLD
            x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
        loss = distiller.loss(x, y)
        loss.backward()
        slimops.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        pruner.step()
        opt.zero_grad()
        masks.append({fqn: layer.mask.clone() for fqn, layer in pruner.layers.items()})
        zeros_ok &= all(bool((layer.weight[~layer.mask] == 0).all()) for layer in pruner.layers.values())
    trained = {k: v.clone() for k, v in student.state_dict().items()}
    pruner.finalize()
    return {"masks": masks, "zeros_ok": zeros_ok, "trained": trained, "packed": student.state_dict(),
            "forms": pruner.forms, "pruned": sum(int((~m).sum()) for m in masks[-1].values())}


# Every criterion and every pattern, each in one case (the criterion scores, the pattern
# selects: the combinations add nothing the two axes do not), the gradient ones on the
# structured patterns.
CASES = [("magnitude", "unstructured"), ("gradient", "2:4"), ("taylor", "block"), ("fisher", "channel"),
         ("random", "unstructured")]


def _worker(rank: int, world: int) -> dict:
    # Every check in one pair of processes: starting them costs more than the checks.
    return {"ddp": {case: _train(*case, rank) for case in CASES}, "local": _local_gradient_worker(rank, world)}


@pytest.fixture(scope="module")
def ranks():
    return spawn(_worker, WORLD)


def test_ddp_pruning_matches_one_process_on_every_criterion_and_pattern(ranks):
    assert {c for c, _ in CASES} == set(CRITERIA) and {p for _, p in CASES} == set(PATTERNS)
    for c, p in CASES:
        case = f"{c}/{p}"
        r0, r1 = ranks[0]["ddp"][(c, p)], ranks[1]["ddp"][(c, p)]
        one = _train(c, p, None)
        assert one["pruned"] > 0, f"{case}: nothing was pruned, the test would prove nothing"
        for step, (m0, m1, m) in enumerate(zip(r0["masks"], r1["masks"], one["masks"])):
            for fqn in m:
                assert torch.equal(m0[fqn], m1[fqn]), f"{case}: rank masks differ at step {step}, {fqn}"
                assert torch.equal(m0[fqn], m[fqn]), f"{case}: DDP mask != one process at step {step}, {fqn}"
        assert r0["zeros_ok"] and r1["zeros_ok"], f"{case}: a pruned weight moved off zero"
        for key, want in one["trained"].items():
            torch.testing.assert_close(r0["trained"][key], want, rtol=1e-5, atol=1e-6, msg=f"{case}: {key}")
        assert r0["forms"] == r1["forms"] == one["forms"], case
        assert r0["packed"].keys() == r1["packed"].keys() == one["packed"].keys(), case
        for key in r0["packed"]:
            assert torch.equal(r0["packed"][key], r1["packed"][key]), f"{case}: finalize differs on {key}"


def _local_gradient_worker(rank: int, world: int) -> dict:
    """No DDP: each rank sees its own data, so its own gradients; the Pruner must still agree."""
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruner = P.Pruner(model, "taylor", "unstructured", 0.5)
    x, y = _batches()[0]
    torch.manual_seed(100 + rank)  # different data on each rank
    x = torch.randn_like(x)
    nn.functional.cross_entropy(model(x), y).backward()
    local = {fqn: P.TaylorCriterion()._statistic(l.weight.detach(), l.weight.grad) for fqn, l in pruner.layers.items()}
    pruner.step()
    return {"masks": {fqn: l.mask.clone() for fqn, l in pruner.layers.items()}, "local": local}


def test_scores_of_ranks_with_different_gradients_are_averaged(ranks):
    r0, r1 = ranks[0]["local"], ranks[1]["local"]
    for fqn, mask in r0["masks"].items():
        assert torch.equal(mask, r1["masks"][fqn]), f"{fqn}: the ranks picked different masks"
        assert not torch.equal(r0["local"][fqn], r1["local"][fqn]), "the ranks' gradients were equal"
        # The mask the mean score picks (float64 reference): the half with the lowest mean Taylor score.
        mean = (r0["local"][fqn].double() + r1["local"][fqn].double()) / 2
        kept = mean.reshape(-1).argsort(stable=True)[mean.numel() // 2 :]
        want = torch.zeros(mean.numel(), dtype=torch.bool)
        want[kept] = True
        assert torch.equal(mask.reshape(-1), want), f"{fqn}: the mask is not the one the averaged scores pick"
