"""Gradient clip-norm (``clip_grad_norm_``, L2, clipping on every call) over real models' gradient lists.

Cases (one per gradient set; ``shape`` is ``[tensors, elements]``, ``params``
names the set):

* ``gpt2-124M``: GPT-2 small, 148 tensors, 124,439,808 elements (HF layout:
  Conv1D weights are ``[in, out]``), fp32; also with fp32/bf16 alternating.
* ``llama-1B``: Llama 3.2 1B, 146 tensors, 1,235,814,400 elements (hidden 2048,
  MLP 8192, 16 layers, 8 kv heads of 64 so k/v are ``[512, 2048]``, vocab
  128256 with the embedding tied and counted once, RMSNorm weights), bf16 and fp32.
* ``4000x1024``: 4000 tensors of 1024 fp32, where per-tensor launches dominate.
* ``gpt2-block``: one GPT-2 block (12 tensors, 7.1M elements), fp32/bf16
  alternating; the small mixed set of the CPU quick run.

Quick: on a GPU the three targets of DESIGN.md (GPT-2 fp32, 4000x1024,
Llama-1B bf16); on a CPU ``4000x1024`` (the CPU acceptance case) and
``gpt2-block`` mixed. Full: every set.

Providers: ``torch-foreach`` (``torch.nn.utils.clip_grad_norm_(..., foreach=True)``,
the baseline), ``torch-loop`` (``foreach=False``), ``torch-foreach-graph`` (GPU:
that call captured once in a CUDA graph, timing ``graph.replay()``: torch's
launch-free floor), ``torch-compile`` (torch's function under ``torch.compile``,
default ``foreach``), and ``slimops.clip_grad_norm_``: ``slimops-cpu`` on a CPU;
``slimops-auto``, ``slimops-cuda`` and ``slimops-triton`` on a GPU.

Each timed call clips the same gradients again, in place, with ``max_norm=0``
(:data:`MAX_NORM`), so the coefficient is 0 on every call and every provider
reads for the norm and reads + writes for the scale: GB/s is quoted over
those three passes of the gradient bytes. With a positive max_norm, every
call after the first finds the gradients already clipped (coefficient clamped
to exactly 1); torch still multiplies by 1, but slimops' CUDA and Triton
kernels skip the write when ``coef == 1`` (``x * 1 == x``), so rows would
compare one pass with three. The first call zeroes the random gradients; the
cost of these memory-bound passes does not depend on the values (zeros are
not denormals, and plain device memory is not compressed).

NOTE: DESIGN.md's H200 anchors (shared/anchors/anchors.py) used 4000 x 1000
(not 1024) and a Llama-1B set with vocab 32000, untied embeddings and full-size
k/v projections (1,204,881,408 elements), with max_norm 1e-6; compare ratios measured
here, side by side, rather than against those absolute times.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import torch

from slimops.bench.harness import Case, Provider, Suite, Unavailable, slimops_providers

OP = "clip_grad_norm_"
# 0, not the usual 1.0: every timed call must scale (see the module docstring).
MAX_NORM = 0.0

# torch.compile traces every gradient tensor: on the 2-core dev CPU (torch 2.13)
# 148 tensors took 92 s to compile and 500 took 215 s; 4000 had not finished
# after 11 minutes. Above this count the torch-compile row is skipped.
COMPILE_MAX_TENSORS = 256

Shape = tuple[int, ...]


# ---------------------------------------------------------------- gradient sets


def gpt2_block_shapes(d: int = 768) -> list[Shape]:
    """One GPT-2 block: ln_1, attn c_attn / c_proj, ln_2, mlp c_fc / c_proj (Conv1D weights are [in, out])."""
    return [
        (d,), (d,),  # ln_1 weight, bias
        (d, 3 * d), (3 * d,),  # attn.c_attn
        (d, d), (d,),  # attn.c_proj
        (d,), (d,),  # ln_2
        (d, 4 * d), (4 * d,),  # mlp.c_fc
        (4 * d, d), (d,),  # mlp.c_proj
    ]  # fmt: skip


def gpt2_124m_shapes() -> list[Shape]:
    """GPT-2 small's 148 gradient tensors (wte, wpe, 12 blocks, ln_f): 124,439,808 elements."""
    d, layers, vocab, positions = 768, 12, 50257, 1024
    shapes: list[Shape] = [(vocab, d), (positions, d)]
    for _ in range(layers):
        shapes += gpt2_block_shapes(d)
    return shapes + [(d,), (d,)]  # ln_f weight, bias


def llama_1b_shapes() -> list[Shape]:
    """Llama 3.2 1B's 146 gradient tensors (tied embedding once): 1,235,814,400 elements."""
    d, ffn, layers, vocab = 2048, 8192, 16, 128256
    kv = 8 * 64  # 8 kv heads of dim 64
    shapes: list[Shape] = [(vocab, d)]  # embed_tokens, tied with lm_head
    for _ in range(layers):
        shapes += [
            (d,),  # input_layernorm (RMSNorm)
            (d, d), (kv, d), (kv, d), (d, d),  # q, k, v, o (nn.Linear weights are [out, in])
            (d,),  # post_attention_layernorm
            (ffn, d), (ffn, d), (d, ffn),  # gate, up, down
        ]  # fmt: skip
    return shapes + [(d,)]  # final norm


def uniform_shapes(count: int, numel: int) -> list[Shape]:
    return [(numel,)] * count


_SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def clip_case(name: str, shapes: Sequence[Shape], dtypes: torch.dtype | Sequence[torch.dtype]) -> Case:
    """``clip_grad_norm_`` over parameters of ``shapes`` whose grads are random normal.

    Args:
        name: the set's name, quoted in ``params``.
        shapes: one shape per gradient tensor.
        dtypes: one dtype for all, or several cycled over the tensors (a mixed set).

    The case's ``shape`` is ``(tensors, elements)``, its ``dtype`` the promoted
    gradient dtype (the dtype of the returned norm), and ``nbytes`` three
    passes over the gradients.
    """
    shapes = [tuple(s) for s in shapes]
    cycle = (dtypes,) if isinstance(dtypes, torch.dtype) else tuple(dtypes)
    per_tensor = [dt for dt, _ in zip(itertools.cycle(cycle), shapes)]
    numels = [_numel(s) for s in shapes]
    grad_bytes = sum(n * dt.itemsize for n, dt in zip(numels, per_tensor))
    distinct = list(dict.fromkeys(per_tensor))
    params = name if len(distinct) == 1 else f"{name} {'/'.join(_SHORT.get(d, str(d)) for d in distinct)}"

    def make_args(device: torch.device) -> tuple[list[torch.nn.Parameter]]:
        gen = torch.Generator(device).manual_seed(0)
        out = []
        for shape, dt in zip(shapes, per_tensor):
            # Clipping never reads a parameter's values, only its .grad: the data is a
            # zero-stride view of one element, so only the gradients take memory.
            p = torch.nn.Parameter(torch.zeros((), device=device, dtype=dt).expand(shape))
            p.grad = torch.randn(shape, device=device, dtype=dt, generator=gen)
            out.append(p)
        return (out,)

    dtype = functools.reduce(torch.promote_types, distinct)
    return Case(OP, (len(shapes), sum(numels)), dtype, make_args, 3 * grad_bytes, params=params)


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def cases(device: str, quick: bool) -> list[Case]:
    """The suite's cases (see the module docstring); builds no tensors."""
    fp32, bf16 = torch.float32, torch.bfloat16
    gpt2 = clip_case("gpt2-124M", gpt2_124m_shapes(), fp32)
    many = clip_case("4000x1024", uniform_shapes(4000, 1024), fp32)
    llama_bf16 = clip_case("llama-1B", llama_1b_shapes(), bf16)
    if quick and device == "cuda":
        return [gpt2, many, llama_bf16]  # the three DESIGN.md targets
    if quick:
        # Seconds on a 2-core CPU; 4000x1024 fp32 is the CPU acceptance case.
        return [many, clip_case("gpt2-block", gpt2_block_shapes(), (fp32, bf16))]
    return [
        gpt2,
        clip_case("gpt2-124M", gpt2_124m_shapes(), (fp32, bf16)),
        many,
        llama_bf16,
        clip_case("llama-1B", llama_1b_shapes(), fp32),
    ]


# ---------------------------------------------------------------- providers


def _torch_clip_grad_norm_():
    """torch's own ``clip_grad_norm_``, even after ``slimops.install()`` has replaced it."""
    from slimops import clip as slimops_clip

    module = torch.nn.utils.clip_grad
    fn = module.clip_grad_norm_
    if fn is slimops_clip.clip_grad_norm_:
        fn = slimops_clip._installed.get((id(module), "clip_grad_norm_"), fn)
    return fn


def _torch(foreach: bool):
    def prepare(case: Case, args: tuple):
        (params,) = args
        clip = _torch_clip_grad_norm_()
        return lambda: clip(params, MAX_NORM, foreach=foreach)

    return prepare


def _graphed(case: Case, args: tuple):
    (params,) = args
    clip = _torch_clip_grad_norm_()
    try:
        # Warm up on a side stream (lazy init, allocator), then capture one call.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                clip(params, MAX_NORM, foreach=True)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            clip(params, MAX_NORM, foreach=True)
    except Exception as e:
        raise Unavailable(f"CUDA graph capture failed: {type(e).__name__}: {str(e).strip()[:300]}") from e
    return graph.replay


def _compiled(case: Case, args: tuple):
    (params,) = args
    if len(params) > COMPILE_MAX_TENSORS:
        raise Unavailable(
            f"torch.compile of {len(params)} gradient tensors takes minutes to compile "
            f"(skipped above {COMPILE_MAX_TENSORS}; see COMPILE_MAX_TENSORS)"
        )
    clip = _torch_clip_grad_norm_()
    # A fresh dynamo state per case: each set gets its own static graph, and a long
    # run never hits the recompile limit (past which torch.compile falls back to eager).
    torch._dynamo.reset()
    try:
        fn = torch.compile(lambda ps: clip(ps, MAX_NORM), dynamic=False)
        fn(params)  # compiles here, outside the timed region
    except Exception as e:
        raise Unavailable(f"torch.compile failed: {type(e).__name__}: {str(e).strip()[:300]}") from e
    return lambda: fn(params)


def _slimops(case: Case, args: tuple):
    from slimops.clip import clip_grad_norm_

    (params,) = args
    try:
        clip_grad_norm_(params, MAX_NORM)  # a first call: finds a missing kernel before timing
    except NotImplementedError as e:  # no kernel registered for this device's dispatch key
        device = params[0].device.type if params else "cpu"
        first = str(e).strip().splitlines()[0].split(". ")[0][:200]  # "Could not run '...' with ... backend"
        raise Unavailable(f"torch.ops.slimops.clip_grad_norm_fused_ has no {device} kernel here: {first}") from e
    except RuntimeError as e:
        if "no Triton implementation is registered" in str(e):
            raise Unavailable(str(e).strip()[:300]) from e
        raise
    return lambda: clip_grad_norm_(params, MAX_NORM)


PROVIDERS = [
    Provider("torch-foreach", ("cpu", "cuda"), _torch(foreach=True)),
    Provider("torch-loop", ("cpu", "cuda"), _torch(foreach=False)),
    Provider("torch-foreach-graph", ("cuda",), _graphed),
    Provider("torch-compile", ("cpu", "cuda"), _compiled),
    *slimops_providers(_slimops),
]

SUITE = Suite(
    name="clip",
    description="clip_grad_norm_ over GPT-2 124M, Llama-1B and 4000x1024 gradient lists (fp32 / bf16 / mixed)",
    cases=cases,
    providers=PROVIDERS,
    baseline="torch-foreach",
)
