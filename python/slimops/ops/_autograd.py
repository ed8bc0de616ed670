"""Autograd glue shared by the op families: input gradients of the inference linears.

The quantized and packed-sparse linears are differentiable in ``x`` (and ``bias``)
only, so layers before a converted one still train: ``dx = dy W`` with ``W`` the
dense weight the op multiplies by, built in backward from the op's compact
weight parts (each family passes its own builder).
"""

from __future__ import annotations

import torch


class _LinearInputGrad(torch.autograd.Function):
    """An inference linear ``op(x, *weight_parts, bias)`` with a gradient for ``x`` and ``bias``.

    ``dx = dy @ W`` with ``W = dense_weight(K, *weight_parts)``, the dense float ``[N, K]``
    weight the op multiplies by, built in backward only (forward saves the compact
    parts, never a dense copy); the matmul runs in ``x``'s dtype. The weight parts are
    module buffers and get no gradient.
    """

    @staticmethod
    def forward(x, bias, op, dense_weight, *parts):
        return op(x, *parts, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, bias, _, dense_weight, *parts = inputs
        ctx.save_for_backward(*parts)
        ctx.dense_weight = dense_weight
        ctx.x_dtype, ctx.k = x.dtype, x.shape[-1]
        ctx.bias_dtype = None if bias is None else bias.dtype

    @staticmethod
    def backward(ctx, grad):
        parts = ctx.saved_tensors
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:
            # [..., N] @ [N, K] -> [..., K]
            grad_x = grad.to(ctx.x_dtype) @ ctx.dense_weight(ctx.k, *parts).to(ctx.x_dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[1]:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return (grad_x, grad_b, None, None, *(None for _ in parts))


def linear_with_input_grad(op, dense_weight, x: torch.Tensor, parts: tuple, bias: torch.Tensor | None):
    """``op(x, *parts, bias)``, differentiable in ``x`` and ``bias`` when they need a gradient.

    NOTE: the autograd wrapper is applied here, in the typed wrapper, and only when a
    gradient is needed: an autograd kernel registered on the op itself runs Python on
    every call in grad or ``no_grad`` mode (measured +20-30 us a call on the 2-core CPU),
    which the inference path must not pay. Calls to ``torch.ops.slimops.*`` directly get
    no gradient.

    Args:
        op: the op overload, schema ``(Tensor x, Tensor... parts, Tensor? bias)``.
        dense_weight: ``(K, *parts) -> [N, K]`` float, made of traceable ATen ops (it runs in
            ``torch.compile``'s backward too).
    """
    if torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad)):
        return _LinearInputGrad.apply(x, bias, op, dense_weight, *parts)
    return op(x, *parts, bias)
