"""int8 replacements for ``nn.Conv2d`` (groups = 1): dynamic and static W8A8 through the int8 GEMM.

A convolution is a GEMM over patches: ``out[n, :, i, j] = W [Cout, kh*kw*Cin] @ patch(n, i, j)``.
The modules store ``W`` quantized per output channel, its columns in ``(kh, kw, Cin)`` order,
so that the patch rows of a channels-last input are contiguous runs of ``Cin`` values.

* **1x1, no padding** (ResNet's bottleneck projections and shortcuts): the input, subsampled by
  the stride, *is* the GEMM operand ``[N*H*W, Cin]``; :class:`Int8DynamicConv2d` runs
  ``slimops.ops.int8_dynamic_linear`` on it (one activation scale per pixel).
* **k x k**: the input is quantized first, with one scale per image (dynamic) or the calibrated
  scale (static), then unfolded in int8 (``as_strided`` over the zero-padded channels-last
  input, one int8 copy: a quarter of the bytes of a float im2col), then ``slimops.ops.int8_mm``
  multiplies it with exact int32 sums and a fused ``* a_scale * w_scale + bias`` epilogue.
  Zero padding is exact: 0.0 quantizes to 0.

The output is ``[N, Cout, Ho, Wo]`` in channels-last memory format (a view of the GEMM's
``[N, Ho, Wo, Cout]`` result), which the next int8 convolution reads without a copy.

Depthwise and other grouped convolutions are not converted (``Unsupported``, with the measured
reason: see :data:`DEPTHWISE_REASON`). Inputs get a gradient as with the int8 linears
(straight-through: ``dx`` is that of the float convolution with the dequantized weight); the
weights are buffers and get none.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops.conversion import Unsupported
from slimops.nn.packed import KERNEL_DTYPES, WeightSpec
from slimops.nn.quantized import _check_scales, _QuantizedLinear

# NOTE: measured in bench/conv_half_cpu.py (bench/results/conv-half-cpu-*.json, row "depthwise"):
# a depthwise convolution has no channel reduction, so it is no GEMM; it is memory bound, and an
# int8 version must still read the float input to quantize it (quantize_per_token alone costs
# 0.3-0.8x the fp32 depthwise conv at 1 thread) and write a float output. Built from existing ops
# (quantize, int8 patches, int32 sums) it ran 10-256x slower than fp32; no int8 depthwise kernel is written.
DEPTHWISE_REASON = (
    "depthwise convolution: no channel reduction, so no int8 GEMM; it is memory bound (quantizing its input "
    "alone costs 0.3-0.8x the fp32 conv; int8 from existing ops ran 10-256x slower: "
    "bench/results/conv-half-cpu-*.json), so it stays float"
)


def check_convertible_conv2d(conv: nn.Module) -> None:
    """Raise :class:`Unsupported`, with the reason, for an ``nn.Conv2d`` the int8 modules cannot replace."""
    if type(conv).forward is not nn.Conv2d.forward:
        raise Unsupported(f"{type(conv).__name__} overrides nn.Conv2d.forward")
    if conv.weight.dtype not in KERNEL_DTYPES:
        raise Unsupported(f"weight dtype {conv.weight.dtype}: slimops kernels take float32, float16 or bfloat16")
    if conv.padding_mode != "zeros":
        raise Unsupported(f"padding_mode={conv.padding_mode!r}: only zero padding is quantized exactly")
    if conv.groups != 1:
        if conv.groups == conv.in_channels and conv.weight.shape[1] == 1:
            raise Unsupported(DEPTHWISE_REASON)
        raise Unsupported(f"grouped convolution (groups={conv.groups}): only groups=1 is converted")
    if not torch.isfinite(conv.weight).all():
        raise Unsupported("weight holds inf or NaN values")


class _QuantizedConv2d(_QuantizedLinear):
    """Shared plumbing of the int8 convolutions: geometry, ``weight`` as a 4-D description,
    the int8 im2col, ``dequantize``.

    ``qweight`` is int8 ``[Cout, kh*kw*Cin]`` (columns in ``(kh, kw, Cin)`` order), ``weight_scale``
    fp32 ``[Cout, 1]``, ``bias`` fp32 ``[Cout]`` or None.
    """

    def __init__(self, qweight, weight_scale, bias, geometry: dict, compute_dtype: torch.dtype):
        super().__init__(qweight.shape[1], qweight.shape[0], bias, compute_dtype)
        self.in_channels = geometry["in_channels"]
        self.out_channels = qweight.shape[0]
        self.kernel_size = tuple(geometry["kernel_size"])
        self.stride = tuple(geometry["stride"])
        self.dilation = tuple(geometry["dilation"])
        self.padding = geometry["padding"]  # as nn.Conv2d had it (ints or 'same' / 'valid'), for repr
        self.pad = tuple(geometry["pad"])  # (left, right, top, bottom), what F.pad takes
        self.groups = 1
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", weight_scale)
        kh, kw = self.kernel_size
        self._pointwise = (kh, kw) == (1, 1) and not any(self.pad)

    @staticmethod
    def _geometry(conv: nn.Conv2d) -> dict:
        return {
            "in_channels": conv.in_channels,
            "kernel_size": conv.kernel_size,
            "stride": conv.stride,
            "dilation": conv.dilation,
            "padding": conv.padding,
            # nn.Conv2d's own (left, right, top, bottom): covers padding='same' with an even kernel too.
            "pad": conv._reversed_padding_repeated_twice,
        }

    @staticmethod
    def _quantize_weight(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.dtype]:
        check_convertible_conv2d(conv)
        w = conv.weight.detach()
        cout = w.shape[0]
        # [Cout, Cin, kh, kw] -> [Cout, kh, kw, Cin]: a patch row of a channels-last input.
        w2 = w.permute(0, 2, 3, 1).reshape(cout, -1)
        q, scale, _ = slimops.ops.quantize_per_channel(w2.contiguous(), 0, True)
        bias = None if conv.bias is None else conv.bias.detach().float().clone()
        return q, _check_scales(scale, "weight"), bias, w.dtype

    @property
    def weight(self) -> WeightSpec:
        kh, kw = self.kernel_size
        return WeightSpec(
            (self.out_channels, self.in_channels, kh, kw),
            self.compute_dtype,
            self.qweight.device,
            type(self).__name__,
            self._stored,
            self._dense_method,
        )

    def dequantize(self) -> torch.Tensor:
        """The float ``[Cout, Cin, kh, kw]`` weight the layer multiplies by, in its compute dtype."""
        kh, kw = self.kernel_size
        w = self.qweight.float() * self.weight_scale.reshape(-1, 1)
        return w.reshape(self.out_channels, kh, kw, self.in_channels).permute(0, 3, 1, 2).to(self.compute_dtype)

    def _check_input(self, x: torch.Tensor) -> None:
        # NOTE: plain raises, not torch._check: shapes are static here, and torch.compile cannot
        # trace a torch._check message that closes over the input.
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__}: input must be [N, {self.in_channels}, H, W], got shape {list(x.shape)}"
            )

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        left, right, top, bottom = self.pad
        return (h + top + bottom - dh * (kh - 1) - 1) // sh + 1, (w + left + right - dw * (kw - 1) - 1) // sw + 1

    def _patches(self, q: torch.Tensor) -> torch.Tensor:
        """int8 channels-last ``[N, H, W, Cin]`` -> the GEMM operand ``[N*Ho*Wo, kh*kw*Cin]`` (one int8 copy)."""
        n, h, w, c = q.shape
        ho, wo = self._out_hw(h, w)
        if ho <= 0 or wo <= 0:
            raise ValueError(
                f"{type(self).__name__}: input {h}x{w} is smaller than the kernel {self.kernel_size} "
                f"(dilation {self.dilation}, padding {self.padding})"
            )
        if any(self.pad):
            left, right, top, bottom = self.pad
            q = F.pad(q, (0, 0, left, right, top, bottom))  # zeros: exactly float 0
        q = q.contiguous()
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        sn, sy, sx, _ = q.stride()
        view = q.as_strided((n, ho, wo, kh, kw, c), (sn, sy * sh, sx * sw, sy * dh, sx * dw, 1))
        return view.reshape(n * ho * wo, kh * kw * c)

    def _gemm(self, q: torch.Tensor, image_scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """int8 ``[N, H, W, Cin]`` with one activation scale per image ``[N]`` -> ``[N, Cout, Ho, Wo]``."""
        n, h, w, _ = q.shape
        ho, wo = self._out_hw(h, w)
        a = q[:, :: self.stride[0], :: self.stride[1]].reshape(n * ho * wo, -1) if self._pointwise else self._patches(q)
        a_scale = image_scale.reshape(n, 1).expand(n, ho * wo).reshape(-1)
        out = slimops.ops.int8_mm(a, self.qweight, a_scale, self.weight_scale, self.bias, dtype)
        return out.reshape(n, ho, wo, self.out_channels).permute(0, 3, 1, 2)

    def _input_grad(self, input: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out``, differentiable in ``input`` when it needs a gradient (int8_mm has no autograd).

        Straight-through, as the int8 linears: ``dx`` is that of the float convolution with the
        dequantized weight, built in backward only (the forward pays nothing).
        """
        if not (torch.is_grad_enabled() and input.requires_grad):
            return out
        geometry = (self.pad, self.stride, self.dilation, self.out_channels, self.kernel_size, self.in_channels)
        return _ConvInputGrad.apply(input, out, self.qweight, self.weight_scale, geometry)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}"
        )


class _ConvInputGrad(torch.autograd.Function):
    """Identity on ``out`` (the int8 result); ``dx = conv2d_input(dy, dequantized weight)``."""

    @staticmethod
    def forward(x, out, qweight, weight_scale, geometry):
        return out.view_as(out)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, qweight, weight_scale, geometry = inputs
        ctx.save_for_backward(qweight, weight_scale)
        ctx.x_shape, ctx.x_dtype, ctx.geometry = x.shape, x.dtype, geometry

    @staticmethod
    def backward(ctx, grad):
        qweight, weight_scale = ctx.saved_tensors
        (left, right, top, bottom), stride, dilation, cout, (kh, kw), cin = ctx.geometry
        w = (qweight.float() * weight_scale.reshape(-1, 1)).reshape(cout, kh, kw, cin).permute(0, 3, 1, 2)
        n, _, h, wd = ctx.x_shape
        # The gradient of the zero-padded input, then its interior.
        padded = (n, cin, h + top + bottom, wd + left + right)
        g = torch.nn.grad.conv2d_input(padded, w.to(grad.dtype), grad, stride, 0, dilation)
        return g[:, :, top : top + h, left : left + wd].to(ctx.x_dtype), None, None, None, None


class Int8DynamicConv2d(_QuantizedConv2d):
    """W8A8 ``nn.Conv2d`` (groups = 1): int8 weight, one symmetric scale per output channel;
    activations quantized at run time, one scale per pixel for 1x1 convolutions without
    padding (``int8_dynamic_linear``), one per image otherwise (``quantize_per_token`` over the
    image, then ``int8_mm`` on the int8 patches). Returns the input's dtype, channels-last.

    An image holding inf or NaN comes out NaN (its scale is inf), as in ``quantize_per_token``.
    """

    @classmethod
    def from_float(cls, conv: nn.Conv2d) -> Int8DynamicConv2d:
        q, scale, bias, dtype = cls._quantize_weight(conv)
        return cls(q, scale, bias, cls._geometry(conv), dtype)

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        x = input.permute(0, 2, 3, 1)  # NHWC view; contiguous when the input is channels-last
        if self._pointwise:
            x = x[:, :: self.stride[0], :: self.stride[1]]
            out = slimops.ops.int8_dynamic_linear(x, self.qweight, self.weight_scale, self.bias)
            return out.permute(0, 3, 1, 2)
        n, h, w, c = x.shape
        q, scale = slimops.ops.quantize_per_token(x.detach().reshape(n, h * w * c))
        return self._input_grad(input, self._gemm(q.reshape(n, h, w, c), scale, input.dtype))


class Int8StaticConv2d(_QuantizedConv2d):
    """W8A8 ``nn.Conv2d`` (groups = 1) with one activation scale fixed by calibration
    (:func:`slimops.prepare`): ``x`` is quantized as ``clamp(round_half_even(x / input_scale), -127, 127)``;
    values beyond the calibrated range saturate. An image holding inf or NaN comes out NaN.
    """

    _fixed_dtype_buffers = ("qweight", "weight_scale", "bias", "input_scale")

    def __init__(self, qweight, weight_scale, bias, input_scale, geometry, compute_dtype=torch.float32):
        super().__init__(qweight, weight_scale, bias, geometry, compute_dtype)
        self.register_buffer("input_scale", input_scale)  # fp32 [] (per tensor)

    @classmethod
    def from_float(cls, conv: nn.Module, input_scale: float | torch.Tensor) -> Int8StaticConv2d:
        """Args:
            conv: the float layer (an ``nn.Conv2d`` or a calibrated :class:`ObservedConv2d`).
            input_scale: the activation scale, ``amax / 127``; positive and finite.
        """
        q, scale, bias, dtype = cls._quantize_weight(conv)
        s = torch.as_tensor(input_scale, dtype=torch.float32).detach().reshape(()).to(q.device).clone()
        if not (torch.isfinite(s) and s > 0):
            raise ValueError(f"Int8StaticConv2d: input_scale must be positive and finite, got {s.item()}")
        return cls(q, scale, bias, s, cls._geometry(conv), dtype)

    def _linear(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input(input)
        x = input.detach().permute(0, 2, 3, 1)
        n = x.shape[0]
        bad = ~torch.isfinite(x).reshape(n, -1).all(dim=1)  # [N]
        v = torch.round(x.float() / self.input_scale)  # torch.round: half to even
        q = torch.where(bad.reshape(n, 1, 1, 1), 0.0, v).clamp(-127, 127).to(torch.int8)
        image_scale = torch.where(bad, float("inf"), self.input_scale)
        return self._input_grad(input, self._gemm(q, image_scale, input.dtype))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, input_scale={self.input_scale.item():.6g}"


class ObservedConv2d(nn.Conv2d):
    """A float ``nn.Conv2d`` that shows every input to an observer (calibration).

    Made by :func:`slimops.prepare`; ``slimops.convert`` freezes it into
    :class:`Int8StaticConv2d`. It shares the original layer's parameters, so the
    ``weight``/``bias`` keys of ``state_dict`` are unchanged.
    """

    @classmethod
    def from_float(cls, conv: nn.Conv2d, observer: nn.Module) -> ObservedConv2d:
        check_convertible_conv2d(conv)  # refuse what Int8StaticConv2d will refuse, before calibration
        # Built on the meta device (no allocation), then given the original's parameters.
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
        )
        new.weight, new.bias = conv.weight, conv.bias
        new.observer = observer.to(conv.weight.device)
        new.register_forward_pre_hook(_observe_input, with_kwargs=True)
        return new


def _observe_input(module: ObservedConv2d, args: tuple, kwargs: dict) -> None:
    module.observer(args[0] if args else kwargs["input"])
