"""Triton autotuning results are cached on disk: a second process does not retune.

The Triton GEMMs are wrapped by ``slimops.kernels._tiles.autotune``, which asks
``triton.autotune`` for ``cache_results=True``. Under ``TRITON_INTERPRET=1`` (the
CPU tests) nothing is autotuned, so these tests run their kernels in
subprocesses with a clean environment.
"""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import pytest
import triton

from slimops.kernels import _tiles

KERNEL_MODULES = ["int8_mm", "masked_linear", "weight_int8", "block_sparse"]
TRITON_CACHES = "cache_results" in inspect.signature(triton.autotune).parameters


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment of a process that autotunes: no interpreter, no SLIMOPS_TRITON_AUTOTUNE=0."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SLIMOPS_TRITON_AUTOTUNE")}
    env.update(extra)
    return env


def _run(script: str, env: dict[str, str], timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], check=False, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_helper_asks_triton_to_cache(monkeypatch):
    seen = {}

    def fake_autotune(**kwargs):
        seen.update(kwargs)
        return lambda fn: fn

    monkeypatch.setattr(_tiles.triton, "autotune", fake_autotune)
    configs = [triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})]
    prune = {"early_config_prune": lambda configs, named_args, **kw: configs}
    _tiles.autotune(configs, key=["N"], prune_configs_by=prune)
    assert seen["configs"] is configs and seen["key"] == ["N"] and seen["prune_configs_by"] is prune
    # Triton < 3.4 has no disk cache: the helper must then leave the argument out, not fail.
    assert seen.get("cache_results") is (True if TRITON_CACHES else None)


def test_every_triton_gemm_caches_its_tuning():
    # Without the interpreter, importing the kernels builds their autotuners (no GPU needed).
    script = f"""
        import importlib, json
        from triton.runtime.autotuner import Autotuner
        found = {{}}
        for name in {KERNEL_MODULES!r}:
            mod = importlib.import_module("slimops.kernels." + name)
            for attr, value in vars(mod).items():
                if isinstance(value, Autotuner):
                    found[name + "." + attr] = value.cache_results
        print(json.dumps(found))
    """
    found = _run(script, _clean_env(), timeout=120)
    assert {name.split(".")[0] for name in found} == set(KERNEL_MODULES)
    assert len(found) == 8  # int8_mm 1, masked_linear 3, weight_int8 2, block_sparse 2
    assert all(v is TRITON_CACHES for v in found.values()), found


@pytest.mark.gpu
@pytest.mark.skipif(not TRITON_CACHES, reason="this Triton has no autotune disk cache (< 3.4)")
def test_second_process_does_not_retune(tmp_path):
    # Counts the configs Triton times (Autotuner._bench, in Triton 3.4 .. 3.9), on an
    # int8 GEMM whose M bucket (256) leaves 4 configs after pruning.
    script = """
        import json
        import torch
        from triton.runtime.autotuner import Autotuner

        benched = []
        bench = Autotuner._bench

        def counting_bench(self, *args, **kwargs):
            benched.append(self.base_fn.__name__)
            return bench(self, *args, **kwargs)

        Autotuner._bench = counting_bench
        from slimops.kernels.int8_mm import int8_mm

        g = torch.Generator(device="cuda").manual_seed(0)
        a = torch.randint(-127, 128, (256, 512), dtype=torch.int8, device="cuda", generator=g)
        b = torch.randint(-127, 128, (384, 512), dtype=torch.int8, device="cuda", generator=g)
        sa = torch.rand(256, device="cuda", generator=g)
        sb = torch.rand(384, device="cuda", generator=g)
        out = int8_mm(a, b, sa, sb, None, torch.bfloat16)
        ref = (a.float() @ b.float().t()) * sa[:, None] * sb[None, :]
        torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())
        print(json.dumps({"benched": len(benched)}))
    """
    cache = tmp_path / "triton-cache"
    env = _clean_env(TRITON_CACHE_DIR=str(cache))

    def tuning_files():
        return sorted(p.relative_to(cache) for p in cache.rglob("*.autotune.json"))

    first = _run(script, env, timeout=300)
    assert first["benched"] >= 2, "the first process should have timed several configs"
    files = tuning_files()
    assert [p.name for p in files] == ["_int8_mm_kernel.autotune.json"]

    second = _run(script, env, timeout=300)
    assert second["benched"] == 0, "the second process retuned instead of reading the disk cache"
    assert tuning_files() == files

