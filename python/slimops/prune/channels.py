"""Channel surgery: following a layer's output channels along an ``nn.Sequential`` chain to their
consumer, removing them physically (:func:`remove_channels`), and one-shot :func:`prune_channels`."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from slimops.conversion import FilterFn, param_holders, tied_elsewhere
from slimops.nn._convertible import _is_hf_conv1d
from slimops.nn.sparse import MaskedLinear
from slimops.prune.criteria import Criterion, get_criterion, require_observed
from slimops.prune.patterns import Channel
from slimops.prune.selection import _as_2d, _check_sparsity, select_masks


class ChannelPruningError(ValueError):
    """A layer's output channels cannot be removed; ``.reason`` says why, the message names the layer too."""

    def __init__(self, fqn: str, reason: str):
        super().__init__(f"cannot remove output channels of {fqn or 'the model'}: {reason}")
        self.fqn = fqn
        self.reason = reason


# Modules that act on each channel separately (and keep the channel count), so a removed
# channel can be followed through them.
_ELEMENTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
)


@dataclasses.dataclass
class _Chain:
    producer: nn.Module
    between: list[nn.Module]  # element-wise modules and BatchNorms, in order
    consumer: nn.Module
    consumer_fqn: str


def _uses(model: nn.Module) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    return counts


def channel_consumer(model: nn.Module, fqn: str) -> _Chain:
    """Follow the output channels of the Linear / Conv2d at ``fqn`` to the one layer that reads them.

    Channels can be removed when the layer sits in an ``nn.Sequential`` (plain
    forward) and is followed, through element-wise activations, dropout and a
    BatchNorm of the matching kind, by a Linear (after a Linear) or an ungrouped
    Conv2d (after a Conv2d), none of them used anywhere else, and neither weight
    tied to another module's (removing channels replaces the weights).

    Raises:
        ChannelPruningError: with the reason when the dependency is not that clear.
    """
    producer = model.get_submodule(fqn)
    if _is_hf_conv1d(producer) or (isinstance(producer, MaskedLinear) and producer.transposed):
        raise ChannelPruningError(fqn, "a Hugging Face Conv1D's channels are not removed (only nn.Linear, nn.Conv2d)")
    if type(producer) not in (nn.Linear, nn.Conv2d, MaskedLinear):
        raise ChannelPruningError(fqn, f"{type(producer).__name__} is not an nn.Linear or nn.Conv2d")
    holders = param_holders(model)
    tied = tied_elsewhere(holders, producer)
    if tied:
        raise ChannelPruningError(fqn, f"its weight is tied to {', '.join(tied)} (the same Parameter)")
    if isinstance(producer, nn.Conv2d) and producer.groups != 1:
        raise ChannelPruningError(fqn, f"grouped convolution (groups={producer.groups}) ties outputs to inputs")
    parent_fqn, _, name = fqn.rpartition(".")
    parent = model.get_submodule(parent_fqn) if parent_fqn else model
    where = parent_fqn or "the model"
    if not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward:
        raise ChannelPruningError(
            fqn,
            f"its output goes wherever {type(parent).__name__}.forward sends it; only chains inside an "
            "nn.Sequential are followed",
        )
    uses = _uses(model)
    if uses[id(producer)] > 1:
        raise ChannelPruningError(fqn, "the module is used at more than one place in the model")
    names = list(parent._modules)
    linear = isinstance(producer, (nn.Linear, MaskedLinear))
    channels = producer.weight.shape[0]
    between: list[nn.Module] = []
    for child in names[names.index(name) + 1 :]:
        m = parent._modules[child]
        child_fqn = f"{parent_fqn}.{child}" if parent_fqn else child
        if uses[id(m)] > 1:
            raise ChannelPruningError(fqn, f"{child_fqn} ({type(m).__name__}) is used at more than one place")
        bn = nn.BatchNorm1d if linear else nn.BatchNorm2d
        if isinstance(m, _ELEMENTWISE) or (type(m) is bn and m.num_features == channels):
            between.append(m)
            continue
        if type(m) in ((nn.Linear, MaskedLinear) if linear else (nn.Conv2d,)):
            if isinstance(m, MaskedLinear) and m.transposed:
                raise ChannelPruningError(fqn, f"its consumer {child_fqn} holds a Conv1D's weight (not handled)")
            k = m.weight.shape[1]
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                raise ChannelPruningError(fqn, f"its consumer {child_fqn} is a grouped convolution")
            tied = tied_elsewhere(holders, m)
            if tied:
                raise ChannelPruningError(fqn, f"its consumer {child_fqn}'s weight is tied to {', '.join(tied)}")
            if k != channels:
                raise ChannelPruningError(fqn, f"{child_fqn} reads {k} channels, not the {channels} produced")
            return _Chain(producer, between, m, child_fqn)
        raise ChannelPruningError(
            fqn,
            f"{child_fqn} ({type(m).__name__}) sits between it and the next layer; only element-wise "
            f"activations, dropout and {bn.__name__} are followed",
        )
    raise ChannelPruningError(
        fqn,
        f"its output leaves {where} (no layer reads it inside the nn.Sequential), so who consumes "
        "its channels is unknown",
    )


@torch.no_grad()
def _removed_constants(chain: _Chain, removed: torch.Tensor) -> torch.Tensor:
    """What each removed channel feeds the consumer: the producer's bias (its weights count as zero)
    through the modules in between, in eval mode."""
    p = chain.producer
    c = p.weight.shape[0]
    z = p.weight.new_zeros((1, c) if not isinstance(p, nn.Conv2d) else (1, c, 1, 1))
    if p.bias is not None:
        z.view(-1)[:] = p.bias.detach()
    for m in chain.between:
        was = m.training
        m.eval()
        z = m(z)
        m.train(was)
    return z.reshape(-1)[removed]


def _param_like(old: nn.Parameter | None, new: torch.Tensor | None):
    return None if new is None else nn.Parameter(new.contiguous(), requires_grad=old.requires_grad)


@torch.no_grad()
def remove_channels(model: nn.Module, fqn: str, keep: torch.Tensor) -> str:
    """Remove the output channels of ``fqn`` not in ``keep``, and the matching inputs of its consumer.

    A removed channel is treated as if its weights were zero: it then outputs a
    constant (the bias, through the activation and BatchNorm in between), whose
    contribution is folded into the consumer's bias. That is exact for a Linear
    consumer and for a Conv2d without zero padding; NOTE: next to the border of a
    zero-padded Conv2d the folded constant is slightly off (the padding would have
    read zeros there). BatchNorm folding uses the running statistics (eval mode).
    Parameters are replaced: build the optimizer afterwards.

    Args:
        model: the model holding the layer.
        fqn: the producer's name in ``model``.
        keep: bool ``[out_channels]`` or the int indices of the channels to keep.

    Returns:
        the consumer's name. Raises :class:`ChannelPruningError` when the chain is not clear.
    """
    chain = channel_consumer(model, fqn)
    p, q = chain.producer, chain.consumer
    c = p.weight.shape[0]
    if keep.dtype == torch.bool:
        if keep.shape != (c,):
            raise ValueError(f"remove_channels: keep mask must be [{c}], got {tuple(keep.shape)}")
        idx = keep.nonzero().reshape(-1)
    else:
        idx = keep.reshape(-1).long().unique()
        if idx.numel() and (idx.min() < 0 or idx.max() >= c):
            raise ValueError(f"remove_channels: keep indices must be in [0, {c})")
    if idx.numel() == 0:
        raise ValueError(f"remove_channels: {fqn} would keep no channel")
    idx = idx.to(p.weight.device)
    removed = torch.ones(c, dtype=torch.bool, device=idx.device)
    removed[idx] = False

    # Everything new is computed first; the modules change only at the end.
    const = _removed_constants(chain, removed)
    qw = q.weight.detach()
    qb = None if q.bias is None else q.bias.detach().clone()
    if removed.any() and bool((const != 0).any()):
        w_removed = qw[:, removed]
        fold = (w_removed.reshape(w_removed.shape[0], w_removed.shape[1], -1).sum(-1) * const).sum(1)
        qb = fold if qb is None else qb + fold
    new_q_weight = qw[:, idx]

    p.weight = _param_like(p.weight, p.weight.detach()[idx])
    if p.bias is not None:
        p.bias = _param_like(p.bias, p.bias.detach()[idx])
    if isinstance(p, MaskedLinear):
        p.mask = p.mask[idx].contiguous()
    elif isinstance(p, nn.Linear):
        p.out_features = idx.numel()
    else:
        p.out_channels = idx.numel()
    for m in chain.between:
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.affine:
                m.weight = _param_like(m.weight, m.weight.detach()[idx])
                m.bias = _param_like(m.bias, m.bias.detach()[idx])
            if m.running_mean is not None:
                m.running_mean = m.running_mean[idx].contiguous()
                m.running_var = m.running_var[idx].contiguous()
            m.num_features = idx.numel()
    q.weight = _param_like(q.weight, new_q_weight)
    if qb is not None:
        q.bias = nn.Parameter(qb.contiguous(), requires_grad=q.weight.requires_grad)
    if isinstance(q, MaskedLinear):
        q.mask = q.mask[:, idx].contiguous()
    elif isinstance(q, nn.Linear):
        q.in_features = idx.numel()
    else:
        q.in_channels = idx.numel()
    return chain.consumer_fqn


@dataclasses.dataclass
class ChannelPruneResult:
    """What :func:`prune_channels` did: ``{fqn: (channels before, after)}`` and ``{fqn: why skipped}``."""

    pruned: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)


def prune_channels(
    model: nn.Module,
    sparsity: float,
    criterion: str | Criterion = "magnitude",
    scope: str = "layer",
    filter_fn: FilterFn | None = None,
) -> ChannelPruneResult:
    """One-shot channel pruning of every Linear and Conv2d whose consumer is clear, in place.

    Each selected layer loses the output channels of lowest mean importance
    (``round(sparsity * channels)`` per layer, or ranked across layers for
    ``scope="global"``; at least one channel stays), and its consumer the
    matching inputs (:func:`remove_channels`). Layers whose dependency is not
    clear (and Hugging Face ``Conv1D`` layers) are left alone and listed with the
    reason in ``result.skipped``. Gradient criteria must have observed the model
    first (``criterion.observe(model)``).
    """
    sparsity = _check_sparsity(sparsity)
    crit = get_criterion(criterion)
    if scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    result = ChannelPruneResult()
    chosen: list[tuple[str, nn.Module]] = []
    for fqn, m in model.named_modules():
        linear_kind = type(m) in (nn.Linear, nn.Conv2d) or _is_hf_conv1d(m)  # a Conv1D is skipped, with why
        if not linear_kind or (filter_fn is not None and not filter_fn(m, fqn)):
            continue
        try:
            channel_consumer(model, fqn)
        except ChannelPruningError as why:
            result.skipped[fqn] = why.reason
            continue
        chosen.append((fqn, m))
    if not chosen:
        return result
    require_observed(crit, {fqn: m.weight for fqn, m in chosen})
    scores = [crit.scores(m.weight) for _, m in chosen]
    keeps = [torch.ones_like(s, dtype=torch.bool) for s in scores]
    masks = select_masks(scores, keeps, Channel(), sparsity, scope)
    for (fqn, m), mask in zip(chosen, masks):
        rows = _as_2d(mask).any(dim=1)
        before = m.weight.shape[0]
        remove_channels(model, fqn, rows)
        result.pruned[fqn] = (before, int(rows.sum()))
    return result
