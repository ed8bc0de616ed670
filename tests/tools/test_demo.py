"""``slimops demo``: every stage runs, is reported and written; bad options are refused.

The full-length demo (the README's main job) runs in CI through ``make demo``;
these runs are shortened (a few epochs) to keep the suite fast.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console
from torch import nn

from slimops import cli
from slimops.demo import DemoConfig, run
from slimops.nn import BlockSparseLinear, Int8DynamicLinear, MaskedConv2d, MaskedLinear


def tiny_model() -> nn.Module:
    """A ``--model tests.tools.test_demo:tiny_model`` factory."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def _quiet() -> Console:
    return Console(file=io.StringIO(), width=160)


def test_demo_runs_every_stage_and_writes_its_reports(tmp_path):
    console = _quiet()
    results = run(DemoConfig(device="cpu", epochs=3, finetune_epochs=3, out=str(tmp_path)), console)
    assert [r.stage for r in results] == ["dense", "pruned", "packed", "int8"]
    dense, pruned, packed, int8 = (r.report for r in results)
    assert results[0].accuracy > 85  # 3 epochs of a CNN on digits
    for r in results[1:]:
        assert r.accuracy > results[0].accuracy - 10, r.stage  # pruning + KD keeps it usable

    layers = {layer.name: layer for layer in pruned.layers}
    assert layers["6"].type_after == MaskedLinear.__name__ and layers["2"].type_after == MaskedConv2d.__name__
    assert layers["6"].sparsity == pytest.approx(0.75, abs=1e-3)
    packed_layers = {layer.name: layer for layer in packed.layers}
    assert packed_layers["6"].type_after == BlockSparseLinear.__name__
    assert packed.size_after < 0.6 * dense.size_after  # 16x16 tiles: a quarter of fc1 is stored
    int8_layers = {layer.name: layer for layer in int8.layers}
    assert int8_layers["8"].type_after == Int8DynamicLinear.__name__
    assert int8.size_after < 0.35 * dense.size_after

    for stage in ("dense", "pruned", "packed", "int8"):
        assert json.loads((tmp_path / f"report-{stage}.json").read_text())["layers"]
        assert (tmp_path / f"report-{stage}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["dense", "pruned", "packed", "int8"]
    assert (tmp_path / "model-int8.safetensors").stat().st_size > 0
    text = console.file.getvalue()
    assert "every stage against the dense model" in text and "BlockSparseLinear" in text


def test_demo_takes_a_model_factory_and_other_patterns():
    cfg = DemoConfig(device="cpu", model="tests.tools.test_demo:tiny_model", epochs=1, finetune_epochs=1, pattern="2:4")
    assert cfg.sparsity == 0.5  # 2:4 is half by definition
    results = run(cfg, _quiet())
    packed = {layer.name: layer.type_after for layer in results[2].report.layers}
    assert packed["1"] == "Sparse24Linear"  # [64, 64]: K a multiple of 8
    assert results[-1].stage == "int8"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "nope"], "model must be one of"),
        (["--sparsity", "1.5"], "sparsity must be in [0, 1)"),
        (["--epochs", "0"], "epochs must be a positive int"),
        (["--model", "tests.tools.test_demo:_quiet"], "not an nn.Module"),
    ],
)
def test_cli_refuses_bad_options(argv, message, capsys):
    assert cli.main(["demo", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is missing")
def test_cuda_without_a_gpu_is_a_clear_error(capsys):
    assert cli.main(["demo", "--device", "cuda"]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err
