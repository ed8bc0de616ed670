"""What this installation was built with, and what is missing.

``import slimops`` must work even when the compiled extension is absent or was
built without CUDA, so everything that touches ``slimops._C`` or triton goes
through this module, which records the reason for each missing backend.
"""

from __future__ import annotations

import importlib.util

import torch

try:
    from slimops import _C  # noqa: F401  (registers the op schemas and CPU kernels)

    C_ERROR: str | None = None
except ImportError as e:  # pragma: no cover - exercised by tests/tools/test_import.py in a subprocess
    _C = None
    C_ERROR = f"slimops._C failed to import ({e}); reinstall with `pip install --no-build-isolation .`"

HAS_C: bool = _C is not None
HAS_CUDA_KERNELS: bool = bool(HAS_C and _C.with_cuda)
CUDA_ARCHS: list[str] = list(_C.cuda_archs) if HAS_C else []
HAS_TRITON: bool = importlib.util.find_spec("triton") is not None


def missing_backends() -> dict[str, str]:
    """Backend name -> why it is unavailable in this process."""
    missing = {}
    if not HAS_C:
        missing["cpu"] = C_ERROR or "slimops._C is missing"
    if not HAS_CUDA_KERNELS:
        if not HAS_C:
            missing["cuda"] = "slimops._C is missing"
        elif torch.version.cuda is None:
            missing["cuda"] = "built against a CPU-only torch"
        else:
            missing["cuda"] = "built without CUDA (no nvcc at build time, or SLIMOPS_CUDA=OFF)"
    if not HAS_TRITON:
        missing["triton"] = "triton is not installed"
    elif not torch.cuda.is_available():
        missing["triton"] = "no CUDA device (Triton kernels run on CPU only under TRITON_INTERPRET=1, for tests)"
    return missing
