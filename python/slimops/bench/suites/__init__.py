"""Benchmark suites: one module per op family, each defining ``SUITE``.

A new family (clip-norm, quantized GEMM, sparse) adds one file here with a
module-level ``SUITE = Suite(...)``; :func:`load_suites` finds it by listing
this package, so nothing else needs registering.
"""

from __future__ import annotations

import importlib
import pkgutil

from slimops.bench.harness import Suite


def load_suites() -> dict[str, Suite]:
    """All suites by name, in module order."""
    suites = {}
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        suite = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "SUITE", None)
        if isinstance(suite, Suite):
            suites[suite.name] = suite
    return suites
