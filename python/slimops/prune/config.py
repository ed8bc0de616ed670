""":class:`SparseConfig` for ``slimops.convert``: one-shot pruning of each ``nn.Linear`` into its
packed form, and the ``nn.Linear`` handler that does it."""

from __future__ import annotations

import dataclasses

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
    the quantized layers keep the zeros (no slimops kernel fuses sparsity with int8 or fp8,
    so packed sparse layers are quantized dense, as ``slimops_summary.fallbacks`` says).
    Meeting a layer that is already quantized, half precision or observed is an error.

    Args:
        sparsity: fraction of pruned weights, in [0, 1); must be 0.5 for ``"2:4"``.
        pattern: ``"unstructured"``, ``"2:4"`` or ``"block"``.
        block_size: tile size for ``"block"``: 16, 32, 64 or 128.
        criterion: ``"magnitude"``, ``"random"``, or a gradient criterion (``"gradient"``,
            ``"taylor"``, ``"fisher"``), which reads each weight's current ``.grad``
            (run a backward pass before converting).
    """

    sparsity: float
    pattern: str = "unstructured"
    block_size: int = 64
    criterion: str = "magnitude"

    def __post_init__(self):
        _check_sparsity(self.sparsity, "SparseConfig: sparsity")
        if self.pattern not in _CONFIG_PATTERNS:
            raise ValueError(f"SparseConfig: unknown pattern {self.pattern!r}; known patterns: {', '.join(_CONFIG_PATTERNS)}")
        if self.pattern == "2:4" and self.sparsity != 0.5:
            raise ValueError(f"SparseConfig: sparsity must be 0.5 for pattern '2:4', got {self.sparsity}")
        if isinstance(self.block_size, bool) or self.block_size not in BLOCK_SIZES:
            raise ValueError(f"SparseConfig: block_size must be one of {BLOCK_SIZES}, got {self.block_size!r}")
        get_criterion(self.criterion)  # raises with the known names

    def make_pattern(self) -> Pattern:
        return {"unstructured": Unstructured, "2:4": lambda: NM(2, 4), "block": lambda: Block(self.block_size)}[
            self.pattern
        ]()


@register_handler(SparseConfig, nn.Linear)
def _sparse_linear(module: nn.Linear, config: SparseConfig) -> nn.Module:
    check_linear(module)
    pattern = config.make_pattern()
    why = pattern.check(tuple(module.weight.shape))
    if why is not None:
        raise Unsupported(why)
    if config.pattern == "2:4" and module.in_features % _S24_K_MULTIPLE:
        raise Unsupported(f"2:4 packing needs in_features divisible by {_S24_K_MULTIPLE}, got {module.in_features}")
    if config.pattern == "2:4" and not _s24_runs(module.weight):
        raise Unsupported(
            f"the 2:4 kernel on {module.weight.device.type} takes float16/bfloat16 weights, not "
            f"{module.weight.dtype}: convert the model to half precision first"
        )
    weight = module.weight.detach()
    if not torch.isfinite(weight).all():
        raise Unsupported("weight holds inf or NaN values")
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
    (mask,) = select_masks([scores], [keep], pattern, config.sparsity, "layer")
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
