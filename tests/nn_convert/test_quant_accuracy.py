"""End to end: a small MLP trained on scikit-learn's bundled digits keeps its accuracy once quantized."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimops

datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def trained():
    """An MLP trained for a couple of seconds on CPU, seeded; with its test split."""
    digits = datasets.load_digits()  # 1797 8x8 images, bundled with scikit-learn (offline)
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y), generator=g)
    test, train = perm[:540], perm[540:]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):  # epochs of mini-batches of 64
        for idx in torch.randperm(len(train), generator=g).split(64):
            batch = train[idx]
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval().requires_grad_(False)
    return model, x[test], y[test], x[train]


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).double().mean().item() * 100


def test_float_model_learned(trained):
    model, x, y, _ = trained
    assert accuracy(model, x, y) >= 95


@pytest.mark.parametrize("config", [
    slimops.Int8DynamicConfig(),
    slimops.Int8WeightOnlyConfig(),
    slimops.Int8WeightOnlyConfig(group_size=32),
    slimops.Fp8DynamicConfig(),
], ids=repr)
def test_quantized_accuracy_drop(trained, config):
    model, x, y, _ = trained
    base = accuracy(model, x, y)
    quantized = slimops.convert(copy.deepcopy(model), config)
    assert len(quantized.slimops_summary.converted) == 3
    assert accuracy(quantized, x, y) >= base - 0.5


def test_static_quantized_accuracy_drop(trained):
    model, x, y, x_train = trained
    base = accuracy(model, x, y)
    config = slimops.Int8StaticConfig(observer=slimops.PercentileObserver(p=99.99))
    quantized = slimops.prepare(copy.deepcopy(model), config)
    with torch.no_grad():
        for batch in x_train[:512].split(128):  # calibration on training data only
            quantized(batch)
    slimops.convert(quantized, config)
    assert accuracy(quantized, x, y) >= base - 0.5
