"""Which modules a slimops linear module may stand in for: the one rule for ``nn.Linear`` layers,
and the one rule for modules that compute a linear layer without being ``nn.Linear``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from slimops.conversion import Unsupported


def check_convertible_linear(linear: nn.Module) -> None:
    """Raise :class:`Unsupported`, with the reason, for a linear layer no slimops module can replace.

    Refused: weights other than float32 / float16 / bfloat16; the projections inside ``nn.MultiheadAttention``
    (it reads their weight directly, never calling them); ``nn.Linear``
    subclasses with their own ``forward`` (its behaviour would be lost); a :class:`MaskedLinear`
    holding a Hugging Face ``Conv1D``'s weight, stored ``[in_features, out_features]`` (code that
    reads ``.weight`` as ``[out_features, in_features]`` would build the transposed layer).
    """
    from slimops.nn.sparse import MaskedLinear

    if isinstance(linear, MaskedLinear) and linear.transposed:
        raise Unsupported(
            f"{type(linear).__name__} holds a Conv1D's weight, stored [in_features, out_features]: "
            "build from its to_linear()"
        )
    if linear.weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        # The kernels take these three; a float64 layer would convert, then fail at its first call.
        raise Unsupported(f"weight dtype {linear.weight.dtype}: slimops kernels take float32, float16 or bfloat16")
    if isinstance(linear, nn.modules.linear.NonDynamicallyQuantizableLinear):
        raise Unsupported("nn.MultiheadAttention reads this projection's weight directly")
    if isinstance(linear, nn.Linear) and type(linear).forward is not nn.Linear.forward:
        raise Unsupported(f"{type(linear).__name__} overrides nn.Linear.forward")


def _is_hf_conv1d(module: nn.Module) -> bool:
    # Duck typing, so that slimops never imports transformers: GPT-2's Conv1D computes
    # y = x @ W + b with W [nx, nf] (the transpose of nn.Linear's weight).
    if type(module).__name__ != "Conv1D" or not isinstance(getattr(module, "nf", None), int):
        return False
    w, b = getattr(module, "weight", None), getattr(module, "bias", None)
    return (
        isinstance(w, torch.Tensor)
        and w.dim() == 2
        and w.shape[1] == module.nf
        and (b is None or (isinstance(b, torch.Tensor) and tuple(b.shape) == (module.nf,)))
    )


def linear_stand_in(module: nn.Module) -> tuple[Callable[[], nn.Linear], str | None] | None:
    """How to see ``module``, which is not an ``nn.Linear``, as one; ``None`` if it is no linear layer.

    Returns ``(build, fallback)``: ``build()`` makes an ``nn.Linear`` (new tensors, same
    device and dtype: call it only to convert), and ``fallback`` is ``None`` when that
    layer computes exactly what ``module`` does, else what converting it loses.

    * Hugging Face's ``Conv1D`` (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``): exact, weight
      transposed; its weight's ``.grad``, if any, comes along transposed (gradient pruning
      criteria read it).
    * slimops' sparse layers (:class:`MaskedLinear`, :class:`BlockSparseLinear`,
      :class:`Sparse24Linear`): their dense weight, zeros included, for a config with no
      handler of the sparse layer itself, so the sparse speed-up is lost (a fallback).
      (``Int8WeightOnlyConfig`` has one for ``BlockSparseLinear``: slimops/quant_block_sparse_int8.py,
      and one for ``Sparse24Linear``: slimops/quant_sparse24_int8.py.)

    Args:
        module: any module; ``nn.Linear`` itself needs no stand-in (``None``).
    """
    from slimops.nn.sparse import BlockSparseLinear, MaskedLinear, Sparse24Linear, dense_linear

    def bias_of(m: nn.Module) -> torch.Tensor | None:
        return None if m.bias is None else m.bias.detach()

    if _is_hf_conv1d(module):
        return (lambda: _conv1d_as_linear(module)), None
    lost = (
        f"{type(module).__name__}: no slimops kernel runs this sparse weight in the new format; "
        "converted its dense weight (the zeros are kept, the sparse speed-up is lost)"
    )
    if isinstance(module, MaskedLinear):
        return module.to_linear, lost
    if isinstance(module, BlockSparseLinear):
        return (lambda: dense_linear(module.to_dense(), bias_of(module))), lost
    if isinstance(module, Sparse24Linear):
        return (lambda: dense_linear(module.to_dense(), bias_of(module))), lost
    return None


def _conv1d_as_linear(conv1d: nn.Module) -> nn.Linear:
    from slimops.nn.sparse import dense_linear

    bias = None if conv1d.bias is None else conv1d.bias.detach()
    linear = dense_linear(conv1d.weight.detach().t(), bias)
    if conv1d.weight.grad is not None:
        linear.weight.grad = conv1d.weight.grad.detach().t().contiguous()
    return linear
