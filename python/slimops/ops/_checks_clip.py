"""What decides the outputs of the clip-norm fakes (see :mod:`slimops.ops._checks`).

The full checks are csrc/clip.cpp's, run by the op (and by the fakes on concrete sizes). The outputs
are 0-d float32 tensors on the tensors' device: nothing about shapes to check.
"""

from __future__ import annotations

import torch


def norm_device(tensors: list[torch.Tensor]) -> torch.device:
    """Where a norm lands: the tensors' device, the CPU for an empty list (as the reference)."""
    return tensors[0].device if tensors else torch.device("cpu")
