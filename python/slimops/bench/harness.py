"""The ``slimops bench`` harness: suites of cases, providers as the lines, one JSON row each.

A *suite* (one file in :mod:`slimops.bench.suites`) lists *cases* (an op on one
real shape and dtype, with the bytes and flops it must move) and *providers*
(slimops' backends and the baselines a user would pick instead). The harness
times every provider on every case in the same process, so the ratio to the
suite's baseline, and on a GPU the fraction of a plain device copy of the same
bytes, compare numbers measured side by side.

Timing is the median: ``triton.testing.do_bench`` on a GPU (it flushes L2
between reps, so memory-bound ops are timed from DRAM); on a CPU a block timer
that warms up, then repeats until a minimum time and a minimum count.
A suite with ``interleave=True`` (``decode``) times its providers call by call in
turn instead (``slimops._measure.median_seconds``: CUDA events, L2 flushed), with
a large device copy among them on a GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from slimops import _measure
from slimops import info as _info


class Unavailable(Exception):
    """Raised by a provider that cannot run here (backend not built, compile failed).

    The harness turns it into a ``status="skipped"`` row carrying the message.
    """


@dataclass(frozen=True)
class Target:
    """An issue's target for the slimops rows of a case: met when every bound given holds.

    Args:
        text: the target as the issue words it (quoted in the row).
        min_speedup: the least ratio of the reference's time to the row's (same run).
        max_us: the most microseconds per call.
        min_frac_of_copy: the least fraction of the same run's copy bandwidth.
        against: the provider the ratio is taken against (default: the suite's baseline).
    """

    text: str
    min_speedup: float | None = None
    max_us: float | None = None
    min_frac_of_copy: float | None = None
    against: str | None = None

    def met(self, row: dict, rows: list[dict]) -> bool | None:
        """Whether ``row`` meets the target; None when a number it needs was not measured."""
        checks = []
        if self.min_speedup is not None:
            ref = next((r for r in rows if r["provider"] == (self.against or row["baseline"])), None)
            if not ref or ref["status"] != "ok" or row["median_us"] is None:
                return None
            checks.append(ref["median_us"] / row["median_us"] >= self.min_speedup)
        if self.max_us is not None:
            checks.append(row["median_us"] <= self.max_us)
        if self.min_frac_of_copy is not None:
            if row["frac_of_copy_bw"] is None:
                return None
            checks.append(row["frac_of_copy_bw"] >= self.min_frac_of_copy)
        return all(checks)


@dataclass(frozen=True)
class Case:
    """One op on one shape and dtype.

    Args:
        op: the op timed (the ``torch.ops.slimops`` name).
        shape: the problem shape quoted in the row (the main input's shape).
        dtype: the floating dtype of the case (input of a quantizer, output of a dequantizer).
        make_args: builds the op's arguments on a device.
        nbytes: bytes the op must read + write at least (each input read once,
            each output written once); GB/s is quoted from it.
        flops: useful floating/integer operations (0 for memory-bound ops).
        params: the variant, e.g. ``"axis=0 asym"``; empty when the op has one.
        target: the issue's target for its slimops rows (adds ``target`` / ``target_met`` to every row).
    """

    op: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    make_args: Callable[[torch.device], tuple]
    nbytes: int
    flops: int = 0
    params: str = ""
    target: Target | None = None

    @property
    def label(self) -> str:
        return f"{self.op}({self.params})" if self.params else self.op


@dataclass(frozen=True)
class Provider:
    """One line of a benchmark: an implementation of the suite's ops.

    Args:
        name: e.g. ``"torch-eager"``, ``"slimops-cuda"``.
        devices: device types it runs on (``"cpu"``, ``"cuda"``).
        prepare: ``prepare(case, args) -> fn`` returns a no-argument callable
            that runs the op once; it may warm up (compile) and raises
            :class:`Unavailable` when it cannot run here.
        unavailable: ``unavailable(device_type) -> reason | None``, checked
            before anything is built.
        context: entered around warm-up and timing (e.g. ``slimops.use_backend``),
            so its cost stays out of the per-call time.
    """

    name: str
    devices: tuple[str, ...]
    prepare: Callable[[Case, tuple], Callable[[], Any]]
    unavailable: Callable[[str], str | None] = lambda device: None
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


@dataclass(frozen=True)
class Suite:
    """A family of ops: its cases and providers.

    Args:
        name: the ``--suite`` name.
        description: one line for ``slimops bench --list``.
        cases: ``cases(device_type, quick) -> list[Case]``; quick cases run in seconds.
        providers: every provider; the harness keeps those for the device.
        baseline: the provider every ratio is taken against.
        rounds: CPU only: time the providers of a case round-robin this many
            times (each round a share of the timing budget) and report the
            median over rounds, so a stall of a shared machine hits every
            provider alike instead of one of them.
        interleave: time the providers of a case call by call in turn
            (``slimops._measure.median_seconds``: CUDA events and a cold L2 on a GPU,
            the wall clock on a CPU) instead of one after the other.
        copy_bytes: GPU: the ``torch-copy`` row of every case copies this many bytes
            (read + written), timed with the providers, instead of the case's own bytes:
            a copy large enough to show the card's bandwidth rather than its L2's.
    """

    name: str
    description: str
    cases: Callable[[str, bool], list[Case]]
    providers: list[Provider] = field(default_factory=list)
    baseline: str = "torch-eager"
    rounds: int = 1
    interleave: bool = False
    copy_bytes: int | None = None

    def provider(self, name: str) -> Provider:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(f"suite {self.name!r} has no provider {name!r}; it has {[p.name for p in self.providers]}")


# NOTE: rows of the harness's own GPU copy baseline carry this provider name.
COPY_PROVIDER = "torch-copy"


# ---------------------------------------------------------------- timers


def time_cpu(fn: Callable[[], Any], min_time: float = 0.3, min_reps: int = 10) -> tuple[float, int]:
    """Median seconds per call of ``fn`` on the CPU, and the number of calls timed.

    Warms up, then times blocks of calls (each block long enough that the
    timer's resolution and overhead are noise) until both ``min_time`` seconds
    and ``min_reps`` blocks are reached. The median over blocks shrugs off the
    stalls of a shared machine. A very slow ``fn`` stops after 3 blocks once
    ``10 * min_time`` has passed.
    """
    # Warm-up: at least 3 calls (allocator, lazy init, caches) and ~10% of the budget.
    t0 = time.perf_counter()
    n = 0
    while n < 3 or time.perf_counter() - t0 < 0.1 * min_time:
        fn()
        n += 1
    per_call = (time.perf_counter() - t0) / n
    number = max(1, int(2e-4 / max(per_call, 1e-9)))  # blocks of >= ~200 µs

    times: list[float] = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t) / number)
        elapsed = time.perf_counter() - start
        if (len(times) >= min_reps and elapsed >= min_time) or (len(times) >= 3 and elapsed >= 10 * min_time):
            break
    return statistics.median(times), len(times) * number


def time_gpu(fn: Callable[[], Any], quick: bool = False) -> float:
    """Median seconds per call of ``fn`` on the GPU (``triton.testing.do_bench``)."""
    import triton.testing

    warmup, rep = (10, 40) if quick else (25, 100)  # milliseconds of warm-up and of timing
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median") * 1e-3


# ---------------------------------------------------------------- running


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def select_providers(suite: Suite, device_type: str, names: Sequence[str] | None = None) -> list[Provider]:
    """The providers to run, baseline first.

    Without ``names``, every provider for the device. With ``names``, exactly
    those (plus the baseline, which every ratio needs); a named provider for
    another device is kept so that it is reported as skipped.
    """
    if names:
        chosen = [suite.provider(n) for n in dict.fromkeys(names)]  # KeyError names the valid ones
    else:
        chosen = [p for p in suite.providers if device_type in p.devices]
    if suite.baseline not in [p.name for p in chosen]:
        chosen.insert(0, suite.provider(suite.baseline))
    chosen.sort(key=lambda p: p.name != suite.baseline)  # stable: baseline first, the rest in order
    return chosen


class _Progress:
    """A rich progress bar on stderr (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            console = Console(stderr=True)
            self.bar = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=console.is_terminal,
            )
            self.task = self.bar.add_task("bench", total=total)
            # A log file (not a terminal) gets one line per timing instead of a live bar.
            self.log_lines = not console.is_terminal

    def __enter__(self):
        if self.bar:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.__exit__(*exc)

    def start(self, text: str):
        if self.bar:
            self.bar.update(self.task, description=text)

    def done(self, row: dict):
        if not self.bar:
            return
        self.bar.advance(self.task)
        if self.log_lines:
            what = f"{row['median_us']:.2f} us" if row["status"] == "ok" else f"{row['status']}: {row['reason']}"
            self.bar.console.print(
                f"{row['suite']} {row['op']}{'(' + row['params'] + ')' if row['params'] else ''} "
                f"{row['shape']} {row['dtype']} {row['provider']}: {what}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )


def run_suite(
    suite: Suite,
    device: str = "cpu",
    *,
    quick: bool = False,
    providers: Sequence[str] | None = None,
    cases: Iterable[Case] | None = None,
    min_time: float | None = None,
    progress: bool = True,
    on_case_done: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Time every selected provider on every case; return one row per (case, provider).

    Args:
        suite: the suite (see :mod:`slimops.bench.suites`).
        device: ``"cpu"`` or ``"cuda"``.
        quick: the suite's quick cases and shorter timing.
        providers: provider names to run (default: all for the device); the
            baseline is always added.
        cases: explicit cases instead of the suite's own (tests use tiny ones).
        min_time: CPU seconds of timing per row (default 0.05 quick, 0.3 full).
        progress: show a rich progress bar on stderr.
        on_case_done: called with all rows so far after each case (to save
            partial results).

    Returns:
        rows as described in :mod:`slimops.bench` (``status`` ok / skipped / error).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is visible to torch")
    on_gpu = dev.type == "cuda"
    min_time = min_time if min_time is not None else (0.05 if quick else 0.3)
    case_list = list(cases) if cases is not None else suite.cases(dev.type, quick)
    chosen = select_providers(suite, dev.type, providers)
    # Fixed per run, so computed once: every row repeats them for self-contained JSON lines.
    common = {
        "baseline": suite.baseline,
        "device": dev.type,
        "device_name": _info.device_name(dev),
        "versions": {k: v for k, v in _info.versions().items() if k != "platform"},
        "timer": "triton.testing.do_bench median" if on_gpu else "slimops.bench.time_cpu median",
    }

    rows: list[dict] = []
    total = len(case_list) * (len(chosen) + on_gpu)
    with _Progress(progress, total) as bar:
        for case in case_list:
            case_rows = []

            def row(
                provider: str,
                seconds: float | None,
                status: str = "ok",
                reason: str | None = None,
                extra=None,
                nbytes: int | None = None,
            ) -> dict:
                # A provider that moves other bytes than the case's (a packed weight) says so.
                nbytes = case.nbytes if nbytes is None else nbytes
                r = {
                    "suite": suite.name,
                    "op": case.op,
                    "params": case.params,
                    "provider": provider,
                    "shape": list(case.shape),
                    "dtype": _dtype_name(case.dtype),
                    "status": status,
                    "reason": reason,
                    "median_us": None if seconds is None else seconds * 1e6,
                    "gbps": nbytes / seconds / 1e9 if seconds and nbytes else None,
                    "tflops": case.flops / seconds / 1e12 if seconds and case.flops else None,
                    "speedup_vs_baseline": None,  # filled in once the case's rows are all in
                    "frac_of_copy_bw": None,
                    # What a provider measured besides time (e.g. the cpu suite's SQNR), or None.
                    "extra": extra,
                    "bytes": nbytes,
                    "flops": case.flops or None,
                    **common,
                    # Per row: a provider may set its own (the cpu suite's threads=N cases).
                    "threads": None if on_gpu else torch.get_num_threads(),
                    "date": _now(),
                }
                if case.target is not None:
                    r.update(target=case.target.text, target_met=None)
                case_rows.append(r)
                bar.done(r)
                return r

            try:
                args = case.make_args(dev)
            except Exception as e:  # e.g. out of memory: report the case, keep going
                for p in chosen:
                    row(p.name, None, "error", f"building inputs failed: {type(e).__name__}: {e}")
                rows += case_rows
                continue

            if on_gpu and not suite.interleave:
                # Copy the same number of bytes (half read, half written): the
                # bandwidth any memory-bound op could hope for at this size.
                bar.start(f"{case.label} {list(case.shape)} {_dtype_name(case.dtype)} · {COPY_PROVIDER}")
                try:
                    src = torch.empty(max(1, case.nbytes // 2), dtype=torch.uint8, device=dev)
                    dst = torch.empty_like(src)
                    row(COPY_PROVIDER, time_gpu(lambda: dst.copy_(src), quick))
                except Exception as e:
                    row(COPY_PROVIDER, None, "error", f"{type(e).__name__}: {str(e).strip()[:500]}")
                src = dst = None

            rounds = 1 if on_gpu else max(1, suite.rounds)
            fns: dict[str, Callable[[], Any]] = {}
            for p in chosen:
                bar.start(f"{case.label} {list(case.shape)} {_dtype_name(case.dtype)} · {p.name}")
                reason = None if dev.type in p.devices else f"runs on {'/'.join(p.devices)} only"
                reason = reason or p.unavailable(dev.type)
                if reason:
                    row(p.name, None, "skipped", reason)
                    continue
                try:
                    with p.context():
                        fn = p.prepare(case, args)
                        if suite.interleave:
                            fn()  # fails here, alone, rather than inside the interleaved timing
                        elif rounds == 1:
                            seconds = time_gpu(fn, quick) if on_gpu else time_cpu(fn, min_time, 5 if quick else 10)[0]
                    if suite.interleave:
                        fns[p.name] = _within(p.context, fn)
                    elif rounds == 1:
                        row(p.name, seconds, extra=getattr(fn, "extra", None))
                    else:
                        fns[p.name] = fn
                except Unavailable as e:
                    row(p.name, None, "skipped", str(e))
                except Exception as e:  # a failing provider must not lose the rest of the run
                    row(p.name, None, "error", f"{type(e).__name__}: {str(e).strip()[:500]}")
            if fns and suite.interleave:
                _time_interleaved(suite, fns, dev, quick, row)
            elif fns:
                # Interleaved: round r times every provider once, in turn.
                per_round: dict[str, list[float]] = {name: [] for name in fns}
                failed: dict[str, str] = {}
                for _ in range(rounds):
                    for p in chosen:
                        if p.name not in fns or p.name in failed:
                            continue
                        try:
                            with p.context():
                                per_round[p.name].append(time_cpu(fns[p.name], min_time / rounds, 3)[0])
                        except Exception as e:
                            failed[p.name] = f"{type(e).__name__}: {str(e).strip()[:500]}"
                for name in fns:
                    if name in failed:
                        row(name, None, "error", failed[name])
                    else:
                        row(name, statistics.median(per_round[name]), extra=getattr(fns[name], "extra", None))
            fn = args = None  # free the inputs (the last closure holds them too) before the next case
            fns = {}

            # Ratios between rows measured in this same run.
            base = next((r for r in case_rows if r["provider"] == suite.baseline and r["status"] == "ok"), None)
            copy = next((r for r in case_rows if r["provider"] == COPY_PROVIDER), None)
            for r in case_rows:
                if r["status"] != "ok":
                    continue
                if base:
                    r["speedup_vs_baseline"] = base["median_us"] / r["median_us"]
                if copy and copy["status"] == "ok" and r["gbps"]:
                    r["frac_of_copy_bw"] = r["gbps"] / copy["gbps"]
            if case.target is not None:
                for r in case_rows:
                    if r["status"] == "ok" and r["provider"].startswith("slimops"):
                        r["target_met"] = case.target.met(r, case_rows)
            rows += case_rows
            if on_case_done:
                on_case_done(rows)
    return rows


def _within(context: Callable[[], contextlib.AbstractContextManager], fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run inside a fresh ``context()`` at each call (interleaved providers each keep their own)."""

    def call():
        with context():
            return fn()

    call.nbytes = getattr(fn, "nbytes", None)
    call.extra = getattr(fn, "extra", None)
    return call


def _time_interleaved(suite: Suite, fns: dict[str, Callable[[], Any]], dev: torch.device, quick: bool, row) -> None:
    """Time ``fns`` call by call in turn (and, on a GPU, the suite's large copy with them); add their rows."""
    fns = dict(fns)
    copy_nbytes = None
    if dev.type == "cuda" and suite.copy_bytes:
        # Half read, half written: copy_bytes moved per call, as large as the suite asks.
        src = torch.empty(suite.copy_bytes // 2, dtype=torch.uint8, device=dev)
        dst = torch.empty_like(src)
        fns[COPY_PROVIDER] = lambda: dst.copy_(src)
        copy_nbytes = 2 * src.numel()
    warmup, repeats = (3, 20) if quick else (10, 100)
    try:
        seconds = _measure.median_seconds(
            list(fns.values()), [dev] * len(fns), warmup=warmup, repeats=repeats, cuda_events=dev.type == "cuda"
        )
    except Exception as e:  # a failure inside the timing loses the case, not the run
        for name in fns:
            row(name, None, "error", f"interleaved timing failed: {_measure.describe_error(e)}")
        return
    for (name, fn), s in zip(fns.items(), seconds, strict=True):
        nbytes = copy_nbytes if name == COPY_PROVIDER else getattr(fn, "nbytes", None)
        row(name, s, extra=getattr(fn, "extra", None), nbytes=nbytes)


# ---------------------------------------------------------------- output


def prepare_json_path(path: str) -> None:
    """Make ``path`` writable before any case runs: create its missing parent folders.

    Raises:
        ValueError: ``path`` is a folder, a parent cannot be created, or its folder is not writable
            (said before the first case runs, not after it).
    """
    if os.path.isdir(path):
        raise ValueError(f"--json {path}: is a folder; give a file path (e.g. {os.path.join(path, 'bench.json')})")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--json {path}: cannot create its folder {folder} ({e.strerror or e})") from None
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"--json {path}: not writable")


def write_json(rows: list[dict], path: str, argv: Sequence[str] | None = None) -> None:
    """Write ``{"schema", "created", "argv", "rows"}`` to ``path``."""
    doc = {"schema": "slimops.bench/1", "created": _now(), "argv": list(argv or []), "rows": rows}
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def _fmt(v: float | None, spec: str) -> str:
    return "" if v is None else format(v, spec)


def print_table(rows: list[dict], console=None) -> None:
    """Print the rows as a rich table, one section per case."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    if not console.is_terminal:
        # A log file or pipe: rich would assume 80 columns and truncate the cells.
        console.width = max(console.width, 160)
    if not rows:
        console.print("no rows")
        return
    first = rows[0]
    has_flops = any(r["tflops"] for r in rows)
    has_copy = any(r["frac_of_copy_bw"] for r in rows)
    title = (
        f"slimops bench · {first['device_name']} · torch {first['versions']['torch']}"
        + (f" · CUDA {first['versions']['cuda']}" if first["device"] == "cuda" else f" · {first['threads']} threads")
        + f" · {first['date'][:10]}"
    )
    t = Table(title=title, title_justify="left")
    for name in ["op", "shape", "dtype", "provider"]:
        t.add_column(name)
    numeric = ["median µs", "GB/s"] + (["TFLOP/s"] if has_flops else []) + [f"× {first['baseline']}"]
    numeric += ["% copy BW"] if has_copy else []
    for name in numeric:
        t.add_column(name, justify="right")
    has_note = any(r["status"] != "ok" for r in rows)
    if has_note:
        t.add_column("note", overflow="fold")

    last_case = None
    for r in rows:
        case = (r["suite"], r["op"], r["params"], tuple(r["shape"]), r["dtype"])
        if last_case is not None and case != last_case:
            t.add_section()
        op = f"{r['op']}({r['params']})" if r["params"] else r["op"]
        head = [op, "×".join(map(str, r["shape"])), r["dtype"]] if case != last_case else ["", "", ""]
        last_case = case
        provider = f"[bold]{r['provider']}[/]" if r["provider"].startswith("slimops") else r["provider"]
        if r["status"] != "ok":
            color = "red" if r["status"] == "error" else "dim"
            # Text, not markup: reasons quote shapes like [16, 1] that markup would eat.
            t.add_row(*head, provider, *[""] * len(numeric), Text(f"{r['status']}: {r['reason']}", style=color))
            continue
        cells = [_fmt(r["median_us"], ",.2f"), _fmt(r["gbps"], ",.1f")]
        if has_flops:
            cells.append(_fmt(r["tflops"], ",.1f"))
        cells.append(_fmt(r["speedup_vs_baseline"], ".2f"))
        if has_copy:
            cells.append(_fmt(r["frac_of_copy_bw"] and 100 * r["frac_of_copy_bw"], ".0f"))
        t.add_row(*head, provider, *cells, *([""] if has_note else []))
    console.print(t)


def slimops_providers(make_fn) -> list[Provider]:
    """slimops' providers for a suite whose slimops call is ``make_fn(case, args)``.

    The C++ kernels on CPU; on a GPU the per-shape choice ("slimops-auto") and
    each backend forced. A provider that is not built here is skipped with the reason.
    """
    from slimops import _build
    from slimops.backend import use_backend

    def missing(backend):
        return lambda device: _build.missing_backends().get(backend)

    def no_gpu_backend(device):
        m = _build.missing_backends()
        if "cuda" in m and "triton" in m:
            return f"no GPU backend: cuda: {m['cuda']}; triton: {m['triton']}"
        return None

    return [
        Provider("slimops-cpu", ("cpu",), make_fn, missing("cpu")),
        Provider("slimops-auto", ("cuda",), make_fn, no_gpu_backend, lambda: use_backend("auto")),
        Provider("slimops-cuda", ("cuda",), make_fn, missing("cuda"), lambda: use_backend("cuda")),
        Provider("slimops-triton", ("cuda",), make_fn, missing("triton"), lambda: use_backend("triton")),
    ]
