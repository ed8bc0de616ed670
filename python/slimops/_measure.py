"""Measuring layers and models: the pieces :mod:`slimops.report` and :mod:`slimops.plan` share.

Both run a model once with hooks that record what its layers see, compare a
layer's output with another's in dB, time forwards, and write what they
measured (JSON, a wide table on the console). Each piece lives here once, so
the two cannot drift apart: a fix to the CUDA timing or to the hook clean-up
reaches both.

Errors raised here name the public function that was called: every check takes
``caller`` (``"slimops.report"``, ``"slimops.plan"``) for its message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import numbers
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

# ---------------------------------------------------------------- arguments


def split_inputs(example_inputs, caller: str) -> tuple[tuple, dict]:
    """``example_inputs`` as ``(args, kwargs)`` of one forward.

    A tuple or list holds the positional arguments, a lone tensor is the only one,
    and a mapping holds keyword arguments (``{"input_ids": ...}``, as HF models take).
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, Mapping):
        bad = [k for k in example_inputs if not isinstance(k, str)]
        if bad:
            raise TypeError(f"{caller}: example_inputs dict keys must be str (keyword names), got {bad[0]!r}")
        return (), dict(example_inputs)
    raise TypeError(
        f"{caller}: example_inputs must be a tuple of positional arguments, a Tensor, or a dict of "
        f"keyword arguments, got {type(example_inputs).__name__}"
    )


def check_counts(caller: str, *, repeats: int, warmup: int) -> None:
    """Check the number of timed (at least 1) and untimed (at least 0) runs."""
    for arg, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        # bool is an int to Python, but repeats=True is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{caller}: {arg} must be an int, got {type(value).__name__}")
        if value < low:
            raise ValueError(f"{caller}: {arg} must be >= {low}, got {value}")


def unwrap_compiled(model: nn.Module) -> nn.Module:
    """The model ``torch.compile`` wrapped, for a compiled model (an ``OptimizedModule``); ``model`` otherwise.

    NOTE: the wrapper holds the model as its ``_orig_mod`` submodule, so every name in
    it (``named_modules``, ``state_dict`` keys) starts with ``_orig_mod.``; hooks do not
    run inside a compiled graph either. :func:`slimops.report` and :func:`slimops.save` /
    :func:`slimops.load` use this one rule to see the model's own layers and names.
    """
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer; CPU for a model that holds none."""
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if t is None else t.device


@contextlib.contextmanager
def keep_modes(model: nn.Module) -> Iterator[None]:
    """Restore the train/eval flag of every module of ``model`` on exit.

    NOTE: a user's ``eval_fn`` usually calls ``model.eval()`` (or ``.train()``); the
    model must come back from ``report``/``plan`` in the mode it went in, each
    module's own flag included (a frozen submodule may be in eval inside a training model).
    """
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def keep_buffers(*models: nn.Module) -> Iterator[None]:
    """Put back, on exit, the buffers of every module in training mode.

    NOTE: measuring runs the models; a BatchNorm in training mode would update its
    running statistics each time. Modules in eval mode change no buffer, so only the
    training ones are copied (quantized weights, which are buffers, are not duplicated).
    """
    saved = [(b, b.clone()) for model in models for m in model.modules() if m.training for b in m.buffers(recurse=False)]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, copy in saved:
                b.copy_(copy)


def metric_value(v, caller: str, expected: str = "a real number", where: str = "") -> float:
    """A value ``eval_fn`` returned, as a float: a real number (Python or NumPy) or a one-element real tensor.

    bool is refused: a pass/fail is not a metric. ``expected`` and ``where`` complete the
    error message (``"slimops.plan: eval_fn must return a real number, got str on the original model"``),
    which says what the value was: a tensor's shape and dtype, else its type.
    """
    if isinstance(v, torch.Tensor):
        if v.numel() == 1 and not (v.dtype == torch.bool or v.is_complex()):
            return float(v.item())
        hint = " (a metric is one number: reduce it, e.g. .mean().item())" if v.numel() > 1 else ""
        raise TypeError(
            f"{caller}: eval_fn must return {expected}, got a {v.dtype} Tensor of shape {list(v.shape)}{where}{hint}"
        )
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{caller}: eval_fn must return {expected}, got {type(v).__name__}{where}")
    return float(v)


def describe_error(e: BaseException) -> str:
    """``"TypeName: first line of the message"``: why a measurement failed, in one line."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


# ---------------------------------------------------------------- recording


@dataclasses.dataclass
class Call:
    """One call of a layer: its inputs (copied before it ran) and, if kept, its output tensors."""

    args: tuple
    kwargs: dict
    outputs: list[torch.Tensor] | None = None


def clone(obj):
    """Copy of the tensors in ``obj`` (nested tuples, lists and plain dicts), detached.

    NOTE: a later in-place op (``ReLU(inplace=True)``, a residual ``h += ...``) would
    otherwise overwrite a recorded tensor, which is also the next layer's input.
    Other objects (caches, configs) are passed on as they are.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(clone(v) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(clone(v) for v in obj)
    if type(obj) is dict:
        return {k: clone(v) for k, v in obj.items()}
    return obj


def tensors(obj) -> list[torch.Tensor]:
    """The tensors in ``obj`` in a fixed order (tuples, lists, dict values: HF ``ModelOutput`` is a dict)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in tensors(v)]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors(v)]
    return []


def record_calls(
    model: nn.Module,
    layers: Sequence[tuple[str, nn.Module]],
    args: tuple,
    kwargs: dict,
    *,
    first_only: bool = False,
    outputs: bool = True,
) -> dict[str, list[Call]]:
    """Run ``model(*args, **kwargs)`` once; return ``{fqn: [Call, ...]}`` for each of ``layers``.

    A layer's inputs are cloned by a forward *pre*-hook, before the layer runs, so
    a layer that writes into its own input still has its true input recorded.
    Its output tensors are cloned by a forward hook when ``outputs``.

    Args:
        model: the model to run (not modified: every hook is removed, even when the forward raises).
        layers: ``(fqn, module)`` pairs of submodules of ``model``.
        args, kwargs: one forward's arguments.
        first_only: keep only each layer's first call (a layer called in a loop
            would otherwise keep a copy of every input).
        outputs: also keep the output tensors of each kept call.
    """
    calls: dict[str, list[Call]] = {fqn: [] for fqn, _ in layers}
    # Per layer, the calls whose forward is still running (a stack: a module may call itself).
    running: dict[str, list[Call | None]] = {fqn: [] for fqn, _ in layers}

    def make_hooks(fqn):
        def pre_hook(module, a, kw):
            call = None
            if not (first_only and calls[fqn]):
                call = Call(clone(a), clone(kw))
                calls[fqn].append(call)
            if outputs:
                running[fqn].append(call)

        def hook(module, a, kw, out):
            call = running[fqn].pop()
            if call is not None:
                # Only the output's tensors are compared, so they are all that is kept of it.
                call.outputs = [t.detach().clone() for t in tensors(out)]

        return pre_hook, hook

    handles = []
    try:
        for fqn, module in layers:
            pre_hook, hook = make_hooks(fqn)
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            if outputs:
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
        model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    if outputs:
        # A call whose forward raised (and the model caught it) has no output to compare.
        return {fqn: [c for c in cs if c.outputs is not None] for fqn, cs in calls.items()}
    return calls


# ---------------------------------------------------------------- error


def signal_and_noise(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """``(sum(ref^2), sum((ref - out)^2))`` in float64, ``out`` moved to ``ref``'s device.

    float64 for both: the outputs may differ in dtype (a half-precision layer), and
    fp32 sums of squares over a large output lose the digits that tell 40 from 50 dB.
    """
    r, o = ref.double(), out.to(device=ref.device).double()
    return r.pow(2).sum().item(), (r - o).pow(2).sum().item()


def sqnr_db(signal: float, noise: float) -> float:
    """``10 log10(signal / noise)``: ``inf`` when there is no noise (even with no signal), ``-inf`` when
    there is no signal, NaN when either is NaN."""
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


# ---------------------------------------------------------------- timing


def median_seconds(
    fns: Sequence[Callable[[], Any]],
    devices: Sequence[torch.device],
    *,
    warmup: int,
    repeats: int,
    cuda_events: bool = False,
) -> list[float]:
    """Median seconds of one call of each of ``fns`` over ``repeats`` runs, after ``warmup`` untimed ones.

    The functions take turns (A B A B ...), so a slow drift of the machine (clock
    boost, another process) falls on all of them alike, not on whichever ran first.

    Two clocks, for two questions:

    * wall clock (the default): the device of each function is synchronized
      before and after each run (launches are asynchronous: without it the clock
      would time only the launches), so the time includes the host's launch
      overhead, as a user waiting on a model's forward sees it;
    * ``cuda_events=True`` on a CUDA device: the GPU time between two events, with
      256 MB written before each run (like ``triton.testing.do_bench``), so a
      layer's weights come from DRAM as they do inside a model rather than from
      an L2 warmed by the previous run.

    Args:
        fns: the functions to time, called with no arguments.
        devices: the device each one runs on (one per function).
        warmup: untimed calls of each before timing.
        repeats: timed calls of each.
        cuda_events: time CUDA functions with events and a cold L2 (see above).
    """
    if len(fns) != len(devices):
        raise ValueError(f"median_seconds: {len(fns)} functions but {len(devices)} devices")
    timers = [_EventTimer(d) if cuda_events and d.type == "cuda" else _WallTimer(d) for d in devices]
    for _ in range(warmup):
        for fn in fns:
            fn()
    for _ in range(repeats):
        for fn, timer in zip(fns, timers, strict=True):
            timer.run(fn)
    return [timer.median() for timer in timers]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for all the work queued on ``device`` (nothing to wait for on the CPU)."""
    if device.type == "cpu":
        return lambda: None
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    backend = getattr(torch, device.type, None)  # torch.mps, torch.xpu, ...
    sync = getattr(backend, "synchronize", None)
    return sync if sync is not None else (lambda: None)


class _WallTimer:
    def __init__(self, device: torch.device):
        self.sync = synchronizer(device)
        self.times: list[float] = []

    def run(self, fn: Callable[[], Any]) -> None:
        # NOTE: the sync before the clock starts too: the work of the previous run
        # (or of the warm-up) must not be counted in this one.
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        self.times.append(time.perf_counter() - t)

    def median(self) -> float:
        return statistics.median(self.times)


class _EventTimer:
    def __init__(self, device: torch.device):
        self.device = device
        with torch.cuda.device(device):
            self.flush = torch.empty(256 << 20, dtype=torch.int8, device=device)
        self.events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def run(self, fn: Callable[[], Any]) -> None:
        # The events and the flush go on the current stream of the function's device.
        with torch.cuda.device(self.device):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.flush.zero_()
            start.record()
            fn()
            end.record()
        self.events.append((start, end))

    def median(self) -> float:
        torch.cuda.synchronize(self.device)  # elapsed_time needs both events to have completed
        return statistics.median(s.elapsed_time(e) for s, e in self.events) * 1e-3


# ---------------------------------------------------------------- writing what was measured


def json_safe(obj):
    """``obj`` with every non-finite float as a string: ``"inf"``, ``"-inf"``, ``"nan"``.

    NOTE: JSON has no infinity, yet an exact layer's SQNR is ``inf`` (its error
    ``-inf``); Python's ``json`` would write the non-standard ``Infinity``.
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(data: Any, path: str | os.PathLike | None, indent: int) -> str:
    """``data`` (already :func:`json_safe`) as JSON text, also written to ``path`` when given."""
    # allow_nan=False: fail loudly rather than write Infinity/NaN, which is not JSON.
    text = json.dumps(data, indent=indent, allow_nan=False)
    if path is not None:
        with open(path, "w") as f:
            f.write(text + "\n")
    return text


def wide_console(console=None):
    """``console`` (a new stdout ``rich.console.Console`` if None), at least 160 columns wide off a terminal.

    NOTE: writing to a log file or a pipe, rich assumes 80 columns and squeezes the
    cells of a per-layer table until its numbers wrap.
    """
    from rich.console import Console

    console = console or Console()
    if not console.is_terminal:
        console.width = max(console.width, 160)
    return console


def fmt_seconds(s: float | None, digits: int) -> str:
    """``s`` in s, ms or µs, with ``digits`` decimals above a millisecond (one below); ``"-"`` for None."""
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.{digits}f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.{digits}f} ms"
    return f"{s * 1e6:.1f} µs"
