"""What ``slimops tune`` finds on the digits demo models: the dense model against the smallest
Pareto configuration within 1 point of its accuracy, for each model, with the front.

Each model is trained as ``slimops demo`` trains it (seeded), then searched with
:func:`slimops.tune.demo.search` (TPE, seed 0, objectives metric and size). Sizes are the
parameter and buffer bytes; accuracy is on the demo's 450-image test split (the search selects on
it: a demo, not a held-out evaluation).

Usage::

    python bench/tune_digits.py --trials 20 [--json bench/results/tune-digits-cpu-<date>.json]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import platform
import time

import torch
from rich.console import Console

import slimops
from slimops.demo import DemoConfig, prepare, train_dense
from slimops.info import cpu_name
from slimops.tune.demo import search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"])
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    import optuna

    rows = []
    quiet = Console(file=io.StringIO())
    for name in args.models:
        cfg = DemoConfig(device="cpu", model=name, seed=0)
        model, data, amp = prepare(cfg, quiet, name)
        train_dense(model, data, cfg, amp, quiet)
        start = time.perf_counter()
        result = search(model.eval(), data, cfg, args.trials, amp=amp)
        seconds = time.perf_counter() - start
        dense = result.dense
        best = result.best(metric_floor=dense.metrics["metric"] - 1.0)
        rows.append({
            "model": name,
            "trials": args.trials,
            "search_s": round(seconds, 1),
            "dense": {"accuracy": dense.metrics["metric"], "size_bytes": dense.metrics["size"]},
            "best_within_1_point": {
                "trial": best.number, "accuracy": best.metrics["metric"], "size_bytes": best.metrics["size"],
                "size_ratio": best.metrics["size"] / dense.metrics["size"], "params": best.params,
            },
            "pareto": [{"trial": t.number, **t.metrics, "params": t.params} for t in result.pareto],
            "failed": len(result.failed),
        })
        print(f"{name}: dense {dense.metrics['metric']:.2f}% {dense.metrics['size'] / 1024:.1f} KiB; best within 1 point: "
              f"trial {best.number} {best.metrics['metric']:.2f}% {best.metrics['size'] / 1024:.1f} KiB "
              f"({best.metrics['size'] / dense.metrics['size']:.2f}x), {best.params}; search {seconds:.0f} s")
    meta = {
        "cpu": cpu_name(), "torch": torch.__version__, "slimops": slimops.__version__, "optuna": optuna.__version__,
        "python": platform.python_version(), "date": datetime.date.today().isoformat(),
        "threads": torch.get_num_threads(), "note": "shared 2-core machine; sizes and accuracies do not depend on load",
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
