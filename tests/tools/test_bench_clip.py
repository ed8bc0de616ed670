"""The `clip` bench suite: its gradient sets, and tiny cases end to end on CPU. Never asserts on speed."""

import pytest
import torch

from slimops import _build
from slimops import clip as slimops_clip
from slimops.bench.harness import run_suite
from slimops.bench.suites import clip as clip_suite
from slimops.bench.suites import load_suites
from slimops.bench.suites.clip import (
    MAX_NORM,
    SUITE,
    clip_case,
    gpt2_124m_shapes,
    gpt2_block_shapes,
    llama_1b_shapes,
    uniform_shapes,
)

FAST = dict(min_time=0.002, progress=False)  # timing length only; nothing here measures speed


def _numel(shapes):
    return sum(torch.Size(s).numel() for s in shapes)


def _by_provider(rows):
    return {r["provider"]: r for r in rows}


def test_clip_suite_is_discovered():
    assert load_suites()["clip"] is SUITE
    assert SUITE.baseline == "torch-foreach"
    names = [p.name for p in SUITE.providers]
    assert names[0] == "torch-foreach"
    for name in [
        "torch-loop", "torch-foreach-graph", "torch-compile",
        "slimops-cpu", "slimops-auto", "slimops-cuda", "slimops-triton",
    ]:  # fmt: skip
        assert name in names
    assert SUITE.provider("torch-foreach-graph").devices == ("cuda",)
    assert SUITE.provider("slimops-cpu").devices == ("cpu",)


def test_gpt2_set_has_148_tensors_and_124m_elements():
    shapes = gpt2_124m_shapes()
    assert len(shapes) == 148
    assert _numel(shapes) == 124_439_808
    assert shapes[:2] == [(50257, 768), (1024, 768)]
    assert len(gpt2_block_shapes()) == 12 and _numel(gpt2_block_shapes()) == 7_087_872


def test_llama_1b_set_has_1_24b_elements_with_tied_embedding_once():
    shapes = llama_1b_shapes()
    assert len(shapes) == 1 + 16 * 9 + 1
    assert _numel(shapes) == 1_235_814_400  # Llama 3.2 1B's published 1.24B
    assert shapes.count((128256, 2048)) == 1  # embed_tokens, tied with lm_head
    assert shapes.count((512, 2048)) == 2 * 16  # k and v: 8 kv heads of 64


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("quick", [True, False])
def test_cases(device, quick):
    cases = SUITE.cases(device, quick)  # builds no tensors
    assert {c.op for c in cases} == {"clip_grad_norm_"}
    assert len({(c.label, c.shape, c.dtype) for c in cases}) == len(cases)
    found = {(c.params, c.dtype) for c in cases}
    many = ("4000x1024", torch.float32)
    assert (c := next(c for c in cases if (c.params, c.dtype) == many)).shape == (4000, 4096 * 1000)
    assert c.nbytes == 3 * 4000 * 1024 * 4  # read for the norm, read + write for the scale
    if device == "cuda" and quick:
        assert found == {("gpt2-124M", torch.float32), many, ("llama-1B", torch.bfloat16)}
    elif quick:
        assert found == {many, ("gpt2-block fp32/bf16", torch.float32)}
    else:
        assert found == {
            ("gpt2-124M", torch.float32),
            ("gpt2-124M fp32/bf16", torch.float32),
            many,
            ("llama-1B", torch.bfloat16),
            ("llama-1B", torch.float32),
        }
        gpt2 = next(c for c in cases if c.params == "gpt2-124M")
        assert gpt2.shape == (148, 124_439_808) and gpt2.nbytes == 3 * 4 * 124_439_808


def test_make_args_builds_parameters_with_grads():
    case = clip_case("mixed", [(3, 4), (5,), (2, 2)], (torch.float32, torch.bfloat16))
    assert case.dtype == torch.float32 and case.params == "mixed fp32/bf16"
    assert case.shape == (3, 21) and case.nbytes == 3 * (12 * 4 + 5 * 2 + 4 * 4)
    (params,) = case.make_args(torch.device("cpu"))
    assert [p.grad.dtype for p in params] == [torch.float32, torch.bfloat16, torch.float32]
    assert [p.shape for p in params] == [p.grad.shape for p in params] == [(3, 4), (5,), (2, 2)]
    assert all(isinstance(p, torch.nn.Parameter) and p.grad.abs().sum() > 0 for p in params)
    (again,) = case.make_args(torch.device("cpu"))
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(params, again))  # seeded


def test_tiny_case_end_to_end():
    case = clip_case("tiny", uniform_shapes(10, 64), torch.float32)
    names = ["torch-foreach", "torch-loop", "slimops-cpu"]
    rows = run_suite(SUITE, "cpu", cases=[case], providers=names, **FAST)
    assert [r["provider"] for r in rows] == names
    for r in rows:
        assert (r["suite"], r["op"], r["params"], r["shape"], r["dtype"]) == (
            "clip", "clip_grad_norm_", "tiny", [10, 640], "float32",
        )  # fmt: skip
        assert r["bytes"] == 3 * 10 * 64 * 4 and r["baseline"] == "torch-foreach"
    rows = _by_provider(rows)
    for name in ["torch-foreach", "torch-loop"]:
        assert rows[name]["status"] == "ok" and rows[name]["median_us"] > 0 and rows[name]["gbps"] > 0
    assert rows["torch-foreach"]["speedup_vs_baseline"] == pytest.approx(1.0)
    slim = rows["slimops-cpu"]
    if _build.HAS_C:
        assert slim["status"] == "ok", slim["reason"]
        assert slim["median_us"] > 0
        assert slim["speedup_vs_baseline"] == pytest.approx(rows["torch-foreach"]["median_us"] / slim["median_us"])
    else:
        assert slim["status"] == "skipped" and slim["reason"]


def test_mixed_case_runs():
    case = clip_case("tiny-mixed", [(8, 16), (16,), (4, 8)], (torch.float32, torch.bfloat16))
    rows = _by_provider(run_suite(SUITE, "cpu", cases=[case], providers=["torch-loop", "slimops-cpu"], **FAST))
    assert rows["torch-foreach"]["status"] == "ok" and rows["torch-loop"]["status"] == "ok"
    assert rows["slimops-cpu"]["status"] == ("ok" if _build.HAS_C else "skipped")


def test_missing_kernel_is_skipped_not_an_error(monkeypatch):
    def no_kernel(*args, **kwargs):
        raise NotImplementedError("Could not run 'slimops::clip_grad_norm_fused_' with arguments from the 'CPU' backend.")

    monkeypatch.setattr(slimops_clip, "clip_grad_norm_", no_kernel)
    monkeypatch.setattr(_build, "missing_backends", lambda: {})
    case = clip_case("tiny", uniform_shapes(2, 16), torch.float32)
    r = _by_provider(run_suite(SUITE, "cpu", cases=[case], providers=["slimops-cpu"], **FAST))["slimops-cpu"]
    assert r["status"] == "skipped" and "no cpu kernel" in r["reason"] and "Could not run" in r["reason"]


def test_missing_backend_is_skipped(monkeypatch):
    monkeypatch.setattr(_build, "missing_backends", lambda: {"cpu": "slimops._C failed to import"})
    case = clip_case("tiny", uniform_shapes(2, 16), torch.float32)
    r = _by_provider(run_suite(SUITE, "cpu", cases=[case], providers=["slimops-cpu"], **FAST))["slimops-cpu"]
    assert (r["status"], r["reason"]) == ("skipped", "slimops._C failed to import")


def test_gpu_providers_are_skipped_on_cpu():
    case = clip_case("tiny", uniform_shapes(2, 16), torch.float32)
    names = ["torch-foreach-graph", "slimops-cuda", "slimops-triton", "slimops-auto"]
    rows = _by_provider(run_suite(SUITE, "cpu", cases=[case], providers=names, **FAST))
    for name in names:
        assert rows[name]["status"] == "skipped" and "cuda only" in rows[name]["reason"]


def test_compile_is_skipped_above_the_tensor_cap(monkeypatch):
    def no_compile(*a, **k):
        raise AssertionError("must not compile above the cap")

    monkeypatch.setattr(clip_suite, "COMPILE_MAX_TENSORS", 2)
    monkeypatch.setattr(torch, "compile", no_compile)
    case = clip_case("tiny", uniform_shapes(3, 16), torch.float32)
    r = _by_provider(run_suite(SUITE, "cpu", cases=[case], providers=["torch-compile"], **FAST))["torch-compile"]
    assert r["status"] == "skipped" and "3 gradient tensors" in r["reason"]


def test_compile_failure_is_skipped(monkeypatch):
    def no_compile(*a, **k):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compile)
    case = clip_case("tiny", uniform_shapes(2, 16), torch.float32)
    r = _by_provider(run_suite(SUITE, "cpu", cases=[case], providers=["torch-compile"], **FAST))["torch-compile"]
    assert r["status"] == "skipped" and "torch.compile failed" in r["reason"]


def test_torch_providers_time_torch_even_after_install():
    torch_fn = torch.nn.utils.clip_grad.clip_grad_norm_
    slimops_clip.install()
    try:
        assert torch.nn.utils.clip_grad.clip_grad_norm_ is slimops_clip.clip_grad_norm_
        assert clip_suite._torch_clip_grad_norm_() is torch_fn
    finally:
        slimops_clip.uninstall()
    assert clip_suite._torch_clip_grad_norm_() is torch_fn


@pytest.mark.parametrize("provider", ["torch-foreach", "torch-loop", "slimops-cpu"])
def test_every_timed_call_scales(provider):
    # slimops' GPU kernels skip the write when the coefficient is exactly 1, so
    # the steady state of repeated calls must keep it below 1 for every row to
    # make the three passes its GB/s counts.
    if provider == "slimops-cpu" and not _build.HAS_C:
        pytest.skip(_build.C_ERROR)
    case = clip_case("tiny", uniform_shapes(4, 32), torch.float32)
    (params,) = case.make_args(torch.device("cpu"))
    fn = SUITE.provider(provider).prepare(case, (params,))
    for _ in range(3):
        fn()
    norm = torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in params])).item()
    assert min(1.0, MAX_NORM / (norm + 1e-6)) < 1.0
