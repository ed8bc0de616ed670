"""``CodebookWeightOnlyLinear``: W4A16 with a non-uniform 16-entry codebook (NF4 or k-means).

Stored format (:mod:`slimops.reference.codebook4`): ``qweight`` uint8 ``[N, ceil(K / 32) * 16]``
(4-bit indices in int4's nibble layout), ``weight_codebook`` fp32 ``[1, 16]`` (one table for the
layer) or ``[N, 16]`` (one per output row), and ``weight_scale`` fp32 ``[N, ceil(K / group_size)]``,
each block's absmax: ``w = codebook[c, q] * scale``.

Codebooks:

* ``"nf4"``: the 4-bit NormalFloat table of QLoRA (Dettmers et al. 2023, section 3): quantiles of
  a standard normal, 8 on the positive side and 7 on the negative side plus an exact zero, scaled
  to [-1, 1]. Built here from ``torch.special.ndtri``; no fit, no data.
* ``"kmeans"``: 16 centres fitted by Lloyd's algorithm on the weights normalised by their block
  absmax (so NF4 and k-means share the kernel). Each value is weighted by its block's scale
  squared, so the fit minimises the squared error of the weight itself, not of the normalised
  value. In one dimension the centres stay sorted and the nearest centre is a ``searchsorted`` on
  the midpoints, so one iteration is a sort-free pass over the weight (vectorised; one table for
  the layer, or one per output row with the same code). Init: the NF4 table (deterministic, no
  random seed). A Lloyd iteration never raises the (weighted) error, so the fit is never worse than
  NF4 on the weight it is fitted to. (Quantile init was tried first: after 10 iterations it was
  still worse than NF4 on normal data, the centres spreading out only slowly from the dense middle.)
  :data:`KMEANS_ITERS` iterations; measured time on 4096x11008: README (codebook section).
"""

from __future__ import annotations

import torch
from torch import nn

import slimops
from slimops.nn.quantized import _QuantizedLinear, _check_scales, _float_bias, _float_weight
from slimops.ops.codebook4 import _codebook4_dense_weight
from slimops.reference.int4 import CHUNK, pack_int4

CODEBOOKS = ("nf4", "kmeans")
KMEANS_SCOPES = ("layer", "row")
KMEANS_ITERS = 10
# QLoRA's offset: the outermost quantile level, (1 - 1/(2*15) + 1 - 1/(2*16)) / 2, so +-1 are not +-inf.
NF4_OFFSET = 0.9677083


def nf4_codebook() -> torch.Tensor:
    """fp32 ``[16]``: the NF4 table, sorted, with an exact 0 and the ends at -1 and 1."""
    positive = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    table = torch.cat((positive, torch.zeros(1, dtype=torch.float64), negative)).sort().values
    return (table / table.abs().max()).float()


def _blocks(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normalised [N, G * group_size], scale [N, G])``: each block divided by its absmax. The last
    block is padded with copies of its last weight (same absmax; the padded inputs are dropped)."""
    n, k = w.shape
    groups = -(-k // group_size)
    padded = torch.nn.functional.pad(w.float().unsqueeze(0), (0, groups * group_size - k), mode="replicate")[0]
    wg = padded.reshape(n, groups, group_size)
    scale = wg.abs().amax(-1, keepdim=True)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero block: any scale, indices of 0
    return (wg / scale).reshape(n, -1), scale.reshape(n, groups)


def _nearest(u: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """int64 indices of the nearest entry of ``table`` (sorted, ``[R, 16]``) for each value of ``u`` ``[R, L]``."""
    mids = (table[:, 1:] + table[:, :-1]) / 2
    return torch.searchsorted(mids.contiguous(), u.contiguous())


def fit_kmeans(
    u: torch.Tensor, importance: torch.Tensor | None = None, iters: int = KMEANS_ITERS
) -> torch.Tensor:
    """16 sorted centres per row of ``u`` ``[R, L]`` by Lloyd's algorithm (weighted by ``importance``).

    Args:
        u: fp32 ``[R, L]``: the values to fit, one table per row (R = 1 for a layer-wide table).
        importance: fp32 ``[R, L]`` non-negative weights of the squared errors, or None (all 1).
        iters: Lloyd iterations (assignment + weighted mean) from the NF4 table; a centre left without
            values stays put.

    Returns:
        fp32 ``[R, 16]``, sorted along each row.
    """
    rows = u.shape[0]
    centres = nf4_codebook().to(u.device).expand(rows, 16).contiguous()
    wt = torch.ones_like(u) if importance is None else importance
    offsets = (torch.arange(rows, device=u.device) * 16)[:, None]
    for _ in range(iters):
        idx = (_nearest(u, centres) + offsets).reshape(-1)
        mass = torch.bincount(idx, wt.reshape(-1), minlength=rows * 16).reshape(rows, 16)
        total = torch.bincount(idx, (wt * u).reshape(-1), minlength=rows * 16).reshape(rows, 16)
        centres = torch.where(mass > 0, total / mass.clamp_min(1e-30), centres).sort(dim=1).values
    return centres


def quantize_codebook4(
    w: torch.Tensor, group_size: int, codebook: str = "nf4", kmeans: str = "layer", iters: int = KMEANS_ITERS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float ``[N, K]`` weight -> ``(qweight, codebook, scale)`` in the codebook4 format.

    Args:
        w: float ``[N, K]`` (finite).
        group_size: inputs per absmax block; a positive multiple of 32.
        codebook: "nf4" (fixed table) or "kmeans" (fitted on this weight).
        kmeans: "layer" (one table, ``[1, 16]``) or "row" (one per output row, ``[N, 16]``); k-means only.
        iters: Lloyd iterations (k-means only).

    Returns:
        uint8 ``[N, ceil(K / 32) * 16]``, fp32 ``[1 or N, 16]``, fp32 ``[N, ceil(K / group_size)]``.
    """
    n, k = w.shape
    u, scale = _blocks(w, group_size)
    u = u[:, :k]  # the padded copies stay out of the fit
    if codebook == "nf4":
        table = nf4_codebook().to(w.device)[None, :]
    else:
        # the weight's squared error is scale^2 * (u - centre)^2: weight the fit by scale^2
        importance = scale.square().repeat_interleave(group_size, dim=1)[:, :k]
        if kmeans == "layer":
            table = fit_kmeans(u.reshape(1, -1), importance.reshape(1, -1), iters)
        else:
            table = fit_kmeans(u, importance, iters)
    q = _nearest(u.reshape(table.shape[0], -1), table).reshape(n, k)
    return pack_int4(q.to(torch.uint8)), table.contiguous(), scale


class CodebookWeightOnlyLinear(_QuantizedLinear):
    """W4A16 with a 16-entry codebook per layer or per output row and an absmax scale per block of
    ``group_size`` inputs; ``y = weight_codebook4_linear(x, qweight, weight_codebook, weight_scale,
    group_size, bias)`` in ``x.dtype``.
    """

    _fixed_dtype_buffers = ("qweight", "weight_codebook", "weight_scale", "bias")

    def __init__(
        self,
        qweight: torch.Tensor,
        weight_codebook: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
        group_size: int,
        codebook: str = "nf4",
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(in_features, qweight.shape[0], bias, compute_dtype)
        self.group_size = group_size
        self.codebook = codebook
        self.register_buffer("qweight", qweight)  # uint8 [N, ceil(K / 32) * 16]
        self.register_buffer("weight_codebook", weight_codebook)  # fp32 [1 or N, 16]
        self.register_buffer("weight_scale", weight_scale)  # fp32 [N, ceil(K / group_size)]

    @classmethod
    def from_float(
        cls,
        linear: nn.Linear,
        group_size: int = 64,
        codebook: str = "nf4",
        kmeans: str = "layer",
        iters: int = KMEANS_ITERS,
    ) -> CodebookWeightOnlyLinear:
        """Args:
        linear: the float layer (any ``in_features``: the last block may be shorter).
        group_size: inputs per absmax block; a positive multiple of 32.
        codebook: "nf4" or "kmeans".
        kmeans: "layer" or "row" (one table per output row); k-means only.
        iters: Lloyd iterations; k-means only.
        """
        w = _float_weight(linear)
        if group_size % CHUNK or group_size <= 0:
            raise ValueError(
                f"CodebookWeightOnlyLinear: group_size must be a positive multiple of 32, got {group_size}"
            )
        if codebook not in CODEBOOKS:
            raise ValueError(f"CodebookWeightOnlyLinear: codebook must be one of {CODEBOOKS}, got {codebook!r}")
        if kmeans not in KMEANS_SCOPES:
            raise ValueError(f"CodebookWeightOnlyLinear: kmeans must be one of {KMEANS_SCOPES}, got {kmeans!r}")
        qweight, table, scale = quantize_codebook4(w, group_size, codebook, kmeans, iters)
        kind = codebook if codebook == "nf4" else f"kmeans-{kmeans}"
        return cls(qweight, table, _check_scales(scale, "weight"), _float_bias(linear), w.shape[1], group_size, kind,
                   w.dtype)

    def dequantize(self) -> torch.Tensor:
        dense = _codebook4_dense_weight(self.group_size)
        return dense(self.in_features, self.qweight, self.weight_codebook, self.weight_scale).to(self.compute_dtype)

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        return slimops.ops.weight_codebook4_linear(
            input, self.qweight, self.weight_codebook, self.weight_scale, self.group_size, self.bias
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}, codebook={self.codebook}"
