"""One-shot pruning with calibration data (:func:`oneshot`): magnitude, Wanda and SparseGPT,
layer by layer in forward order, each layer seeing the outputs of its pruned predecessors.

References:
    Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot" (arXiv:2301.00774); Sun et al. 2024, "A Simple and Effective Pruning Approach
    for Large Language Models" (Wanda, arXiv:2306.11695).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

from slimops.conversion import FilterFn, Unsupported, param_holders, places
from slimops.nn._convertible import _is_hf_conv1d
from slimops.prune.patterns import NM, Block, Channel, Pattern, Unstructured, get_pattern
from slimops.prune.pruner import _check_prunable, why_left_dense
from slimops.prune.report import LayerSparsity, SparsityReport
from slimops.prune.selection import _check_sparsity, select_masks

METHODS = ("magnitude", "wanda", "sparsegpt")


class _Stats:
    """One layer's calibration statistics: ``H = sum x^T x`` ``[K, K]``, ``sum x`` ``[K]`` and the token count."""

    def __init__(self, k: int, device: torch.device, dtype: torch.dtype):
        self.h = torch.zeros(k, k, device=device, dtype=dtype)
        self.s = torch.zeros(k, device=device, dtype=dtype)
        self.n = 0

    def hook(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).to(self.h.dtype)
        self.h.addmm_(x.T, x)
        self.s += x.sum(0)
        self.n += x.shape[0]


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: Pattern,
    block_size: int = 128,
    dampening: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one ``[N, K]`` weight with the Hessian ``H = X^T X`` ``[K, K]`` of its inputs.

    Computes in ``hessian``'s dtype; returns ``(new weight, keep-mask)``. The algorithm of
    Frantar & Alistarh 2023 (Algorithm 1): the upper Cholesky factor ``U`` of
    ``(H + λI)^-1`` (``λ = dampening * mean(diag(H))``) gives, column by column, the OBS
    saliency ``w^2 / U_ii^2`` of each weight and the update of the columns after it,
    ``W[:, j:] -= (w - q) / U_jj * U[j, j:]``. Columns are processed in blocks of
    ``block_size``: inside a block the updates are immediate; the rest of the matrix gets
    them in one lazy batch when the block is done. Masks are chosen as the columns come:

    * unstructured: at each block's start, the ``sparsity`` fraction of the block's weights
      of lowest saliency (the paper's adaptive mask selection);
    * N:M: at each group of ``m`` columns, the ``m - n`` of lowest saliency in every row
      (the column block is rounded down to a multiple of ``m``);
    * block ``b x b``: at each block's start, the ``sparsity`` fraction of its tiles of lowest
      mean saliency (the column block is rounded down to a multiple of ``b``, so tiles never
      straddle two column blocks). A tile is chosen with the updates of the columns before
      its block, as unstructured weights are.

    Inputs that are always zero (``H_ii = 0``) get ``H_ii = 1`` and a zero weight, as in the
    paper's code: they never reach the output, so their weights are pruned first.
    """
    dtype = hessian.dtype
    w = weight.detach().to(dtype).clone()
    rows, cols = w.shape
    h = hessian.detach().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h.diagonal().add_(dampening * torch.diag(h).mean())
    # NOTE: cholesky_inverse then cholesky(upper) is the paper's numerically stable route to
    # the rows of H^-1 that OBS needs after each elimination.
    try:
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError as e:
        raise ValueError(
            f"sparsegpt: the dampened Hessian is not positive definite ({e}); raise dampening "
            f"(now {dampening}) or calibrate on more tokens"
        ) from None
    # Tiles and N:M groups never straddle two column blocks: the block is a multiple of them.
    unit = pattern.size if isinstance(pattern, Block) else pattern.m if isinstance(pattern, NM) else 1
    block_size = max(unit, block_size // unit * unit)
    keep = torch.ones_like(w, dtype=torch.bool)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()
        u1 = u[i1:i2, i1:i2]
        d1 = torch.diag(u1)
        err = torch.zeros_like(w1)
        if not isinstance(pattern, NM):
            (keep[:, i1:i2],) = select_masks([w1.square() / d1.square()], [keep[:, i1:i2]], pattern, sparsity, "layer")
        for i in range(i2 - i1):
            if isinstance(pattern, NM) and i % pattern.m == 0:
                g = slice(i, i + pattern.m)
                (keep[:, i1 + g.start : i1 + g.stop],) = select_masks(
                    [w1[:, g].square() / d1[g].square()], [keep[:, i1 + g.start : i1 + g.stop]],
                    pattern, pattern.max_sparsity, "layer",
                )
            col = w1[:, i]
            q = torch.where(keep[:, i1 + i], col, torch.zeros_like(col))
            e = (col - q) / d1[i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            w1[:, i] = q
            err[:, i] = e
        w[:, i1:i2] = w1
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return w, keep


def wanda_scores(weight: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Wanda's ``|W_ij| * ||X_j||_2``; ``||X_j||_2^2`` is ``H_jj`` of ``H = X^T X``."""
    return weight.detach().to(hessian.dtype).abs() * torch.diag(hessian).clamp(min=0).sqrt()[None, :]


def _row_masks(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-masks pruning the ``round(sparsity * K)`` lowest scores of each row (Wanda's comparison group)."""
    count = round(sparsity * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :count], False)
    return keep


def output_error(old: torch.Tensor, new: torch.Tensor, bias: torch.Tensor | None, stats: _Stats) -> float:
    """``||X (W - W')^T||^2 / ||X W^T + b||^2`` over the recorded inputs, from ``H``, ``sum x`` and the count."""
    h, s = stats.h.double(), stats.s.double()
    old, delta = old.double(), (old - new).double()
    num = (delta @ h * delta).sum()
    den = (old @ h * old).sum()
    if bias is not None:
        b = bias.detach().double()
        den = den + 2 * (b @ (old @ s)) + stats.n * b.square().sum()
    return float(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def oneshot(
    model: nn.Module,
    calibration: Iterable,
    sparsity: float | None,
    pattern: str | Pattern = "unstructured",
    method: str = "sparsegpt",
    filter_fn: FilterFn | None = None,
    *,
    block_size: int = 128,
    dampening: float = 0.01,
    progress: bool | None = None,
) -> SparsityReport:
    """Prune the linear layers of ``model`` in place, in one shot, with calibration data.

    Layers (``nn.Linear`` and Hugging Face ``Conv1D``) are pruned one at a time, in the order
    the model first calls them. Each layer's inputs are recorded while the model runs on every
    calibration batch with the layers before it already pruned, so it is fitted to what its
    pruned predecessors give it. Only that layer's statistics are held: ``H = X^T X``
    ``[K, K]`` in fp32 (accumulated over every token), ``sum x`` and the token count. The
    model runs once to find the order and once per layer (in eval mode, without gradients;
    its training flags are restored).

    Methods (higher score = kept):

    * ``magnitude``: ``|W|``;
    * ``wanda``: ``|W_ij| * ||X_j||_2``, compared within each output row for unstructured
      (as the Wanda paper does), within each group for N:M, over the layer for blocks;
    * ``sparsegpt``: OBS with lazy block updates (:func:`sparsegpt_prune`), which also
      updates the kept weights to make up for the pruned ones.

    Layers left dense, with the reason in the report's ``skipped``: those a slimops sparse
    module cannot stand in for, those whose weight is tied to another module's, those whose
    shape the pattern cannot take (all as :class:`Pruner`), and those the model never called
    on the calibration batches. Packing is separate: ``slimops.convert(model,
    SparseConfig(0.5, "2:4"))`` then finds the zeros (magnitude selects exactly them) and
    packs each layer.

    Args:
        model: the model, changed in place (its weights; no module is swapped).
        calibration: batches, each a tensor (``model(x)``), a tuple or list (``model(*x)``)
            or a mapping (``model(**x)``, e.g. a tokenizer's output), on the model's device.
        sparsity: fraction of each layer's weights pruned, in [0, 1); for N:M, ``1 - n/m``
            (None picks it).
        pattern: ``"unstructured"``, ``"2:4"``, ``"n_m"``, ``"block"`` or an instance
            (``n_m(2, 4)``, ``block(32)``).
        method: ``"sparsegpt"``, ``"wanda"`` or ``"magnitude"``.
        filter_fn: ``filter_fn(module, fqn) -> bool`` selects the layers.
        block_size: SparseGPT's column block (lazy updates, adaptive mask selection).
        dampening: SparseGPT adds ``dampening * mean(diag(H))`` to the diagonal of ``H``.
        progress: show a transient progress bar; None: when stderr is a terminal.

    Returns:
        A :class:`SparsityReport`: per layer the sparsity, and in ``error`` the relative
        squared error ``||Y - Y'||^2 / ||Y||^2`` of its output on its recorded inputs.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"oneshot: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(method, str) or method.lower() not in METHODS:
        raise ValueError(f"oneshot: unknown method {method!r}; known methods: {', '.join(METHODS)}")
    method = method.lower()
    pattern = get_pattern(pattern)
    if isinstance(pattern, Channel):
        raise ValueError("oneshot: the channel pattern is not supported; use Pruner or prune_channels")
    if sparsity is None and isinstance(pattern, NM):
        sparsity = pattern.max_sparsity
    sparsity = _check_sparsity(sparsity, "oneshot: sparsity")
    if isinstance(pattern, NM) and not math.isclose(sparsity, pattern.max_sparsity):
        raise ValueError(f"oneshot: sparsity must be {pattern.max_sparsity} for {pattern!r} (1 - n/m), got {sparsity}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"oneshot: block_size must be a positive int, got {block_size!r}")
    if not isinstance(dampening, (int, float)) or isinstance(dampening, bool) or not dampening >= 0:
        raise ValueError(f"oneshot: dampening must be a number >= 0, got {dampening!r}")
    if isinstance(calibration, (torch.Tensor, Mapping)):
        raise TypeError("oneshot: calibration must be an iterable of batches (a list of tensors, tuples or dicts)")
    batches = list(calibration)
    if not batches:
        raise ValueError("oneshot: calibration holds no batch; give at least one")

    skipped: dict[str, str] = {}
    candidates: dict[str, nn.Module] = {}
    holders = param_holders(model)
    for names, m in places(model):
        fqn = names[0]
        if not (isinstance(m, nn.Linear) or _is_hf_conv1d(m)) or (filter_fn is not None and not filter_fn(m, fqn)):
            continue
        try:
            _check_prunable(m)
        except Unsupported as why:
            skipped[fqn] = str(why)
            continue
        why = why_left_dense(model, holders, fqn, m, pattern)
        if why is not None:
            skipped[fqn] = why
            continue
        candidates[fqn] = m

    order = _forward_order(model, batches, candidates)
    for fqn in candidates:
        if fqn not in order:
            skipped[fqn] = "the model never called it on the calibration batches (no inputs to prune it by)"

    from slimops.plan import _Progress, _show_progress

    layers: dict[str, LayerSparsity] = {}
    with _Progress(_show_progress(progress), len(order), "slimops.prune.oneshot") as bar:
        for fqn in order:
            layer = candidates[fqn]
            bar.show(fqn)
            layers[fqn] = _prune_layer(model, batches, layer, sparsity, pattern, method, block_size, dampening)
            bar.advance()
    return SparsityReport(layers, skipped, sparsity, 0, repr(pattern), method)


def _run(model: nn.Module, batches: list) -> None:
    """Run ``model`` on every batch, in eval mode and without gradients (the flags are restored)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                if isinstance(x, Mapping):
                    model(**x)
                elif isinstance(x, (tuple, list)):
                    model(*x)
                else:
                    model(x)
    finally:
        for m, training in modes.items():
            m.training = training


def _forward_order(model: nn.Module, batches: list, candidates: dict[str, nn.Module]) -> list[str]:
    """The fqns of ``candidates`` in the order the model first calls them on ``batches``."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(_first_call(order, fqn)) for fqn, m in candidates.items()]
    try:
        _run(model, batches)
    finally:
        for h in hooks:
            h.remove()
    return order


def _first_call(order: list[str], fqn: str) -> Callable:
    def hook(module: nn.Module, args: tuple) -> None:
        if fqn not in order:
            order.append(fqn)

    return hook


@torch.no_grad()
def _prune_layer(
    model: nn.Module, batches: list, layer: nn.Module, sparsity: float, pattern: Pattern, method: str,
    block_size: int, dampening: float,
) -> LayerSparsity:
    """Record ``layer``'s inputs on ``batches`` (its predecessors already pruned), then prune it in place."""
    transposed = _is_hf_conv1d(layer)
    w = layer.weight.detach()
    old = w.t() if transposed else w  # [out, in]
    stats = _Stats(old.shape[1], old.device, torch.float32)
    handle = layer.register_forward_pre_hook(stats.hook)
    try:
        _run(model, batches)
    finally:
        handle.remove()
    old32 = old.float()
    if method == "sparsegpt":
        new, keep = sparsegpt_prune(old32, stats.h, sparsity, pattern, block_size, dampening)
    else:
        scores = old32.abs() if method == "magnitude" else wanda_scores(old32, stats.h)
        if method == "wanda" and isinstance(pattern, Unstructured):
            keep = _row_masks(scores, sparsity)
        else:
            (keep,) = select_masks([scores], [torch.ones_like(scores, dtype=torch.bool)], pattern, sparsity, "layer")
        new = old32
    new = torch.where(keep, new, torch.zeros_like(new))
    error = output_error(old32, new, layer.bias, stats)
    layer.weight.copy_((new.t() if transposed else new).to(w.dtype))
    return LayerSparsity(tuple(old.shape), keep.numel(), int((~keep).sum()), type(layer).__name__, error)
