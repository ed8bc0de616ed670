"""Quantized replacements for ``nn.Linear``: int8 W8A8 (dynamic and static), int8 weight-only, fp8.

Every module stores its weight already quantized, as buffers (``qweight``: int8 or
float8_e4m3fn, with fp32 ``weight_scale``), so ``state_dict()`` holds the small data and
never the float original. ``weight`` describes the layer for model code that reads it
(shape, compute dtype, device: see :mod:`slimops.nn.packed`); ``dequantize()`` gives the
float weight. The forward is one call into :mod:`slimops.ops` (two for the static
module: its activation quantization is plain torch ops), with no data-dependent Python,
so it runs under ``torch.compile(fullgraph=True)`` and CUDA graphs. Build them with
``from_float`` or through ``slimops.convert``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops.conversion import Unsupported
from slimops.nn._convertible import check_convertible_linear
from slimops.nn.packed import KERNEL_DTYPES, PackedLinear
from slimops.ops._autograd import linear_with_input_grad
from slimops.ops.quant_mm import _int8_dense_weight, _scaled_dense_weight
# cuBLAS fp8 GEMMs need K and N to be multiples of 16 (fp8_dynamic_linear checks it on every device).
_FP8_ALIGN = 16


def _float_weight(linear: nn.Module) -> torch.Tensor:
    """The weight of a convertible ``nn.Linear`` in a dtype the quantizers take; raises Unsupported otherwise."""
    check_convertible_linear(linear)
    w = linear.weight.detach()
    if w.dtype not in KERNEL_DTYPES:  # float64, float8 weights: quantize from fp32
        w = w.float()
    if not torch.isfinite(w).all():
        raise Unsupported("weight holds inf or NaN values")
    return w


def _float_bias(linear: nn.Module) -> torch.Tensor | None:
    # fp32 whatever the layer's dtype: the kernels add it in their fp32 epilogue.
    return None if linear.bias is None else linear.bias.detach().float().clone()


def _check_scales(scale: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(scale).all():
        raise Unsupported(f"{what} scales are not finite (the weight's range overflows {scale.dtype})")
    return scale


class _QuantizedLinear(PackedLinear):
    """Shared plumbing: feature counts, the fp32 bias buffer, the stored format, ``dequantize``.

    ``weight`` is a :class:`~slimops.nn.packed.WeightSpec` (shape, compute dtype, device);
    the quantized weight itself is the ``qweight`` buffer, with ``weight_scale``.
    """

    _stored = ("qweight", "weight_scale")
    # The format: ``model.half()`` / ``.double()`` move these across devices but never cast them
    # (nn.Module would cast fp8 weights, fp32 scales and the bias the fp32 epilogue adds).
    _fixed_dtype_buffers: tuple[str, ...] = ("qweight", "weight_scale", "bias")

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None, compute_dtype: torch.dtype):
        super().__init__(in_features, out_features, compute_dtype)
        self.register_buffer("bias", bias)  # fp32 [out_features] (padded for fp8) or None

    def dequantize(self) -> torch.Tensor:
        """The float ``[out_features, in_features]`` weight the layer multiplies by, in its compute dtype."""
        w = _scaled_dense_weight(self.qweight.shape[1], self.qweight, self.weight_scale)
        return w[: self.out_features, : self.in_features].to(self.compute_dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8DynamicLinear(_QuantizedLinear):
    """W8A8: int8 weight with one symmetric scale per output channel; activations quantized
    per token at run time. ``y = int8_dynamic_linear(x, weight, weight_scale, bias)`` in ``x.dtype``.
    """

    def __init__(
        self,
        qweight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(qweight.shape[1], qweight.shape[0], bias, compute_dtype)
        self.register_buffer("qweight", qweight)  # int8 [N, K]
        self.register_buffer("weight_scale", weight_scale)  # fp32 [N, 1]

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8DynamicLinear:
        w = _float_weight(linear)
        q, scale, _ = slimops.ops.quantize_per_channel(w, 0, True)
        return cls(q, _check_scales(scale, "weight"), _float_bias(linear), w.dtype)

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        return slimops.ops.int8_dynamic_linear(input, self.qweight, self.weight_scale, self.bias)

    def _linear_w8a16(self, input: torch.Tensor) -> torch.Tensor:
        """The same int8 weight times the unrounded activation: where routing says W8A8 is slower."""
        return slimops.ops.weight_int8_linear(input, self.qweight, self.weight_scale, self.bias)


class Int8WeightOnlyLinear(_QuantizedLinear):
    """W8A16: int8 weight with a symmetric scale per output channel or per group of
    ``group_size`` consecutive inputs; the matmul runs in ``x.dtype``.

    Scales are ``[N, 1]`` (per channel) or ``[N, K / group_size]``.
    """

    def __init__(
        self,
        qweight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        group_size: int | None,
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(qweight.shape[1], qweight.shape[0], bias, compute_dtype)
        self.group_size = group_size
        self.register_buffer("qweight", qweight)  # int8 [N, K]
        self.register_buffer("weight_scale", weight_scale)  # fp32 [N, 1] or [N, K / group_size]

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int | None = None) -> Int8WeightOnlyLinear:
        """Args:
            linear: the float layer.
            group_size: ``None`` for one scale per output channel, else the number of
                consecutive inputs sharing a scale; must divide ``in_features``.
        """
        w = _float_weight(linear)  # what cannot be converted at all is skipped before group_size is judged
        n, k = w.shape
        if group_size is not None and (group_size <= 0 or k % group_size != 0):
            raise ValueError(
                f"Int8WeightOnlyLinear: group_size={group_size} must be a positive divisor of "
                f"in_features K={k}"
            )
        if group_size is None or group_size == k:
            q, scale, _ = slimops.ops.quantize_per_channel(w, 0, True)
        else:
            # Each group is a row of the [N * K / gs, gs] view: per-token quantization does it.
            q, scale = slimops.ops.quantize_per_token(w.reshape(-1, group_size))
            q, scale = q.reshape(n, k), scale.reshape(n, k // group_size)
        return cls(q, _check_scales(scale, "weight"), _float_bias(linear), group_size, w.dtype)

    @property
    def route_name(self) -> str:
        return "Int8WeightOnlyLinear" + ("" if self.weight_scale.shape[-1] == 1 else "/grouped")

    def dequantize(self) -> torch.Tensor:
        return _int8_dense_weight(self.in_features, self.qweight, self.weight_scale).to(self.compute_dtype)

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        # W8A16 computes in the input's dtype: a float64 input runs in float32 (see PackedLinear).
        return slimops.ops.weight_int8_linear(input, self.qweight, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


def _pad_to(n: int, multiple: int) -> int:
    return -n % multiple


class Fp8DynamicLinear(_QuantizedLinear):
    """fp8 W8A8: float8_e4m3fn weight with one fp32 scale per output row; activations
    quantized per row to e4m3 at run time.

    NOTE: the fp8 GEMM needs K and N to be multiples of 16. Other shapes are
    zero-padded once, in :meth:`from_float`: the stored ``weight`` is
    ``[N_pad, K_pad]`` (zero rows get scale 1, zero columns add nothing), ``bias``
    is padded to ``N_pad``. ``forward`` pads ``x``'s last dimension with zeros only
    when K is unaligned (zeros change neither a row's amax nor its dot products)
    and returns ``out[..., :N]``, a view, when N is unaligned.
    """

    def __init__(
        self,
        qweight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
        out_features: int,
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(in_features, out_features, bias, compute_dtype)
        self.register_buffer("qweight", qweight)  # float8_e4m3fn [N_pad, K_pad]
        self.register_buffer("weight_scale", weight_scale)  # fp32 [N_pad, 1]
        self._k_pad = qweight.shape[1] - in_features
        self._n_pad = qweight.shape[0] - out_features

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Fp8DynamicLinear:
        w = _float_weight(linear)
        n, k = w.shape
        bias = _float_bias(linear)
        n_pad, k_pad = _pad_to(n, _FP8_ALIGN), _pad_to(k, _FP8_ALIGN)
        if n_pad or k_pad:
            w = F.pad(w, (0, k_pad, 0, n_pad))
            if bias is not None:
                bias = F.pad(bias, (0, n_pad))
        q, scale = slimops.ops.quantize_fp8_per_row(w)
        return cls(q, _check_scales(scale, "weight"), bias, k, n, w.dtype)

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        if self._k_pad:  # a constant of the module, not of the data
            input = F.pad(input, (0, self._k_pad))
        out = slimops.ops.fp8_dynamic_linear(input, self.qweight, self.weight_scale, self.bias)
        return out[..., : self.out_features] if self._n_pad else out

    def _linear_fp8_weight_only(self, input: torch.Tensor) -> torch.Tensor:
        """Weight-only fp8 for decode (routing path ``"fp8_weight_only"``, in no default rule yet):
        the e4m3 weight times the unrounded fp16/bf16 activation, fp32 accumulation. Eager only:
        ``slimops._C._fp8_weight_only_linear`` is not an op (the lead wires one when measured)."""
        fn = getattr(slimops._C, "_fp8_weight_only_linear", None)
        if fn is None:
            raise RuntimeError("Fp8DynamicLinear: the fp8_weight_only path needs slimops built with CUDA kernels")
        if self._k_pad:
            input = F.pad(input, (0, self._k_pad))
        out = fn(input, self.qweight, self.weight_scale, self.bias)
        return out[..., : self.out_features] if self._n_pad else out


class Int8StaticLinear(_QuantizedLinear):
    """W8A8 with a fixed activation scale: int8 per-channel weight, and one symmetric
    per-tensor activation scale found by calibration (see :func:`slimops.prepare`).

    ``x`` is quantized as ``clamp(round_half_even(x / input_scale), -127, 127)``; values
    beyond the calibrated range saturate. A row of ``x`` holding inf or NaN comes out NaN.
    The input gradient treats the activation rounding as identity (straight-through, as
    the dynamic modules do): ``dx = dy @ dequantize()``.
    """

    _fixed_dtype_buffers = ("qweight", "weight_scale", "bias", "input_scale")

    def __init__(
        self,
        qweight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        input_scale: torch.Tensor,
        compute_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(qweight.shape[1], qweight.shape[0], bias, compute_dtype)
        self.register_buffer("qweight", qweight)  # int8 [N, K]
        self.register_buffer("weight_scale", weight_scale)  # fp32 [N, 1]
        self.register_buffer("input_scale", input_scale)  # fp32 [] (per tensor)

    @classmethod
    def from_float(cls, linear: nn.Module, input_scale: float | torch.Tensor) -> Int8StaticLinear:
        """Args:
            linear: the float layer (an ``nn.Linear`` or a calibrated ``ObservedLinear``).
            input_scale: the activation scale, ``amax / 127``; positive and finite.
        """
        w = _float_weight(linear)
        s = torch.as_tensor(input_scale, dtype=torch.float32).detach().reshape(()).to(w.device).clone()
        if not (torch.isfinite(s) and s > 0):
            raise ValueError(f"Int8StaticLinear: input_scale must be positive and finite, got {s.item()}")
        q, scale, _ = slimops.ops.quantize_per_channel(w, 0, True)
        return cls(q, _check_scales(scale, "weight"), _float_bias(linear), s, w.dtype)

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        return linear_with_input_grad(
            _int8_static_linear, _static_dense_weight, input, (self.qweight, self.weight_scale, self.input_scale), self.bias
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, input_scale={self.input_scale.item():.6g}"


def _int8_static_linear(
    x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    # A row holding inf/NaN gets q = 0 and scale inf, so it comes out NaN, as in quantize_per_token.
    bad = ~torch.isfinite(x2).all(dim=-1, keepdim=True)
    v = torch.round(x2.float() / input_scale)  # torch.round: half to even
    q = torch.where(bad, 0.0, v).clamp(-127, 127).to(torch.int8)
    a_scale = torch.where(bad, float("inf"), input_scale)
    out = slimops.ops.int8_mm(q, qweight, a_scale, weight_scale, bias, x.dtype)
    return out.reshape(*x.shape[:-1], qweight.shape[0])


def _static_dense_weight(k: int, qweight: torch.Tensor, weight_scale: torch.Tensor, input_scale: torch.Tensor):
    return _scaled_dense_weight(k, qweight, weight_scale)  # the activation scale does not enter dx


class ObservedLinear(nn.Module):
    """A float ``nn.Linear`` that shows every input to an observer (calibration).

    Made by :func:`slimops.prepare`; ``slimops.convert`` freezes it into
    :class:`Int8StaticLinear`. It shares the original layer's parameters, so the
    ``weight``/``bias`` keys of ``state_dict`` are unchanged.

    NOTE: the observer runs as a forward pre-hook, not inside ``forward``: PyTorch's
    ``nn.TransformerEncoderLayer`` inference fast path reads ``linear1.weight`` and never
    calls the layer, unless a module in it has hooks. So calibration sees those layers too.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, observer: nn.Module):
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.observer = observer
        self.register_forward_pre_hook(_observe_input, with_kwargs=True)

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_float(cls, linear: nn.Linear, observer: nn.Module) -> ObservedLinear:
        _float_weight(linear)  # refuse what Int8StaticLinear will refuse, before calibration
        return cls(linear.weight, linear.bias, observer.to(linear.weight.device))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _observe_input(module: ObservedLinear, args: tuple, kwargs: dict) -> None:
    module.observer(args[0] if args else kwargs["input"])
