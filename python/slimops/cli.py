"""The ``slimops`` command: ``slimops demo``, ``tune``, ``info``, ``bench``, and ``encrypt`` / ``decrypt`` / ``keygen``.

Each subcommand is an ``_add_<name>(subparsers)`` function that registers its
arguments and sets ``func``; a new subcommand adds one such function to
``_SUBCOMMANDS``. Each handler imports what it needs, so a subcommand whose
dependencies are broken cannot take the others down with it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence


def _info(args: argparse.Namespace) -> int:
    from slimops.info import collect_info, print_info

    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print_info(info)
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="versions, built backends, GPU and CPU")
    p.add_argument("--json", action="store_true", help="print the information as JSON")
    p.set_defaults(func=_info)


def _bench(args: argparse.Namespace) -> int:
    import torch
    from rich.console import Console

    # From the modules, not the package: an editable install made before
    # slimops/bench/__init__.py existed maps slimops.bench as a namespace package.
    from slimops.bench.harness import prepare_json_path, print_table, run_suite, write_json
    from slimops.bench.suites import load_suites

    suites = load_suites()
    err = Console(stderr=True)
    if args.list:
        for s in suites.values():
            print(f"{s.name}: {s.description}")
            print(f"  providers: {', '.join(p.name + ' (' + '/'.join(p.devices) + ')' for p in s.providers)}")
        return 0

    names = args.suite or list(suites)
    unknown = [n for n in names if n not in suites]
    if unknown:
        err.print(f"slimops bench: unknown suite(s) {unknown}; choose from {list(suites)}")
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        err.print("slimops bench: --device cuda but torch sees no CUDA device")
        return 2
    if args.providers:
        known = {p.name for n in names for p in suites[n].providers}
        bad = [p for p in args.providers if p not in known]
        if bad:
            err.print(f"slimops bench: unknown provider(s) {bad}; choose from {sorted(known)}")
            return 2
    if args.json:
        # Before the first case: a bad path must not cost a run (the rows are written after each case).
        try:
            prepare_json_path(args.json)
        except ValueError as e:
            err.print(f"slimops bench: {e}", markup=False, highlight=False, soft_wrap=True)
            return 2

    if args.threads:
        # NOTE: on a busy 2-core machine, 2 OpenMP threads wait on each other at
        # every parallel region (ms-scale stalls); --threads 1 gives steadier numbers.
        torch.set_num_threads(args.threads)
    if device == "cpu" and torch.get_num_threads() > 1 and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
        if load >= cores - 0.5:
            err.print(
                f"[yellow]warning:[/] the CPU is busy (load {load:.1f} on {cores} cores): timings of "
                f"multi-threaded kernels will be noisy; --threads 1 is steadier"
            )

    rows: list[dict] = []

    def save(partial: list[dict]) -> None:
        # Rewritten after every case, so a run cut short still leaves its rows.
        if args.json:
            write_json(rows + partial, args.json, args.argv)

    for name in names:
        suite = suites[name]
        # With --providers and several suites, each suite runs the named ones it has.
        wanted = [p for p in args.providers if p in {q.name for q in suite.providers}] if args.providers else None
        if wanted == []:
            continue
        rows += run_suite(suite, device, quick=args.quick, providers=wanted, on_case_done=save)
    save([])
    print_table(rows)
    if args.json:
        err.print(f"wrote {len(rows)} rows to {args.json}")
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        err.print(f"[red]{len(errors)} row(s) failed[/]")
    return 1 if errors else 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="time slimops' ops against eager torch and torch.compile",
        description="Time every provider on every case of a suite; print a table, optionally write JSON rows.",
    )
    p.add_argument("--suite", action="append", metavar="NAME", help="suite to run (repeatable; default: all)")
    p.add_argument("--quick", action="store_true", help="a few small real shapes and shorter timing")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when visible, else cpu")
    p.add_argument(
        "--json",
        metavar="PATH",
        help="write the rows as JSON to PATH, rewritten after each case; missing folders are created, "
        "and a PATH that cannot be written is refused before anything runs",
    )
    p.add_argument(
        "--providers", nargs="+", metavar="NAME", help="only these providers (the baseline is always run)"
    )
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's choice)")
    p.add_argument("--list", action="store_true", help="list suites and providers, then exit")
    p.set_defaults(func=_bench)


def _demo(args: argparse.Namespace) -> int:
    from slimops.demo import config_from_args, run

    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError, ImportError, AttributeError) as e:
        print(f"slimops demo: {e}", file=sys.stderr)
        return 2
    run(cfg)
    return 0


def _add_demo(sub) -> None:
    from slimops.demo import add_arguments

    p = sub.add_parser(
        "demo",
        help="train, prune, distill and quantize a small CNN on the digits data, with a report per stage",
        description="The whole slimops pipeline on scikit-learn's bundled digits (no download).",
    )
    add_arguments(p)
    p.set_defaults(func=_demo)


def _tune(args: argparse.Namespace) -> int:
    from rich.console import Console

    from slimops.demo import DemoConfig, prepare, tune_stage, train_dense

    try:
        cfg = DemoConfig(device=args.device, model=args.model, epochs=args.epochs, out=args.out, seed=args.seed,
                         tune=args.trials)
        if cfg.tune < 1:
            raise ValueError(f"--trials must be >= 1, got {cfg.tune}")
    except (ValueError, TypeError, ImportError, AttributeError) as e:
        print(f"slimops tune: {e}", file=sys.stderr)
        return 2
    console = Console()
    model, data, amp = prepare(cfg, console, "slimops tune")
    train_dense(model, data, cfg, amp, console)
    out = None
    if cfg.out is not None:
        from pathlib import Path

        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
    try:
        tune_stage(model.eval(), data, cfg, amp, console, out, sampler=args.sampler, objectives=args.objectives,
                   storage=args.storage, study_name=args.study_name, timeout=args.timeout,
                   recovery_epochs=args.recovery_epochs)
    except (ValueError, TypeError) as e:
        print(f"slimops tune: {e}", file=sys.stderr)
        return 2
    if out is not None:
        console.print(f"tune.json and tune-pareto.png are in {out}/")
    return 0


def _add_tune(sub) -> None:
    from slimops.demo import MODELS
    from slimops.tune import OBJECTIVES, SAMPLERS

    p = sub.add_parser(
        "tune",
        help="train the demo model on the digits, then search its compression with slimops.tune (optuna)",
        description="Train the demo model, then search per-layer compression (none, int8, fp8, sparse + "
        "distillation) for the Pareto front of accuracy and size; print it, optionally write JSON and a plot.",
    )
    p.add_argument("--trials", type=int, default=20, help="trials of the study in total (%(default)s)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="optuna sampler (%(default)s)")
    p.add_argument("--objectives", nargs="+", choices=list(OBJECTIVES), default=["metric", "size"],
                   help="what to trade off (%(default)s)")
    p.add_argument("--storage", metavar="URL", help="optuna storage, e.g. sqlite:///tune.db: a stopped run resumes")
    p.add_argument("--study-name", help="the study's name in --storage (default: slimops.tune)")
    p.add_argument("--timeout", type=float, metavar="S", help="stop starting trials after S seconds")
    p.add_argument("--recovery-epochs", type=int, default=3, help="distillation epochs of a trial that prunes (%(default)s)")
    p.add_argument("--model", default="cnn", help=f"one of {sorted(MODELS)} or package.module:factory (%(default)s)")
    p.add_argument("--epochs", type=int, default=12, help="dense training epochs (%(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when visible, else cpu")
    p.add_argument("--out", metavar="DIR", help="write tune.json and tune-pareto.png here")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_tune)


# ---- encrypted files ---------------------------------------------------------------------------------
# The key comes from --key-file or SLIMOPS_MODEL_KEY, never from an argument: arguments show in process listings.

_KEY_FILE_HELP = "file holding the key (32 raw bytes, or hex / base64 text); default: $SLIMOPS_MODEL_KEY"


def _cli_key(args: argparse.Namespace, who: str) -> bytes:
    from slimops import encryption

    if args.key_file is not None:
        return encryption.read_key_file(args.key_file, who)
    key = encryption.resolve_key(None, who)
    if key is None:
        raise ValueError(
            f"{who}: no key: pass --key-file PATH or set {encryption.ENV_VAR} (the key itself is never an "
            "argument: it would show in process listings)"
        )
    return key


def _crypt(args: argparse.Namespace) -> int:
    from slimops import serialization

    who = f"slimops {args.command}"
    convert = serialization.encrypt_file if args.command == "encrypt" else serialization.decrypt_file
    try:
        convert(args.input, args.output, _cli_key(args, who))
    except (ValueError, TypeError, ImportError) as e:
        print(e, file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{who}: {e}", file=sys.stderr)
        return 2
    print(f"{who}: wrote {args.output}", file=sys.stderr)
    return 0


def _add_crypt(sub, command: str, help: str, description: str, input_help: str, output_help: str) -> None:
    # allow_abbrev=False: "--key HEX" must not pass for --key-file (the key would be in the process listing).
    p = sub.add_parser(command, allow_abbrev=False, help=help, description=description)
    p.add_argument("input", metavar="IN", help=input_help)
    p.add_argument("output", metavar="OUT", help=output_help)
    p.add_argument("--key-file", metavar="PATH", help=_KEY_FILE_HELP)
    p.set_defaults(func=_crypt)


def _add_encrypt(sub) -> None:
    _add_crypt(
        sub,
        "encrypt",
        help="encrypt a saved model (AES-256-GCM); the key from --key-file or $SLIMOPS_MODEL_KEY",
        description="Encrypt a plain file written by slimops.save into OUT, which slimops.load(..., key=) reads.",
        input_help="a plain slimops file (safetensors)",
        output_help="the encrypted file to write",
    )


def _add_decrypt(sub) -> None:
    _add_crypt(
        sub,
        "decrypt",
        help="decrypt an encrypted model into a plain slimops file; the key from --key-file or $SLIMOPS_MODEL_KEY",
        description="Authenticate every byte of IN, then write it as a plain slimops file (safetensors) to OUT.",
        input_help="an encrypted slimops file",
        output_help="the plain file to write",
    )


def _keygen(args: argparse.Namespace) -> int:
    from slimops.encryption import generate_key

    key = generate_key().hex()
    if args.path is None:
        print(key)
        return 0
    try:
        # O_EXCL: never overwrite a key (the models it encrypted would be lost); 0600: only the owner reads it.
        fd = os.open(args.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        print(f"slimops keygen: {e}", file=sys.stderr)
        return 2
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    print(f"slimops keygen: wrote a new key to {args.path} (readable by you only)", file=sys.stderr)
    return 0


def _add_keygen(sub) -> None:
    p = sub.add_parser(
        "keygen",
        help="a new random 32-byte key, as hex: to PATH (created with mode 600, never overwritten) or stdout",
    )
    p.add_argument("path", metavar="PATH", nargs="?", help="key file to create (default: print the key)")
    p.set_defaults(func=_keygen)


_SUBCOMMANDS = [_add_demo, _add_tune, _add_info, _add_bench, _add_encrypt, _add_decrypt, _add_keygen]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimops", description="slimops: compiled kernels for smaller, faster models")
    sub = parser.add_subparsers(dest="command", title="commands", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``slimops`` console script and ``python -m slimops``.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        the process exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # recorded in the bench JSON
    return args.func(args)
