"""``slimops demo``: the whole compression pipeline on a model trained on the spot.

No download: the data is scikit-learn's bundled digits (1,797 8x8 images, 10
classes; 75% train, 25% test, stratified). The stages:

1. **dense**: train the model, clipping gradients with :func:`slimops.clip_grad_norm_`
   under AMP where the device has fast half precision (CUDA: fp16 with a
   ``GradScaler``, unscaled and clipped in one fused pass by
   :func:`slimops.amp.unscale_clip_grad_norm_`; a CPU with bf16 instructions: bf16;
   other CPUs train in fp32, since emulated bf16 is several times slower there).
2. **pruned**: a :class:`slimops.prune.Pruner` prunes the convolutions and linear
   layers gradually (cubic schedule) to 75% with the first-order Taylor criterion,
   while a :class:`slimops.distill.Distiller` fine-tunes against the dense model.
3. **packed**: :meth:`Pruner.finalize` turns each layer into the fastest form its
   mask allows.
4. **int8**: ``slimops.convert(model, Int8DynamicConfig())`` quantizes the convolutions and linear layers.
5. **tune** (with ``--tune N``): :func:`slimops.tune` searches N configurations of the dense
   model (per linear layer: none, int8, fp8 or sparse with recovery by distillation) for the
   Pareto front of accuracy and size (:mod:`slimops.tune.demo`).

After each stage :func:`slimops.report.report` compares the model with the dense
one (accuracy, size, latency, per-layer error), and the last table sums it up.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import importlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import slimops
from slimops import prune as P
from slimops.distill import Distiller


def _cnn() -> nn.Module:
    # Linear widths are multiples of 16, so int8, 2:4 and 16x16 blocks all apply.
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 10),
    )


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


MODELS: dict[str, Callable[[], nn.Module]] = {"cnn": _cnn, "mlp": _mlp}


@dataclasses.dataclass
class DemoConfig:
    """What the demo runs. Every field has a command-line flag (``slimops demo --help``).

    Args:
        device: ``"cpu"`` or ``"cuda"`` (None: CUDA when visible).
        model: a name in :data:`MODELS` or ``"package.module:factory"``, a function
            returning an ``nn.Module`` that maps ``[B, 1, 8, 8]`` images to ``[B, 10]`` logits.
        epochs: epochs of dense training.
        finetune_epochs: epochs of pruning with distillation.
        sparsity: the final fraction of pruned weights, in [0, 1).
        pattern: ``"unstructured"``, ``"block"`` (16x16 tiles) or ``"2:4"`` (sparsity 0.5).
        amp: ``True``/``False`` forces mixed precision on or off; None picks it per device.
        out: a folder for the per-stage JSON and PNG reports and the saved int8 model (None: none).
        seed: seeds the split, the initialisation and the batches.
        tune: trials of the search stage (0: no search stage).
    """

    device: str | None = None
    model: str = "cnn"
    epochs: int = 12
    finetune_epochs: int = 12
    sparsity: float = 0.75
    pattern: str = "block"
    amp: bool | None = None
    out: str | None = None
    seed: int = 0
    batch_size: int = 64
    tune: int = 0

    def __post_init__(self):
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"demo: device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("demo: --device cuda, but torch sees no CUDA device")
        if isinstance(self.tune, bool) or not isinstance(self.tune, int) or self.tune < 0:
            raise ValueError(f"demo: tune must be an int >= 0 (trials of the search stage), got {self.tune!r}")
        for name in ("epochs", "finetune_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"demo: {name} must be a positive int, got {value!r}")
        if self.pattern not in ("unstructured", "block", "2:4"):
            raise ValueError(f"demo: pattern must be 'unstructured', 'block' or '2:4', got {self.pattern!r}")
        if self.pattern == "2:4":
            self.sparsity = 0.5
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) or not 0 <= self.sparsity < 1:
            raise ValueError(f"demo: sparsity must be in [0, 1), got {self.sparsity!r}")
        build_model(self.model)  # an unknown name fails here, before any training


def build_model(name: str) -> nn.Module:
    """A fresh model from :data:`MODELS` or a ``"package.module:factory"`` path."""
    if name in MODELS:
        return MODELS[name]()
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"demo: model must be one of {sorted(MODELS)} or 'package.module:factory', got {name!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    model = factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"demo: {name} returned {type(model).__name__}, not an nn.Module")
    return model


def load_data(device: str, seed: int = 0):
    """Digits as ``(x_train, y_train, x_test, y_test)``: float32 ``[B, 1, 8, 8]`` in [0, 1], int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=0.25, random_state=seed, stratify=y.numpy()
    )
    parts = (x[idx_train], y[idx_train], x[idx_test], y[idx_test])
    return tuple(t.to(device) for t in parts)


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in percent, in eval mode (the mode is restored)."""
    was = model.training
    model.eval()
    correct = (model(x).argmax(-1) == y).sum().item()
    model.train(was)
    return 100.0 * correct / len(y)


def amp_dtype(device: str) -> torch.dtype | None:
    """The autocast dtype worth using on ``device``, or None where half precision is not faster."""
    if device == "cuda":
        return torch.float16
    fast_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or getattr(
        torch.cpu, "_is_amx_tile_supported", lambda: False
    )()
    return torch.bfloat16 if fast_bf16 else None


def _train(model, data, epochs, cfg, amp, progress, label, loss_fn, after_step=None, lr=2e-3, after_epoch=None) -> None:
    """One training run: AdamW, AMP when ``amp`` is a dtype, fused clip at norm 1.0 every step.

    ``after_epoch(epoch)`` is called after each epoch (the search stage reports accuracy there).
    """
    x_train, y_train = data[0], data[1]
    device = x_train.device.type
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # fp16 needs loss scaling; bf16 and fp32 do not (a disabled scaler is a no-op).
    scaler = torch.amp.GradScaler(device, enabled=amp == torch.float16)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    steps = -(-len(y_train) // cfg.batch_size)
    task = progress.add_task(label, total=epochs * steps)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(y_train), generator=gen).to(x_train.device)
        for i in range(steps):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            autocast = contextlib.nullcontext() if amp is None else torch.autocast(device, dtype=amp)
            with autocast:
                loss = loss_fn(x_train[idx], y_train[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            slimops.amp.unscale_clip_grad_norm_(scaler, opt, max_norm=1.0)
            scaler.step(opt)
            scaler.update()
            if after_step is not None:
                after_step()
            progress.advance(task)
        if after_epoch is not None:
            after_epoch(epoch)
    model.eval()


def _pruner(model: nn.Module, cfg: DemoConfig, total_steps: int) -> P.Pruner:
    pattern = {"unstructured": "unstructured", "block": P.block(16), "2:4": "2:4"}[cfg.pattern]
    # Reach the final sparsity two thirds of the way through, then recover at it.
    end = max(1, (2 * total_steps) // 3)
    schedule = P.gradual(end_step=end, frequency=max(1, end // 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # layers the pattern cannot take stay dense, listed in .skipped
        return P.Pruner(model, "taylor", pattern, cfg.sparsity, schedule=schedule)


@dataclasses.dataclass
class StageResult:
    """One row of the demo's summary, with the full report of that stage."""

    stage: str
    accuracy: float
    size_bytes: int
    latency_s: float
    note: str
    report: object  # slimops.report.CompressionReport


def prepare(cfg: DemoConfig, console, title: str) -> tuple[nn.Module, tuple, torch.dtype | None]:
    """Seed, load the digits, pick the AMP dtype and build the untrained model: ``(model, data, amp)``."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.device, cfg.seed)
    amp = None if cfg.amp is False else amp_dtype(cfg.device)
    if cfg.amp is True and amp is None:
        amp = torch.bfloat16  # forced on a CPU without native bf16: correct, only slower
    console.print(
        f"[bold]{title}[/]: {cfg.model} on digits ({len(data[1])} train / {len(data[3])} test), "
        f"device {cfg.device}, AMP {amp if amp is not None else 'off (no fast half precision here)'}"
    )
    return build_model(cfg.model).to(cfg.device), data, amp


def train_dense(model: nn.Module, data: tuple, cfg: DemoConfig, amp, console) -> None:
    """Train ``model`` for ``cfg.epochs`` with cross-entropy, a progress bar on ``console``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        _train(model, data, cfg.epochs, cfg, amp, progress, "train dense", lambda x, y: F.cross_entropy(model(x), y))


def run(cfg: DemoConfig, console=None) -> list[StageResult]:
    """Run every stage and print its report; returns the stage results.

    Args:
        cfg: what to run (see :class:`DemoConfig`).
        console: a ``rich.console.Console`` (default: a new one on stdout).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from slimops.report import report

    console = console or Console()
    start = time.perf_counter()
    model, data, amp = prepare(cfg, console, "slimops demo")
    x_test, y_test = data[2], data[3]
    eval_fn = lambda m: accuracy(m, x_test, y_test)  # noqa: E731
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    results: list[StageResult] = []

    def stage(name: str, dense: nn.Module, current: nn.Module, note: str) -> None:
        # Latency and per-layer error on one batch of the training batch size; accuracy on all of the test set.
        rep = report(dense, current, (x_test[: cfg.batch_size],), eval_fn=eval_fn)
        console.rule(f"[bold]{name}")
        rep.print(console)
        if out is not None:
            rep.to_json(out / f"report-{name}.json")
            rep.plot(out / f"report-{name}.png")
        results.append(StageResult(name, rep.metric_after, rep.size_after, rep.latency_after_s, note, rep))
        # NOTE: x latency comes from each report, which times both models interleaved in one
        # run; latencies of different stages are not comparable on a noisy machine.

    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # 1. dense training
    train_dense(model, data, cfg, amp, console)
    dense = copy.deepcopy(model).eval()
    stage("dense", dense, model, "trained with slimops.clip_grad_norm_")

    # 2. gradual Taylor pruning, fine-tuned with distillation from the dense model
    steps = cfg.finetune_epochs * -(-len(data[1]) // cfg.batch_size)
    pruner = _pruner(model, cfg, steps)
    distiller = Distiller(copy.deepcopy(dense), model, temperature=4.0, alpha=0.7)
    with Progress(*columns, console=console, transient=False) as progress:
        _train(model, data, cfg.finetune_epochs, cfg, amp, progress, f"prune to {cfg.sparsity:.0%} + KD",
               distiller.loss, after_step=pruner.step)
    sparsity = pruner.sparsity_report()
    stage("pruned", dense, model, f"{sparsity.sparsity:.1%} of the pruned layers' weights are zero (masked)")

    # 3. pack each layer into the fastest form its mask allows
    forms = pruner.finalize()
    console.print(pruner.sparsity_report().table())
    kinds = sorted({form.split(" ")[0] for form in forms.values()})
    stage("packed", dense, model, "packed as " + ", ".join(kinds))

    # 4. int8 weights and dynamic int8 activations for the convolutions and linear layers
    packed = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        slimops.convert(model, slimops.Int8DynamicConfig())
    for w in caught:
        console.print(f"[yellow]note:[/] {w.message}")
    summary = model.slimops_summary
    # The reports compare with the dense model, whose layers fine-tuning moved; against the
    # packed model the per-layer SQNR is the quantization error alone.
    alone = report(packed, model, (x_test[: cfg.batch_size],), repeats=1, warmup=0)
    worst = min(layer.sqnr_db for layer in alone.layers if layer.type_before != layer.type_after)
    kinds = sorted({kind.split(" -> ")[-1] for kind in summary.converted.values()})
    stage("int8", dense, model, f"{len(summary.converted)} layer(s) in int8 ({', '.join(kinds)}); vs packed: SQNR >= {worst:.1f} dB")

    if out is not None:
        slimops.save(model, out / "model-int8.safetensors")
    if cfg.tune:
        tune_stage(dense, data, cfg, amp, console, out)
    _print_summary(console, results, time.perf_counter() - start)
    if out is not None:
        rows = [{k: v for k, v in dataclasses.asdict(r).items() if k != "report"} for r in results]
        (out / "demo.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "stages": rows}, indent=1))
        console.print(f"reports, plots and the int8 model are in {os.fspath(out)}/")
    return results


def tune_stage(dense: nn.Module, data: tuple, cfg: DemoConfig, amp, console, out: Path | None, **search_kwargs):
    """Search ``cfg.tune`` configurations of ``dense``; print the Pareto front and the smallest model within
    1 point of the dense accuracy; write ``tune.json`` and ``tune-pareto.png`` to ``out``. Returns the result."""
    from slimops.tune.demo import search

    console.rule(f"[bold]tune ({cfg.tune} trials)")
    result = search(dense, data, cfg, cfg.tune, amp=amp, **search_kwargs)
    result.print(console)
    if result.failed:
        console.print(f"[yellow]{len(result.failed)} trial(s) failed[/], the first: {result.failed[0].error}")
    if result.dense is not None and "size" in result.objectives:
        floor = result.dense.metrics["metric"] - 1.0
        try:
            best = result.best(metric_floor=floor)
            console.print(
                f"smallest within 1 point of dense ({result.dense.metrics['metric']:.2f}%): trial {best.number}, "
                f"{best.metrics['metric']:.2f}%, {best.metrics['size'] / result.dense.metrics['size']:.2f}x the size"
            )
        except ValueError as e:
            console.print(f"[yellow]{e}[/]")
    if out is not None:
        result.to_json(out / "tune.json")
        result.plot(out / "tune-pareto.png")
    return result


def _print_summary(console, results: list[StageResult], seconds: float) -> None:
    from rich.table import Table

    base = results[0]
    table = Table(title=f"slimops demo: every stage against the dense model ({seconds:.0f} s)")
    for col in ("stage", "accuracy", "size", "x size", "latency", "x latency", "what changed"):
        table.add_column(col, justify="left" if col in ("stage", "what changed") else "right")
    for r in results:
        table.add_row(
            r.stage, f"{r.accuracy:.2f}%", f"{r.size_bytes / 1024:.1f} KiB", f"{r.size_bytes / base.size_bytes:.2f}",
            f"{r.latency_s * 1e3:.2f} ms", f"{r.report.latency_ratio:.2f}", r.note,
        )
    console.print(table)
    console.print(
        "[dim]Per-layer SQNR is against the dense model's layer on the same input; fine-tuning moves every "
        "weight, so after the pruned stage it measures that drift too. x latency: each report times both "
        "models interleaved (median), on this machine.[/]"
    )


def add_arguments(parser) -> None:
    """The ``slimops demo`` flags, one per :class:`DemoConfig` field."""
    defaults = DemoConfig(device="cpu")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when visible, else cpu")
    parser.add_argument("--model", default=defaults.model,
                        help=f"one of {sorted(MODELS)} or package.module:factory (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="dense training epochs (%(default)s)")
    parser.add_argument("--finetune-epochs", type=int, default=defaults.finetune_epochs,
                        help="pruning + distillation epochs (%(default)s)")
    parser.add_argument("--sparsity", type=float, default=defaults.sparsity, help="final sparsity (%(default)s)")
    parser.add_argument("--pattern", choices=["unstructured", "block", "2:4"], default=defaults.pattern,
                        help="sparsity pattern (%(default)s; block = 16x16 tiles)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision on/off (default: where the device has fast half precision)")
    parser.add_argument("--out", metavar="DIR", help="write per-stage JSON + PNG reports and the int8 model here")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--tune", type=int, default=0, metavar="N",
                        help="add a search stage of N slimops.tune trials and its Pareto plot (default: none)")


def config_from_args(args) -> DemoConfig:
    return DemoConfig(
        device=args.device, model=args.model, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
        sparsity=args.sparsity, pattern=args.pattern, amp=args.amp, out=args.out, seed=args.seed, tune=args.tune,
    )
