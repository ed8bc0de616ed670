"""The `slimops bench` harness, end to end on one tiny case. Never asserts on speed."""

import datetime
import json

import pytest
import torch

from slimops import _build
from slimops.bench.harness import (
    COPY_PROVIDER,
    Provider,
    Suite,
    Unavailable,
    print_table,
    run_suite,
    time_cpu,
    write_json,
)
from slimops.bench.suites import load_suites
from slimops.bench.suites.quantize import SUITE, dequantize_case, per_channel_case, per_token_case
from slimops.cli import main

ROW_FIELDS = {
    "suite", "op", "params", "provider", "shape", "dtype", "device", "device_name", "versions", "date",
    "timer", "threads", "status", "reason", "median_us", "bytes", "gbps", "flops", "tflops",
    "baseline", "speedup_vs_baseline", "frac_of_copy_bw", "extra",
}  # fmt: skip

FAST = dict(min_time=0.002, progress=False)  # timing length only; nothing here measures speed


def _by_provider(rows):
    return {r["provider"]: r for r in rows}


def test_quantize_suite_is_discovered():
    suites = load_suites()
    assert suites["quantize"] is SUITE
    assert SUITE.baseline == "torch-eager"
    names = [p.name for p in SUITE.providers]
    for name in ["torch-eager", "torch-compile", "slimops-cpu", "slimops-auto", "slimops-cuda", "slimops-triton"]:
        assert name in names


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("quick", [True, False])
def test_quantize_cases_cover_the_ops(device, quick):
    cases = SUITE.cases(device, quick)  # builds no tensors
    assert {c.op for c in cases} == {"quantize_per_token", "quantize_per_channel", "dequantize"}
    assert {c.params for c in cases if c.op == "quantize_per_channel"} == {"axis=0 sym", "axis=0 asym"}
    assert all(c.nbytes > 0 for c in cases)
    assert len({(c.label, c.shape, c.dtype) for c in cases}) == len(cases)
    if device == "cuda":
        # The acceptance figure is in every GPU run.
        acceptance = ("quantize_per_token", (8192, 8192), torch.bfloat16)
        assert acceptance in {(c.op, c.shape, c.dtype) for c in cases}
    else:
        assert {c.dtype for c in cases} <= {torch.float32, torch.bfloat16}
    if not quick:
        shapes = {c.shape for c in cases}
        assert {(1, 4096), (4096, 11008), (11008, 4096)} <= shapes


def test_tiny_case_end_to_end():
    case = per_token_case(4, 64, torch.float32)
    rows = run_suite(SUITE, "cpu", cases=[case], providers=["torch-eager", "slimops-cpu"], **FAST)
    assert [r["provider"] for r in rows] == ["torch-eager", "slimops-cpu"]
    for r in rows:
        assert set(r) == ROW_FIELDS
        assert set(r["versions"]) >= {"torch", "triton", "slimops", "cuda"}
        assert r["versions"]["torch"] == torch.__version__
        assert (r["suite"], r["op"], r["shape"], r["dtype"], r["device"]) == (
            "quantize", "quantize_per_token", [4, 64], "float32", "cpu",
        )  # fmt: skip
        assert r["device_name"]
        datetime.datetime.fromisoformat(r["date"])
        assert r["bytes"] == 4 * 64 * 4 + 4 * 64 + 4 * 4  # fp32 in, int8 out, fp32 scale per row
        assert r["baseline"] == "torch-eager"
        assert r["frac_of_copy_bw"] is None and r["tflops"] is None
    eager, slim = rows
    assert eager["status"] == "ok" and eager["median_us"] > 0 and eager["gbps"] > 0
    assert eager["speedup_vs_baseline"] == pytest.approx(1.0)
    if _build.HAS_C:
        assert slim["status"] == "ok" and slim["median_us"] > 0
        assert slim["speedup_vs_baseline"] == pytest.approx(eager["median_us"] / slim["median_us"])
    else:
        assert slim["status"] == "skipped" and slim["reason"]


@pytest.mark.parametrize(
    "case", [per_channel_case(8, 32, torch.bfloat16, False), dequantize_case(4, 32, torch.bfloat16)], ids=lambda c: c.op
)
def test_other_ops_run(case):
    rows = run_suite(SUITE, "cpu", cases=[case], providers=["slimops-cpu"], **FAST)
    assert [r["status"] for r in rows] == ["ok", "ok" if _build.HAS_C else "skipped"]


def test_json_is_valid(tmp_path):
    rows = run_suite(SUITE, "cpu", cases=[per_token_case(2, 32, torch.bfloat16)], providers=["torch-eager"], **FAST)
    path = tmp_path / "bench.json"
    write_json(rows, str(path), ["bench", "--quick"])
    doc = json.loads(path.read_text())
    assert doc["rows"] == rows
    assert doc["argv"] == ["bench", "--quick"]


def test_unavailable_providers_are_skipped_with_reason(monkeypatch):
    def unavailable_at_prepare(case, args):
        raise Unavailable("needs a thing this machine lacks")

    def broken(case, args):
        raise RuntimeError("kernel exploded")

    extra = [
        Provider("never-built", ("cpu",), SUITE.provider("torch-eager").prepare, lambda d: "backend not built"),
        Provider("fails-prepare", ("cpu",), unavailable_at_prepare),
        Provider("broken", ("cpu",), broken),
    ]
    suite = Suite("quantize-test", "test", SUITE.cases, [*SUITE.providers, *extra], SUITE.baseline)

    # torch.compile failing is "unavailable", not a crash.
    def no_compile(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compile)
    names = ["slimops-cuda", "torch-compile", "never-built", "fails-prepare", "broken"]
    rows = _by_provider(run_suite(suite, "cpu", cases=[per_token_case(2, 16, torch.float32)], providers=names, **FAST))

    assert rows["torch-eager"]["status"] == "ok"  # the baseline is always run
    expect = {
        "slimops-cuda": ("skipped", "runs on cuda only"),
        "torch-compile": ("skipped", "torch.compile failed"),
        "never-built": ("skipped", "backend not built"),
        "fails-prepare": ("skipped", "needs a thing"),
        "broken": ("error", "kernel exploded"),  # reported, and the run went on
    }
    for name, (status, reason) in expect.items():
        r = rows[name]
        assert r["status"] == status and reason in r["reason"], r
        assert r["median_us"] is None and r["speedup_vs_baseline"] is None


def test_missing_backend_is_skipped(monkeypatch):
    monkeypatch.setattr(_build, "missing_backends", lambda: {"cpu": "slimops._C failed to import"})
    case = per_token_case(2, 16, torch.float32)
    rows = _by_provider(run_suite(SUITE, "cpu", cases=[case], providers=["slimops-cpu"], **FAST))
    assert rows["slimops-cpu"]["status"] == "skipped"
    assert rows["slimops-cpu"]["reason"] == "slimops._C failed to import"


def test_time_cpu_counts_and_is_positive():
    calls = []
    seconds, n = time_cpu(lambda: calls.append(1), min_time=0.002, min_reps=5)
    assert seconds > 0 and n >= 5 and len(calls) >= n


def test_print_table_with_every_status():
    from rich.console import Console

    rows = run_suite(
        SUITE, "cpu", cases=[per_token_case(2, 16, torch.float32)], providers=["torch-eager", "slimops-cuda"], **FAST
    )
    rows[-1]["reason"] = "shape [16, 1] is [bad]"  # rich markup in a reason must print as text
    console = Console(record=True, width=200)
    print_table(rows, console)
    text = console.export_text()
    assert "torch-eager" in text and "shape [16, 1] is [bad]" in text


def test_cli_bench_list_and_bad_arguments(capsys):
    assert main(["bench", "--list"]) == 0
    assert "quantize" in capsys.readouterr().out
    assert main(["bench", "--providers", "no-such-provider", "--device", "cpu"]) == 2
    assert main(["bench", "--suite", "no-such-suite", "--device", "cpu"]) == 2


@pytest.mark.gpu
def test_tiny_case_on_gpu():
    case = per_token_case(16, 4096, torch.bfloat16)
    names = ["torch-eager", "slimops-auto", "slimops-cuda", "slimops-triton"]
    rows = _by_provider(run_suite(SUITE, "cuda", cases=[case], providers=names, quick=True, progress=False))
    assert set(rows) == {COPY_PROVIDER, *names}
    assert rows[COPY_PROVIDER]["frac_of_copy_bw"] == pytest.approx(1.0)
    for name in names:
        r = rows[name]
        assert r["status"] in ("ok", "skipped"), r
        if r["status"] == "ok":
            assert r["median_us"] > 0 and r["frac_of_copy_bw"] > 0 and r["device_name"] == torch.cuda.get_device_name()
        else:
            assert r["reason"]


def test_cli_bench_json_path_is_checked_before_anything_runs(tmp_path, monkeypatch, capsys):
    """--json into folders that do not exist yet: they are created (not a traceback after the first case);
    a path that cannot be written is refused with exit 2 before any case runs."""
    import slimops.bench.harness as harness

    real_run_suite = harness.run_suite
    ran = []

    def one_tiny_case(suite, device, *, quick, providers, on_case_done):
        ran.append(suite.name)
        case = per_token_case(3, 17, torch.float32)
        rows = real_run_suite(suite, "cpu", cases=[case], providers=["torch-eager"], **FAST)
        on_case_done(rows)
        return rows

    monkeypatch.setattr(harness, "run_suite", one_tiny_case)
    path = tmp_path / "results" / "today" / "bench.json"
    assert main(["bench", "--suite", "quantize", "--device", "cpu", "--json", str(path)]) == 0
    assert ran == ["quantize"]
    doc = json.loads(path.read_text())
    assert [r["provider"] for r in doc["rows"]] == ["torch-eager"] and doc["rows"][0]["status"] == "ok"

    ran.clear()
    capsys.readouterr()
    (tmp_path / "a_file").write_text("")
    bad_paths = {tmp_path / "results": "is a folder", tmp_path / "a_file" / "bench.json": "cannot create its folder"}
    for bad, why in bad_paths.items():
        assert main(["bench", "--suite", "quantize", "--device", "cpu", "--json", str(bad)]) == 2
        assert f"slimops bench: --json {bad}: {why}" in capsys.readouterr().err
    assert ran == [], "nothing ran"
