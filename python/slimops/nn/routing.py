"""Which path a converted layer takes for a batch of M rows: its own kernel, or a faster one.

A slimops layer must never be slower than the layer it replaces. Where a
measurement shows its kernel losing at a class of shapes, that class is routed to
a path that computes the same layer faster, within the config's documented error:

* ``"w8a16"``: the int8 weight times the float activation (``weight_int8_linear``):
  no activation rounding, so never less accurate than W8A8;
* ``"dequantize"``: the weight dequantized into a temporary, then the dense GEMM
  (cuBLAS on a GPU). The temporary lives for one call: the layer's memory does not
  grow, which is what it was converted for;
* ``"fp8_weight_only"`` (``Fp8DynamicLinear``, CUDA builds): the e4m3 weight dequantized in
  registers by the decode GEMV family (csrc/cuda/decode_gemv.cuh), the activation unrounded. No
  rule names it until bench/decode_sweep.py has measured it on a GPU.

Every rule cites the committed measurement it comes from. The decision is a dict
lookup and at most a few integer comparisons per call (no timing, no I/O); under
``torch.compile`` the comparisons become guards. ``bench/never_slower.py``
measures every layer against the layer it replaces (bench/gpu_check.sh runs it),
which is where new rules come from. :func:`describe` lists the rules that apply to
a layer, for ``slimops.report`` and ``slimops info``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

PATHS = ("kernel", "w8a16", "dequantize", "fp8_weight_only")

_H200_QUANT = "bench/results/quant-h200-quick-2026-11-28.json"


@dataclasses.dataclass(frozen=True)
class Rule:
    """Layers named ``layer`` on ``device`` with ``min_m <= M <= max_m`` rows take ``path``."""

    layer: str  # the layer's route name (Layer.route_name: class name, "/grouped" for per-group scales)
    device: str  # torch.device.type
    min_m: int
    max_m: int | None  # None: no upper bound
    path: str
    source: str  # the committed measurement, and what it showed

    def __post_init__(self):
        if self.path not in PATHS:
            raise ValueError(f"routing.Rule: path must be one of {PATHS}, got {self.path!r}")

    def covers(self, m) -> bool:
        return self.min_m <= m and (self.max_m is None or m <= self.max_m)

    def describe(self) -> str:
        rows = f"M >= {self.min_m}" if self.max_m is None else f"M {self.min_m}..{self.max_m}"
        return f"{self.device}, {rows}: {self.path} ({self.source})"


RULES: tuple[Rule, ...] = (
    Rule("Int8DynamicLinear", "cuda", 1, 16, "w8a16",
         f"{_H200_QUANT}: H200 bf16, W8A8 at 0.14x / 0.33x of nn.Linear at M = 1 / 16, "
         "the W8A16 CUDA kernel at 1.12x / 1.02x (4096->11008) and 1.32x / 1.23x (11008->4096)"),
    Rule("Int8WeightOnlyLinear", "cuda", 4096, None, "dequantize",
         f"{_H200_QUANT}: H200 bf16, W8A16 at 0.63x of nn.Linear at M = 4096 (4096->11008); dequantizing "
         "45 MB into 90 MB costs about what the 168 MB copy row took (47 us) next to the 504 us GEMM"),
    Rule("Fp8DynamicLinear", "cuda", 1, 16, "dequantize",
         f"{_H200_QUANT}: H200 bf16, fp8 W8A8 at 0.24x of nn.Linear at M = 16 (torch._scaled_mm 0.33x); "
         "a dequantize (about 47 us, the copy row) and a 34 us GEMM take about half its 146 us"),
    Rule("Sparse24Int8Linear", "cuda", 1, None, "dequantize",
         "csrc/cuda/sparse24_int8.cu: NOT a measurement. The layer's CUDA decode kernel has never run, and a "
         "never-run kernel is no default path: dequantize + cuBLAS until the H200 run (bench/gpu_check.sh) "
         "measures it (expect this path below 0.95x of bf16 at decode sizes: the dequantize alone is ~47 us)"),
)

_active: tuple[Rule, ...] = RULES
_by_key: dict[tuple[str, str], tuple[Rule, ...]] = {}


def _index(rules: tuple[Rule, ...]) -> dict[tuple[str, str], tuple[Rule, ...]]:
    out: dict[tuple[str, str], list[Rule]] = {}
    for r in rules:
        out.setdefault((r.layer, r.device), []).append(r)
    return {k: tuple(v) for k, v in out.items()}


_by_key = _index(_active)


def path_for(layer: str, device: str, m) -> str:
    """The path a layer with route name ``layer`` takes on ``device`` for ``m`` rows."""
    for rule in _by_key.get((layer, device), ()):
        if rule.covers(m):
            return rule.path
    return "kernel"


def rules_for(layer: str) -> tuple[Rule, ...]:
    return tuple(r for r in _active if r.layer == layer)


def describe(layer: str, device: str | None = None) -> list[str]:
    """The rules for a layer (on one device, or all), as text."""
    return [r.describe() for r in rules_for(layer) if device is None or r.device == device]


@contextlib.contextmanager
def rules(new: tuple[Rule, ...] | list[Rule]) -> Iterator[None]:
    """Route by ``new`` instead of :data:`RULES` inside the block (tests, and trying a rule out)."""
    global _active, _by_key
    old = _active
    _active, _by_key = tuple(new), _index(tuple(new))
    try:
        yield
    finally:
        _active, _by_key = old, _index(old)
