"""``slimops.convert(model, config)``: swap modules of an existing model for slimops ones.

A config is a ``@dataclass`` that validates itself in ``__post_init__``. A
handler, registered per (config type, module type), builds the replacement of
one module from its float original, or raises :class:`Unsupported` to leave
it as it was. Conversion is all or nothing: every replacement is built first,
and the model is touched only once all of them exist.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

FilterFn = Callable[[nn.Module, str], bool]
Handler = Callable[[nn.Module, "Config"], nn.Module]


class Config:
    """Base class of every conversion config (subclasses are dataclasses)."""


class Unsupported(Exception):
    """Raised by a handler for a module it cannot convert; the module stays as it was."""


@dataclasses.dataclass
class ConversionSummary:
    """What :func:`convert` did, attached to the model as ``model.slimops_summary``."""

    converted: dict[str, str] = dataclasses.field(default_factory=dict)  # fqn -> "Linear -> HalfLinear"
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # fqn -> why it stayed


_HANDLERS: dict[type[Config], dict[type[nn.Module], Handler]] = {}


def register_handler(config_type: type[Config], module_type: type[nn.Module]):
    """Decorator: ``handler(module, config) -> replacement`` for modules of ``module_type``."""

    def wrap(fn: Handler) -> Handler:
        _HANDLERS.setdefault(config_type, {})[module_type] = fn
        return fn

    return wrap


def _handler_for(config: Config, module: nn.Module) -> Handler | None:
    for module_type, handler in _HANDLERS.get(type(config), {}).items():
        if isinstance(module, module_type):
            return handler
    return None


def build_replacement(module: nn.Module, config: Config) -> nn.Module:
    """The module ``config`` would put in place of ``module``, built without touching any model.

    Raises :class:`Unsupported` (with the reason) when no handler takes this module.
    """
    handler = _handler_for(config, module)
    if handler is None:
        raise Unsupported(f"{type(config).__name__} has no handler for {type(module).__name__}")
    return handler(module, config)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"slimops.convert: model must be a torch.nn.Module, got {type(model).__name__}")
    meta = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise ValueError(
            f"slimops.convert: model has parameters on the meta device (e.g. {meta[0]!r}); "
            "materialize them (to_empty + load_state_dict) before converting"
        )


def _plan(model: nn.Module, config: Config, filter_fn: FilterFn | None, summary: ConversionSummary):
    """Build every replacement for one config without touching the model."""
    planned: list[tuple[str, nn.Module]] = []
    candidates = 0
    for fqn, module in model.named_modules():
        handler = _handler_for(config, module)
        if handler is None or (filter_fn is not None and not filter_fn(module, fqn)):
            continue
        candidates += 1
        try:
            planned.append((fqn, handler(module, config)))
        except Unsupported as why:
            summary.skipped[fqn] = str(why)
    if candidates == 0:
        warnings.warn(
            f"slimops.convert: {type(config).__name__} selected no module"
            + (" (filter_fn rejected every candidate)" if filter_fn is not None else ""),
            stacklevel=3,
        )
    return planned


def _swap(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def _per_layer(configs: Mapping[str, Config | None]) -> list[tuple[Config, FilterFn]]:
    """``{fqn: config}`` (a :func:`slimops.plan` result) as (config, filter) pairs, one per config."""
    by_config: dict[int, tuple[Config, set[str]]] = {}
    for fqn, c in configs.items():
        if c is not None:
            by_config.setdefault(id(c), (c, set()))[1].add(fqn)
    return [(c, lambda m, fqn, names=names: fqn in names) for c, names in by_config.values()]


def convert(
    model: nn.Module,
    config: Config | Sequence[Config] | Mapping[str, Config | None],
    filter_fn: FilterFn | None = None,
) -> nn.Module:
    """Swap the modules ``config`` applies to, in place, and return ``model``.

    Args:
        model: any ``nn.Module`` with materialized parameters.
        config: a config; a list applied in order (each sees the previous result); or a
            mapping ``{fqn: config or None}`` that names the config of each layer (what
            :func:`slimops.plan` returns; ``None`` keeps a layer as it is).
        filter_fn: ``filter_fn(module, fqn) -> bool`` selects the modules to convert.

    Modules a handler refuses stay as they were and are listed, with the reason,
    in ``model.slimops_summary.skipped``. If building any replacement fails
    otherwise, the model is left exactly as it was.
    """
    if isinstance(config, Mapping):
        steps = _per_layer(config)
        if filter_fn is not None:
            steps = [(c, lambda m, fqn, f=f: f(m, fqn) and filter_fn(m, fqn)) for c, f in steps]
    else:
        configs = list(config) if isinstance(config, (list, tuple)) else [config]
        steps = [(c, filter_fn) for c in configs]
    for c, _ in steps:
        if not isinstance(c, Config) or type(c) not in _HANDLERS:
            known = ", ".join(sorted(t.__name__ for t in _HANDLERS))
            raise TypeError(f"slimops.convert: config must be one of [{known}], got {type(c).__name__}")
    _check_model(model)
    summary = ConversionSummary()
    swapped: list[tuple[str, nn.Module]] = []
    try:
        for c, select in steps:
            for fqn, new in _plan(model, c, select, summary):
                old = _swap(model, fqn, new)
                swapped.append((fqn, old))
                summary.converted[fqn] = f"{type(old).__name__} -> {type(new).__name__}"
    except BaseException:
        for fqn, old in reversed(swapped):  # leave the model exactly as it was
            _swap(model, fqn, old)
        raise
    model.slimops_summary = summary
    return model


@dataclasses.dataclass
class HalfConfig(Config):
    """Run ``nn.Linear`` layers in float16 or bfloat16, weights stored in that dtype.

    Args:
        dtype: ``torch.float16`` or ``torch.bfloat16``.
    """

    dtype: torch.dtype = torch.bfloat16

    def __post_init__(self):
        if self.dtype not in (torch.float16, torch.bfloat16):
            raise ValueError(f"HalfConfig: dtype must be torch.float16 or torch.bfloat16, got {self.dtype}")


@register_handler(HalfConfig, nn.Linear)
def _half_linear(module: nn.Linear, config: HalfConfig) -> nn.Module:
    from slimops.nn import HalfLinear

    return HalfLinear.from_float(module, config.dtype)
