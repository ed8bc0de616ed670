"""The declarative search space of :func:`slimops.tune`: checking it, sampling it with an optuna
trial, and turning a trial's values into the ``{fqn: config}`` map ``slimops.convert`` takes.

A space is a small dict::

    {
        "layers": {                                 # layer groups: name -> (fqns, choices)
            "hidden": (["1", "3"], ["none", "int8_weight_only", "int8_dynamic", "fp8", "sparse"]),
            "head": (["5"], ["none", "int8_weight_only"]),
        },
        "sparsity": (0.5, 0.9),                     # per group that picks "sparse"
        "pattern": ["unstructured", "block"],       # per group that picks "sparse"
        "group_size": [None, 32],                   # per group that picks "int8_weight_only"
        "lr": (1e-4, 1e-2, "log"),                  # anything else: a hyperparameter of build
        "kd_alpha": (0.3, 0.9),
        "prune_steps": [50, 100],
    }

Values: a list is a categorical choice, ``(low, high)`` a range (int when both ends are ints,
else float), ``(low, high, "log")`` a log range, ``(low, high, step)`` a stepped range, and
any other value is fixed (passed to ``build`` as it is). The compression keys
(:data:`GROUP_KEYS`) are sampled once per layer group, as ``"<group>.sparsity"``, and only for
a group whose choice uses them: optuna's define-by-run space is conditional.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

# The compression choices of a layer group, and the keys each one reads.
CHOICES = ("none", "int8_weight_only", "int8_dynamic", "fp8", "sparse")
# NOTE: pattern comes before sparsity: a group that picks 2:4 has its sparsity fixed at 0.5.
GROUP_KEYS = {"pattern": "sparse", "block_size": "sparse", "sparsity": "sparse", "group_size": "int8_weight_only"}
_DEFAULTS = {"pattern": "unstructured", "block_size": 16, "group_size": None}


@dataclasses.dataclass(frozen=True)
class Dimension:
    """One searched value: ``choices`` (a categorical) or ``low``/``high`` (a range)."""

    name: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    fixed: Any = None
    is_fixed: bool = False

    def suggest(self, trial, name: str | None = None):
        name = name or self.name
        if self.is_fixed:
            return self.fixed
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int) and (self.step is None or isinstance(self.step, int)):
            return trial.suggest_int(name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> list | None:
        """The values of a grid over this dimension, or None for a continuous range."""
        if self.is_fixed:
            return None
        if self.choices is not None:
            return list(self.choices)
        if self.step is not None or (isinstance(self.low, int) and isinstance(self.high, int) and not self.log):
            step = self.step or 1
            count = int(round((self.high - self.low) / step)) + 1
            return [self.low + i * step for i in range(count)]
        return None


@dataclasses.dataclass(frozen=True)
class Space:
    """A checked space: layer groups ``{name: (fqns, choices)}`` and the other dimensions."""

    groups: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]
    group_dims: dict[str, Dimension]  # sparsity, pattern, block_size, group_size
    dims: dict[str, Dimension]  # build's hyperparameters

    def suggest(self, trial) -> dict[str, Any]:
        """Every value of one trial, by name: ``"layers.<group>"``, ``"<group>.<key>"``, hyperparameters."""
        values: dict[str, Any] = {}
        for group, (_, choices) in self.groups.items():
            choice = trial.suggest_categorical(f"layers.{group}", list(choices))
            values[f"layers.{group}"] = choice
            for key, user in GROUP_KEYS.items():
                if user != choice:
                    continue
                if key == "sparsity" and values.get(f"{group}.pattern") == "2:4":
                    values[f"{group}.sparsity"] = 0.5  # 2:4 is half by definition
                    continue
                dim = self.group_dims.get(key)
                values[f"{group}.{key}"] = _DEFAULTS.get(key) if dim is None else dim.suggest(trial, f"{group}.{key}")
        for name, dim in self.dims.items():
            values[name] = dim.suggest(trial)
        return values

    def configs(self, values: Mapping[str, Any]) -> dict:
        """``{fqn: config or None}`` for ``slimops.convert``; one config object per group."""
        from slimops.prune import SparseConfig
        from slimops.quant import Fp8DynamicConfig, Int8DynamicConfig, Int8WeightOnlyConfig

        out: dict = {}
        for group, (fqns, _) in self.groups.items():
            choice = values[f"layers.{group}"]
            if choice == "none":
                config = None
            elif choice == "int8_weight_only":
                config = Int8WeightOnlyConfig(group_size=values.get(f"{group}.group_size"))
            elif choice == "int8_dynamic":
                config = Int8DynamicConfig()
            elif choice == "fp8":
                config = Fp8DynamicConfig()
            else:
                config = SparseConfig(
                    values[f"{group}.sparsity"], values.get(f"{group}.pattern", "unstructured"),
                    block_size=values.get(f"{group}.block_size", _DEFAULTS["block_size"]),
                )
            out.update(dict.fromkeys(fqns, config))
        return out

    def grid(self) -> dict[str, list]:
        """The search space of optuna's ``GridSampler``; every dimension must be discrete."""
        out: dict[str, list] = {}
        for group, (_, choices) in self.groups.items():
            out[f"layers.{group}"] = list(choices)
            for key, user in GROUP_KEYS.items():
                if user in choices and key in self.group_dims:
                    out[f"{group}.{key}"] = self._grid_of(self.group_dims[key], f"{group}.{key}")
        for name, dim in self.dims.items():
            if not dim.is_fixed:
                out[name] = self._grid_of(dim, name)
        return out

    @staticmethod
    def _grid_of(dim: Dimension, name: str) -> list:
        values = dim.grid()
        if values is None:
            raise ValueError(
                f"slimops.tune: sampler 'grid' needs every dimension discrete; {name!r} is a continuous range "
                f"({dim.low}, {dim.high}): give a list of values or a step, (low, high, step)"
            )
        return values


def parse_space(space: Any) -> Space:
    """Check a space dict (see the module docstring) and return it as a :class:`Space`."""
    if not isinstance(space, Mapping):
        raise TypeError(f"slimops.tune: space must be a dict, got {type(space).__name__}")
    if not space:
        raise ValueError("slimops.tune: space is empty: give at least one layer group or hyperparameter to search")
    groups: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    layers = space.get("layers", {})
    if not isinstance(layers, Mapping):
        raise TypeError(f"slimops.tune: space['layers'] must be a dict {{group: (fqns, choices)}}, got {type(layers).__name__}")
    for group, entry in layers.items():
        where = f"space['layers'][{group!r}]"
        if not isinstance(group, str) or not group or "." in group:
            raise ValueError(f"slimops.tune: a layer group name must be a non-empty str without '.', got {group!r}")
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise TypeError(f"slimops.tune: {where} must be (fqns, choices), got {entry!r}")
        fqns, choices = entry
        if isinstance(fqns, str) or not isinstance(fqns, Sequence) or not fqns or not all(isinstance(f, str) for f in fqns):
            raise ValueError(f"slimops.tune: {where}: fqns must be a non-empty list of module names, got {fqns!r}")
        if isinstance(choices, str) or not isinstance(choices, Sequence) or not choices:
            raise ValueError(f"slimops.tune: {where}: choices must be a non-empty list from {list(CHOICES)}, got {choices!r}")
        unknown = [c for c in choices if c not in CHOICES]
        if unknown:
            raise ValueError(f"slimops.tune: {where}: unknown choice(s) {unknown}; known: {', '.join(CHOICES)}")
        groups[group] = (tuple(fqns), tuple(dict.fromkeys(choices)))
    taken = [f for _, (fqns, _) in groups.items() for f in fqns]
    twice = sorted({f for f in taken if taken.count(f) > 1})
    if twice:
        raise ValueError(f"slimops.tune: layer(s) {twice} are in more than one group of space['layers']")
    chosen = {c for _, cs in groups.values() for c in cs}
    if "sparse" in chosen and "sparsity" not in space:
        raise ValueError("slimops.tune: a layer group may choose 'sparse': space needs a 'sparsity' range, e.g. (0.5, 0.9)")
    group_dims = {key: _dimension(key, space[key]) for key in GROUP_KEYS if key in space}
    dims = {name: _dimension(name, v) for name, v in space.items() if name != "layers" and name not in GROUP_KEYS}
    for name in dims:
        if not isinstance(name, str) or name.startswith("layers.") or "." in name:
            raise ValueError(f"slimops.tune: a hyperparameter name must be a str without '.', got {name!r}")
    if not groups and not any(not d.is_fixed for d in dims.values()):
        raise ValueError("slimops.tune: space searches nothing: every entry is fixed and there is no layer group")
    return Space(groups, group_dims, dims)


def _dimension(name: str, value: Any) -> Dimension:
    where = f"space[{name!r}]"
    if isinstance(value, list):
        if not value:
            raise ValueError(f"slimops.tune: {where} is an empty list of choices")
        bad = [v for v in value if v is not None and not isinstance(v, (bool, int, float, str))]
        if bad:
            raise TypeError(f"slimops.tune: {where}: choices must be None, bool, int, float or str, got {bad[0]!r}")
        return Dimension(name, choices=tuple(value))
    if isinstance(value, tuple):
        if len(value) not in (2, 3) or not all(_real(v) for v in value[:2]):
            raise ValueError(f"slimops.tune: {where} must be (low, high), (low, high, 'log') or (low, high, step), got {value!r}")
        low, high = value[:2]
        if not low < high:
            raise ValueError(f"slimops.tune: {where}: low must be below high, got {value!r}")
        log, step = False, None
        if len(value) == 3:
            if value[2] == "log":
                if low <= 0:
                    raise ValueError(f"slimops.tune: {where}: a log range needs low > 0, got {low}")
                log = True
            elif _real(value[2]) and value[2] > 0:
                step = value[2]
            else:
                raise ValueError(f"slimops.tune: {where}: the third item must be 'log' or a step > 0, got {value[2]!r}")
        return Dimension(name, low=low, high=high, log=log, step=step)
    return Dimension(name, fixed=value, is_fixed=True)


def _real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)
