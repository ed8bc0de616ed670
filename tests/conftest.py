"""Test-wide set-up.

On a machine without a GPU the Triton kernels run on CPU tensors through
Triton's interpreter, which must be switched on before any @triton.jit
function is defined, i.e. before slimops.kernels is imported.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# On a GPU, tests take each Triton GEMM's first config per shape bucket rather
# than autotuning every shape they try (minutes of compiling and timing);
# `slimops bench` autotunes.
os.environ.setdefault("SLIMOPS_TRITON_AUTOTUNE", "0")


def pytest_collection_modifyitems(config, items):
    # `-m gpu` on a machine without a device reports these as skipped with the
    # reason, never as passed.
    if torch.cuda.is_available():
        return
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


@pytest.fixture
def poison_empty():
    """Make torch.empty (and at::empty in our kernels) return NaN / int max.

    Outputs are allocated by the ops themselves, so this is how an element a
    kernel forgot to write shows up as a mismatch instead of a lucky zero.
    """
    import torch.utils.deterministic as det

    old_alg, old_fill = torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    yield
    det.fill_uninitialized_memory = old_fill
    torch.use_deterministic_algorithms(old_alg)
