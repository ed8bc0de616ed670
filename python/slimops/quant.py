"""Quantization configs for ``slimops.convert``, calibration observers, and ``slimops.prepare``.

Half precision, dynamic and weight-only schemes need nothing but the float model::

    slimops.convert(model, slimops.Int8DynamicConfig())

Static W8A8 fixes the activation scale ahead of time, from calibration data::

    config = slimops.Int8StaticConfig(observer=slimops.PercentileObserver(99.99))
    slimops.prepare(model, config)      # nn.Linear -> ObservedLinear
    for batch in calibration_batches:
        model(batch)
    slimops.convert(model, config)      # ObservedLinear -> Int8StaticLinear
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from slimops.conversion import Config, FilterFn, convert, register_handler
from slimops.nn.half_linear import COMPUTE_MODES, HalfLinear
from slimops.nn.quantized_conv import Int8DynamicConv2d, Int8StaticConv2d, ObservedConv2d
from slimops.nn.quantized import (
    Fp8DynamicLinear,
    Int8DynamicLinear,
    Int8StaticLinear,
    Int8WeightOnlyLinear,
    ObservedLinear,
)

# --------------------------------------------------------------------------- observers


class Observer(nn.Module):
    """Base class: watches activations and gives one symmetric int8 scale for the whole tensor.

    Calling the observer records a batch and returns it unchanged; :meth:`scale`
    returns ``amax / 127`` (fp32, 0-d), where ``amax`` is the subclass's estimate
    of the activations' absolute range. Its state is made of buffers.
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("num_batches", torch.zeros((), dtype=torch.int64))

    def reset(self) -> None:
        """Forget everything observed."""
        self.num_batches.zero_()

    def _observe(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _amax(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nn.TransformerEncoder packs a padded batch into a nested tensor: observe its real tokens.
        v = torch.cat([t.reshape(-1) for t in x.unbind()]) if x.is_nested else x
        if v.numel() > 0:
            self._observe(v.detach().float())
            self.num_batches += 1
        return x

    def scale(self) -> torch.Tensor:
        """The symmetric int8 scale, ``amax / 127``; 1 if only zeros were seen.

        Raises:
            ValueError: if nothing was observed, or the observed values were not finite.
        """
        if int(self.num_batches) == 0:
            raise ValueError(
                f"{type(self).__name__} saw no data: run calibration batches through the prepared model "
                "before slimops.convert; a layer they never reach (an unused head, an unrouted expert) "
                "can be left out with filter_fn, or given data that reaches it"
            )
        amax = self._amax().float()
        if not torch.isfinite(amax):
            raise ValueError(f"{type(self).__name__} observed inf or NaN activations (amax = {amax.item()})")
        scale = amax / 127.0
        return torch.where(scale == 0, torch.ones_like(scale), scale)

    def fresh(self) -> Observer:
        """An independent copy with nothing observed (the config's observer is a template)."""
        obs = copy.deepcopy(self)
        obs.reset()
        return obs


class MinMaxObserver(Observer):
    """``amax = max(|min|, |max|)`` over every observed value."""

    def __init__(self):
        super().__init__()
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def reset(self) -> None:
        super().reset()
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x)
        self.min_val.copy_(torch.minimum(self.min_val, lo))
        self.max_val.copy_(torch.maximum(self.max_val, hi))

    def _amax(self) -> torch.Tensor:
        return torch.maximum(self.min_val.abs(), self.max_val.abs())


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Exponential moving average of each batch's min and max: ``v += momentum * (batch - v)``.

    Args:
        momentum: weight of the newest batch, in (0, 1]; 1 keeps only the last batch.
    """

    def __init__(self, momentum: float = 0.01):
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 < momentum <= 1:
            raise ValueError(f"MovingAverageMinMaxObserver: momentum must be in (0, 1], got {momentum!r}")
        super().__init__()
        self.momentum = float(momentum)

    def _observe(self, x: torch.Tensor) -> None:
        lo, hi = torch.aminmax(x)
        first = self.num_batches == 0  # the first batch sets the range (tensor op: no host sync)
        self.min_val.copy_(torch.where(first, lo, self.min_val + self.momentum * (lo - self.min_val)))
        self.max_val.copy_(torch.where(first, hi, self.max_val + self.momentum * (hi - self.max_val)))

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


class PercentileObserver(Observer):
    """``amax`` = the ``p``-th percentile of ``|x|``, averaged over the observed batches.

    Memory stays bounded: each batch contributes its own percentile, computed on
    at most ``max_samples`` of its values (drawn uniformly, reproducibly), and
    only the running mean is kept.

    Args:
        p: the percentile, in (0, 100]; 100 is the batch's amax.
        max_samples: values per batch that enter ``torch.quantile``.
        seed: seed of the sampling.
    """

    def __init__(self, p: float = 99.99, max_samples: int = 1 << 18, seed: int = 0):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 100:
            raise ValueError(f"PercentileObserver: p must be in (0, 100], got {p!r}")
        if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples <= 0:
            raise ValueError(f"PercentileObserver: max_samples must be a positive int, got {max_samples!r}")
        super().__init__()
        self.p = float(p)
        self.max_samples = max_samples
        self.seed = seed
        self.register_buffer("amax_mean", torch.zeros((), dtype=torch.float64))

    def reset(self) -> None:
        super().reset()
        self.amax_mean.zero_()

    def _observe(self, x: torch.Tensor) -> None:
        v = x.reshape(-1).abs()
        if v.numel() > self.max_samples:
            g = torch.Generator(device=v.device)
            g.manual_seed(self.seed + int(self.num_batches))
            v = v[torch.randint(v.numel(), (self.max_samples,), generator=g, device=v.device)]
        q = torch.quantile(v, self.p / 100.0).double()
        self.amax_mean.add_((q - self.amax_mean) / (self.num_batches + 1))

    def _amax(self) -> torch.Tensor:
        return self.amax_mean

    def extra_repr(self) -> str:
        return f"p={self.p}, max_samples={self.max_samples}"


# --------------------------------------------------------------------------- configs


@dataclasses.dataclass
class HalfConfig(Config):
    """Store ``nn.Linear`` weights in float16 or bfloat16 (:class:`HalfLinear`).

    The matmul runs in that dtype where the device has native instructions for it (CUDA; a
    CPU with AVX512-BF16 / AMX for bf16, AMX-FP16 for fp16); on other CPUs, where half
    arithmetic is emulated and several times slower, it runs in fp32 on the half weights
    (half the weight memory at about the fp32 speed). ``slimops.report`` notes which, per layer.

    Sparse slimops layers it meets become dense :class:`HalfLinear` layers holding their
    zeros (listed in ``slimops_summary.fallbacks``): to keep a sparse layer in half
    precision, cast the model (``model.half()``) before pruning instead.

    Args:
        dtype: ``torch.float16`` or ``torch.bfloat16``.
        compute: ``"auto"`` (per device, as above), ``"half"`` (always in ``dtype``) or
            ``"float32"`` (always in fp32).
    """

    dtype: torch.dtype = torch.bfloat16
    compute: str = "auto"

    def __post_init__(self):
        if self.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"HalfConfig: dtype must be torch.float16 or torch.bfloat16, got {self.dtype}")
        if self.compute not in COMPUTE_MODES:
            raise ValueError(f"HalfConfig: compute must be one of {COMPUTE_MODES}, got {self.compute!r}")


@dataclasses.dataclass
class Int8DynamicConfig(Config):
    """W8A8 int8: per-channel symmetric weights, dynamic activations.

    ``nn.Linear`` -> :class:`Int8DynamicLinear` (one activation scale per token);
    ``nn.Conv2d`` (groups = 1) -> :class:`Int8DynamicConv2d` (one per pixel for 1x1, one per image
    otherwise); depthwise convolutions stay float (the summary's ``skipped`` says why).
    """


@dataclasses.dataclass
class Int8WeightOnlyConfig(Config):
    """W8A16 int8 weight-only (:class:`Int8WeightOnlyLinear`).

    Args:
        group_size: ``None`` for one scale per output channel, else the number of
            consecutive inputs sharing a scale (32, 64, 128, ...); it must divide
            every converted layer's ``in_features`` (``convert`` raises otherwise).
    """

    group_size: int | None = None

    def __post_init__(self):
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g <= 0):
            raise ValueError(f"Int8WeightOnlyConfig: group_size must be None or a positive int, got {g!r}")


@dataclasses.dataclass
class Fp8DynamicConfig(Config):
    """fp8 (e4m3) W8A8: per-row weight scales, per-row dynamic activations (:class:`Fp8DynamicLinear`)."""


@dataclasses.dataclass
class Int8StaticConfig(Config):
    """W8A8 int8 with a per-tensor activation scale fixed by calibration (:class:`Int8StaticLinear`).

    Use :func:`prepare` with it, calibrate, then ``slimops.convert`` with it.

    Args:
        observer: the template observer; each prepared layer gets a fresh copy.
    """

    observer: Observer = dataclasses.field(default_factory=MinMaxObserver)

    def __post_init__(self):
        if not isinstance(self.observer, Observer):
            raise TypeError(
                "Int8StaticConfig: observer must be a slimops observer (MinMaxObserver, "
                f"MovingAverageMinMaxObserver, PercentileObserver), got {type(self.observer).__name__}"
            )


@dataclasses.dataclass
class _PrepareInt8Static(Config):
    """What :func:`prepare` hands to ``convert``: nn.Linear -> ObservedLinear."""

    config: Int8StaticConfig


@register_handler(HalfConfig, nn.Linear)
def _half_linear(module: nn.Linear, config: HalfConfig) -> nn.Module:
    return HalfLinear.from_float(module, config.dtype, config.compute)


@register_handler(Int8DynamicConfig, nn.Linear)
def _int8_dynamic(module: nn.Linear, config: Int8DynamicConfig) -> nn.Module:
    return Int8DynamicLinear.from_float(module)


@register_handler(Int8DynamicConfig, nn.Conv2d)
def _int8_dynamic_conv(module: nn.Conv2d, config: Int8DynamicConfig) -> nn.Module:
    return Int8DynamicConv2d.from_float(module)


@register_handler(Int8WeightOnlyConfig, nn.Linear)
def _int8_weight_only(module: nn.Linear, config: Int8WeightOnlyConfig) -> nn.Module:
    return Int8WeightOnlyLinear.from_float(module, config.group_size)


@register_handler(Fp8DynamicConfig, nn.Linear)
def _fp8_dynamic(module: nn.Linear, config: Fp8DynamicConfig) -> nn.Module:
    return Fp8DynamicLinear.from_float(module)


@register_handler(_PrepareInt8Static, nn.Linear)
def _observe(module: nn.Linear, config: _PrepareInt8Static) -> nn.Module:
    return ObservedLinear.from_float(module, config.config.observer.fresh())


@register_handler(_PrepareInt8Static, nn.Conv2d)
def _observe_conv(module: nn.Conv2d, config: _PrepareInt8Static) -> nn.Module:
    return ObservedConv2d.from_float(module, config.config.observer.fresh())


@register_handler(Int8StaticConfig, ObservedConv2d)
def _int8_static_conv(module: ObservedConv2d, config: Int8StaticConfig) -> nn.Module:
    return Int8StaticConv2d.from_float(module, module.observer.scale())


@register_handler(Int8StaticConfig, ObservedLinear)
def _int8_static(module: ObservedLinear, config: Int8StaticConfig) -> nn.Module:
    # A layer that saw no calibration data is a user error (ValueError), not a layer to skip.
    return Int8StaticLinear.from_float(module, module.observer.scale())


def prepare(model: nn.Module, config: Int8StaticConfig, filter_fn: FilterFn | None = None) -> nn.Module:
    """Swap the selected ``nn.Linear`` / ``nn.Conv2d`` layers for :class:`ObservedLinear` /
    :class:`ObservedConv2d`, in place, for calibration.

    Run calibration batches through the model afterwards, then
    ``slimops.convert(model, config)`` to freeze each observed layer into an
    :class:`Int8StaticLinear`. Layers ``Int8StaticLinear`` cannot take are left as
    they were and listed in ``model.slimops_summary.skipped``.

    Args:
        model: any ``nn.Module`` with materialized parameters.
        config: the :class:`Int8StaticConfig` whose observer each layer copies.
        filter_fn: ``filter_fn(module, fqn) -> bool`` selects the layers to observe.
    """
    if not isinstance(config, Int8StaticConfig):
        raise TypeError(f"slimops.prepare: config must be an Int8StaticConfig, got {type(config).__name__}")
    return convert(model, _PrepareInt8Static(config), filter_fn)


__all__ = [
    "Fp8DynamicConfig",
    "HalfConfig",
    "Int8DynamicConfig",
    "Int8StaticConfig",
    "Int8WeightOnlyConfig",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "prepare",
]
