"""`import slimops` must work without the compiled extension and say what is missing."""

from __future__ import annotations

import subprocess
import sys

import slimops

BLOCK_C = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "slimops._C":
            raise ImportError("blocked for the test")
sys.meta_path.insert(0, Block())
import warnings
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import slimops
print(slimops.backends())
print(slimops._build.missing_backends()["cpu"])
print([str(x.message) for x in w])
"""


def test_import_without_compiled_extension():
    r = subprocess.run([sys.executable, "-c", BLOCK_C], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("{'cpu': False, 'cuda': False")
    assert "slimops._C failed to import" in lines[1] and "blocked for the test" in lines[1]
    assert "compiled ops are unavailable" in lines[2]


def test_backends_report_matches_build():
    b = slimops.backends()
    assert b["cpu"] is True  # the test suite runs against a built extension
    assert b["cuda"] == slimops._build.HAS_CUDA_KERNELS
    assert set(slimops._build.missing_backends()) == {k for k, v in b.items() if not v}
