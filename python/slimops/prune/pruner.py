"""The :class:`Pruner`: masks the linear layers (``nn.Linear``, Hugging Face ``Conv1D``) and
``nn.Conv2d`` layers of a model while it trains, updates the masks on a schedule, and packs
each layer on :meth:`Pruner.finalize`."""

from __future__ import annotations

import math
import warnings
import weakref

import torch
from torch import nn

from slimops.conversion import FilterFn, Unsupported, param_holders, places, swap_modules, tied_elsewhere
from slimops.distributed import all_finite, is_dtensor, reduce_scores
from slimops.nn._convertible import _is_hf_conv1d, check_convertible_linear
from slimops.nn.sparse import BLOCK_SIZES, MaskedConv2d, MaskedLinear, check_linear
from slimops.prune.channels import (
    ChannelPruningError,
    channel_consumer,
    remove_channels,
)
from slimops.prune.criteria import Criterion, get_criterion, require_observed
from slimops.prune.packing import pack_linear
from slimops.prune.patterns import NM, Block, Channel, Pattern, get_pattern
from slimops.prune.report import LayerSparsity, SparsityReport
from slimops.prune.schedules import Polynomial, Schedule, get_schedule
from slimops.prune.selection import _check_sparsity, select_masks


class Pruner:
    """Prunes the linear (``nn.Linear``, Hugging Face ``Conv1D``) and ``nn.Conv2d`` layers of a
    model while it trains, then packs them.

    The constructor swaps every selected ``nn.Linear`` or ``Conv1D`` for a :class:`MaskedLinear`
    (and ``nn.Conv2d`` for a :class:`MaskedConv2d`) that shares its parameters (so an
    optimizer built before or after works) with an all-True mask. A ``Conv1D`` keeps its
    weight ``[in_features, out_features]`` (``MaskedLinear(transposed=True)``); patterns see
    every linear weight as ``[out_features, in_features]`` (2:4 runs along the inputs) and a
    convolution's as ``[out_channels, in_channels * kh * kw]``. Call :meth:`step` after each
    optimizer step: it advances the schedule, updates the masks when the schedule says so
    (zeroing the newly pruned weights), and zeros any pruned weight an optimizer's old
    momentum moved. :meth:`finalize` turns each layer into its fastest packed form.

    Gradient criteria (``gradient``, ``taylor``, ``fisher``) observe one gradient per
    training step: hooks on the pruned weights note which ones a backward pass reached,
    and :meth:`step` reads their ``.grad``, so call it after ``optimizer.step()`` (or
    ``scaler.step(optimizer)``, which unscales the gradients of a ``torch.amp.GradScaler``)
    and before ``optimizer.zero_grad()``. A step whose gradients hold inf or NaN is not
    observed (a GradScaler skips exactly such steps); ``step(scaler)`` also drops the
    steps the scaler skipped for an overflow elsewhere in the model. Gradient-accumulation
    micro-batches add up in ``.grad``, so they count as the one step they are.

    Under ``torch.distributed`` (DDP, FSDP2): every criterion's scores are made the same on
    every rank before the masks are selected (:func:`slimops.distributed.reduce_scores`:
    plain scores averaged over the default group with one ``all_reduce``, FSDP2's DTensor
    scores gathered whole), so every rank holds the same masks. Build the Pruner before
    wrapping the model (DDP) or sharding it (``fully_shard``); every rank calls
    :meth:`step` and :meth:`update_masks`, which are then collectives. Under FSDP2 the
    masks stay whole on every rank, and a sharded weight's gradient is observed when
    it is a new tensor (``zero_grad(set_to_none=True)``, the default) or was added to.

    Args:
        model: the model, changed in place.
        criterion: a name (``magnitude``, ``gradient``, ``taylor``, ``fisher``, ``random``) or a
            :class:`Criterion`.
        pattern: a name (``unstructured``, ``block``, ``2:4``/``n_m``, ``channel``) or a
            :class:`Pattern` (``block(32)``, ``n_m(2, 4)``, ...).
        sparsity: the final fraction of pruned weights, in [0, 1); for N:M it must be
            ``1 - n / m`` (None picks it).
        schedule: ``"one_shot"``, :func:`one_shot`, or :func:`gradual`.
        scope: ``"layer"`` (each layer at the sparsity) or ``"global"`` (ranked across layers,
            each layer's scores divided by its mean; every layer keeps at least one unit).
        filter_fn: ``filter_fn(module, fqn) -> bool`` selects the layers.

    Layers left as they were, with the reason in :attr:`skipped`: those that cannot take
    the pattern (shape; for channels, no clear consumer, or a ``Conv1D``), those whose
    weight is tied to another module's (GPT-2's ``lm_head`` shares the input embedding:
    pruning it would zero the embedding too), for gradient criteria, frozen ones
    (``requires_grad=False``: no gradient to score them by), and the model itself when it
    is one layer (no parent to hold the masked layer: prune ``nn.Sequential(layer)``).
    A layer used at several places is masked once, under its first name, and the masked
    (then packed) layer is put at every place.
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
        # Steps whose gradients a gradient criterion did not observe (inf / NaN, or skipped by the scaler).
        self.dropped_steps = 0
        self.current_sparsity = 0.0
        self.forms: dict[str, str] | None = None  # set by finalize
        self._final_stats: dict[str, LayerSparsity] = {}

        # A layer used at several places (one object, several names) is masked once and the
        # masked layer put at every place, so the places stay one layer; it is known by its
        # first name (the one named_modules gives), which is the one filter_fn sees.
        self._names: dict[str, list[str]] = {}  # first name -> every name of the layer
        planned: list[tuple[list[str], nn.Module]] = []
        holders = param_holders(model)
        for names, m in places(model):
            fqn = names[0]
            if not _is_prunable_kind(m) or (filter_fn is not None and not filter_fn(m, fqn)):
                continue
            if fqn == "":
                # No parent to hold the masked layer (convert leaves the model itself alone too).
                self.skipped[fqn] = "the model itself: prune a model that holds it (e.g. nn.Sequential(layer))"
                continue
            try:
                _check_prunable(m)
            except Unsupported as why:
                self.skipped[fqn] = str(why)
                continue
            why = self._why_not(model, holders, fqn, m)
            if why is not None:
                self.skipped[fqn] = why
                continue
            planned.append((names, m))
        if self.skipped:
            warnings.warn(
                f"Pruner leaves {len(self.skipped)} layer(s) dense: "
                + "; ".join(f"{k}: {v}" for k, v in self.skipped.items()),
                stacklevel=2,
            )
        if not planned:
            warnings.warn("Pruner selected no layer", stacklevel=2)
        masked = [
            (names, MaskedConv2d.from_float(m) if isinstance(m, nn.Conv2d) else MaskedLinear.from_float(m))
            for names, m in planned
        ]
        swap_modules(model, masked)
        for names, layer in masked:
            self._names[names[0]] = names
            self.layers[names[0]] = layer
        # fqns of the layers a backward pass reached since the last step. The hooks only note
        # it: the gradient is read from .grad in step(), once the optimizer step (and a
        # GradScaler's unscaling) is done. A set, not the Pruner, so the hooks keep no Pruner alive.
        self._reached: set[str] = set()
        # fqn -> (weakref to the local gradient shard, its version) last observed, for FSDP2's sharded weights.
        self._sharded_grads_seen: dict[str, tuple[weakref.ref, int]] = {}
        self._hooks = []
        if self.criterion.needs_grad:
            for fqn, masked in self.layers.items():
                self._hooks.append(masked.weight.register_hook(_noter(self._reached, fqn)))

    def _why_not(self, model: nn.Module, holders: dict, fqn: str, layer: nn.Module) -> str | None:
        """Why the Pruner leaves ``layer`` (at ``fqn``) dense, or None."""
        return why_left_dense(model, holders, fqn, layer, self.pattern, self.criterion)

    def _put(self, fqn: str, module: nn.Module) -> None:
        """Put ``module`` at ``fqn`` and at every other name the layer there has."""
        swap_modules(self.model, [(self._names[fqn], module)])

    def _check_live(self) -> None:
        if self.forms is not None:
            raise RuntimeError("Pruner: finalize() was called; the masked layers are gone")

    def step(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Call once per training step, after ``optimizer.step()`` (or ``scaler.step(optimizer)``).

        Gradient criteria first observe the ``.grad`` of the pruned weights the backward
        passes since the last step reached (so call it before ``optimizer.zero_grad()``),
        unless a gradient holds inf or NaN, or ``scaler`` skipped the step. Then the
        ``t``-th call (from 0) updates the masks if the schedule updates at ``t`` and its
        sparsity there is above the current one, and zeros every pruned weight.

        Args:
            scaler: the ``torch.amp.GradScaler`` of the loop, if any: the step is then not
                observed when the scaler found inf or NaN in any gradient (it skipped the
                step). Pass it between ``scaler.step(optimizer)`` and ``scaler.update()``,
                which forgets what it found. Without it, a step is dropped only when the
                pruned weights' own gradients hold inf or NaN. NOTE: an optimizer that
                unscales inside its step (``fused=True``) leaves ``.grad`` scaled: call
                ``scaler.unscale_(optimizer)`` before ``scaler.step(optimizer)``.
        """
        self._check_live()
        self._observe(scaler)
        t = self.step_count
        if self.schedule.updates_at(t):
            target = self.schedule.sparsity(t, self.sparsity)
            if target > self.current_sparsity:
                self.update_masks(target)
        for layer in self.layers.values():
            layer.apply_mask_()
        self.step_count += 1

    @torch.no_grad()
    def _observe(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Feed the criterion the ``.grad`` of the weights reached since the last call, or drop them."""
        skipped = _scaler_skipped(scaler)
        reached = [
            (fqn, layer.weight)
            for fqn, layer in self.layers.items()
            if fqn in self._reached or self._new_sharded_grad(fqn, layer.weight)
        ]
        self._reached.clear()
        for fqn, w in reached:
            if is_dtensor(w):
                local = w.grad.to_local()
                self._sharded_grads_seen[fqn] = (weakref.ref(local), local._version)
        if not reached:
            return
        missing = [fqn for fqn, w in reached if w.grad is None]
        if missing:
            raise RuntimeError(
                f"Pruner.step(): a backward pass reached the weights of {', '.join(missing)}, but their .grad "
                "is None now: call pruner.step() after optimizer.step() and before optimizer.zero_grad()"
            )
        # The step counts only if every gradient is finite (judged alike on every rank); one host sync.
        if skipped or not all_finite([w.grad for _, w in reached]):
            self.dropped_steps += 1
            return
        for _, w in reached:
            self.criterion.observe_grad(w, w.grad)

    def _new_sharded_grad(self, fqn: str, weight: torch.Tensor) -> bool:
        """Whether the sharded (FSDP2) ``weight`` holds a gradient not observed yet.

        NOTE: fully_shard replaces the weight Parameters by sharded ones, so the hooks of
        __init__ never fire for them: a sharded gradient counts as new when it is another
        tensor than the one last observed (zero_grad frees that one), or was added to since.
        """
        if not is_dtensor(weight) or weight.grad is None:
            return False
        local = weight.grad.to_local()  # under no_grad: the shard itself, the same object every call
        seen = self._sharded_grads_seen.get(fqn)
        return seen is None or seen[0]() is not local or seen[1] != local._version

    @torch.no_grad()
    def update_masks(self, sparsity: float) -> None:
        """Prune now to ``sparsity`` (never below what is already pruned), then reset the criterion.

        Gradient criteria first observe the ``.grad`` of backward passes run since the
        last :meth:`step`, as :meth:`step` would (without a scaler).
        """
        self._check_live()
        sparsity = _check_sparsity(sparsity)
        if sparsity > self.pattern.max_sparsity + 1e-12:
            raise ValueError(f"sparsity {sparsity} exceeds what {self.pattern!r} allows ({self.pattern.max_sparsity})")
        self._observe()
        if not self.layers:
            return
        layers = list(self.layers.values())
        if self.criterion.needs_grad:
            hint = f"; {self.dropped_steps} step(s) were dropped for inf or NaN gradients" if self.dropped_steps else ""
            require_observed(self.criterion, {fqn: layer.weight for fqn, layer in self.layers.items()}, hint)
        # Patterns see [out, in]: a Conv1D's weight (and so its scores and mask) is stored [in, out].
        # Every rank selects from the same scores, so every rank holds the same masks:
        # averaged over the ranks (DDP), or gathered whole from the shards (FSDP2).
        scores = reduce_scores([layer.out_first(self.criterion.scores(layer.weight)) for layer in layers])
        keeps = [layer.out_first(layer.mask) for layer in layers]
        masks = select_masks(scores, keeps, self.pattern, sparsity, self.scope)
        for layer, mask in zip(layers, masks):
            layer.set_mask(layer.out_first(mask))  # out_first transposes back: a transpose undoes itself
        self.criterion.reset()
        self.current_sparsity = max(self.current_sparsity, sparsity)

    def sparsity_report(self) -> SparsityReport:
        """Per-layer sparsity now (and, after :meth:`finalize`, each layer's packed form)."""
        if self.forms is not None:
            layers = dict(self._final_stats)
        else:
            layers = {
                fqn: LayerSparsity(_shape(m), m.mask.numel(), int((~m.mask).sum()), type(m).__name__)
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
        sharded = [fqn for fqn, layer in self.layers.items() if is_dtensor(layer.weight)]
        if sharded:
            raise RuntimeError(
                f"Pruner.finalize(): the weights of {', '.join(sharded)} are sharded (fully_shard); packing "
                "needs whole weights. Save the trained model with slimops.save (one file), load it into an "
                "unsharded copy (the model with a Pruner built the same way) and finalize that Pruner"
            )
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._reached.clear()
        masks: dict[str, torch.Tensor] = {}
        stats: dict[str, LayerSparsity] = {}
        plain: list[tuple[list[str], nn.Module]] = []
        for fqn, layer in self.layers.items():
            stats[fqn] = LayerSparsity(_shape(layer), layer.mask.numel(), int((~layer.mask).sum()))
            masks[fqn] = layer.out_first(layer.mask).clone()  # [out, in], as the plain layer's weight
            plain.append((self._names[fqn], layer.to_linear() if isinstance(layer, MaskedLinear) else layer.to_conv()))
        swap_modules(self.model, plain)
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


def why_left_dense(
    model: nn.Module, holders: dict, fqn: str, layer: nn.Module, pattern: Pattern, criterion: Criterion | None = None
) -> str | None:
    """Why ``layer`` (at ``fqn`` in ``model``; ``holders``: :func:`param_holders`) must stay dense
    under ``pattern`` (and a gradient ``criterion``), or None: a weight tied to another module's,
    a frozen weight a gradient criterion cannot score, a shape the pattern cannot take, or, for
    channels, no clear consumer."""
    tied = tied_elsewhere(holders, layer)
    if tied:
        return (
            f"its weight is tied to {', '.join(tied)} (the same Parameter): pruning it would zero "
            "that too; untie the weights to prune this layer"
        )
    if criterion is not None and criterion.needs_grad and not layer.weight.requires_grad:
        return f"frozen (weight.requires_grad is False): the {criterion.name!r} criterion needs its gradients"
    w = layer.weight.t() if _is_hf_conv1d(layer) else layer.weight
    why = pattern.check((w.shape[0], w[0].numel()))
    if why is None and isinstance(pattern, Channel):
        try:
            channel_consumer(model, fqn)
        except ChannelPruningError as e:
            why = e.reason
    return why


def _is_prunable_kind(module: nn.Module) -> bool:
    """Whether ``module`` is a layer the Pruner considers: ``nn.Linear``, ``nn.Conv2d`` or a Hugging Face ``Conv1D``."""
    return isinstance(module, (nn.Linear, nn.Conv2d)) or _is_hf_conv1d(module)


def _shape(layer: MaskedLinear | MaskedConv2d) -> tuple[int, ...]:
    # A Conv1D's weight is reported as the [out_features, in_features] of the layer it packs into.
    return tuple(layer.out_first(layer.weight).shape)


def _noter(reached: set[str], fqn: str):
    def hook(grad: torch.Tensor) -> None:
        reached.add(fqn)

    return hook


def _scaler_skipped(scaler: torch.amp.GradScaler | None) -> bool:
    """Whether ``scaler`` found inf or NaN in this step's gradients (so it skipped the step)."""
    if scaler is None:
        return False
    if not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"Pruner.step: scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
    if not scaler.is_enabled():
        return False
    # NOTE: what GradScaler found lives in its per-optimizer state (torch/amp/grad_scaler.py,
    # also filled by slimops.amp.unscale_clip_grad_norm_) from unscale_ / step until update().
    found = [f for state in scaler._per_optimizer_states.values() for f in state["found_inf_per_device"].values()]
    if not found:
        raise RuntimeError(
            "Pruner.step(scaler): the scaler holds no inf check for this step; call pruner.step(scaler) after "
            "scaler.step(optimizer) and before scaler.update() (update() forgets whether it skipped the step)"
        )
    return bool(sum(f.to(found[0].device) for f in found).item())


def _check_prunable(layer: nn.Module) -> None:
    """Raise :class:`Unsupported` for a layer the Pruner cannot mask."""
    if _is_hf_conv1d(layer):
        check_convertible_linear(layer)
        return
    if isinstance(layer, nn.Conv2d):
        if type(layer) is not nn.Conv2d:
            raise Unsupported(f"{type(layer).__name__} subclasses nn.Conv2d (its forward would be lost)")
        if layer.padding_mode != "zeros":
            raise Unsupported(f"padding_mode={layer.padding_mode!r} (only 'zeros' is handled)")
        if not layer.weight.is_floating_point():
            raise Unsupported(f"weight dtype {layer.weight.dtype} is not floating point")
        return
    check_linear(layer)
