"""GPU backend choice: env var, context manager, per-shape rules, availability."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

import slimops
from slimops import _build, backend


def test_context_manager_nests_and_restores():
    assert backend.current_override() in (None, "cuda", "triton")
    outer = backend.current_override()
    with slimops.use_backend("triton"):
        assert backend.current_override() == "triton"
        with slimops.use_backend("cuda"):
            assert backend.current_override() == "cuda"
        with slimops.use_backend("auto"):
            assert backend.current_override() is None
        assert backend.current_override() == "triton"
    assert backend.current_override() == outer


def test_context_manager_restores_after_an_exception():
    outer = backend.current_override()
    with pytest.raises(KeyError), slimops.use_backend("cuda"):
        raise KeyError
    assert backend.current_override() == outer


def test_override_is_per_thread():
    seen = []
    with slimops.use_backend("triton"):
        t = threading.Thread(target=lambda: seen.append(backend.current_override()))
        t.start()
        t.join()
    assert seen == [backend._env_choice]


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match=r"use_backend\(name\) must be one of \('cuda', 'triton'\)"):
        with slimops.use_backend("cutlass"):
            pass


def test_env_var_is_validated_at_import():
    env = {"SLIMOPS_BACKEND": "tpu", "PATH": ""}
    r = subprocess.run([sys.executable, "-c", "import slimops"], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "SLIMOPS_BACKEND must be one of" in r.stderr


def test_env_var_sets_the_default():
    code = "import slimops; from slimops import backend; print(backend.current_override())"
    r = subprocess.run([sys.executable, "-c", code], env={"SLIMOPS_BACKEND": "triton"}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "triton"


def test_choose_follows_rules_and_availability(monkeypatch):
    monkeypatch.setattr(_build, "HAS_CUDA_KERNELS", True)
    monkeypatch.setattr(_build, "HAS_TRITON", True)
    monkeypatch.setitem(backend.RULES, "quantize_per_token", lambda n: "triton" if n > 100 else "cuda")
    assert backend.choose("quantize_per_token", 10) == "cuda"
    assert backend.choose("quantize_per_token", 1000) == "triton"
    with slimops.use_backend("cuda"):
        assert backend.choose("quantize_per_token", 1000) == "cuda"
    # only one backend built: it is used whatever the rule says
    monkeypatch.setattr(_build, "HAS_TRITON", False)
    assert backend.choose("quantize_per_token", 1000) == "cuda"
    with slimops.use_backend("triton"), pytest.raises(RuntimeError, match="triton is not installed"):
        backend.choose("quantize_per_token", 1)
    monkeypatch.setattr(_build, "HAS_CUDA_KERNELS", False)
    with pytest.raises(RuntimeError, match="no GPU backend is available"):
        backend.choose("quantize_per_token", 1)


def test_every_op_with_a_gpu_choice_has_a_rule():
    import torch

    for op in backend.RULES:
        assert hasattr(torch.ops.slimops, op)
