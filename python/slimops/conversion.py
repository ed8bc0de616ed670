"""``slimops.convert(model, config)``: swap modules of an existing model for slimops ones.

A config is a ``@dataclass`` that validates itself in ``__post_init__``. A
handler, registered per (config type, module type), builds the replacement of
one module from its float original, or raises :class:`Unsupported` to leave
it as it was. A module with no handler of its own that stands for a linear layer
(Hugging Face's ``Conv1D``, a sparse slimops layer: see
:func:`slimops.nn._convertible.linear_stand_in`) goes to the config's ``nn.Linear``
handler as an equivalent ``nn.Linear``. Conversion is all or nothing: each
config's replacements are built before it touches the model, and any error
puts back every module the call swapped.

The swap engine is shared with :class:`slimops.prune.Pruner`: :func:`places` gives
each distinct module with every name it has, :func:`swap_modules` puts one
replacement at all of them (all or nothing), :func:`restore_modules` undoes it.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

FilterFn = Callable[[nn.Module, str], bool]
Handler = Callable[[nn.Module, "Config"], nn.Module]


class Config:
    """Base class of every conversion config (subclasses are dataclasses)."""

    def needs_model(self) -> bool:
        """Whether :meth:`prepare_layers` must run before the handlers (it has work to do)."""
        return False

    def prepare_layers(self, model: nn.Module, layers: list[tuple[list[str], nn.Module]]) -> dict[int, str]:
        """Model-level work before the handlers run, for a config whose :meth:`needs_model` is True.

        A handler sees one module; a config that must run the model first (``SparseConfig``
        with calibration data prunes its layers in forward order, each seeing its pruned
        predecessors) does it here. ``convert`` passes exactly the modules this config's
        handlers will be given (``(names, module)``, as :func:`places` lists them), keeps a copy
        of their parameters, and puts it back if the conversion fails.

        Returns ``{id(module): why}`` for the modules to leave as they are (listed as skipped).
        The default does nothing.
        """
        return {}


class Unsupported(Exception):
    """Raised by a handler for a module it cannot convert; the module stays as it was."""


@dataclasses.dataclass
class ConversionSummary:
    """What :func:`convert` did, attached to the model as ``model.slimops_summary``."""

    # fqn -> "Linear -> HalfLinear"; a layer converted by several configs of a list: "A -> B -> C".
    converted: dict[str, str] = dataclasses.field(default_factory=dict)
    # fqn -> why a handler refused it (it stayed as it was, for that config).
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    # fqn -> what its conversion lost: a sparse layer converted through its dense weight.
    fallbacks: dict[str, str] = dataclasses.field(default_factory=dict)
    # fqn -> why no config converted it, for every module holding a >= 2-D float parameter of any
    # name (Conv2d, Embedding, the 3-D experts of a Mixture-of-Experts layer, ...) left as it was;
    # slimops modules are not listed.
    untouched: dict[str, str] = dataclasses.field(default_factory=dict)
    # fqn -> the tie its conversion broke: a weight shared with another module (GPT-2's lm_head and
    # transformer.wte) is converted for this layer only; the other module keeps the float original.
    untied: dict[str, str] = dataclasses.field(default_factory=dict)
    # The fraction of the model's parameter bytes (before conversion) held by ``untouched`` modules
    # that no config has a handler for (those a filter or a map left out do not count: that was the
    # user's choice); ``convert`` warns when it is over half, so a mostly float model is never taken
    # for a quantized one.
    untouched_share: float = 0.0


_HANDLERS: dict[type[Config], dict[type[nn.Module], Handler]] = {}


def register_handler(config_type: type[Config], module_type: type[nn.Module]):
    """Decorator: ``handler(module, config) -> replacement`` for modules of ``module_type``."""

    def wrap(fn: Handler) -> Handler:
        _HANDLERS.setdefault(config_type, {})[module_type] = fn
        return fn

    return wrap


def known_configs() -> list[type[Config]]:
    """The public config types :func:`convert` takes: those with a registered handler, sorted by name.

    Private ones (a ``_``-prefixed name, such as what :func:`slimops.prepare` hands to
    ``convert``) are left out. Handlers register on import: ``import slimops`` registers
    every built-in one.
    """
    return sorted((t for t in _HANDLERS if not t.__name__.startswith("_")), key=lambda t: t.__name__)


def _handler_for(config: Config, module: nn.Module) -> tuple[Handler, str | None] | None:
    """``config``'s handler for ``module`` and, when it converts a stand-in, what that loses.

    A handler registered for the module's type wins; otherwise a module that stands
    for a linear layer goes to the ``nn.Linear`` handler as an equivalent ``nn.Linear``.
    """
    from slimops.nn._convertible import linear_stand_in

    handlers = _HANDLERS.get(type(config), {})
    for module_type, handler in handlers.items():
        if isinstance(module, module_type):
            return handler, None
    linear_handler = handlers.get(nn.Linear)
    stand_in = None if linear_handler is None else linear_stand_in(module)
    if stand_in is None:
        return None
    build, fallback = stand_in
    return (lambda _module, c: linear_handler(build(), c)), fallback


def build_replacement(module: nn.Module, config: Config) -> nn.Module:
    """The module ``config`` would put in place of ``module``, built without touching any model.

    Args:
        module: the layer to convert (``nn.Linear``, a Hugging Face ``Conv1D``, ...).
        config: the conversion config.

    Raises :class:`Unsupported` (with the reason) when no handler takes this module.
    """
    if config.needs_model():
        raise Unsupported(f"{config!r} works on the whole model (prepare_layers): use slimops.convert")
    found = _handler_for(config, module)
    if found is None:
        raise Unsupported(f"{type(config).__name__} has no handler for {type(module).__name__}")
    return found[0](module, config)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"slimops.convert: model must be a torch.nn.Module, got {type(model).__name__}")
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    meta = [name for name, t in tensors if t.device.type == "meta"]
    if meta:
        raise ValueError(
            f"slimops.convert: model has tensors on the meta device (e.g. {meta[0]!r}); "
            "materialize them (to_empty + load_state_dict) before converting"
        )


def _plan(
    model: nn.Module,
    config: Config,
    filter_fn: FilterFn | None,
    summary: ConversionSummary,
    saved: list[tuple[torch.Tensor, torch.Tensor]],
):
    """Build every replacement for one config without touching the model's modules.

    A module used at several places (the same object under several names) gets one
    replacement, put at every place, so the places stay one layer; it is converted when
    ``filter_fn`` selects it under any of its names. The model itself (fqn ``""``) is
    never replaced: there is no parent to put the replacement in. A config with model-level
    work (:meth:`Config.prepare_layers`) may change the selected modules' parameters: their
    ``(parameter, copy)`` pairs are appended to ``saved`` first, for ``convert`` to put back.

    Returns ``[(names, replacement)]`` and whether any module had a handler and passed the filter.
    """
    holders = param_holders(model)
    selected: list[tuple[list[str], nn.Module, Handler, str | None]] = []
    candidates = 0
    for names, module in places(model):
        found = _handler_for(config, module)
        if found is None or (filter_fn is not None and not any(filter_fn(module, n) for n in names)):
            continue
        candidates += 1
        if "" in names:
            summary.skipped[""] = "the model itself: convert a model that holds it (e.g. nn.Sequential(layer))"
            continue
        selected.append((names, module, *found))
    refused: dict[int, str] = {}
    if selected and config.needs_model():
        # NOTE: the copies go to the CPU: a failed conversion is rare, device memory is not.
        saved += [(p, p.detach().to("cpu", copy=True)) for _, m, _, _ in selected for p in m.parameters(recurse=False)]
        refused = config.prepare_layers(model, [(names, m) for names, m, _, _ in selected])
    planned: list[tuple[list[str], nn.Module]] = []
    for names, module, handler, fallback in selected:
        if id(module) in refused:
            for n in names:
                summary.skipped[n] = refused[id(module)]
            continue
        try:
            new = handler(module, config)
        except Unsupported as why:
            for n in names:
                summary.skipped[n] = str(why)
            continue
        except Exception as e:
            # Say which layer failed (e.g. an observer that saw no calibration data); convert puts the model back.
            e.add_note(f"slimops.convert: while converting {names[0]!r} ({type(module).__name__}) with {type(config).__name__}")
            raise
        reason = next((r for n in names if (r := _fused_parent_reason(model, n, new)) is not None), None)
        if reason is not None:
            for n in names:
                summary.skipped[n] = reason
            continue
        planned.append((names, new))
        tied = tied_elsewhere(holders, module)
        if tied:
            for n in names:
                summary.untied[n] = (
                    f"its weight was tied to {', '.join(tied)}: the converted layer holds its own copy, "
                    "the other module keeps the original (the tie is broken)"
                )
        if fallback is not None:
            for n in names:
                summary.fallbacks[n] = fallback
    return planned, candidates > 0


def param_holders(model: nn.Module) -> dict[int, list[tuple[str, nn.Module]]]:
    """``id(parameter) -> [(name, module)]``: every module holding each parameter, under each of its names."""
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for mfqn, m in model.named_modules(remove_duplicate=False):
        for pname, p in m.named_parameters(recurse=False, remove_duplicate=False):
            holders.setdefault(id(p), []).append((f"{mfqn}.{pname}" if mfqn else pname, m))
    return holders


def tied_elsewhere(holders: dict[int, list[tuple[str, nn.Module]]], module: nn.Module) -> list[str]:
    """The names under which modules other than ``module`` hold its weight (``holders``: :func:`param_holders`).

    A tied weight (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) is one
    ``Parameter`` held by several modules: pruning, shrinking or converting it for one
    changes, or unties, all.
    """
    return [name for name, m in holders.get(id(getattr(module, "weight", None)), []) if m is not module]


def _fused_parent_reason(model: nn.Module, fqn: str, new: nn.Module) -> str | None:
    """Why ``new`` cannot stand at ``fqn`` because its parent computes with its weight directly, or None.

    PyTorch's ``nn.TransformerEncoderLayer`` (and ``nn.TransformerEncoder``) inference fast
    path passes ``linear1.weight`` / ``linear2.weight`` to a fused kernel, in the input's
    dtype, and never calls the layers. A packed slimops layer turns that path off (its
    ``weight`` is a :class:`~slimops.nn.packed.WeightSpec`, which the path refuses), so the
    layer is called; a layer with a real weight in another dtype (``HalfLinear``) would
    make the fused kernel fail.
    """
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not isinstance(parent, nn.TransformerEncoderLayer) or child not in ("linear1", "linear2"):
        return None
    weight = getattr(new, "weight", None)
    old = getattr(parent, child).weight
    if isinstance(weight, torch.Tensor) and weight.dtype != old.dtype:
        return (
            f"nn.TransformerEncoderLayer's fused inference path multiplies by {child}.weight directly, "
            f"in the input's dtype ({old.dtype}); {type(new).__name__}'s weight is {weight.dtype}"
        )
    return None


def places(model: nn.Module) -> list[tuple[list[str], nn.Module]]:
    """Each distinct module of ``model``, once, with every name it has: ``[(names, module)]``.

    A module used at several places (one object under several names: a layer applied
    twice, a block shared by two parents) comes once, with all its names, so a swap can
    put one replacement at every place (:func:`swap_modules`) and the places stay one
    module. ``names[0]`` is the name ``model.named_modules()`` gives it; modules come in
    that order. The model itself is named ``""``.

    Args:
        model: any ``nn.Module``.
    """
    found: dict[int, tuple[list[str], nn.Module]] = {}
    for fqn, module in model.named_modules(remove_duplicate=False):
        found.setdefault(id(module), ([], module))[0].append(fqn)
    return list(found.values())


def swap_modules(model: nn.Module, swaps: Iterable[tuple[Sequence[str], nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Put each replacement at every one of its names, in place, all or nothing.

    Args:
        model: the model, changed in place.
        swaps: ``(names, new)`` pairs; ``new`` goes at each of ``names`` (give every name
            :func:`places` lists for the module it replaces, so the places stay one module).

    Returns ``[(name, old)]``, what each name held, in the order swapped: pass it to
    :func:`restore_modules` to undo. If putting any module fails, those already put
    are taken back and the error is raised. The model itself (``""``) has no parent to
    hold a replacement: naming it raises ``ValueError``.
    """
    done: list[tuple[str, nn.Module]] = []
    try:
        for names, new in swaps:
            for fqn in names:
                done.append((fqn, _put(model, fqn, new)))
    except BaseException:
        restore_modules(model, done)
        raise
    return done


def restore_modules(model: nn.Module, swapped: Sequence[tuple[str, nn.Module]]) -> None:
    """Undo :func:`swap_modules`: put each ``(name, old)`` of ``swapped`` back, the last swapped first."""
    for fqn, old in reversed(swapped):
        _put(model, fqn, old)


def _put(model: nn.Module, fqn: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``fqn`` and return what was there."""
    if not fqn:
        raise ValueError("cannot replace the model itself (fqn ''): there is no parent to put the replacement in")
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


def _check_map_names(model: nn.Module, configs: Mapping[str, Config | None]) -> None:
    """A ``{fqn: config}`` key that names no module is a mistake (a typo, another model's plan)."""
    names = {fqn for fqn, _ in model.named_modules(remove_duplicate=False)}
    unknown = [k for k in configs if k not in names]
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise KeyError(
            f"slimops.convert: the {{fqn: config}} map names {len(unknown)} module(s) the model does not have: {shown}"
        )


def _is_slimops(module: nn.Module) -> bool:
    return type(module).__module__.split(".")[0] == "slimops"


def _untouched(
    model: nn.Module, configs: list[Config], summary: ConversionSummary, unselected: str
) -> tuple[dict[str, str], list[str]]:
    """Modules holding >= 2-D float parameters that no config converted, skipped or already made slimops.

    Any parameter name counts: Mixture-of-Experts layers keep their experts as 3-D
    ``gate_up_proj`` / ``down_proj`` parameters, not as ``nn.Linear`` weights.

    Returns ``({fqn: why}, [fqns no config has a handler for]``).
    """
    names = ", ".join(type(c).__name__ for c in configs)
    out: dict[str, str] = {}
    unhandled: list[str] = []
    for fqn, module in model.named_modules():
        if fqn in summary.converted or fqn in summary.skipped or _is_slimops(module):
            continue
        # Matrices only: LayerNorm scales and biases are 1-D.
        held = [(n, p) for n, p in module.named_parameters(recurse=False) if p.dim() >= 2 and p.is_floating_point()]
        if not held:
            continue
        kind = type(module).__name__
        # No config at all (a {fqn: config} map of Nones): nothing selected it.
        handled = not configs or any(_handler_for(c, module) is not None for c in configs)
        why = f"{kind}: {unselected}" if handled else f"{kind}: no handler in {names}"
        if not all(n.endswith("weight") for n, _ in held):  # name what is not a plain weight
            why += " (" + ", ".join(f"{n} {list(p.shape)}" for n, p in held) + ")"
        out[fqn] = why
        if not handled:
            unhandled.append(fqn)
    return out, unhandled


def _bytes_of(model: nn.Module, fqns) -> dict[str, int]:
    """Parameter bytes each module at ``fqns`` holds itself (a parameter shared by several counts once)."""
    seen: set[int] = set()
    out: dict[str, int] = {}
    for fqn in fqns:
        own = [p for p in model.get_submodule(fqn).parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        out[fqn] = sum(p.numel() * p.element_size() for p in own)
    return out


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())  # shared parameters once


def _warn(
    model: nn.Module, summary: ConversionSummary, unhandled: list[str], selected_nothing: list[str], filtered: bool
) -> None:
    if summary.untouched_share > 0.5:
        sizes = _bytes_of(model, unhandled)
        biggest = sorted(sizes, key=sizes.get, reverse=True)
        shown = ", ".join(f"{fqn} ({type(model.get_submodule(fqn)).__name__})" for fqn in biggest[:3])
        warnings.warn(
            f"slimops.convert: {summary.untouched_share:.0%} of the model's parameter bytes stay as they were, in "
            f"{len(biggest)} module(s) no config can convert, the largest: {shown} (see slimops_summary.untouched)",
            stacklevel=3,
        )
    if summary.untied:
        warnings.warn(
            f"slimops.convert: {len(summary.untied)} converted layer(s) had a weight tied to another module; "
            "converting broke the tie and the other module keeps the float original (see slimops_summary.untied; "
            f"leave them out with filter_fn to keep it): {', '.join(summary.untied)}",
            stacklevel=3,
        )
    for name in selected_nothing:
        why = " (filter_fn rejected every candidate)" if filtered else ""
        warnings.warn(f"slimops.convert: {name} selected no module{why}", stacklevel=3)
    if summary.fallbacks:
        warnings.warn(
            f"slimops.convert: {len(summary.fallbacks)} sparse layer(s) converted through their dense weight "
            "(no slimops kernel fuses sparsity with that format: the zeros are kept, the sparse speed-up "
            f"is lost): {', '.join(summary.fallbacks)}",
            stacklevel=3,
        )


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

    ``model.slimops_summary`` (a :class:`ConversionSummary`) lists what was converted,
    what a handler refused (``skipped``), the sparse layers converted through their dense
    weight (``fallbacks``, also warned about), and the weight-holding modules no config
    converted (``untouched``). A config that selects no module is warned about. If any
    config raises anything but :class:`Unsupported`, the model is left exactly as it was.
    """
    if isinstance(config, Mapping):
        steps = _per_layer(config)
        if filter_fn is not None:
            steps = [(c, lambda m, fqn, f=f: f(m, fqn) and filter_fn(m, fqn)) for c, f in steps]
        unselected = "absent from the {fqn: config} map (or None there)"
    else:
        configs = list(config) if isinstance(config, (list, tuple)) else [config]
        if not configs:
            raise ValueError("slimops.convert: the list of configs is empty")
        steps = [(c, filter_fn) for c in configs]
        unselected = "filter_fn did not select it"
    for c, _ in steps:
        # Private configs (slimops.prepare's) are taken too, though known_configs() does not list them.
        if not isinstance(c, Config) or type(c) not in _HANDLERS:
            known = ", ".join(t.__name__ for t in known_configs())
            raise TypeError(f"slimops.convert: config must be one of [{known}], got {type(c).__name__}")
    _check_model(model)
    if isinstance(config, Mapping):
        _check_map_names(model, config)
    summary = ConversionSummary()
    bytes_before = _param_bytes(model)
    swapped: list[tuple[str, nn.Module]] = []
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []  # parameters a config's prepare_layers may change
    selected_nothing: list[str] = []
    try:
        for c, select in steps:
            planned, any_selected = _plan(model, c, select, summary, saved)
            if not any_selected:
                selected_nothing.append(type(c).__name__)
            done = swap_modules(model, planned)
            swapped += done
            for fqn, old in done:
                new = model.get_submodule(fqn)
                before = summary.converted.get(fqn, type(old).__name__)
                summary.converted[fqn] = f"{before} -> {type(new).__name__}"
    except BaseException:
        restore_modules(model, swapped)  # leave the model exactly as it was
        with torch.no_grad():
            for p, copy in saved:
                p.copy_(copy)
        raise
    if isinstance(config, Mapping):
        for fqn, c in config.items():
            if c is not None and fqn not in summary.converted and fqn not in summary.skipped:
                kind = type(model.get_submodule(fqn)).__name__ if fqn else type(model).__name__
                summary.skipped[fqn] = f"{kind}: {type(c).__name__} has no handler for it"
    summary.untouched, unhandled = _untouched(model, [c for c, _ in steps], summary, unselected)
    summary.untouched_share = sum(_bytes_of(model, unhandled).values()) / max(bytes_before, 1)
    model.slimops_summary = summary
    _warn(model, summary, unhandled, selected_nothing, filter_fn is not None)
    return model


def __getattr__(name: str):
    # NOTE: HalfConfig lives in slimops.quant, beside the other quantization configs; it is
    # still importable from here (quant imports this module, so the import is lazy).
    if name == "HalfConfig":
        from slimops.quant import HalfConfig

        return HalfConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
