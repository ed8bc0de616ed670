"""``slimops.plan(model, example_inputs)``: the fastest config per linear layer within an error budget.

Every linear layer is measured on the shape it really sees: the model runs once,
with forward hooks that record each selected layer's input, and then, for each
layer and each candidate config, the replacement ``slimops.convert`` would build
is run on that recorded input. Two numbers per (layer, candidate):

* the latency: median seconds of one forward on the current device;
* the error: the noise-to-signal ratio of its output against the original
  layer's, in dB, measured on that layer alone (upstream layers stay exact).

The result is a :class:`Plan`, a mapping ``{fqn: config or None}`` that
``slimops.convert(model, plan)`` applies directly.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import numbers
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from slimops import _measure
from slimops.conversion import Config, Unsupported, build_replacement, convert, known_configs
from slimops.nn._convertible import linear_stand_in

DENSE = "dense"
DEFAULT_MAX_ERROR_DB = -30.0


@dataclasses.dataclass
class Measurement:
    """One candidate on one layer.

    ``status`` is ``"ok"`` (measured), ``"unsupported"`` (no replacement for this
    layer: ``why`` has the handler's reason), or ``"error"`` (the replacement failed
    to build or run, or gave a wrong-shaped or non-finite output: ``why`` says which).
    ``error_db`` and ``latency_s`` are None unless ``status == "ok"``; ``error_db``
    is ``-inf`` when the output equals the original bit for bit.
    """

    status: str
    latency_s: float | None = None
    error_db: float | None = None
    module: str | None = None  # type name of the replacement
    why: str | None = None


@dataclasses.dataclass
class LayerPlan:
    """The measurements of one layer, and the candidate chosen for it.

    ``shape`` is ``(M, K, N)``: M rows (every leading dimension of the recorded
    input), K input and N output features. It is None, with ``note`` saying why,
    when the layer could not be measured (then it stays dense). ``note`` also says why
    a layer whose chosen config breaks the model's forward was kept dense.
    """

    fqn: str
    shape: tuple[int, int, int] | None
    results: dict[str, Measurement]  # candidate name -> measurement; "dense" first
    chosen: str = DENSE
    note: str | None = None


@dataclasses.dataclass(eq=False)
class Plan(Mapping):
    """What :func:`plan` chose and measured; a mapping ``{fqn: config or None}`` for ``slimops.convert``.

    Fields:
        configs: ``{fqn: config}`` for every selected layer; None keeps it dense.
        layers: ``{fqn: LayerPlan}``, the per-layer measurements.
        candidates: ``{name: config}`` in the order measured; ``"dense"`` maps to None.
        max_error_db: the budget the choice was made under.
        device: where it was measured, e.g. ``"cuda:0"`` or ``"cpu"``.
        device_name: the GPU's name or the CPU model.
        metric_before, metric_after: ``eval_fn`` on the original model and on a converted
            copy (None without an ``eval_fn``).
        torch_version, created: provenance of the timings.
    """

    configs: dict[str, Config | None]
    layers: dict[str, LayerPlan]
    candidates: dict[str, Config | None]
    max_error_db: float
    device: str
    device_name: str
    metric_before: float | None = None
    metric_after: float | None = None
    torch_version: str = torch.__version__
    created: str = ""

    # Mapping over `configs`: `slimops.convert(model, plan)` reads it as {fqn: config}.
    def __getitem__(self, fqn: str) -> Config | None:
        return self.configs[fqn]

    def __iter__(self) -> Iterator[str]:
        return iter(self.configs)

    def __len__(self) -> int:
        return len(self.configs)

    def __repr__(self) -> str:
        chosen = {fqn: layer.chosen for fqn, layer in self.layers.items()}
        return f"Plan({chosen}, max_error_db={self.max_error_db}, device={self.device!r})"

    @property
    def latency_before_s(self) -> float:
        """Sum over the measured layers of the dense latency (the linear layers only)."""
        return sum(layer.results[DENSE].latency_s for layer in self.layers.values() if layer.shape is not None)

    @property
    def latency_after_s(self) -> float:
        """Sum over the measured layers of the chosen candidate's latency."""
        return sum(layer.results[layer.chosen].latency_s for layer in self.layers.values() if layer.shape is not None)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-safe data (what :meth:`to_json` writes).

        Configs appear by candidate name (``"candidates"`` maps each name to the
        config's repr). NOTE: JSON has no infinity, so an ``error_db`` of ``-inf``
        (output identical to the original) is written as the string ``"-inf"``;
        null means not measured (see ``status``).
        """
        return _measure.json_safe(
            {
                "device": self.device,
                "device_name": self.device_name,
                "torch_version": self.torch_version,
                "created": self.created,
                "max_error_db": self.max_error_db,
                "candidates": {name: None if c is None else repr(c) for name, c in self.candidates.items()},
                "metric_before": self.metric_before,
                "metric_after": self.metric_after,
                "latency_before_s": self.latency_before_s,
                "latency_after_s": self.latency_after_s,
                "layers": [
                    {
                        "fqn": layer.fqn,
                        "shape": None if layer.shape is None else list(layer.shape),
                        "chosen": layer.chosen,
                        "note": layer.note,
                        "results": {name: dataclasses.asdict(m) for name, m in layer.results.items()},
                    }
                    for layer in self.layers.values()
                ],
            }
        )

    def to_json(self, path: str | None = None, indent: int = 2) -> str:
        """The plan as JSON text, also written to ``path`` when given.

        Args:
            path: file to write (None: only return the text).
            indent: JSON indentation.
        """
        return _measure.write_json(self.to_dict(), path, indent)

    def table(self):
        """A ``rich.table.Table``: one row per layer, one column per candidate (latency, error)."""
        from rich.table import Table

        t = Table(
            title=f"slimops plan · {self.device} ({self.device_name}) · error budget {self.max_error_db:g} dB",
            title_justify="left",
        )
        t.add_column("layer")
        t.add_column("M x K x N")
        for name in self.candidates:
            t.add_column(name, justify="right")
        t.add_column("chosen")
        t.add_column("speed-up", justify="right")
        for layer in self.layers.values():
            shape = "-" if layer.shape is None else " x ".join(map(str, layer.shape))
            cells = [self._cell(layer, name) for name in self.candidates]
            speedup = "-"
            if layer.shape is not None:
                speedup = f"x{layer.results[DENSE].latency_s / layer.results[layer.chosen].latency_s:.2f}"
            t.add_row(layer.fqn, shape, *cells, f"[bold]{layer.chosen}", speedup)
        caption = [
            "cells: median latency / output error (10 log10 |y - y'|^2 / |y|^2; -inf: exact)",
            f"linear layers {_fmt_seconds(self.latency_before_s)} -> {_fmt_seconds(self.latency_after_s)}",
        ]
        if self.metric_before is not None:
            caption.append(f"metric {self.metric_before:.6g} -> {self.metric_after:.6g}")
        t.caption = "  ·  ".join(caption)
        t.caption_justify = "left"
        return t

    def _cell(self, layer: LayerPlan, name: str) -> str:
        m = layer.results.get(name)
        if m is None:
            return "-"
        if m.status != "ok":
            return f"[dim]{m.status}"
        text = f"{_fmt_seconds(m.latency_s)} / {_fmt_db(m.error_db)}"
        if name == layer.chosen:
            return f"[bold green]{text}"
        return text if m.error_db <= self.max_error_db else f"[dim]{text}"

    def __rich__(self):
        return self.table()

    def print(self, console=None) -> None:
        """Print :meth:`table`, then why candidates did not run.

        Args:
            console: a ``rich.console.Console`` (stdout if None).
        """
        console = _measure.wide_console(console)
        console.print(self.table())
        for layer in self.layers.values():
            if layer.note:
                console.print(f"{layer.fqn}: {layer.note}", markup=False)
            for name, m in layer.results.items():
                if m.status != "ok":
                    console.print(f"{layer.fqn} · {name}: {m.status}: {m.why}", markup=False)


def default_candidates() -> list[Config]:
    """The configs :func:`plan` tries when none are given: one of each kind slimops has.

    bf16, W8A16, W8A8, fp8, 2:4 and 64x64 block sparsity at 50% (the sparse ones prune
    by magnitude, so they pass an error budget only on layers that are already sparse).
    The same list on every device (all of them run on CPU): a candidate that cannot
    run on a layer here (2:4 on a GPU takes fp16/bf16 weights only; fp8 needs an
    sm_89+ GPU) is measured as ``"unsupported"`` or ``"error"``, with the reason.
    """
    import slimops

    return [
        slimops.HalfConfig(torch.bfloat16),
        slimops.Int8WeightOnlyConfig(),
        slimops.Int8DynamicConfig(),
        slimops.Fp8DynamicConfig(),
        slimops.SparseConfig(0.5, pattern="2:4"),
        slimops.SparseConfig(0.5, pattern="block", block_size=64),
    ]


def plan(
    model: nn.Module,
    example_inputs: tuple | list | torch.Tensor | Mapping[str, Any],
    candidates: Sequence[Config] | None = None,
    max_error_db: float = DEFAULT_MAX_ERROR_DB,
    eval_fn: Callable[[nn.Module], float] | None = None,
    *,
    repeats: int = 20,
    warmup: int = 3,
    progress: bool | None = None,
) -> Plan:
    """Time and measure each candidate config on each linear layer; pick the fastest within the budget.

    The error of a candidate on a layer is the noise-to-signal ratio of its output
    ``y'`` against the original layer's output ``y``, on the layer's recorded input,
    in dB (computed in float64)::

        error_db = 10 * log10(sum((y - y')^2) / sum(y^2))     # = -SQNR

    A candidate is allowed when ``error_db <= max_error_db``. The default, -30 dB,
    allows noise at most 1/1000 of the output's energy (SQNR >= 30 dB); -20 allows
    1/100. For example, W8A8 int8 usually measures about -40 dB on a random layer
    and is allowed at -30, while magnitude 2:4 pruning of a dense layer measures
    about -7 dB and is not; on a layer whose weight is already 2:4 it is exact
    (``-inf``). Dense is always allowed. Each layer gets the allowed candidate with
    the lowest median latency (dense on a tie).

    The model runs once, under ``torch.no_grad``, in its current train/eval
    mode (call ``.eval()`` first). It is not modified. Each selected layer's input
    of its *first* call is kept (cloned) and used for that layer's timing and error;
    a layer the forward never calls stays dense. Timing: ``warmup`` untimed runs,
    then the median of ``repeats`` timed runs; CUDA events with an L2 flush before
    each run on a GPU, ``time.perf_counter`` elsewhere.

    Args:
        model: the float model, on the device to plan for.
        example_inputs: the positional arguments of one forward as a tuple (a lone
            tensor is wrapped), or a dict of keyword arguments. Use realistic shapes:
            latency depends on M.
        candidates: configs to try (``"dense"`` is always measured and need not be
            listed); None: :func:`default_candidates`.
        max_error_db: the error budget in dB (see above); ``float("-inf")`` allows only
            exact candidates, ``float("inf")`` allows every one that runs.
        eval_fn: ``eval_fn(model) -> float``; if given, it is called on ``model`` and on
            ``slimops.convert(copy.deepcopy(model), plan)``, and the two values are
            stored as ``metric_before`` / ``metric_after``. A train/eval switch it makes
            on ``model`` is undone afterwards.
        repeats: timed runs per (layer, candidate).
        warmup: untimed runs before them.
        progress: show a (transient) progress bar; None: when stderr is a terminal.

    Returns:
        A :class:`Plan`: ``slimops.convert(model, plan)`` applies it, ``.print()`` shows
        the measurements, ``.to_json(path)`` saves them.

    Example::

        p = slimops.plan(model.eval(), (tokens,), max_error_db=-30)
        p.print()
        slimops.convert(model, p)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"slimops.plan: model must be a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = _measure.split_inputs(example_inputs, "slimops.plan")
    named = _candidate_names(default_candidates() if candidates is None else candidates)
    if isinstance(max_error_db, bool) or not isinstance(max_error_db, numbers.Real):
        raise TypeError(f"slimops.plan: max_error_db must be a real number (dB), got {type(max_error_db).__name__}")
    max_error_db = float(max_error_db)
    if math.isnan(max_error_db):
        raise ValueError("slimops.plan: max_error_db must not be NaN")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError(f"slimops.plan: eval_fn must be callable or None, got {type(eval_fn).__name__}")
    _measure.check_counts("slimops.plan", repeats=repeats, warmup=warmup)
    meta = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if meta:
        raise ValueError(f"slimops.plan: model has parameters on the meta device (e.g. {meta[0]!r}); materialize them first")
    if model.training:
        warnings.warn("slimops.plan: model is in training mode; call .eval() first", stacklevel=2)

    layers = select_linear_layers(model)
    if not layers:
        warnings.warn("slimops.plan: model has no linear layer; the plan is empty", stacklevel=2)

    device = _measure.device_of(model)
    result = Plan(
        configs={},
        layers={},
        candidates={DENSE: None, **named},
        max_error_db=max_error_db,
        device=str(device),
        device_name=_device_name(device),
        created=datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
    )
    # NOTE: no_grad, not inference_mode: slimops' CPU kernels for W8A16 and block-sparse run ATen
    # in-place ops on worker threads of at::parallel_for, where inference mode is off, and
    # inference-tensor outputs then raise "Inplace update to inference tensor outside InferenceMode".
    with torch.no_grad():
        inputs = _record_inputs(model, layers, args, kwargs) if layers else {}
        with _Progress(_show_progress(progress), len(layers) * len(result.candidates)) as bar:
            for fqn, module in layers:
                layer = _measure_layer(fqn, module, inputs.get(fqn), named, warmup, repeats, bar)
                inputs.pop(fqn, None)  # free it as soon as it is measured
                layer.chosen = _choose(layer, max_error_db)
                result.layers[fqn] = layer
                result.configs[fqn] = result.candidates[layer.chosen]
        _keep_what_runs(model, result, args, kwargs)

    if eval_fn is not None:
        # eval_fn usually calls .eval() or .train(): the model goes back as it came.
        with _measure.keep_modes(model):
            result.metric_before = _metric(eval_fn(model), "original model")
        result.metric_after = _metric(eval_fn(convert(copy.deepcopy(model), result)), "planned model")
    return result


def _keep_what_runs(model: nn.Module, result: Plan, args: tuple, kwargs: dict) -> None:
    """Keep dense every layer whose chosen config breaks the model's own forward.

    Layers are measured alone; model code around them can still fail on the converted
    model (it reads ``layer.weight.data``, say). The planned model is run once on the
    example inputs; if it fails, each converted layer is tried alone and those that fail
    stay dense, with the error in their ``note``.
    """

    def failure(configs: Mapping[str, Config | None]) -> str | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # what convert warns about is in the plan already
                convert(copy.deepcopy(model), configs)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (any failure of the user's forward counts)
            return _measure.describe_error(e)
        return None

    chosen = {fqn: c for fqn, c in result.configs.items() if c is not None}
    if not chosen or failure(result.configs) is None:
        return
    for fqn, config in chosen.items():
        why = failure({fqn: config})
        if why is not None:
            layer = result.layers[fqn]
            layer.note = f"{layer.chosen} breaks the model's forward ({why}): kept dense"
            layer.chosen, result.configs[fqn] = DENSE, None
    why = failure(result.configs)
    if why is not None:  # only layers together break it: plan nothing rather than a broken model
        for fqn in chosen:
            layer = result.layers[fqn]
            layer.note = f"the planned layers together break the model's forward ({why}): kept dense"
            layer.chosen, result.configs[fqn] = DENSE, None
        warnings.warn(f"slimops.plan: the planned model fails to run ({why}); every layer is kept dense", stacklevel=3)


# ---------------------------------------------------------------- layers


def select_linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(fqn, module)`` of every layer :func:`plan` measures, in module order.

    Every ``nn.Linear`` (subclasses included: a candidate's handler refuses the ones
    it cannot replace, e.g. ``nn.MultiheadAttention``'s ``out_proj``, and that
    refusal is recorded), and every module that ``convert`` sees exactly as one
    (Hugging Face's ``Conv1D`` in GPT-2). Sparse slimops layers are not planned: a
    config would convert them through their dense weight.
    """

    def exact_linear(m: nn.Module) -> bool:
        stand_in = linear_stand_in(m)
        return stand_in is not None and stand_in[1] is None

    return [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, nn.Linear) or exact_linear(m)]


def _candidate_names(candidates) -> dict[str, Config]:
    """``{name: config}``: validates ``candidates`` and names each one (``"dense"`` entries dropped)."""
    if isinstance(candidates, (Config, str)) or not isinstance(candidates, Sequence):
        raise TypeError(
            f"slimops.plan: candidates must be a list of configs (or None), got {type(candidates).__name__}"
        )
    named: dict[str, Config] = {}
    for i, c in enumerate(candidates):
        if c is None or (isinstance(c, str) and c == DENSE):
            continue  # dense is always measured
        if not isinstance(c, Config) or type(c) not in known_configs():
            known = ", ".join(t.__name__ for t in known_configs())
            raise TypeError(f"slimops.plan: candidates[{i}] must be one of [{known}], got {type(c).__name__}")
        name = base = _short_name(c)
        n = 2
        while name in named or name == DENSE:
            name, n = f"{base}#{n}", n + 1
        named[name] = c
    return named


def _short_name(c: Config) -> str:
    """A column title: ``bf16``, ``w8a16``, ``w8a16(g128)``, ``w8a8``, ``fp8``, ``2:4``, ``block64(0.5)``."""
    import slimops

    if isinstance(c, slimops.HalfConfig):
        return {torch.float16: "fp16", torch.bfloat16: "bf16"}[c.dtype]
    if isinstance(c, slimops.Int8WeightOnlyConfig):
        return "w8a16" if c.group_size is None else f"w8a16(g{c.group_size})"
    if isinstance(c, slimops.Int8DynamicConfig):
        return "w8a8"
    if isinstance(c, slimops.Fp8DynamicConfig):
        return "fp8"
    if isinstance(c, slimops.SparseConfig):
        crit = "" if c.criterion == "magnitude" else f", {c.criterion}"
        if c.pattern == "2:4":
            return "2:4" + (f"({c.criterion})" if crit else "")
        if c.pattern == "block":
            return f"block{c.block_size}({c.sparsity:g}{crit})"
        return f"{c.pattern}({c.sparsity:g}{crit})"
    return repr(c)


def _record_inputs(model: nn.Module, layers, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    """Run ``model`` once; return ``{fqn: input of the layer's first call}`` (cloned).

    The input is the call's first argument, positional or by keyword (``layer(input=x)``);
    a layer whose first call has no tensor there is left out (it stays dense).
    """
    with _measure.keep_buffers(model):  # a BatchNorm in training mode must not learn from this run
        calls = _measure.record_calls(model, layers, args, kwargs, first_only=True, outputs=False)
    inputs = {}
    for fqn, layer_calls in calls.items():
        if layer_calls:
            given = [*layer_calls[0].args, *layer_calls[0].kwargs.values()]
            if given and isinstance(given[0], torch.Tensor):
                inputs[fqn] = given[0]
    return inputs


# ---------------------------------------------------------------- measuring


def _measure_layer(fqn, module, x, named, warmup, repeats, bar) -> LayerPlan:
    layer = LayerPlan(fqn=fqn, shape=None, results={})
    if x is None:
        layer.note = "not called by model(*example_inputs) with a tensor input: kept dense"
        bar.advance(1 + len(named))
        return layer
    try:
        ref = module(x)
    except Exception as e:  # noqa: BLE001 (the layer fails on its own input: nothing to compare)
        layer.note = f"the original layer fails on its recorded input ({_measure.describe_error(e)}): kept dense"
        bar.advance(1 + len(named))
        return layer
    if not isinstance(ref, torch.Tensor) or not torch.isfinite(ref).all():
        layer.note = "the original layer's output is not a finite tensor: kept dense"
        bar.advance(1 + len(named))
        return layer
    if ref.numel() == 0:  # an empty output has no error to measure (it is not "exact")
        layer.note = "the recorded input is empty: nothing to measure: kept dense"
        bar.advance(1 + len(named))
        return layer
    k = x.shape[-1]
    layer.shape = (x.numel() // k if k else 0, k, ref.shape[-1])
    bar.show(f"{fqn} {DENSE}")
    layer.results[DENSE] = Measurement(
        "ok", _median_seconds(lambda: module(x), x.device, warmup, repeats), -math.inf, type(module).__name__
    )
    bar.advance()
    for name, config in named.items():
        bar.show(f"{fqn} {name}")
        layer.results[name] = _measure_candidate(module, config, x, ref, warmup, repeats)
        bar.advance()
    return layer


def _measure_candidate(module, config, x, ref, warmup, repeats) -> Measurement:
    """One candidate on one layer: build its replacement, check its output, time it."""
    try:
        new = build_replacement(module, config)
    except Unsupported as e:
        return Measurement("unsupported", why=str(e))
    except Exception as e:  # noqa: BLE001 (e.g. a group_size that does not divide K: this layer only)
        return Measurement("error", why=f"building it failed: {_measure.describe_error(e)}")
    kind = type(new).__name__
    try:
        out = new(x)
        if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return Measurement("error", module=kind, why=f"output {got}, expected {list(ref.shape)}")
        if not torch.isfinite(out).all():
            return Measurement("error", module=kind, why="non-finite output")
        error = error_db(ref, out)
        seconds = _median_seconds(lambda: new(x), x.device, warmup, repeats)
    except Exception as e:  # noqa: BLE001 (e.g. no kernel for this dtype or GPU: record, go on)
        return Measurement("error", module=kind, why=f"running it failed: {_measure.describe_error(e)}")
    return Measurement("ok", seconds, error, kind)


def error_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    """``10 log10(sum((ref - out)^2) / sum(ref^2))`` in float64: -inf when equal, inf when ``ref`` is 0 and out is not.

    The negated SQNR that :func:`slimops.report` gives: lower is better, as budgets read.
    """
    return -_measure.sqnr_db(*_measure.signal_and_noise(ref, out))


def _choose(layer: LayerPlan, max_error_db: float) -> str:
    """The allowed candidate with the lowest latency; dense wins ties (it is listed first)."""
    if layer.shape is None:
        return DENSE
    allowed = [(m.latency_s, name) for name, m in layer.results.items() if m.status == "ok" and m.error_db <= max_error_db]
    return min(allowed, key=lambda t: t[0])[1]


def _median_seconds(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()``: on a GPU, its GPU time with a cold L2 (as inside a model)."""
    return _measure.median_seconds([fn], [device], warmup=warmup, repeats=repeats, cuda_events=True)[0]


# ---------------------------------------------------------------- helpers


def _device_name(device: torch.device) -> str:
    from slimops import info

    return info.device_name(device) if device.type in ("cpu", "cuda") else device.type


def _metric(value, which: str) -> float:
    return _measure.metric_value(value, "slimops.plan", where=f" on the {which}")


def _fmt_seconds(s: float | None) -> str:
    return _measure.fmt_seconds(s, digits=2)


def _fmt_db(db: float | None) -> str:
    return "-" if db is None else (f"{db:.1f} dB" if math.isfinite(db) else f"{db} dB")


def _show_progress(progress: bool | None) -> bool:
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


class _Progress:
    """A transient ``rich.progress`` bar over (layer, candidate) pairs; does nothing when disabled."""

    def __init__(self, enabled: bool, total: int, label: str = "slimops.plan"):
        self.enabled, self.total, self.label = enabled, total, label
        self._bar = self._task = None

    def __enter__(self):
        if self.enabled and self.total:
            from rich.console import Console
            from rich.progress import Progress

            self._bar = Progress(transient=True, console=Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task(self.label, total=self.total)
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def show(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.label} {text}")

    def advance(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)
