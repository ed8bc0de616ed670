"""Sparse replacements for ``nn.Linear``: masked (training), block-sparse and 2:4 (inference).

* :class:`MaskedLinear` keeps the float weight as a trainable parameter and a
  bool mask as a buffer. Its forward is ``slimops.ops.masked_linear``, whose
  backward masks the weight gradient, so pruned weights get an exact zero
  gradient and no optimizer step moves them off zero (made by
  :class:`slimops.prune.Pruner`).
* :class:`BlockSparseLinear` stores only the kept ``b x b`` tiles (BSR) and
  skips the others; :class:`Sparse24Linear` stores the 2:4-compressed weight
  and its metadata for the sparse tensor cores. Both keep their packed data in
  buffers, so ``state_dict()`` holds the packed form and never the dense weight;
  their ``weight`` describes the layer (:class:`~slimops.nn.packed.WeightSpec`).

* :class:`MaskedConv2d` does for ``nn.Conv2d`` what :class:`MaskedLinear` does for
  ``nn.Linear``, with eager torch ops (slimops has no convolution kernel): the
  mask is a select on the weight, so pruned weights get an exact zero gradient.

Every forward is one call into :mod:`slimops.ops` (or torch) with no data-dependent
Python, so the modules run under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops.conversion import Unsupported
from slimops.nn._convertible import _is_hf_conv1d, check_convertible_linear
from slimops.nn.packed import PackedLinear

# Tile sizes the block-sparse kernels take in each dimension (issue 5).
BLOCK_SIZES = (16, 32, 64, 128)


def check_linear(linear: nn.Module) -> None:
    """Raise :class:`Unsupported` for an ``nn.Linear`` a sparse module cannot stand in for."""
    if not isinstance(linear, (nn.Linear, MaskedLinear)):
        raise Unsupported(f"{type(linear).__name__} is not an nn.Linear")
    check_convertible_linear(linear)


def _check_mask(mask: torch.Tensor, weight: torch.Tensor, who: str) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{who}: mask must be a bool tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{who}: mask must have dtype torch.bool, got {mask.dtype}")
    if mask.shape != weight.shape:
        raise ValueError(
            f"{who}: mask shape {tuple(mask.shape)} does not match the weight's [out_features, in_features] "
            f"= {tuple(weight.shape)}"
        )


def _dense_parts(linear: nn.Module, mask: torch.Tensor | None, who: str):
    """``(weight ⊙ mask, bias, mask)`` detached from ``linear`` (an ``nn.Linear`` or a ``MaskedLinear``)."""
    check_linear(linear)
    weight = linear.weight.detach()
    if mask is None and isinstance(linear, MaskedLinear):
        mask = linear.mask
    if mask is not None:
        _check_mask(mask, weight, who)
        weight = weight * mask.to(weight.device)
    bias = None if linear.bias is None else linear.bias.detach().clone()
    return weight, bias, mask


class _MaskedWeight(nn.Module):
    """What the masked layers share: a bool ``mask`` buffer shaped like ``weight`` (True = kept)."""

    weight: nn.Parameter
    mask: torch.Tensor
    # True when the weight is stored [in_features, out_features] (a Hugging Face Conv1D's).
    transposed: bool = False

    def out_first(self, t: torch.Tensor) -> torch.Tensor:
        """``t``, shaped like :attr:`weight`, with the output channels first, as the sparsity
        patterns see the weight: a view of the transpose when the weight is stored
        ``[in_features, out_features]`` (``transposed``), else ``t`` itself."""
        return t.t() if self.transposed else t

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Replace the mask and zero the weights it prunes, in place."""
        _check_mask(mask, self.weight, f"{type(self).__name__}.set_mask")
        self.mask.copy_(mask)
        self.apply_mask_()

    @torch.no_grad()
    def apply_mask_(self) -> None:
        """Zero the pruned weights in place (under FSDP2, this rank's shard by its part of the mask)."""
        from slimops.distributed import local_part, local_tensor

        local_tensor(self.weight).mul_(local_part(self.mask, self.weight))

    @property
    def sparsity(self) -> float:
        """The fraction of weights the mask prunes."""
        return 1.0 - self.mask.sum().item() / max(self.mask.numel(), 1)


class MaskedLinear(_MaskedWeight):
    """``y = x (W ⊙ M)^T + b`` with a fixed bool mask ``M``, for training a pruned layer.

    ``weight`` and ``bias`` are ordinary parameters; ``mask`` is a bool buffer
    shaped like ``weight`` (True = kept). The gradient of ``weight`` is
    ``(g^T x) ⊙ M``: pruned entries get exactly zero, so SGD, Adam or AdamW
    (with weight decay: ``0 * wd = 0``) leave a pruned weight that is zero at zero.

    ``weight`` is ``[out_features, in_features]``, or, with ``transposed=True``,
    ``[in_features, out_features]``: the layout of a Hugging Face ``Conv1D`` (GPT-2),
    whose parameter is kept as it is so that it stays shared; the mask then has that
    layout too, and :meth:`out_first` gives both as ``[out_features, in_features]``.

    NOTE: an optimizer whose momentum was built up *before* an entry was pruned
    can still move it for a few steps; :meth:`apply_mask_` (which
    :meth:`slimops.prune.Pruner.step` calls) zeros it again. The forward never
    sees it either way.
    """

    def __init__(
        self, weight: nn.Parameter, bias: nn.Parameter | None, mask: torch.Tensor, transposed: bool = False
    ):
        super().__init__()
        _check_mask(mask, weight, "MaskedLinear")
        if not isinstance(transposed, bool):
            raise TypeError(f"MaskedLinear: transposed must be a bool, got {transposed!r}")
        self.transposed = transposed
        self.weight = weight
        self.bias = bias
        self.register_buffer("mask", mask.to(weight.device))  # bool, shaped like the weight

    @property
    def in_features(self) -> int:
        return self.out_first(self.weight).shape[1]

    @property
    def out_features(self) -> int:
        return self.out_first(self.weight).shape[0]

    @classmethod
    def from_float(cls, linear: nn.Module, mask: torch.Tensor | None = None) -> MaskedLinear:
        """Wrap ``linear``, sharing its parameters (an optimizer built on them keeps working).

        Args:
            linear: an ``nn.Linear``, or a Hugging Face ``Conv1D`` (its weight
                ``[in_features, out_features]`` is kept as it is: ``transposed=True``).
            mask: bool, shaped like ``linear.weight``; all True (nothing pruned) if None.
                Weights it prunes are zeroed in place.
        """
        transposed = _is_hf_conv1d(linear)
        if transposed:
            check_convertible_linear(linear)
        else:
            check_linear(linear)
        if mask is None:
            mask = torch.ones_like(linear.weight, dtype=torch.bool)
        module = cls(linear.weight, linear.bias, mask, transposed)
        module.apply_mask_()
        return module

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``W ⊙ M`` (new parameters, same dtype and device)."""
        bias = None if self.bias is None else self.bias.detach()
        return dense_linear(self.out_first(self.weight.detach() * self.mask), bias, self.weight.requires_grad)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(input.device.type):
            # Autocast does not reach custom ops: cast as it casts nn.Linear (x, weight and
            # bias to the autocast dtype); the weight gradient flows back in the weight's dtype.
            dtype = torch.get_autocast_dtype(input.device.type)
            input, weight = input.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        # A transposed weight goes in as a strided view: the kernels take any strides.
        return slimops.ops.masked_linear(input, self.out_first(weight), self.out_first(self.mask), bias)

    def extra_repr(self) -> str:
        layout = ", transposed=True" if self.transposed else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, sparsity={self.sparsity:.3f}{layout}"
        )


class MaskedConv2d(_MaskedWeight):
    """``conv2d(x, W ⊙ M) + b`` with a fixed bool mask ``M``, for training a pruned convolution.

    ``weight`` and ``bias`` are the original ``nn.Conv2d``'s parameters (shared);
    ``mask`` is a bool buffer shaped like the weight. The mask is applied with
    ``torch.where``, whose gradient is exactly zero where the mask is False, so
    pruned weights stay zero through any optimizer step (with :meth:`apply_mask_`
    for momentum built before they were pruned, as for :class:`MaskedLinear`).
    slimops has no convolution kernel: this is eager torch, and
    :meth:`to_conv` gives back a plain ``nn.Conv2d`` holding the zeros.
    """

    def __init__(self, conv: nn.Conv2d, mask: torch.Tensor):
        super().__init__()
        if conv.padding_mode != "zeros":
            raise Unsupported(f"padding_mode={conv.padding_mode!r} (only 'zeros' is handled)")
        _check_mask(mask, conv.weight, "MaskedConv2d")
        self.weight = conv.weight
        self.bias = conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.register_buffer("mask", mask.to(conv.weight.device))  # bool, shaped like the weight

    @classmethod
    def from_float(cls, conv: nn.Conv2d, mask: torch.Tensor | None = None) -> MaskedConv2d:
        """Wrap ``conv``, sharing its parameters; ``mask`` (all True if None) zeros what it prunes."""
        if type(conv) is not nn.Conv2d:
            raise Unsupported(f"{type(conv).__name__} is not an nn.Conv2d")
        if not conv.weight.is_floating_point():
            raise Unsupported(f"weight dtype {conv.weight.dtype} is not floating point")
        module = cls(conv, torch.ones_like(conv.weight, dtype=torch.bool) if mask is None else mask)
        module.apply_mask_()
        return module

    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding ``W ⊙ M`` (new parameters, same dtype and device)."""
        w = self.weight
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding, self.dilation,
            self.groups, bias=self.bias is not None, device=w.device, dtype=w.dtype,
        )
        with torch.no_grad():
            conv.weight.copy_(w * self.mask)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv.requires_grad_(w.requires_grad)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight = torch.where(self.mask, self.weight, torch.zeros((), dtype=self.weight.dtype, device=self.weight.device))
        return F.conv2d(input, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, groups={self.groups}, bias={self.bias is not None}, sparsity={self.sparsity:.3f}"
        )


def _block_pair(block: int | tuple[int, int]) -> tuple[int, int]:
    bn, bk = (block, block) if isinstance(block, int) and not isinstance(block, bool) else tuple(block)
    for name, b in (("block_n", bn), ("block_k", bk)):
        if isinstance(b, bool) or not isinstance(b, int) or b not in BLOCK_SIZES:
            raise ValueError(f"BlockSparseLinear: {name} must be one of {BLOCK_SIZES}, got {b!r}")
    return bn, bk


class BlockSparseLinear(PackedLinear):
    """``y = x W^T + b`` with ``W`` stored as its kept ``block_n x block_k`` tiles (BSR).

    Buffers: ``values [nnz, block_n, block_k]``, ``row_ptr int32 [N / block_n + 1]``,
    ``col_idx int32 [nnz]`` (see :mod:`slimops.reference.sparse`), ``bias [N]`` or None.
    The kernel skips the tiles that are not stored, so the time falls with the
    density of kept tiles. The stored weights are buffers and take no gradient; the
    input does, so layers before this one can still train. ``weight`` is a
    :class:`~slimops.nn.packed.WeightSpec`; :meth:`to_dense` gives the dense weight.
    ``values`` and ``bias`` follow ``.half()`` / ``.to(dtype)`` among fp32, fp16 and bf16.
    """

    _stored = ("values", "row_ptr", "col_idx")
    _dense_method = "to_dense"
    _float_buffers = ("values", "bias")

    def __init__(
        self,
        values: torch.Tensor,
        row_ptr: torch.Tensor,
        col_idx: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
    ):
        super().__init__(in_features, (row_ptr.shape[0] - 1) * values.shape[1], values.dtype)
        self.block_size = (values.shape[1], values.shape[2])
        self.register_buffer("values", values)  # [nnz, block_n, block_k]
        self.register_buffer("row_ptr", row_ptr)  # int32 [N / block_n + 1]
        self.register_buffer("col_idx", col_idx)  # int32 [nnz]
        self.register_buffer("bias", bias)  # [N] or None

    @classmethod
    def from_dense(
        cls, linear: nn.Module, mask: torch.Tensor | None = None, block: int | tuple[int, int] = 64
    ) -> BlockSparseLinear:
        """Pack ``linear``'s weight (``⊙ mask`` when given, or its own mask for a ``MaskedLinear``).

        Args:
            linear: an ``nn.Linear`` or ``MaskedLinear``.
            mask: bool ``[out_features, in_features]``; without one, the all-zero tiles of the weight are skipped.
            block: tile size, one of 16, 32, 64, 128, or a ``(block_n, block_k)`` pair; it
                must divide ``out_features`` and ``in_features`` (no padding).
        """
        bn, bk = _block_pair(block)
        weight, bias, mask = _dense_parts(linear, mask, "BlockSparseLinear.from_dense")
        n, k = weight.shape
        if n % bn or k % bk:
            raise ValueError(
                f"BlockSparseLinear: block {bn}x{bk} must divide the weight [out_features, in_features] = [{n}, {k}]"
            )
        values, row_ptr, col_idx = slimops.ops.block_sparse_pack(weight.contiguous(), mask, bn, bk)
        return cls(values, row_ptr, col_idx, bias, k)

    @property
    def density(self) -> float:
        """The fraction of tiles that are stored."""
        tiles = (self.out_features // self.block_size[0]) * (self.in_features // self.block_size[1])
        return self.values.shape[0] / max(tiles, 1)

    def to_dense(self) -> torch.Tensor:
        """The dense ``[out_features, in_features]`` weight this module stands for."""
        return slimops.ops.block_sparse_to_dense(self.values, self.row_ptr, self.col_idx, self.in_features)

    def _kernel_dtype(self) -> torch.dtype:
        return self.values.dtype

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        return slimops.ops.block_sparse_linear(input, self.values, self.row_ptr, self.col_idx, self.bias)

    def extra_repr(self) -> str:
        bn, bk = self.block_size
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"block={bn}x{bk}, density={self.density:.3f}"
        )


class Sparse24Linear(PackedLinear):
    """``y = x W^T + b`` for a 2:4 weight (at most 2 non-zeros in every 4 consecutive inputs).

    Buffers: ``values [N, K / 2]`` (the kept weights), ``meta uint8`` (their
    positions, in the layout ``sparse24_compress`` makes for the kernel), ``bias [N]``
    or None. Half the weight bytes; on GPU it runs on the sparse tensor cores.
    ``weight`` is a :class:`~slimops.nn.packed.WeightSpec`; :meth:`to_dense` gives the
    dense weight. ``values`` and ``bias`` follow ``.half()`` / ``.to(dtype)`` among fp32,
    fp16 and bf16.
    """

    _stored = ("values", "meta")
    _dense_method = "to_dense"
    _float_buffers = ("values", "bias")

    def __init__(self, values: torch.Tensor, meta: torch.Tensor, bias: torch.Tensor | None):
        super().__init__(values.shape[1] * 2, values.shape[0], values.dtype)
        self.register_buffer("values", values)  # [N, K / 2]
        self.register_buffer("meta", meta)  # uint8, kernel layout
        self.register_buffer("bias", bias)  # [N] or None

    @classmethod
    def from_dense(cls, linear: nn.Module, mask: torch.Tensor | None = None) -> Sparse24Linear:
        """Compress ``linear``'s weight (``⊙ mask`` when given, or its own mask for a ``MaskedLinear``).

        Raises:
            ValueError (from ``sparse24_compress``): if the (masked) weight is not 2:4.
        """
        weight, bias, _ = _dense_parts(linear, mask, "Sparse24Linear.from_dense")
        values, meta = slimops.ops.sparse24_compress(weight.contiguous())
        return cls(values, meta, bias)

    def to_dense(self) -> torch.Tensor:
        """The dense ``[out_features, in_features]`` weight this module stands for."""
        return slimops.ops.sparse24_to_dense(self.values, self.meta)

    def _kernel_dtype(self) -> torch.dtype:
        return self.values.dtype

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        return slimops.ops.sparse24_linear(input, self.values, self.meta, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, 2:4"


def dense_linear(weight: torch.Tensor, bias: torch.Tensor | None, requires_grad: bool = False) -> nn.Linear:
    """An ``nn.Linear`` holding copies of ``weight [N, K]`` and ``bias``."""
    n, k = weight.shape
    out = nn.Linear(k, n, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
    return out.requires_grad_(requires_grad)


__all__ = ["BLOCK_SIZES", "BlockSparseLinear", "MaskedConv2d", "MaskedLinear", "Sparse24Linear", "dense_linear"]
