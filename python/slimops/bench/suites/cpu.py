"""int8 linear layers and whole models on CPU, against fp32 and torch.ao's dynamic int8.

One command reruns it all (about 15 minutes on a busy 2-core machine)::

    slimops bench --suite cpu --device cpu --json bench/results/cpu-$(date +%F).json

Cases (each at threads=1 and threads=2, set by the case):

* ``linear``: one ``nn.Linear`` (K -> N) in {768 -> 3072 (BERT-base MLP),
  4096 -> 4096, 4096 -> 11008 (Llama-7B)} on x ``[M, K]`` fp32, M in {1, 16, 128};
* ``gpt2``: GPT-2 124M (``transformers.GPT2Config()``, random weights), batch 1 x
  64 tokens, as Hugging Face builds it (attention and MLP in ``Conv1D``, which
  torch.ao skips: it converts only the tied ``lm_head``), and ``gpt2(conv1d->linear)``
  with every ``Conv1D`` swapped for the equal ``nn.Linear`` first, so that both
  quantizers convert the same layers;
* ``bert``: a BERT-base-size encoder (``BertConfig()``, random weights), 1 x 64.

Providers, timed round-robin (``Suite.rounds``) so that a busy machine slows them alike:
``torch-fp32`` (the float model: the baseline), ``torch-ao-dynamic``
(``torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, qint8)``: fbgemm / x86),
``slimops-w8a8`` (``Int8DynamicConfig``), ``slimops-w8a16`` (``Int8WeightOnlyConfig()``)
and ``slimops-w8a16-g128`` (group_size 128, linear cases). Each quantized row carries
``extra.sqnr_db``: the SQNR of its output against the float model's, in dB; slimops
rows also carry ``extra.isa``, the int8 kernels' ISA (``slimops info``).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from slimops.bench.harness import Case, Provider, Suite, Unavailable

LINEAR_SHAPES = ((768, 3072), (4096, 4096), (4096, 11008))  # (K, N)
TOKENS = (1, 16, 128)
THREADS = (1, 2)
SEQ = 64


def _threads(t: int) -> None:
    # Set when the case's inputs are built: every provider of the case then runs with t threads.
    torch.set_num_threads(t)


def linear_case(m: int, k: int, n: int, threads: int) -> Case:
    def make_args(device):
        _threads(threads)
        g = torch.Generator().manual_seed(m * 7 + k + n)
        layer = nn.Linear(k, n)
        with torch.no_grad():  # nn.Linear's own init, drawn from a fixed generator
            bound = 1 / math.sqrt(k)
            layer.weight.uniform_(-bound, bound, generator=g)
            layer.bias.uniform_(-bound, bound, generator=g)
        x = torch.randn(m, k, generator=g)
        return (nn.Sequential(layer).eval(), x)  # a parent, so that convert can swap the layer

    nbytes = 4 * (m * k + n * k + m * n)
    return Case("linear", (m, k, n), torch.float32, make_args, nbytes, flops=2 * m * n * k, params=f"threads={threads}")


def _conv1d_as_linear(model: nn.Module) -> nn.Module:
    """Every Hugging Face Conv1D (weight [in, out]) replaced by the equal nn.Linear."""
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if type(child).__name__ == "Conv1D":
                lin = nn.Linear(child.weight.shape[0], child.weight.shape[1])
                with torch.no_grad():
                    lin.weight.copy_(child.weight.t())
                    lin.bias.copy_(child.bias)
                setattr(mod, child_name, lin)
    return model


def model_case(name: str, threads: int) -> Case:
    def make_args(device):
        _threads(threads)
        try:
            import transformers
        except ImportError as e:
            raise Unavailable(f"transformers is not installed ({e})") from e
        torch.manual_seed(0)
        if name.startswith("gpt2"):
            model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
            if name == "gpt2(conv1d->linear)":
                model = _conv1d_as_linear(model)
        else:
            model = transformers.BertModel(transformers.BertConfig())
        ids = torch.randint(0, 1000, (1, SEQ), generator=torch.Generator().manual_seed(1))
        return (model.eval(), ids)

    return Case(name, (1, SEQ), torch.float32, make_args, 0, params=f"threads={threads}")


def cases(device: str, quick: bool) -> list[Case]:
    if quick:
        return [linear_case(m, 4096, 4096, 1) for m in (1, 16)]
    out = [linear_case(m, k, n, t) for t in THREADS for k, n in LINEAR_SHAPES for m in TOKENS]
    out += [model_case(name, t) for t in THREADS for name in ("gpt2", "gpt2(conv1d->linear)", "bert")]
    return out


# ---------------------------------------------------------------- providers


def _output(y) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y
    return y.logits if hasattr(y, "logits") else y.last_hidden_state


def _sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    noise = (out - ref).pow(2).sum().item()
    return math.inf if noise == 0 else 10 * math.log10(ref.pow(2).sum().item() / noise)


def _run(model: nn.Module, x: torch.Tensor):
    model = model.eval()

    def fn():
        with torch.inference_mode():
            return model(x)

    return fn


def _provider(convert):
    """A provider that times ``convert(copy of the float model)`` and records its SQNR."""

    def prepare(case: Case, args):
        model, x = args
        quantized = convert(copy.deepcopy(model), case)
        fn = _run(quantized, x)
        if convert is not _fp32:
            with torch.inference_mode():
                ref = _output(model(x))
            fn.extra = {"sqnr_db": round(_sqnr_db(ref, _output(fn())), 2)}
            if getattr(convert, "slimops", False):
                from slimops import info

                fn.extra["isa"] = info.cpu_int8_kernels()["isa"]  # SLIMOPS_CPU_ISA or the best here
        return fn

    return prepare


def _fp32(model, case):
    return model


def _torch_ao(model, case):
    engine = torch.backends.quantized.engine
    if engine not in ("x86", "fbgemm"):
        raise Unavailable(f"torch.backends.quantized.engine is {engine!r}, not x86/fbgemm")
    return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


def _slimops(config_name: str, **kwargs):
    def convert(model, case):
        import slimops

        from slimops import _build

        if not _build.HAS_C:
            raise Unavailable(_build.missing_backends()["cpu"])
        return slimops.convert(model, getattr(slimops, config_name)(**kwargs))

    convert.slimops = True
    return convert


def _linear_only(convert):
    def run(model, case):
        if case.op != "linear":
            raise Unavailable("linear cases only")
        return convert(model, case)

    run.slimops = True
    return run


PROVIDERS = [
    Provider("torch-fp32", ("cpu",), _provider(_fp32)),
    Provider("torch-ao-dynamic", ("cpu",), _provider(_torch_ao)),
    Provider("slimops-w8a8", ("cpu",), _provider(_slimops("Int8DynamicConfig"))),
    Provider("slimops-w8a16", ("cpu",), _provider(_slimops("Int8WeightOnlyConfig"))),
    Provider("slimops-w8a16-g128", ("cpu",), _provider(_linear_only(_slimops("Int8WeightOnlyConfig", group_size=128)))),
]

SUITE = Suite(
    name="cpu",
    description="int8 W8A8 / W8A16 linears and GPT-2 / BERT on CPU, against fp32 and torch.ao dynamic int8",
    cases=cases,
    providers=PROVIDERS,
    baseline="torch-fp32",
    rounds=3,
)
