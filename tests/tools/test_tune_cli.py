"""``slimops tune`` and ``slimops demo --tune N``: the search stage on the digits demo model, its files, bad options.

Shortened runs (a tiny model, one epoch, a few trials) keep the suite fast.
"""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from slimops import cli
from slimops.demo import DemoConfig, run

TINY = "tests.tools.test_demo:tiny_model"


def test_slimops_tune_writes_the_front_and_its_plot(tmp_path, capsys):
    argv = ["tune", "--model", TINY, "--epochs", "2", "--trials", "6", "--recovery-epochs", "1", "--sampler", "random",
            "--out", str(tmp_path), "--device", "cpu"]
    assert cli.main(argv) == 0
    data = json.loads((tmp_path / "tune.json").read_text())
    assert len(data["trials"]) == 6 and data["dense"] == 0
    assert all(t["state"] == "complete" for t in data["trials"]), [t["error"] for t in data["trials"]]
    chosen = [t["params"]["layers.fc0"] for t in data["trials"]] + [t["params"]["layers.fc1"] for t in data["trials"]]
    assert "sparse" in chosen  # the pruning + distillation path of build ran (seed 0)
    sparse = next(t for t in data["trials"] if t["params"]["layers.fc1"] == "sparse")
    assert sparse["configs"]["3"].startswith("SparseConfig(")  # fc1 is the model's layer "3"
    assert set(data["pareto"]) <= {t["number"] for t in data["trials"]}
    assert (tmp_path / "tune-pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "Pareto front" in out and "within 1 point of dense" in out


def test_slimops_tune_resumes_a_stored_study(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    argv = ["tune", "--model", TINY, "--epochs", "1", "--recovery-epochs", "1", "--storage", url, "--device", "cpu"]
    assert cli.main([*argv, "--trials", "2", "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*argv, "--trials", "3", "--out", str(tmp_path / "b")]) == 0
    first = json.loads((tmp_path / "a" / "tune.json").read_text())["trials"]
    second = json.loads((tmp_path / "b" / "tune.json").read_text())["trials"]
    assert len(second) == 3 and second[:2] == first  # the stored trials kept, one more run


def test_demo_tune_adds_a_search_stage(tmp_path):
    console = Console(file=io.StringIO(), width=160)
    cfg = DemoConfig(device="cpu", model=TINY, epochs=1, finetune_epochs=1, pattern="2:4", out=str(tmp_path), tune=3)
    results = run(cfg, console)
    assert [r.stage for r in results] == ["dense", "pruned", "packed", "int8"]  # the stages are unchanged
    assert len(json.loads((tmp_path / "tune.json").read_text())["trials"]) == 3
    assert (tmp_path / "tune-pareto.png").exists()
    assert "tune (3 trials)" in console.file.getvalue()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tune", "--trials", "0"], "--trials must be >= 1"),
        (["tune", "--model", "nope"], "model must be one of"),
        (["demo", "--tune", "-1"], "tune must be an int >= 0"),
        (["tune", "--model", TINY, "--epochs", "1", "--recovery-epochs", "0"], "recovery_epochs must be a positive int"),
        (["tune", "--model", TINY, "--epochs", "1", "--sampler", "grid"], "'grid' needs every dimension discrete"),
    ],
)
def test_bad_options_are_refused(argv, message, capsys):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err
