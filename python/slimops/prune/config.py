""":class:`SparseConfig` for ``slimops.convert``: one-shot pruning of each ``nn.Linear`` into its
packed form, and the ``nn.Linear`` handler that does it. With a calibration ``method``, the
config's :meth:`~SparseConfig.prepare_layers` runs :func:`slimops.prune.oneshot` over exactly the
layers ``convert`` selected, before the handler packs the zeros it left."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
from torch import nn

from slimops.conversion import Config, Unsupported, register_handler
from slimops.nn.half_linear import HalfLinear
from slimops.nn.quantized import ObservedLinear, _QuantizedLinear
from slimops.nn.sparse import BLOCK_SIZES, BlockSparseLinear, MaskedLinear, Sparse24Linear, check_linear
from slimops.prune.criteria import get_criterion
from slimops.prune.packing import _S24_K_MULTIPLE, _s24_runs, pack_linear
from slimops.prune.patterns import NM, Block, Pattern, Unstructured
from slimops.prune.selection import _check_sparsity, select_masks

_CONFIG_PATTERNS = ("unstructured", "2:4", "block")


@dataclasses.dataclass
class SparseConfig(Config):
    """One-shot pruning of each ``nn.Linear`` into its packed form, for ``slimops.convert``.

    Each layer is pruned on its own (layer scope), then packed as
    :meth:`Pruner.finalize` would: 2:4 -> :class:`Sparse24Linear`; block with at least
    half the tiles empty -> :class:`BlockSparseLinear`; otherwise a dense ``nn.Linear``
    holding the zeros. Layers whose shape the pattern cannot take, and layers that are
    sparse already, are skipped, with the reason, in ``model.slimops_summary.skipped``.

    Compose it *before* a quantization config, ``[SparseConfig(...), Int8WeightOnlyConfig()]``:
    the quantized layers keep the zeros. Block-sparse layers with ``Int8WeightOnlyConfig`` stay
    block-sparse (:class:`~slimops.nn.BlockSparseInt8Linear`, one fused kernel); other packed sparse
    layers are quantized dense where no kernel fuses the two, as ``slimops_summary.fallbacks`` says.
    Meeting a layer that is already quantized, half precision or observed is an error.

    With ``method`` (``"sparsegpt"``, ``"wanda"`` or ``"magnitude"``) and ``calibration``,
    ``convert`` first prunes the layers it selected with :func:`slimops.prune.oneshot`, in
    forward order, each layer's inputs recorded with its predecessors already pruned; the
    handler then packs exactly the zeros the method left. Layers ``oneshot`` cannot prune
    (tied, never called on the calibration batches) are skipped, with the reason. Use it in a
    list with quantization as above: ``[SparseConfig(0.5, "2:4", method="sparsegpt",
    calibration=batches), Int8DynamicConfig()]``.

    Args:
        sparsity: fraction of pruned weights, in [0, 1); must be 0.5 for ``"2:4"``.
        pattern: ``"unstructured"``, ``"2:4"`` or ``"block"``.
        block_size: tile size for ``"block"``: 16, 32, 64 or 128.
        criterion: ``"magnitude"``, ``"random"``, or a gradient criterion (``"gradient"``,
            ``"taylor"``, ``"fisher"``), which reads each weight's current ``.grad``
            (run a backward pass before converting). Per layer, without data; ``method``
            replaces it.
        method: ``"sparsegpt"``, ``"wanda"`` or ``"magnitude"``: one-shot pruning with
            ``calibration`` (see above); None: the per-layer ``criterion``.
        calibration: batches for ``method``, as :func:`slimops.prune.oneshot` takes them
            (tensors, tuples or dicts), on the model's device.
        dampening: SparseGPT's dampening of the Hessian (see :func:`slimops.prune.oneshot`).
    """

    sparsity: float
    pattern: str = "unstructured"
    block_size: int = 64
    criterion: str = "magnitude"
    method: str | None = None
    # Batches are data, not settings: not printed, not compared.
    calibration: list | None = dataclasses.field(default=None, repr=False, compare=False)
    dampening: float = 0.01

    def __post_init__(self):
        _check_sparsity(self.sparsity, "SparseConfig: sparsity")
        if self.pattern not in _CONFIG_PATTERNS:
            raise ValueError(f"SparseConfig: unknown pattern {self.pattern!r}; known patterns: {', '.join(_CONFIG_PATTERNS)}")
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError(f"SparseConfig: sparsity must be 0.5 for pattern '2:4', got {self.sparsity}")
        if isinstance(self.block_size, bool) or self.block_size not in BLOCK_SIZES:
            raise ValueError(f"SparseConfig: block_size must be one of {BLOCK_SIZES}, got {self.block_size!r}")
        get_criterion(self.criterion)  # raises with the known names
        self._check_method()

    def _check_method(self) -> None:
        from slimops.prune.oneshot import METHODS

        if self.method is None:
            if self.calibration is not None:
                raise ValueError(
                    "SparseConfig: calibration is used by a one-shot method; pass method='sparsegpt', "
                    "'wanda' or 'magnitude' with it"
                )
            return
        if not isinstance(self.method, str) or self.method not in METHODS:
            raise ValueError(f"SparseConfig: unknown method {self.method!r}; known methods: {', '.join(METHODS)}")
        if self.criterion != "magnitude":
            raise ValueError(
                f"SparseConfig: criterion {self.criterion!r} and method {self.method!r} both choose the weights "
                "to prune; give one of them"
            )
        if self.calibration is None:
            raise ValueError(
                f"SparseConfig: method {self.method!r} needs calibration=[batches] (it records each layer's "
                "inputs); without data use criterion='magnitude'"
            )
        if isinstance(self.calibration, (torch.Tensor, Mapping)) or not hasattr(self.calibration, "__iter__"):
            raise TypeError(
                "SparseConfig: calibration must be an iterable of batches (a list of tensors, tuples or dicts), "
                f"got {type(self.calibration).__name__}"
            )
        self.calibration = list(self.calibration)  # a generator would be spent by the first convert
        if not self.calibration:
            raise ValueError("SparseConfig: calibration holds no batch; give at least one")
        d = self.dampening
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not (d >= 0 and math.isfinite(d)):
            raise ValueError(f"SparseConfig: dampening must be a finite number >= 0, got {d!r}")

    def needs_model(self) -> bool:
        return self.method is not None

    def prepare_layers(self, model: nn.Module, layers: list[tuple[list[str], nn.Module]]) -> dict[int, str]:
        """With ``method``: prune ``layers`` in place with :func:`slimops.prune.oneshot` (see the class).

        Returns ``{id(module): why}`` for the layers left dense: those the handler would refuse
        (checked first, so they are not pruned) and those ``oneshot`` skipped.
        """
        from slimops.nn._convertible import _is_hf_conv1d, check_convertible_linear
        from slimops.prune.oneshot import oneshot

        refused: dict[int, str] = {}
        chosen: set[int] = set()
        for _, module in layers:
            conv1d = _is_hf_conv1d(module)
            if not (isinstance(module, nn.Linear) or conv1d):
                continue  # sparse or quantized layers: their own handler says why
            try:
                (check_convertible_linear if conv1d else check_linear)(module)
            except Unsupported as e:
                refused[id(module)] = str(e)
                continue
            why = _why_unsupported(module.weight.t() if conv1d else module.weight, self)
            if why is None:
                chosen.add(id(module))
            else:
                refused[id(module)] = why
        if not chosen:
            return refused
        report = oneshot(
            model, self.calibration, self.sparsity, self.make_pattern(), self.method,
            filter_fn=lambda m, fqn: id(m) in chosen, dampening=self.dampening,
        )
        for fqn, why in report.skipped.items():
            refused[id(model.get_submodule(fqn))] = f"one-shot {self.method}: {why}"
        return refused

    def make_pattern(self) -> Pattern:
        return {"unstructured": Unstructured, "2:4": lambda: NM(2, 4), "block": lambda: Block(self.block_size)}[
            self.pattern
        ]()


def _why_unsupported(weight: torch.Tensor, config: SparseConfig) -> str | None:
    """Why the packed form of ``config`` cannot hold this ``[out, in]`` weight, or None."""
    why = config.make_pattern().check(tuple(weight.shape))
    if why is not None:
        return why
    if config.pattern == "2:4" and weight.shape[1] % _S24_K_MULTIPLE:
        return f"2:4 packing needs in_features divisible by {_S24_K_MULTIPLE}, got {weight.shape[1]}"
    if config.pattern == "2:4" and not _s24_runs(weight):
        return (
            f"the 2:4 kernel on {weight.device.type} takes float16/bfloat16 weights, not "
            f"{weight.dtype}: convert the model to half precision first"
        )
    if not torch.isfinite(weight.detach()).all():
        return "weight holds inf or NaN values"
    return None


@register_handler(SparseConfig, nn.Linear)
def _sparse_linear(module: nn.Linear, config: SparseConfig) -> nn.Module:
    check_linear(module)
    why = _why_unsupported(module.weight, config)
    if why is not None:
        raise Unsupported(why)
    weight = module.weight.detach()
    if config.method is not None:
        # prepare_layers pruned this layer with calibration data: pack exactly its zeros.
        mask = weight != 0
    else:
        crit = get_criterion(config.criterion)
        if crit.needs_grad:
            if module.weight.grad is None:
                raise ValueError(
                    f"SparseConfig: criterion {config.criterion!r} reads each weight's .grad, but this layer has none; "
                    "run a backward pass on calibration data before slimops.convert"
                )
            crit.observe_grad(module.weight, module.weight.grad)
        scores = crit.scores(module.weight)
        keep = torch.ones_like(weight, dtype=torch.bool)
        (mask,) = select_masks([scores], [keep], config.make_pattern(), config.sparsity, "layer")
    bias = None if module.bias is None else module.bias.detach()
    # A block pattern packs with its own tile: a coarser one would store the zeros of pruned
    # tiles, and its size would depend on the weights (a saved file would fit no other skeleton).
    tile = config.block_size if config.pattern == "block" else None
    packed, _ = pack_linear(weight, bias, mask, block_size=tile)
    return packed


@register_handler(SparseConfig, _QuantizedLinear)
@register_handler(SparseConfig, HalfLinear)
@register_handler(SparseConfig, ObservedLinear)
def _sparse_after_conversion(module: nn.Module, config: SparseConfig) -> nn.Module:
    # An error, not a skip: the user asked for sparsity and would silently get none.
    raise ValueError(
        f"SparseConfig cannot prune a {type(module).__name__}: pruning works on float weights. Apply "
        "SparseConfig before quantization or HalfConfig (e.g. [SparseConfig(0.5), Int8WeightOnlyConfig()]), "
        "or keep this layer out with filter_fn"
    )


@register_handler(SparseConfig, MaskedLinear)
@register_handler(SparseConfig, BlockSparseLinear)
@register_handler(SparseConfig, Sparse24Linear)
def _sparse_already(module: nn.Module, config: SparseConfig) -> nn.Module:
    hint = ": call Pruner.finalize() to pack it" if isinstance(module, MaskedLinear) else ""
    raise Unsupported(f"{type(module).__name__} is sparse already{hint}")
