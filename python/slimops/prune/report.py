"""Sparsity reports: per-layer sparsity of a :class:`Pruner` (:class:`SparsityReport`) and its
``rich`` table."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class LayerSparsity:
    """One pruned layer: shape of its weight, pruned weights, (after finalize) its packed form, and
    (after :func:`oneshot`) the relative squared error of its output on its calibration inputs."""

    shape: tuple[int, ...]
    numel: int
    pruned: int
    form: str = "MaskedLinear"
    error: float | None = None

    @property
    def sparsity(self) -> float:
        return self.pruned / max(self.numel, 1)


@dataclasses.dataclass
class SparsityReport:
    """Per-layer sparsity of a :class:`Pruner`; ``report[fqn]`` is a :class:`LayerSparsity`."""

    layers: dict[str, LayerSparsity]
    skipped: dict[str, str]
    target: float
    step: int
    pattern: str
    criterion: str

    def __getitem__(self, fqn: str) -> LayerSparsity:
        return self.layers[fqn]

    @property
    def sparsity(self) -> float:
        """Pruned fraction of the weights of every pruned layer together."""
        total = sum(layer.numel for layer in self.layers.values())
        return sum(layer.pruned for layer in self.layers.values()) / max(total, 1)

    def table(self):
        """A ``rich.table.Table`` of the layers (and the skipped ones, with why)."""
        from rich.table import Table

        t = Table(
            title=f"sparsity: {self.pattern}, {self.criterion}, target {self.target:.1%} at step {self.step}",
        )
        errors = any(layer.error is not None for layer in self.layers.values())
        columns = (("layer", "left"), ("shape", "left"), ("pruned", "right"), ("sparsity", "right"), ("form", "left"))
        for col, justify in columns + ((("output error", "right"),) if errors else ()):
            t.add_column(col, justify=justify)
        for fqn, layer in self.layers.items():
            error = (f"{layer.error:.2e}" if layer.error is not None else "-",) if errors else ()
            t.add_row(fqn, "x".join(map(str, layer.shape)), f"{layer.pruned}/{layer.numel}",
                      f"{layer.sparsity:.1%}", layer.form, *error)
        total = sum(layer.numel for layer in self.layers.values())
        pruned = sum(layer.pruned for layer in self.layers.values())
        t.add_section()
        t.add_row("total", "", f"{pruned}/{total}", f"{self.sparsity:.1%}", "")
        for fqn, why in self.skipped.items():
            t.add_row(fqn, "", "", "skipped", why, style="dim")
        return t

    def print(self, console=None) -> None:
        """Print :meth:`table` (to stdout unless a ``rich.console.Console`` is given)."""
        from rich.console import Console

        (console or Console()).print(self.table())
