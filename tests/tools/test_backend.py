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
        assert backend.current_override() == "triton"
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


@pytest.fixture
def test_op():
    """A throwaway op name in the C++ backend table, with a Triton impl registered."""
    name = "slimops_test_op"
    _build._C._set_triton_impls({name: lambda *a: None})
    _build._C._set_triton_min_size(name, 100)
    yield name
    _build._C._set_triton_impls({name: None})


def _choose(op, size, have_cuda=True):
    return backend._NAMES[_build._C._choose(op, size, have_cuda)]


def test_choose_follows_the_rule(test_op):
    assert _choose(test_op, 99) == "cuda"
    assert _choose(test_op, 100) == "triton"
    with slimops.use_backend("cuda"):
        assert _choose(test_op, 1000) == "cuda"
    with slimops.use_backend("triton"):
        assert _choose(test_op, 1) == "triton"


def test_choose_uses_the_only_available_backend(test_op):
    assert _choose(test_op, 1, have_cuda=False) == "triton"
    _build._C._set_triton_impls({test_op: None})
    assert _choose(test_op, 10**9) == "cuda"


def test_forcing_a_missing_backend_is_an_error(test_op):
    with slimops.use_backend("cuda"), pytest.raises(RuntimeError, match="slimops.slimops_test_op: backend 'cuda'"):
        _choose(test_op, 1, have_cuda=False)
    _build._C._set_triton_impls({test_op: None})
    with slimops.use_backend("triton"), pytest.raises(RuntimeError, match="backend 'triton' was requested"):
        _choose(test_op, 1)
    with pytest.raises(RuntimeError, match="no GPU backend is available"):
        _choose(test_op, 1, have_cuda=False)


def test_rules_reach_the_cpp_side(monkeypatch):
    monkeypatch.setitem(backend.RULES, "slimops_test_rule", 4096)
    backend.apply_rules()
    _build._C._set_triton_impls({"slimops_test_rule": lambda *a: None})
    try:
        assert _choose("slimops_test_rule", 4095) == "cuda"
        assert _choose("slimops_test_rule", 4096) == "triton"
    finally:
        _build._C._set_triton_impls({"slimops_test_rule": None})


def test_every_rule_names_an_op():
    import torch

    for op in backend.RULES:
        assert hasattr(torch.ops.slimops, op)
