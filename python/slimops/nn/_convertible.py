"""The one rule for which ``nn.Linear`` layers a slimops module may stand in for."""

from __future__ import annotations

from torch import nn

from slimops.conversion import Unsupported


def check_convertible_linear(linear: nn.Module) -> None:
    """Raise :class:`Unsupported`, with the reason, for a linear layer no slimops module can replace.

    Refused: non-float weights; the projections inside ``nn.MultiheadAttention``
    (it reads their weight directly, never calling them); ``nn.Linear``
    subclasses with their own ``forward`` (its behaviour would be lost).
    """
    if not linear.weight.is_floating_point():
        raise Unsupported(f"weight dtype {linear.weight.dtype} is not floating point")
    if isinstance(linear, nn.modules.linear.NonDynamicallyQuantizableLinear):
        raise Unsupported("nn.MultiheadAttention reads this projection's weight directly")
    if isinstance(linear, nn.Linear) and type(linear).forward is not nn.Linear.forward:
        raise Unsupported(f"{type(linear).__name__} overrides nn.Linear.forward")
