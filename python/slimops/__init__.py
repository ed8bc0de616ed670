"""slimops: compiled PyTorch kernels that make models smaller and faster.

Three ways in:

* ``torch.ops.slimops.*`` (or the typed wrappers in :mod:`slimops.ops`);
* ``slimops.convert(model, config)`` to swap modules in an existing model, and
  ``slimops.report`` / ``slimops.plan`` to see and choose what it does;
* ``slimops bench`` for the microbenchmarks.

``import slimops`` always works; :func:`slimops.backends` says which backends
this installation has and why the others are missing.
"""

from __future__ import annotations

import torch  # noqa: F401  (slimops._C links against libtorch: import torch first)

from slimops import _build
from slimops.backend import use_backend
from slimops import amp  # noqa: F401  (slimops.amp.unscale_clip_grad_norm_)
from slimops.clip import clip_grad_norm_, clip_grad_value_, install, uninstall
from slimops.conversion import ConversionSummary, convert
from slimops.quant import (
    Fp8DynamicConfig,
    HalfConfig,
    Int8DynamicConfig,
    Int8StaticConfig,
    Int8WeightOnlyConfig,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PercentileObserver,
    prepare,
)
from slimops.quant_int4 import Int4WeightOnlyConfig
from slimops.quant_codebook import CodebookWeightOnlyConfig
from slimops import quant_block_sparse_int8  # noqa: F401  (registers Int8WeightOnlyConfig's block-sparse handler)
from slimops import quant_sparse24_int8  # noqa: F401  (Int8WeightOnlyConfig on 2:4 layers)
from slimops.encryption import generate_key
from slimops.serialization import load, save
from slimops import distill, prune  # noqa: F401  (slimops.prune.Pruner, slimops.distill.kd_loss)
from slimops.prune import SparseConfig
from slimops.report import CompressionReport, LayerReport, report
from slimops.plan import Plan, plan
from slimops.tune import TuneResult, tune  # noqa: E402  (the function shadows the package's name)

__version__ = "0.1.0"

if _build.HAS_C:
    from slimops import ops  # noqa: F401  (registers fakes and CUDA-key kernels)
else:
    import warnings

    warnings.warn(f"slimops: compiled ops are unavailable: {_build.C_ERROR}", stacklevel=2)


def backends() -> dict[str, bool]:
    """Which backends this process can use: ``{"cpu": ..., "cuda": ..., "triton": ...}``."""
    missing = _build.missing_backends()
    return {name: name not in missing for name in ("cpu", "cuda", "triton")}


__all__ = [
    "CompressionReport",
    "ConversionSummary",
    "Fp8DynamicConfig",
    "HalfConfig",
    "Int4WeightOnlyConfig",
    "CodebookWeightOnlyConfig",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "Int8WeightOnlyConfig",
    "LayerReport",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PercentileObserver",
    "Plan",
    "SparseConfig",
    "backends",
    "clip_grad_norm_",
    "clip_grad_value_",
    "convert",
    "distill",
    "generate_key",
    "install",
    "load",
    "plan",
    "prepare",
    "prune",
    "report",
    "tune",
    "TuneResult",
    "save",
    "uninstall",
    "use_backend",
    "__version__",
]
