"""``slimops.report(original, converted, example_inputs)``: what compression did to a model.

Per layer: the module type before and after, the bytes it holds, the sparsity of
its weight, and the SQNR of its output against the original layer. For the whole
model: size, latency and, when an ``eval_fn`` is given, a metric, before and after.

The per-layer SQNR is measured in isolation: the original model runs once with
forward hooks that record every input and output of each reported layer, then
the converted layer at the same fqn runs on those *recorded* inputs. The error
of one layer therefore never includes the error of the layers before it (an
end-to-end comparison would blame the last layer for everything upstream).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from slimops import _measure
from slimops.nn import routing
from slimops.nn.packed import PackedLinear

EvalFn = Callable[[nn.Module], "float | dict[str, float]"]


@dataclasses.dataclass
class LayerReport:
    """One layer of :class:`CompressionReport`.

    ``sparsity`` is the fraction of zeros in the converted layer's effective dense
    weight (None when it has no weight). ``sqnr_db`` is
    ``10 log10(sum(ref^2) / sum((ref - out)^2))`` over every call of the layer in one
    forward: ``inf`` when the outputs are identical, None when they cannot be
    compared or are empty (``note`` says why).
    """

    name: str
    type_before: str
    type_after: str | None  # None: no module at this fqn in the converted model
    bytes_before: int
    bytes_after: int | None
    sparsity: float | None
    sqnr_db: float | None
    note: str | None = None


@dataclasses.dataclass
class CompressionReport:
    """What :func:`report` measured. ``size_ratio`` and ``latency_ratio`` are after / before:
    below 1 means smaller / faster."""

    layers: list[LayerReport]
    size_before: int  # bytes of every parameter and buffer, shared tensors counted once
    size_after: int
    latency_before_s: float  # median of the timed forwards
    latency_after_s: float
    metric_before: float | dict[str, float] | None
    metric_after: float | dict[str, float] | None
    device: str

    @property
    def size_ratio(self) -> float:
        return self.size_after / self.size_before if self.size_before else math.nan

    @property
    def latency_ratio(self) -> float:
        return self.latency_after_s / self.latency_before_s if self.latency_before_s else math.nan

    def __getitem__(self, name: str) -> LayerReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-safe data (what :meth:`to_json` writes).

        NOTE: JSON has no infinity, so non-finite floats become strings: ``"inf"``
        (identical outputs), ``"-inf"``, ``"nan"``. None stays null (not comparable).
        """
        d = dataclasses.asdict(self)
        d["size_ratio"] = self.size_ratio
        d["latency_ratio"] = self.latency_ratio
        return _measure.json_safe(d)

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        """The report as JSON text, also written to ``path`` when given.

        Args:
            path: file to write (None: only return the text).
            indent: JSON indentation.
        """
        return _measure.write_json(self.to_dict(), path, indent)

    def table(self):
        """A ``rich.table.Table`` of the layers (the whole-model summary is printed below it by :meth:`print`)."""
        from rich.table import Table

        t = Table(title=f"slimops report · {self.device}", title_justify="left")
        t.add_column("layer")
        t.add_column("before")
        t.add_column("after")
        for col in ("bytes before", "bytes after", "sparsity", "SQNR dB"):
            t.add_column(col, justify="right")
        has_note = any(layer.note for layer in self.layers)
        if has_note:
            t.add_column("note", overflow="fold")
        for layer in self.layers:
            changed = layer.type_after != layer.type_before
            row = [
                layer.name or "(model)",
                layer.type_before,
                ("[bold]" if changed else "") + (layer.type_after or "-"),
                _fmt_bytes(layer.bytes_before),
                _fmt_bytes(layer.bytes_after),
                "-" if layer.sparsity is None else f"{layer.sparsity:.1%}",
                _fmt_sqnr(layer.sqnr_db),
            ]
            t.add_row(*row, *([layer.note or ""] if has_note else []))
        return t

    def _summary(self) -> list[str]:
        parts = [
            f"size {_fmt_bytes(self.size_before)} -> {_fmt_bytes(self.size_after)} (x{self.size_ratio:.3f})",
            (
                f"latency {_fmt_seconds(self.latency_before_s)} -> {_fmt_seconds(self.latency_after_s)} "
                f"(x{self.latency_ratio:.3f}, <1 is faster)"
            ),
        ]
        if self.metric_before is not None or self.metric_after is not None:
            parts.append(f"metric {_fmt_metric(self.metric_before)} -> {_fmt_metric(self.metric_after)}")
        return parts

    def __rich__(self):
        from rich.console import Group
        from rich.text import Text

        return Group(self.table(), *(Text(line) for line in self._summary()))

    def __str__(self) -> str:
        lines = [f"{'layer':<24} {'before':<20} {'after':<20} {'bytes':>22} {'sparsity':>9} {'SQNR dB':>8}"]
        for layer in self.layers:
            size = f"{_fmt_bytes(layer.bytes_before)} -> {_fmt_bytes(layer.bytes_after)}"
            sparsity = "-" if layer.sparsity is None else f"{layer.sparsity:.1%}"
            lines.append(
                f"{layer.name or '(model)':<24} {layer.type_before:<20} {layer.type_after or '-':<20} "
                f"{size:>22} {sparsity:>9} {_fmt_sqnr(layer.sqnr_db):>8}"
            )
        return "\n".join(lines + self._summary())

    def print(self, console=None) -> None:
        """Print :meth:`table`.

        Args:
            console: a ``rich.console.Console`` (stdout if None).
        """
        console = _measure.wide_console(console)
        console.print(self)

    def plot(self, path: str | os.PathLike) -> None:
        """Write a PNG: per-layer bytes before/after (top) and per-layer SQNR (bottom).

        An ``inf`` SQNR (identical output) is drawn as a hatched bar 10 dB above the
        highest finite one; a layer without SQNR gets no bar.

        Args:
            path: the PNG file to write.
        """
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as e:  # not a dependency of slimops: only this method needs it
            raise ImportError("CompressionReport.plot needs matplotlib: pip install matplotlib") from e

        names = [layer.name or "(model)" for layer in self.layers]
        x = list(range(len(names)))
        # Figure + FigureCanvasAgg rather than pyplot: no global state, never needs a display.
        fig = Figure(figsize=(max(6.0, 0.5 * len(names) + 2), 7), layout="constrained")
        FigureCanvasAgg(fig)
        ax_size, ax_err = fig.subplots(2, 1, sharex=True)

        w = 0.4
        before = [layer.bytes_before / 1024 for layer in self.layers]
        after = [(layer.bytes_after or 0) / 1024 for layer in self.layers]
        ax_size.bar([i - w / 2 for i in x], before, w, label="before")
        ax_size.bar([i + w / 2 for i in x], after, w, label="after")
        ax_size.set_ylabel("KiB")
        ax_size.set_title(
            f"size x{self.size_ratio:.3f}, latency x{self.latency_ratio:.3f} ({self.device})", loc="left"
        )
        ax_size.legend()

        finite = [layer.sqnr_db for layer in self.layers if layer.sqnr_db is not None and math.isfinite(layer.sqnr_db)]
        cap = (max(finite) if finite else 0.0) + 10.0
        for i, layer in enumerate(self.layers):
            s = layer.sqnr_db
            if s is None or math.isnan(s):
                continue
            if math.isinf(s) and s > 0:
                ax_err.bar(i, cap, 0.6, color="lightgray", hatch="//", edgecolor="gray")
                ax_err.text(i, cap, "inf", ha="center", va="bottom")
            else:
                ax_err.bar(i, s, 0.6, color="tab:green")
        ax_err.set_ylim(top=cap * 1.15 if cap > 0 else None)  # room for the "inf" labels
        ax_err.set_ylabel("output SQNR (dB)")
        ax_err.set_xticks(x, names, rotation=45, ha="right")
        fig.savefig(path, format="png")


def report(
    original: nn.Module,
    converted: nn.Module,
    example_inputs: tuple | list | torch.Tensor | Mapping[str, Any],
    eval_fn: EvalFn | None = None,
    *,
    repeats: int = 20,
    warmup: int = 3,
) -> CompressionReport:
    """Compare ``converted`` with ``original``: per-layer size, sparsity and error; model size, latency, metric.

    Layers reported: every leaf module of ``original`` that holds parameters or
    buffers, and every fqn whose module type differs between the two models (the
    outermost one when a whole block was replaced; leaves inside it are then not
    listed). The per-layer rows need not add up to the model size.

    Both models run under ``torch.no_grad`` in their *current* train/eval
    mode: nothing is switched for you. Call ``.eval()`` on both first, or dropout
    makes every SQNR noise (a model in training mode gets a warning). The inputs
    are passed as they are: put them on the models' device.

    Args:
        original: the uncompressed model.
        converted: the compressed model (e.g. ``slimops.convert(copy.deepcopy(original), config)``);
            its layers are matched to ``original``'s by fqn.
        example_inputs: the positional arguments of one forward as a tuple (a lone
            tensor is wrapped), or a dict of keyword arguments (``{"input_ids": ...}``).
            Every reported layer's inputs and outputs are kept in memory: keep it small.
        eval_fn: ``eval_fn(model) -> float | dict[str, float]`` (a one-element tensor is taken
            as its number; anything else, e.g. a model's output, is an error), called once on each model
            (outside ``no_grad``: it sets up its own grad mode and data). A train/eval
            switch it makes is undone afterwards.
        repeats: timed forwards per model, the two models taking turns; the latency is
            their median (with a CUDA synchronize around each when the model is on a GPU).
        warmup: untimed forwards per model before timing.

    Returns:
        A :class:`CompressionReport`; ``.print()`` shows it, ``.to_json(path)`` and
        ``.plot(path)`` save it.
    """
    for arg, value in (("original", original), ("converted", converted)):
        if not isinstance(value, nn.Module):
            raise TypeError(f"slimops.report: {arg} must be a torch.nn.Module, got {type(value).__name__}")
    args, kwargs = _measure.split_inputs(example_inputs, "slimops.report")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"slimops.report: eval_fn must be callable or None, got {type(eval_fn).__name__}")
    _measure.check_counts("slimops.report", repeats=repeats, warmup=warmup)
    if original is converted:
        warnings.warn(
            "slimops.report: original and converted are the same object (slimops.convert works in place: "
            "convert a copy.deepcopy of the model)",
            stacklevel=2,
        )
    for arg, value in (("original", original), ("converted", converted)):
        if value.training:
            warnings.warn(
                f"slimops.report: {arg} is in training mode (dropout and batch norm differ from eval); "
                "call .eval() on both models first",
                stacklevel=2,
            )

    # A torch.compile'd model keeps its layers under ``_orig_mod``: the layers are matched,
    # recorded and replayed there (hooks do not run inside a compiled graph); timing and
    # eval_fn use the models as given.
    plain_original = _measure.unwrap_compiled(original)
    plain_converted = _measure.unwrap_compiled(converted)
    names = _select_layers(plain_original, plain_converted)
    conv_modules = dict(plain_converted.named_modules())
    # no_grad, not inference_mode: the recorded inputs are replayed through the converted
    # layers later and stay ordinary tensors. A model in training mode gets its buffers
    # (BatchNorm statistics) put back afterwards.
    with torch.no_grad(), _measure.keep_buffers(original, converted):
        calls = _measure.record_calls(
            plain_original, [(name, plain_original.get_submodule(name)) for name in names], args, kwargs
        )
        layers = []
        for name in names:
            before = plain_original.get_submodule(name)
            after = conv_modules.get(name)
            layer = LayerReport(
                name=name,
                type_before=type(before).__name__,
                type_after=None if after is None else type(after).__name__,
                bytes_before=tensor_bytes(before),
                bytes_after=None if after is None else tensor_bytes(after),
                sparsity=None if after is None else weight_sparsity(after),
                sqnr_db=None,
            )
            if after is None:
                layer.note = "no module at this fqn in the converted model"
            else:
                layer.sqnr_db, layer.note = _layer_sqnr(after, calls[name])
                # Noted: a faster path routing took (slimops.nn.routing), and how a layer that says so
                # computes (HalfLinear: in half or in fp32).
                routed = _routed_paths(after, calls[name])
                said = getattr(after, "slimops_note", None)
                said = said if isinstance(said, str) else None
                layer.note = "; ".join(filter(None, [layer.note, routed, said])) or None
            layers.append(layer)
        # The wall clock, as a user waiting on the forward sees it (launch overhead included).
        latency_before, latency_after = _measure.median_seconds(
            [lambda: original(*args, **kwargs), lambda: converted(*args, **kwargs)],
            [_measure.device_of(original), _measure.device_of(converted)],
            warmup=warmup,
            repeats=repeats,
        )

    metric_before = metric_after = None
    if eval_fn is not None:
        # eval_fn usually calls .eval() or .train(): the models go back as they came.
        with _measure.keep_modes(original):
            metric_before = _metric(eval_fn(original))
        with _measure.keep_modes(converted):
            metric_after = _metric(eval_fn(converted))

    return CompressionReport(
        layers=layers,
        size_before=tensor_bytes(original),
        size_after=tensor_bytes(converted),
        latency_before_s=latency_before,
        latency_after_s=latency_after,
        metric_before=metric_before,
        metric_after=metric_after,
        device=_describe_device(_measure.device_of(converted)),
    )


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer of ``module`` and its children, each tensor counted once.

    Quantized and packed weights live in buffers, so both are counted. Tied weights
    (the same tensor reached by two names, or two tensors viewing the same memory
    with the same shape) count once.
    """
    seen: set[tuple] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        key = (t.device, t.data_ptr(), t.dtype, tuple(t.shape), t.stride())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def weight_sparsity(module: nn.Module) -> float | None:
    """Fraction of zeros in ``module``'s effective dense weight; None if it has no weight.

    Packed slimops modules are read in their own format (the dense weight is only
    built for the block-sparse one, whose packed tiles hold no position). Their
    ``weight`` is never read: for the quantized linears it describes the layer and
    holds no values.
    """
    from slimops.nn import (
        BlockSparseInt8Linear,
        BlockSparseLinear,
        Fp8DynamicLinear,
        Int8DynamicConv2d,
        Int8DynamicLinear,
        Int8StaticConv2d,
        Int8StaticLinear,
        Int8WeightOnlyLinear,
        MaskedConv2d,
        MaskedLinear,
        Sparse24Int8Linear,
        Sparse24Linear,
    )

    if isinstance(module, (MaskedLinear, MaskedConv2d)):
        # The forward uses W ⊙ M: an entry is zero if masked out or if its weight is zero.
        w = module.weight.detach()
        return _zero_fraction(torch.where(module.mask.to(w.device), w, torch.zeros((), dtype=w.dtype, device=w.device)))
    if isinstance(module, BlockSparseLinear):
        return _zero_fraction(module.to_dense())
    if isinstance(module, BlockSparseInt8Linear):
        # Tiles not stored are zeros; a stored tile's zeros are its int8 zeros.
        nonzero = torch.count_nonzero(module.values).item()
        return 1.0 - nonzero / max(module.out_features * module.in_features, 1)
    if isinstance(module, (Sparse24Linear, Sparse24Int8Linear)):
        # The dense weight is `values` scattered into [N, K] with zeros elsewhere (K/2 per row), so
        # its non-zeros are exactly those of `values`.
        nonzero = torch.count_nonzero(module.values).item()
        return 1.0 - nonzero / max(module.out_features * module.in_features, 1)
    quantized = (Int8DynamicLinear, Int8WeightOnlyLinear, Int8StaticLinear, Fp8DynamicLinear)
    if isinstance(module, (*quantized, Int8DynamicConv2d, Int8StaticConv2d)):
        # A zero of the stored int8 / fp8 weight is a zero of the dequantized one. The fp8 weight is
        # zero-padded to multiples of 16 (the others are not padded): judge only the real [N, K] part.
        q = module.qweight[: module.out_features, : module.in_features]
        return _zero_fraction(q if q.dtype == torch.int8 else q.float())
    # A dense float weight (nn.Linear, HalfLinear, ...). NOTE: a packed slimops layer not listed
    # above has a ``weight`` that is no tensor (a WeightSpec): None rather than a guess.
    w = getattr(module, "weight", None)
    return _zero_fraction(w) if isinstance(w, torch.Tensor) else None


def _zero_fraction(w: torch.Tensor) -> float:
    return 1.0 - torch.count_nonzero(w).item() / max(w.numel(), 1)


def _is_under(fqn: str, parent: str) -> bool:
    return fqn.startswith(parent + ".")


def _select_layers(original: nn.Module, converted: nn.Module) -> list[str]:
    """The reported fqns, in ``original``'s module order (see :func:`report`)."""
    conv_types = {fqn: type(m) for fqn, m in converted.named_modules()}
    # The root is left out of "changed": a wrapper around the whole model (torch.compile's
    # OptimizedModule) would otherwise collapse the report into one row.
    changed = [
        fqn for fqn, m in original.named_modules() if fqn and fqn in conv_types and conv_types[fqn] is not type(m)
    ]
    outer = [f for f in changed if not any(_is_under(f, c) for c in changed)]
    names = []
    for fqn, m in original.named_modules():
        if fqn in outer:
            names.append(fqn)
        elif any(_is_under(fqn, c) for c in outer):
            continue  # replaced together with its ancestor
        elif next(m.children(), None) is None and (
            next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None
        ):
            names.append(fqn)
    return names


def _layer_sqnr(module: nn.Module, calls: list[_measure.Call]) -> tuple[float | None, str | None]:
    """``(SQNR in dB, note)`` of ``module`` run on the recorded calls of the original layer."""
    if not calls:
        return None, "not called by the forward"
    signal = noise = 0.0
    compared = 0  # output elements
    for call in calls:
        refs = call.outputs
        try:
            out = module(*call.args, **call.kwargs)
        except Exception as e:  # noqa: BLE001 (any failure means: not comparable on these inputs)
            # Typically a layer whose input channels were pruned: it cannot take the original input.
            return None, f"not comparable: fails on the original inputs ({_measure.describe_error(e)})"
        outs = _measure.tensors(out)
        if not refs:
            return None, "no tensor output"
        if len(refs) != len(outs):
            return None, f"not comparable: {len(refs)} output tensors before, {len(outs)} after"
        for r, o in zip(refs, outs):
            if r.shape != o.shape:
                return None, (
                    f"not comparable: output shape {list(r.shape)} -> {list(o.shape)} (channels pruned?)"
                )
            s, n = _measure.signal_and_noise(r, o)
            signal, noise = signal + s, noise + n
            compared += r.numel()
    if compared == 0:
        # NOTE: no element has no error, but that is no evidence of an exact layer: not inf.
        return None, "empty output: nothing to compare (zero-size inputs?)"
    sqnr = _measure.sqnr_db(signal, noise)
    return sqnr, ("NaN in the outputs" if math.isnan(sqnr) else None)


def _routed_paths(module: nn.Module, calls: list[_measure.Call]) -> str | None:
    """Which faster path (slimops.nn.routing) the layer took on the recorded calls, if not its kernel."""
    if not isinstance(module, PackedLinear):
        return None
    paths = set()
    for call in calls:
        x = call.args[0] if call.args else None
        if isinstance(x, torch.Tensor) and x.dim() >= 1:
            paths.add(routing.path_for(module.route_name, x.device.type, x.shape[:-1].numel()))
    paths.discard("kernel")
    return f"routed to {', '.join(sorted(paths))} (slimops.nn.routing)" if paths else None


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _metric(value) -> float | dict[str, float]:
    expected = "a number (or a one-element tensor) or a dict of those"
    if isinstance(value, Mapping):
        # NOTE: a Hugging Face ModelOutput is a Mapping too: the message names it and the offending field.
        returned = type(value).__name__
        return {
            str(k): _measure.metric_value(v, "slimops.report", expected, f" as {k!r} of the {returned} it returned")
            for k, v in value.items()
        }
    return _measure.metric_value(value, "slimops.report", expected)


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _fmt_seconds(s: float) -> str:
    return _measure.fmt_seconds(s, digits=3)


def _fmt_sqnr(s: float | None) -> str:
    if s is None:
        return "-"
    if math.isinf(s):
        return "inf" if s > 0 else "-inf"
    return f"{s:.1f}"


def _fmt_metric(m) -> str:
    if m is None:
        return "-"
    if isinstance(m, dict):
        return ", ".join(f"{k}={v:.4g}" for k, v in m.items())
    return f"{m:.4g}"


__all__ = ["CompressionReport", "LayerReport", "report", "tensor_bytes", "weight_sparsity"]
