"""bench/decode_sweep.py (the decode GEMV sweep bench/gpu_check.sh runs on the GPU), checked on the
CPU: its command line, its plan against the family's variant table, and its time estimate."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from slimops import _C

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("decode_sweep", ROOT / "bench" / "decode_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_command_line_plans_every_format_variant_m_and_shape(sweep):
    args = sweep.parse_args(["--json", "out/decode-sweep.json"])
    assert args.json == "out/decode-sweep.json"
    assert args.formats == tuple(_C._decode_gemv_formats())
    assert args.variants == tuple(v["id"] for v in _C._decode_gemv_variants())
    assert args.m == (1, 2, 4, 8, 16)
    assert args.shapes == [(4096, 11008), (11008, 4096), (4096, 4096)]
    assert len(sweep.plan(args)) == 3 * 5 * 6
    est = sweep.estimate_seconds(args)
    assert 0 < est <= 120, est  # the budget for the sweep on an H200


def test_selections(sweep):
    args = sweep.parse_args(["--dry-run", "--formats", "int4_sym,fp8_channel", "--variants", "0,15", "--m", "1,16",
                             "--shapes", "4096->11008", "64x48", "--dtype", "fp16"])
    assert args.formats == ("int4_sym", "fp8_channel") and args.variants == (0, 15) and args.m == (1, 16)
    assert args.shapes == [(4096, 11008), (64, 48)] and args.dtype == "fp16"
    assert sweep.plan(args)[0] == ((4096, 11008), 1, "int4_sym")


@pytest.mark.parametrize("argv,match", [
    ([], "--json PATH is required"),
    (["--dry-run", "--formats", "int3"], "unknown"),
    (["--dry-run", "--variants", "99"], "ids must be in 0..15"),
    (["--dry-run", "--variants", "a"], "'all' or integers"),
    (["--dry-run", "--m", "0,17"], "M = 1..16"),
    (["--dry-run", "--shapes", "4096"], "K->N or KxN"),
    (["--dry-run", "--shapes", "100->8"], "K % 16 == 0"),
    (["--dry-run", "--repeats", "0"], "--repeats must be >= 1"),
])
def test_bad_arguments_are_named(sweep, capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        sweep.parse_args(argv)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


def test_dry_run_prints_the_estimate_and_without_a_gpu_says_so(sweep, capsys):
    assert sweep.main(["--dry-run"]) == 0
    assert "1440 kernel configurations; estimated" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert sweep.main(["--json", "unused.json"]) == 2
        assert "needs a CUDA device" in capsys.readouterr().err


def test_weight_bytes(sweep):
    assert sweep.weight_bytes("int8_group", 11008, 4096) == 11008 * 4096
    assert sweep.weight_bytes("int4_asym", 3, 33) == 3 * 32
