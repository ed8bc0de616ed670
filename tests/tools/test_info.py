"""slimops.info and `slimops info`: what the installation reports about itself."""

import json
import subprocess
import sys

import pytest
import torch

from slimops import _build
from slimops.info import _arch_runs_on, collect_info


def test_collect_info_keys():
    info = collect_info()
    assert set(info) == {"versions", "build", "backends", "backend_override", "ops", "gpu", "cpu", "warnings"}
    assert set(info["versions"]) == {"slimops", "torch", "cuda", "triton", "python", "platform"}
    assert info["versions"]["torch"] == torch.__version__
    assert set(info["build"]) == {"HAS_C", "HAS_CUDA_KERNELS", "CUDA_ARCHS", "HAS_TRITON"}
    assert set(info["backends"]) == {"cpu", "cuda", "triton"}
    for name, b in info["backends"].items():
        # A missing backend always says why; an available one has no reason.
        assert b["available"] == (name not in _build.missing_backends())
        assert (b["reason"] is None) == b["available"]
    assert info["backends"]["cpu"]["available"] == _build.HAS_C
    assert info["cpu"]["cores"] >= 1 and info["cpu"]["torch_threads"] >= 1
    assert (info["gpu"] is None) == (not torch.cuda.is_available())
    # Every op with a kernel is listed from the op table, with what it runs on a GPU.
    schemas = {n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("slimops::")}
    assert set(info["ops"]) == schemas
    assert info["ops"]["weight_int8_linear"] == {"gpu": ["cuda", "triton"],
                                                 "rule": "cuda below 17 rows M, triton from there"}
    assert info["ops"]["int8_mm"] == {"gpu": ["triton"], "rule": None}
    assert info["ops"]["sparse24_linear"] == {"gpu": ["cuda"], "rule": None}
    json.dumps(info)  # plain data, as `slimops info --json` prints it


def test_arch_compatibility():
    assert _arch_runs_on("90a", 9, 0)
    assert _arch_runs_on("sm_90a", 9, 0)  # as slimops._C.cuda_archs spells it
    assert not _arch_runs_on("90a", 10, 0)
    assert _arch_runs_on("80", 8, 6)  # sm_80 SASS runs on later 8.x chips
    assert not _arch_runs_on("80", 9, 0)
    assert not _arch_runs_on("86", 8, 0)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "slimops", *args], capture_output=True, text=True, timeout=120)


def test_info_cli_mentions_cpu_backend():
    p = _run("info")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "backends" in out and "cpu" in out
    assert torch.__version__ in out
    if _build.HAS_C:
        assert "slimops._C" in out  # the cpu backend row says where its kernels are


def test_info_cli_json():
    p = _run("info", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["backends"]["cpu"]["available"] == _build.HAS_C


def test_cli_without_command_fails(capsys):
    from slimops.cli import main

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code != 0
    assert "{demo,tune,info,bench" in capsys.readouterr().err  # usage lists the commands


@pytest.mark.parametrize("capability, runs", [((9, 0), True), ((8, 0), False)])
def test_gpu_section_and_arch_warning(monkeypatch, capability, runs):
    # A pretend GPU: the GPU half of collect_info / print_info runs on CPU-only CI too.
    from types import SimpleNamespace

    from rich.console import Console

    from slimops.info import print_info

    props = SimpleNamespace(
        name="NVIDIA H100 80GB HBM3", major=capability[0], minor=capability[1],
        total_memory=80 * 2**30, multi_processor_count=132, L2_cache_size=50 * 2**20,
    )  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(_build, "HAS_CUDA_KERNELS", True)
    monkeypatch.setattr(_build, "CUDA_ARCHS", ["sm_90a"])
    info = collect_info()
    gpu = info["gpu"]
    assert gpu["name"] == props.name and gpu["sm_count"] == 132 and gpu["memory_gib"] == 80.0
    assert gpu["capability"] == f"{capability[0]}.{capability[1]}"
    assert gpu["cuda_kernels_run_here"] is runs
    assert bool(info["warnings"]) is not runs
    console = Console(record=True, width=200)
    print_info(info, console)
    text = console.export_text()
    assert "NVIDIA H100" in text and "sm_90a" in text
