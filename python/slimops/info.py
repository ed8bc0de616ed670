"""What this slimops installation is: versions, built backends, GPU and CPU.

``slimops info`` prints it; bug reports and benchmark rows quote it, so every
field here comes from what the process can actually see (the compiled
extension, the visible device), never from what was asked for at build time.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import Any

import torch

import slimops
from slimops import _build, backend


def _dist_version(name: str) -> str | None:
    # importlib.metadata instead of `import triton`: reading the version must
    # not pay for (or fail on) importing the package.
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of slimops, torch, CUDA (torch's), triton and Python, and the platform."""
    return {
        "slimops": slimops.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _dist_version("triton"),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def cpu_name() -> str:
    """The CPU model, e.g. 'AMD EPYC 9654 96-Core Processor' (falls back to the architecture)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str | torch.device) -> str:
    """Human name of a device: the GPU's name, or the CPU model for 'cpu'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def _cpu_info() -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {
        "name": cpu_name(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "int8_kernels": cpu_int8_kernels(),
    }


def cpu_int8_kernels() -> dict[str, str] | None:
    """The ISA the int8 CPU kernels use now (``SLIMOPS_CPU_ISA`` or the best this CPU runs),
    the best one, and per op the kernel it runs; None without the compiled extension."""
    if not _build.HAS_C:
        return None
    return dict(_build._C._cpu_int8_kernels())


def _arch_runs_on(arch: str, major: int, minor: int) -> bool:
    """Whether code built for ``arch`` (``"sm_90a"`` or ``"90a"``) runs on a ``major.minor`` GPU."""
    # We build SASS only (code=sm_XX, no PTX), so: an 'a' target runs on exactly
    # that chip; a plain (or 'f' family) target on the same major at an equal or newer minor.
    arch = arch.removeprefix("sm_")
    a_major, a_minor = divmod(int(arch.rstrip("af")), 10)
    if arch.endswith("a"):
        return (a_major, a_minor) == (major, minor)
    return a_major == major and a_minor <= minor


def _gpu_info() -> dict[str, Any] | None:
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    gpu = {
        "name": p.name,
        "capability": f"{p.major}.{p.minor}",
        "memory_gib": round(p.total_memory / 2**30, 1),
        "sm_count": p.multi_processor_count,
        "l2_mib": round(getattr(p, "L2_cache_size", 0) / 2**20, 1) or None,
        "count": torch.cuda.device_count(),
    }
    if _build.HAS_CUDA_KERNELS:
        gpu["cuda_kernels_run_here"] = any(_arch_runs_on(a, p.major, p.minor) for a in _build.CUDA_ARCHS)
    return gpu


def op_backends() -> dict[str, dict[str, Any]]:
    """Per op, from the op table (csrc/ops.cpp): its GPU implementations and the rule between them.

    ``gpu`` lists "cuda" (a CUDA C++ kernel in the sources) and "triton" (a launcher in
    kernels/), or says "composite" (composed of other ops on every device); ``rule`` says
    which one runs when both are built.
    """
    out = {}
    for name, op in backend.OPS.items():
        if op["composite"]:
            out[name] = {"gpu": "composite", "rule": None}
            continue
        gpu = [b for b, has in (("cuda", op["cuda_cpp"]), ("triton", op["triton"])) if has]
        rule = None
        if len(gpu) == 2:
            min_size = backend.RULES.get(name)
            rule = "cuda" if min_size is None else f"cuda below {min_size} {op['size']}, triton from there"
        out[name] = {"gpu": gpu, "rule": rule}
    return out


def collect_info() -> dict[str, Any]:
    """Everything ``slimops info`` shows, as plain JSON-serialisable data.

    Returns:
        ``{"versions", "build", "backends", "backend_override", "ops", "gpu", "cpu", "warnings"}``;
        ``backends`` maps cpu/cuda/triton to ``{"available": bool, "reason": str | None}``,
        ``ops`` is :func:`op_backends` and ``gpu`` is None without a visible CUDA device.
    """
    missing = _build.missing_backends()
    gpu = _gpu_info()
    warnings = []
    if gpu is not None and gpu.get("cuda_kernels_run_here") is False:
        warnings.append(
            f"the CUDA kernels were built for {_build.CUDA_ARCHS}, which cannot run on this "
            f"sm_{gpu['capability'].replace('.', '')} GPU; rebuild with SLIMOPS_CUDA_ARCHS set for it"
        )
    return {
        "versions": versions(),
        "build": {
            "HAS_C": _build.HAS_C,
            "HAS_CUDA_KERNELS": _build.HAS_CUDA_KERNELS,
            "CUDA_ARCHS": list(_build.CUDA_ARCHS),
            "HAS_TRITON": _build.HAS_TRITON,
        },
        "backends": {
            name: {"available": name not in missing, "reason": missing.get(name)} for name in ("cpu", "cuda", "triton")
        },
        # What `with slimops.use_backend(...)` / SLIMOPS_BACKEND force right now (None: per-shape rules).
        "backend_override": backend.current_override(),
        "ops": op_backends(),
        "gpu": gpu,
        "cpu": _cpu_info(),
        "warnings": warnings,
    }


def print_info(info: dict[str, Any] | None = None, console=None) -> None:
    """Print :func:`collect_info` as a rich panel.

    Args:
        info: a dict from :func:`collect_info` (collected now if None).
        console: a ``rich.console.Console`` (stdout if None).
    """
    from rich.console import Console, Group
    from rich.panel import Panel
    from rich.table import Table

    info = collect_info() if info is None else info
    console = console or Console()

    def kv_table(title: str, items: dict[str, Any]) -> Table:
        t = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2))
        t.add_column(style="bold")
        t.add_column(overflow="fold")
        for k, v in items.items():
            t.add_row(k, "-" if v is None else str(v))
        return t

    backends = Table(title="backends", title_justify="left", box=None, padding=(0, 2))
    backends.add_column("backend", style="bold")
    backends.add_column("usable")
    backends.add_column("detail", overflow="fold")
    for name, b in info["backends"].items():
        detail = b["reason"] or ""
        if b["available"]:
            detail = {
                "cpu": "C++ kernels (slimops._C)",
                "cuda": "CUDA C++ kernels for " + ", ".join(info["build"]["CUDA_ARCHS"]),
                "triton": f"triton {info['versions']['triton']}",
            }[name]
        backends.add_row(name, "[green]yes[/]" if b["available"] else "[red]no[/]", detail)
    override = info["backend_override"] or "auto (per-shape rules)"
    ops = Table(title="ops (GPU)", title_justify="left", box=None, padding=(0, 2))
    ops.add_column("op", style="bold")
    ops.add_column("kernels")
    ops.add_column("rule", overflow="fold")
    for name, op in info["ops"].items():
        kernels = op["gpu"] if isinstance(op["gpu"], str) else " + ".join(op["gpu"]) or "-"
        ops.add_row(name, kernels, op["rule"] or "")

    gpu = info["gpu"]
    parts = [
        kv_table("versions", info["versions"]),
        "",
        backends,
        f"  GPU backend choice: {override}",
        "",
        ops,
        "",
        kv_table("gpu", gpu) if gpu else "[bold]gpu[/]: none visible",
        "",
        kv_table("cpu", {k: v for k, v in info["cpu"].items() if k != "int8_kernels"}),
        "",
        kv_table("cpu int8 kernels (SLIMOPS_CPU_ISA forces one)", info["cpu"].get("int8_kernels") or {}),
    ]
    for w in info["warnings"]:
        parts += ["", f"[yellow]warning:[/] {w}"]
    console.print(Panel(Group(*parts), title=f"slimops {info['versions']['slimops']}", expand=False))
