"""The :class:`Pruner`: masks the ``nn.Linear`` and ``nn.Conv2d`` layers of a model while it
trains, updates the masks on a schedule, and packs each layer on :meth:`Pruner.finalize`."""

from __future__ import annotations

import math
import warnings
import weakref

import torch
from torch import nn

from slimops.conversion import FilterFn, Unsupported
from slimops.nn.sparse import BLOCK_SIZES, MaskedConv2d, MaskedLinear, check_linear
from slimops.prune.channels import (
    ChannelPruningError,
    channel_consumer,
    remove_channels,
)
from slimops.prune.criteria import Criterion, get_criterion
from slimops.prune.packing import pack_linear
from slimops.prune.patterns import NM, Block, Channel, Pattern, get_pattern
from slimops.prune.report import LayerSparsity, SparsityReport
from slimops.prune.schedules import Polynomial, Schedule, get_schedule
from slimops.prune.selection import _check_sparsity, select_masks


class Pruner:
    """Prunes the ``nn.Linear`` and ``nn.Conv2d`` layers of a model while it trains, then packs them.

    The constructor swaps every selected ``nn.Linear`` for a :class:`MaskedLinear`
    (and ``nn.Conv2d`` for a :class:`MaskedConv2d`) that shares its parameters (so
    an optimizer built before or after works) with an all-True mask. Patterns see a
    convolution's weight as ``[out_channels, in_channels * kh * kw]``. Call :meth:`step` after each optimizer step: it advances
    the schedule, updates the masks when the schedule says so (zeroing the newly
    pruned weights), and zeros any pruned weight an optimizer's old momentum
    moved. :meth:`finalize` turns each layer into its fastest packed form.

    Args:
        model: the model, changed in place.
        criterion: a name (``magnitude``, ``gradient``, ``taylor``, ``fisher``, ``random``) or a
            :class:`Criterion`. Gradient criteria are fed by hooks on the pruned weights during
            every backward pass since the last mask update.
        pattern: a name (``unstructured``, ``block``, ``2:4``/``n_m``, ``channel``) or a
            :class:`Pattern` (``block(32)``, ``n_m(2, 4)``, ...).
        sparsity: the final fraction of pruned weights, in [0, 1); for N:M it must be
            ``1 - n / m`` (None picks it).
        schedule: ``"one_shot"``, :func:`one_shot`, or :func:`gradual`.
        scope: ``"layer"`` (each layer at the sparsity) or ``"global"`` (ranked across layers,
            each layer's scores divided by its mean; every layer keeps at least one unit).
        filter_fn: ``filter_fn(module, fqn) -> bool`` selects the layers.

    Layers that cannot take the pattern (shape, or, for channels, no clear consumer)
    are left as they were and listed with the reason in :attr:`skipped`.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: str | Criterion = "magnitude",
        pattern: str | Pattern = "unstructured",
        sparsity: float | None = 0.5,
        schedule: str | Schedule = "one_shot",
        scope: str = "layer",
        filter_fn: FilterFn | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"Pruner: model must be an nn.Module, got {type(model).__name__}")
        self.criterion = get_criterion(criterion)
        self.pattern = get_pattern(pattern)
        if sparsity is None and isinstance(self.pattern, NM):
            sparsity = self.pattern.max_sparsity
        self.sparsity = _check_sparsity(sparsity)
        if isinstance(self.pattern, NM) and not math.isclose(self.sparsity, self.pattern.max_sparsity):
            raise ValueError(
                f"sparsity must be {self.pattern.max_sparsity} for {self.pattern!r} (1 - n/m), got {self.sparsity}"
            )
        self.schedule = get_schedule(schedule)
        if isinstance(self.schedule, Polynomial) and self.schedule.initial_sparsity > self.sparsity:
            raise ValueError(
                f"gradual: initial_sparsity {self.schedule.initial_sparsity} exceeds the final sparsity {self.sparsity}"
            )
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.scope = scope
        self.model = model
        self.skipped: dict[str, str] = {}
        self.layers: dict[str, MaskedLinear | MaskedConv2d] = {}
        self.step_count = 0
        self.current_sparsity = 0.0
        self.forms: dict[str, str] | None = None  # set by finalize
        self._final_stats: dict[str, LayerSparsity] = {}

        # A layer used at several places (one object, several names) is masked once and the
        # masked layer put at every place, so the places stay one layer.
        first_name = {id(m): fqn for fqn, m in model.named_modules()}  # named_modules keeps the first name
        self._aliases: dict[str, list[str]] = {}
        for fqn, m in model.named_modules(remove_duplicate=False):
            if fqn != first_name[id(m)]:
                self._aliases.setdefault(first_name[id(m)], []).append(fqn)
        planned: list[tuple[str, nn.Module]] = []
        for fqn, m in model.named_modules():
            if not isinstance(m, (nn.Linear, nn.Conv2d)) or (filter_fn is not None and not filter_fn(m, fqn)):
                continue
            try:
                _check_prunable(m)
            except Unsupported as why:
                self.skipped[fqn] = str(why)
                continue
            why = self.pattern.check((m.weight.shape[0], m.weight[0].numel()))
            if why is None and isinstance(self.pattern, Channel):
                try:
                    channel_consumer(model, fqn)
                except ChannelPruningError as e:
                    why = e.reason
            if why is not None:
                self.skipped[fqn] = why
                continue
            planned.append((fqn, m))
        if self.skipped:
            warnings.warn(
                f"Pruner leaves {len(self.skipped)} layer(s) dense: "
                + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()),
                stacklevel=2,
            )
        if not planned:
            warnings.warn("Pruner selected no layer", stacklevel=2)
        for fqn, m in planned:
            masked = MaskedLinear.from_float(m) if isinstance(m, nn.Linear) else MaskedConv2d.from_float(m)
            self._put(fqn, masked)
            self.layers[fqn] = masked
        self._hooks = []
        if self.criterion.needs_grad:
            for masked in self.layers.values():
                self._hooks.append(masked.weight.register_hook(self._observer(masked.weight)))

    def _put(self, fqn: str, module: nn.Module) -> None:
        """Put ``module`` at ``fqn`` and at every other name the layer there has."""
        for name in [fqn, *self._aliases.get(fqn, [])]:
            _set_submodule(self.model, name, module)

    def _observer(self, weight: nn.Parameter):
        ref = weakref.ref(weight)
        crit = self.criterion

        def hook(grad: torch.Tensor) -> None:
            w = ref()
            if w is not None:
                crit.observe_grad(w, grad)

        return hook

    def _check_live(self) -> None:
        if self.forms is not None:
            raise RuntimeError("Pruner: finalize() was called; the masked layers are gone")

    def step(self) -> None:
        """Call once per training step, after ``optimizer.step()``.

        The ``t``-th call (from 0) updates the masks if the schedule updates at ``t``
        and its sparsity there is above the current one, then zeros every pruned weight.
        """
        self._check_live()
        t = self.step_count
        if self.schedule.updates_at(t):
            target = self.schedule.sparsity(t, self.sparsity)
            if target > self.current_sparsity:
                self.update_masks(target)
        for layer in self.layers.values():
            layer.apply_mask_()
        self.step_count += 1

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Prune now to ``sparsity`` (never below what is already pruned), then reset the criterion."""
        self._check_live()
        sparsity = _check_sparsity(sparsity)
        if sparsity > self.pattern.max_sparsity + 1e-12:
            raise ValueError(f"sparsity {sparsity} exceeds what {self.pattern!r} allows ({self.pattern.max_sparsity})")
        if not self.layers:
            return
        layers = list(self.layers.values())
        scores = [self.criterion.scores(layer.weight) for layer in layers]
        masks = select_masks(scores, [layer.mask for layer in layers], self.pattern, sparsity, self.scope)
        for layer, mask in zip(layers, masks):
            layer.set_mask(mask)
        self.criterion.reset()
        self.current_sparsity = max(self.current_sparsity, sparsity)

    def sparsity_report(self) -> SparsityReport:
        """Per-layer sparsity now (and, after :meth:`finalize`, each layer's packed form)."""
        if self.forms is not None:
            layers = dict(self._final_stats)
        else:
            layers = {
                fqn: LayerSparsity(tuple(m.weight.shape), m.mask.numel(), int((~m.mask).sum()), type(m).__name__)
                for fqn, m in self.layers.items()
            }
        return SparsityReport(
            layers, dict(self.skipped), self.current_sparsity, self.step_count, repr(self.pattern), self.criterion.name
        )

    @torch.no_grad()
    def finalize(self, min_zero_tiles: float = 0.5) -> dict[str, str]:
        """Replace every masked layer with the fastest module its mask allows, in place.

        * channel pattern: the pruned output channels and the consumer's matching inputs
          are removed (:func:`remove_channels`), leaving a smaller dense ``nn.Linear``;
        * a 2:4 mask: :class:`Sparse24Linear`;
        * a mask with at least ``min_zero_tiles`` of its tiles empty: :class:`BlockSparseLinear`
          (with the pattern's tile when the pattern is a block one);
        * otherwise a dense ``nn.Linear`` holding the zeros (sparsity that does not pay);
        * a convolution: a dense ``nn.Conv2d`` holding the zeros (slimops has no sparse
          convolution kernel), or fewer channels with the channel pattern.

        Returns ``{fqn: form}`` (also in :attr:`forms` and :meth:`sparsity_report`).
        The packed weights do not train (they are buffers; gradients still flow to the
        layers before them): they are for inference, or further conversion.
        """
        self._check_live()
        for h in self._hooks:
            h.remove()
        self._hooks = []
        masks: dict[str, torch.Tensor] = {}
        stats: dict[str, LayerSparsity] = {}
        for fqn, layer in self.layers.items():
            stats[fqn] = LayerSparsity(tuple(layer.weight.shape), layer.mask.numel(), int((~layer.mask).sum()))
            masks[fqn] = layer.mask.clone()
            plain = layer.to_linear() if isinstance(layer, MaskedLinear) else layer.to_conv()
            self._put(fqn, plain)
        forms: dict[str, str] = {}
        if isinstance(self.pattern, Channel):
            for fqn in self.layers:
                layer = self.model.get_submodule(fqn)
                kind = type(layer).__name__
                rows = masks[fqn].reshape(masks[fqn].shape[0], -1).any(dim=1)
                before = layer.weight.shape[0]
                if rows.all():
                    forms[fqn] = f"{kind} (dense: no channel pruned)"
                    continue
                consumer = remove_channels(self.model, fqn, rows)
                masks[fqn] = masks[fqn][rows]
                if consumer in masks:
                    masks[consumer] = masks[consumer][:, rows]
                forms[fqn] = f"{kind} (shrunk: {before} -> {int(rows.sum())} outputs; {consumer} reads fewer inputs)"
        else:
            block = self.pattern.size if isinstance(self.pattern, Block) and self.pattern.size in BLOCK_SIZES else None
            for fqn in self.layers:
                layer = self.model.get_submodule(fqn)
                if isinstance(layer, nn.Conv2d):
                    zeros = 1.0 - masks[fqn].float().mean().item()
                    forms[fqn] = f"Conv2d (dense: {zeros:.0%} sparse; slimops has no sparse convolution kernel)"
                    continue
                module, forms[fqn] = pack_linear(layer.weight, layer.bias, masks[fqn], min_zero_tiles, block)
                self._put(fqn, module)
        for fqn, form in forms.items():
            stats[fqn].form = form
        self._final_stats = stats
        self.forms = forms
        self.layers = {}
        return dict(forms)


def _check_prunable(layer: nn.Module) -> None:
    """Raise :class:`Unsupported` for a layer the Pruner cannot mask."""
    if isinstance(layer, nn.Conv2d):
        if type(layer) is not nn.Conv2d:
            raise Unsupported(f"{type(layer).__name__} subclasses nn.Conv2d (its forward would be lost)")
        if layer.padding_mode != "zeros":
            raise Unsupported(f"padding_mode={layer.padding_mode!r} (only 'zeros' is handled)")
        if not layer.weight.is_floating_point():
            raise Unsupported(f"weight dtype {layer.weight.dtype} is not floating point")
        return
    check_linear(layer)


def _set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_fqn, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_fqn) if parent_fqn else model
    setattr(parent, child, new)
