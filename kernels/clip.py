"""Triton kernels for the multi-tensor clip-norm family.

The specification is :mod:`slimops.reference.clip`. Every element of every
tensor is one entry of a single long vector ``v``::

    S     = sum_i |u_i|^p        (fp32 terms and lanes, fp64 tree; max_i |u_i| for p = inf)
    norm  = fp32(S^(1/p))        (root=True, root in fp64; fp32(S) with root=False)
    coef  = min(1, max_norm / (norm + 1e-6))      (fp32, one IEEE division, NaN kept)
    x_new = to(dtype, (x [* inv_scale]) * coef)   (fp32 products, rounded once)

with ``u = x`` or, in :func:`clip_grad_norm_fused_` with ``inv_scale``,
``u = x * inv_scale`` (GradScaler's unscale, fp32); ``found_inf[0] = 1`` when
any such ``u`` is inf or NaN (it is never reset). NaN anywhere makes the norm
NaN, for p = inf too: ``tl.max`` may drop NaN, so the max path carries a
separate NaN flag per lane and per partial. An empty list, or one with no
elements, has norm 0.

Launches (kernels; the validators and table look-up run on the host first):

* :func:`multi_tensor_norm`: 1. Every program reduces one chunk of one tensor
  to an fp64 partial, then takes a ticket from an atomic counter; the program
  that draws the last ticket ("last program done") sums the partials in a
  fixed order (deterministic), takes the root and re-arms the counter to 0.
* :func:`multi_tensor_scale_`: 1. Each program computes ``coef`` from the
  norm read from device memory (no host sync) and rescales its chunk; when
  ``coef == 1`` the product is the identity, so the program writes nothing.
* :func:`clip_grad_norm_fused_`: 2, the two above (the norm of the unscaled
  gradients with the found_inf flag, then unscale x clip in one pass).
* Lists without elements launch nothing (a 0-d zero comes from ``torch.zeros``).

Mixed dtypes share those launches: the pointer table carries a dtype code per
tensor and each program branches on it once, outside its loop (the branch is
uniform across the program). A table miss adds one host->device copy of the
table (a memcpy, not a kernel).

Tables. A "plan" is one int64 buffer, built on the host from the tensors'
``(data_ptr, numel, dtype)``::

    [0]                counter (int32 in the low half; 0 between launches)
    [1      : 1+T]     data_ptr of each non-empty tensor
    [1+T    : 1+2T]    numel
    [1+2T   : 1+3T]    dtype code (0 fp32, 1 fp16, 2 bf16)
    [1+3T   : 1+3T+C]  chunk -> tensor index
    [1+3T+C : 1+3T+2C] chunk -> element offset in its tensor (a multiple of CHUNK)

Tensors are non-overlapping and dense (validated), so a tensor's elements are
the ``numel`` consecutive elements from ``data_ptr`` in some order, and both
the norm and the element-wise scale may walk them as flat memory: a transposed
(permuted-dense) gradient needs no copy.

Caching and CUDA graphs. The table is a pure function of the key
``tuple((data_ptr, numel, dtype) for each non-empty tensor)``, so a cache hit
is always the right table. The host copy is pinned and cached by key (LRU).
Eager calls also cache the device copy and the partials buffer per
(device, current stream, key) (LRU): a hit costs no copy at all, and a stream
never shares a counter with another stream. The counter stays valid across
calls because the last program of every launch resets it to 0.

Under CUDA graph capture nothing of the eager device cache is used (its
contents may still be in flight, or be shared with eager work on another
stream): each captured call allocates its table and partials from the graph's
pool and records a ``non_blocking`` copy from the cached pinned host table.
That copy is legal under capture because the pinned buffer's contents never
change: a replay of the same gradient list has the same pointers, and the
copy rewrites the table and zeroes the counter at every replay, so the graph
is self-contained. Pinned tables that a graph has captured are kept for the
life of the process (a replay reads them). Run the op once eagerly before
capturing (the usual warm-up) so that the pinned table already exists: pinned
allocation itself (cudaHostAlloc) is not allowed while a stream is capturing.

Other choices:

* Chunks of ``_CHUNK`` elements, one program each; full ``_BLOCK`` tiles are
  loaded unmasked and, when every tensor is 16-byte aligned (the usual case;
  decided per table), with alignment hints so that loads are 128-bit. The
  masked tail is one tile.
* Accumulation: ``|u|^p`` and the per-lane sums are fp32 (at most
  CHUNK / BLOCK = 8 terms per lane per chunk, so the streaming loop stays fp32),
  while the tree over a chunk's lanes, the partials, the final reduction and
  the root are fp64, rounded once to fp32 at the end as the reference does.
  The norm then matches the correctly rounded fp64 reference to about 1e-8
  instead of a few fp32 ulps, so the coefficient, and with it every clipped
  value, lands within 1 ulp of the reference's. Cost: one fp64 tree per chunk
  (per 32k elements), nothing per element.
* ``|x|^p`` is ``x`` for p = 1 and ``x * x`` for p = 2; other p use libdevice
  ``powf`` on the GPU, and an fp64 exp2/log2 under the interpreter (which has
  no libdevice). The root is the fp64 ``sqrt`` for p = 2 and ``pow(S, 1 / p)``
  in fp64 otherwise.
* ``coef`` is one correctly rounded division (``div_rn``): Triton's ``/`` on
  fp32 is approximate and would not match the reference bit for bit.
* Overflow follows fp32 terms: an element with ``|x|^p`` above 3.4e38 (|x| >
  1.8e19 for p = 2), or a lane sum above it, makes the norm inf (as torch's own
  fp32 clip_grad_norm_), where the fp64 reference may stay finite.
* The in-place ops require that no two tensors share memory (as torch's
  foreach ops): chunks of aliasing tensors would race.

References: Apex ``multi_tensor_apply`` (chunked pointer tables), the CUDA
``threadFenceReduction`` sample (last-block reduction with a self-resetting
counter), the Triton grouped-GEMM tutorial (pointer tables cast with
``tl.pointer_type``), and ``torch.nn.utils.clip_grad_norm_`` (the semantics).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from slimops.kernels._gemm import device_guard

# Elements per chunk (one program each). 128 KiB of fp32: large enough that the
# table stays small (Llama-1B: ~37k chunks), small enough for ~1k+ programs on
# GPT-2-sized models.
_CHUNK = 32768
# Elements per loop iteration: 16 per thread at 8 warps (four 128-bit fp32 loads).
_BLOCK = 4096
_NUM_WARPS = 8
# Partials per iteration in the last program's final reduction.
_RBLOCK = 1024
# Table caches: pinned host tables by key, eager device plans by (device, stream, key).
_HOST_CACHE_SIZE = 32
_DEVICE_CACHE_SIZE = 16

_DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
# Norm kinds: the constexpr NORM of the norm kernel (0: p = 1, 1: p = 2, 2: other finite p, 3: inf).
_P1, _P2, _PGEN, _PINF = 0, 1, 2, 3


# ----------------------------------------------------------------------------
# Element-wise and per-chunk pieces (inlined into the kernels).
# ----------------------------------------------------------------------------


@triton.jit
def _abs_pow(a, p, NORM: tl.constexpr, EXACT_POW: tl.constexpr):
    """a^p for a = |u| >= 0 (or NaN), fp32."""
    if NORM == 0:
        r = a
    elif NORM == 1:
        r = a * a
    else:
        if EXACT_POW:
            r = libdevice.pow(a, p)
        else:
            # Interpreter only: fp64 exp2(p * log2 a); a == 0 is taken out so that
            # numpy sees no log2(0) (NaN stays NaN, inf stays inf).
            a64 = a.to(tl.float64)
            zero = a64 == 0.0
            r64 = tl.exp2(tl.cast(p, tl.float64) * tl.log2(tl.where(zero, 1.0, a64)))
            r = tl.where(zero, 0.0, r64).to(tl.float32)
    return r


@triton.jit
def _accumulate(x, valid, acc, nan_flag, bad_flag, inv_scale, p,
                NORM: tl.constexpr, HAS_INV_SCALE: tl.constexpr, TRACK_BAD: tl.constexpr,
                MASKED: tl.constexpr, EXACT_POW: tl.constexpr):
    """Adds one tile to the per-lane accumulators.

    acc: sum of |u|^p, or max |u| over non-NaN u (p = inf); nan_flag: 1 where a
    NaN was seen (p = inf); bad_flag: 1 where u was inf or NaN (found_inf).
    """
    u = x.to(tl.float32)
    if HAS_INV_SCALE:
        u = u * inv_scale
    a = tl.abs(u)
    if MASKED:
        # Masked lanes load 0, but 0 * inv_scale is NaN for inv_scale = inf.
        a = tl.where(valid, a, 0.0)
    if NORM == 3:
        is_nan = a != a
        acc = tl.maximum(acc, tl.where(is_nan, 0.0, a))
        nan_flag = tl.maximum(nan_flag, tl.where(is_nan, 1.0, 0.0))
    else:
        acc += _abs_pow(a, p, NORM, EXACT_POW)
    if TRACK_BAD:
        # False for inf and for NaN.
        bad_flag = tl.maximum(bad_flag, tl.where(a < float("inf"), 0.0, 1.0))
    return acc, nan_flag, bad_flag


@triton.jit
def _chunk_norm(x_ptr, n, inv_scale, p,
                NORM: tl.constexpr, HAS_INV_SCALE: tl.constexpr, TRACK_BAD: tl.constexpr,
                EXACT_POW: tl.constexpr, BLOCK: tl.constexpr):
    """(partial, bad) over x_ptr[0:n]: fp64 sum |u|^p (or max |u|, NaN if any NaN) and the bad flag."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    nan_flag = tl.zeros([BLOCK], dtype=tl.float32)
    bad_flag = tl.zeros([BLOCK], dtype=tl.float32)
    n_full = (n // BLOCK) * BLOCK
    # Full tiles unmasked: with an aligned x_ptr these are 128-bit loads.
    for off in range(0, n_full, BLOCK):
        x = tl.load(x_ptr + off + offs)
        acc, nan_flag, bad_flag = _accumulate(
            x, offs, acc, nan_flag, bad_flag, inv_scale, p, NORM, HAS_INV_SCALE, TRACK_BAD, False, EXACT_POW
        )
    tail = n_full + offs
    valid = tail < n
    x = tl.load(x_ptr + tail, mask=valid, other=0.0)
    acc, nan_flag, bad_flag = _accumulate(
        x, valid, acc, nan_flag, bad_flag, inv_scale, p, NORM, HAS_INV_SCALE, TRACK_BAD, True, EXACT_POW
    )
    if NORM == 3:
        part = tl.max(acc, axis=0).to(tl.float64)
        part = tl.where(tl.max(nan_flag, axis=0) > 0.0, float("nan"), part)
    else:
        # Each lane holds at most CHUNK / BLOCK fp32 terms; the tree over lanes is fp64.
        part = tl.sum(acc.to(tl.float64), axis=0)
    return part, tl.max(bad_flag, axis=0)


@triton.jit
def _root(s, p, NORM: tl.constexpr, EXACT_POW: tl.constexpr):
    """s^(1/p) in fp64 for the fp64 power sum s (p = 1, 2, general), as the reference takes it."""
    if NORM == 0:
        r = s
    elif NORM == 1:
        # fp64 sqrt is always correctly rounded (sqrt.rn.f64).
        r = tl.sqrt(s)
    else:
        # 1/p in fp64 from the fp32 p (exact for 0.5, 3.5, ...): an fp32 1/p would cost ulps.
        inv_p = 1.0 / tl.cast(p, tl.float64)
        if EXACT_POW:
            r = libdevice.pow(s, inv_p)
        else:
            zero = s == 0.0
            r = tl.where(zero, 0.0, tl.exp2(inv_p * tl.log2(tl.where(zero, 1.0, s))))
    return r


@triton.jit
def _finish(partials_ptr, n_chunks, p,
            NORM: tl.constexpr, ROOT: tl.constexpr, EXACT_POW: tl.constexpr, RBLOCK: tl.constexpr):
    """The fp32 total over all fp64 partials, in a fixed order (run by the last program only)."""
    offs = tl.arange(0, RBLOCK)
    acc = tl.zeros([RBLOCK], dtype=tl.float64)
    nan_flag = tl.zeros([RBLOCK], dtype=tl.float32)
    for i in range(0, n_chunks, RBLOCK):
        idx = i + offs
        # .cg: the partials were written by other programs; read them from L2, not L1.
        v = tl.load(partials_ptr + idx, mask=idx < n_chunks, other=0.0, cache_modifier=".cg")
        if NORM == 3:
            is_nan = v != v
            acc = tl.maximum(acc, tl.where(is_nan, 0.0, v))
            nan_flag = tl.maximum(nan_flag, tl.where(is_nan, 1.0, 0.0))
        else:
            acc += v
    if NORM == 3:
        total = tl.max(acc, axis=0)
        total = tl.where(tl.max(nan_flag, axis=0) > 0.0, float("nan"), total)
    else:
        total = tl.sum(acc, axis=0)
        if ROOT:
            total = _root(total, p, NORM, EXACT_POW)
    # One rounding to fp32, as the reference's .float().
    return total.to(tl.float32)


@triton.jit
def _clip_coef(total, max_norm):
    """min(1, max_norm / (total + 1e-6)) in fp32, one IEEE division, NaN propagating."""
    q = tl.math.div_rn(tl.cast(max_norm, tl.float32), total + 1e-6)
    return tl.where(q != q, q, tl.minimum(q, 1.0))


@triton.jit
def _scaled(x, inv_scale, coef, HAS_INV_SCALE: tl.constexpr):
    # Two fp32 products in the reference's order (nothing to contract into an FMA),
    # then one rounding to the tensor's dtype.
    u = x.to(tl.float32)
    if HAS_INV_SCALE:
        u = u * inv_scale
    return (u * coef).to(x.dtype)


@triton.jit
def _chunk_scale(x_ptr, n, inv_scale, coef, HAS_INV_SCALE: tl.constexpr, BLOCK: tl.constexpr):
    """x_ptr[0:n] = (x [* inv_scale]) * coef, in place."""
    offs = tl.arange(0, BLOCK)
    n_full = (n // BLOCK) * BLOCK
    for off in range(0, n_full, BLOCK):
        ptrs = x_ptr + off + offs
        tl.store(ptrs, _scaled(tl.load(ptrs), inv_scale, coef, HAS_INV_SCALE))
    tail = n_full + offs
    valid = tail < n
    x = tl.load(x_ptr + tail, mask=valid, other=0.0)
    tl.store(x_ptr + tail, _scaled(x, inv_scale, coef, HAS_INV_SCALE), mask=valid)


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


@triton.jit
def _multi_tensor_norm_kernel(
    tensor_addr_ptr,  # [T] int64: data_ptr of each tensor
    tensor_numel_ptr,  # [T] int64
    tensor_code_ptr,  # [T] int64: 0 fp32, 1 fp16, 2 bf16
    chunk_tensor_ptr,  # [C] int64: tensor index of each chunk
    chunk_start_ptr,  # [C] int64: element offset of each chunk (a multiple of CHUNK)
    partials_ptr,  # [C] fp64 scratch
    counter_ptr,  # [1] int32, 0 on entry, reset to 0 on exit
    out_ptr,  # [] fp32: the norm (or power sum / max with ROOT=False)
    inv_scale_ptr,  # [1] fp32 (read only if HAS_INV_SCALE)
    found_inf_ptr,  # [1] fp32 (written only if TRACK_BAD)
    n_chunks,
    p,  # fp32 norm_type (used for NORM == 2)
    NORM: tl.constexpr,  # 0: p = 1, 1: p = 2, 2: other finite p, 3: inf
    ROOT: tl.constexpr,
    HAS_INV_SCALE: tl.constexpr,
    TRACK_BAD: tl.constexpr,
    ALIGNED: tl.constexpr,  # every data_ptr is a multiple of 16 bytes
    EXACT_POW: tl.constexpr,  # libdevice pow (GPU) rather than fp64 exp2/log2 (interpreter)
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
    RBLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    t = tl.load(chunk_tensor_ptr + pid)
    start = tl.multiple_of(tl.load(chunk_start_ptr + pid), CHUNK)
    n = tl.minimum(tl.load(tensor_numel_ptr + t) - start, CHUNK).to(tl.int32)
    addr = tl.load(tensor_addr_ptr + t)
    code = tl.load(tensor_code_ptr + t)
    if HAS_INV_SCALE:
        inv_scale = tl.load(inv_scale_ptr)
    else:
        inv_scale = 1.0

    # One uniform branch per program on the tensor's dtype.
    if code == 0:
        f32_ptr = addr.to(tl.pointer_type(tl.float32))
        if ALIGNED:
            f32_ptr = tl.multiple_of(f32_ptr, 16)
        part, bad = _chunk_norm(f32_ptr + start, n, inv_scale, p, NORM, HAS_INV_SCALE, TRACK_BAD, EXACT_POW, BLOCK)
    elif code == 1:
        f16_ptr = addr.to(tl.pointer_type(tl.float16))
        if ALIGNED:
            f16_ptr = tl.multiple_of(f16_ptr, 16)
        part, bad = _chunk_norm(f16_ptr + start, n, inv_scale, p, NORM, HAS_INV_SCALE, TRACK_BAD, EXACT_POW, BLOCK)
    else:
        bf16_ptr = addr.to(tl.pointer_type(tl.bfloat16))
        if ALIGNED:
            bf16_ptr = tl.multiple_of(bf16_ptr, 16)
        part, bad = _chunk_norm(bf16_ptr + start, n, inv_scale, p, NORM, HAS_INV_SCALE, TRACK_BAD, EXACT_POW, BLOCK)

    tl.store(partials_ptr + pid, part)
    if TRACK_BAD:
        # Racy but idempotent: every writer writes 1.0. Never reset to 0.
        tl.store(found_inf_ptr, 1.0, mask=bad > 0.0)

    # Last program done: the barrier orders every thread's store before the ticket;
    # acq_rel makes the other programs' partials visible to the one that draws the last.
    tl.debug_barrier()
    ticket = tl.atomic_add(counter_ptr, 1, sem="acq_rel")
    if ticket == n_chunks - 1:
        total = _finish(partials_ptr, n_chunks, p, NORM, ROOT, EXACT_POW, RBLOCK)
        tl.store(out_ptr, total)
        # Re-arm for the next launch that uses this table (stream order).
        tl.store(counter_ptr, 0)


@triton.jit
def _multi_tensor_scale_kernel(
    tensor_addr_ptr,  # [T] int64
    tensor_numel_ptr,  # [T] int64
    tensor_code_ptr,  # [T] int64
    chunk_tensor_ptr,  # [C] int64
    chunk_start_ptr,  # [C] int64
    total_ptr,  # [1] fp32: the norm, read on the device
    inv_scale_ptr,  # [1] fp32 (read only if HAS_INV_SCALE)
    max_norm,  # fp32
    HAS_INV_SCALE: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    coef = _clip_coef(tl.load(total_ptr), max_norm)
    if HAS_INV_SCALE:
        inv_scale = tl.load(inv_scale_ptr)
        write = True  # unscaling always writes
    else:
        inv_scale = 1.0
        # x * 1 rounds back to x bit for bit: with coef == 1 (no clipping) skip the pass.
        # A NaN coef is != 1 and is written, as in the reference.
        write = coef != 1.0

    if write:
        t = tl.load(chunk_tensor_ptr + pid)
        start = tl.multiple_of(tl.load(chunk_start_ptr + pid), CHUNK)
        n = tl.minimum(tl.load(tensor_numel_ptr + t) - start, CHUNK).to(tl.int32)
        addr = tl.load(tensor_addr_ptr + t)
        code = tl.load(tensor_code_ptr + t)
        if code == 0:
            f32_ptr = addr.to(tl.pointer_type(tl.float32))
            if ALIGNED:
                f32_ptr = tl.multiple_of(f32_ptr, 16)
            _chunk_scale(f32_ptr + start, n, inv_scale, coef, HAS_INV_SCALE, BLOCK)
        elif code == 1:
            f16_ptr = addr.to(tl.pointer_type(tl.float16))
            if ALIGNED:
                f16_ptr = tl.multiple_of(f16_ptr, 16)
            _chunk_scale(f16_ptr + start, n, inv_scale, coef, HAS_INV_SCALE, BLOCK)
        else:
            bf16_ptr = addr.to(tl.pointer_type(tl.bfloat16))
            if ALIGNED:
                bf16_ptr = tl.multiple_of(bf16_ptr, 16)
            _chunk_scale(bf16_ptr + start, n, inv_scale, coef, HAS_INV_SCALE, BLOCK)


# ----------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------


class _HostTable(NamedTuple):
    table: torch.Tensor  # int64 [1 + 3T + 2C], pinned when built for a CUDA device
    n_tensors: int
    n_chunks: int
    aligned: bool


class _Plan(NamedTuple):
    """Device-side views of one table, plus the partials scratch (see the module docstring)."""

    table: torch.Tensor  # keeps the buffer alive
    addr: torch.Tensor
    numel: torch.Tensor
    code: torch.Tensor
    chunk_tensor: torch.Tensor
    chunk_start: torch.Tensor
    counter: torch.Tensor  # int32 [2]; element 0 is the counter
    partials: torch.Tensor  # fp64 [C]
    n_chunks: int
    aligned: bool


_host_tables: OrderedDict = OrderedDict()
_device_plans: OrderedDict = OrderedDict()
# Pinned tables recorded into a CUDA graph: a replay reads them, so they live as long as the process.
_graph_host_tables: dict = {}


def _lru_get(cache: OrderedDict, key):
    hit = cache.get(key)
    if hit is not None:
        cache.move_to_end(key)
    return hit


def _lru_put(cache: OrderedDict, key, value, size: int) -> None:
    cache[key] = value
    if len(cache) > size:
        cache.popitem(last=False)


def _build_host_table(key: tuple, chunk: int, pin: bool) -> _HostTable:
    ptrs = [k[0] for k in key]
    numels = torch.tensor([k[1] for k in key], dtype=torch.int64)
    n_tensors = len(key)
    per_tensor = (numels + (chunk - 1)) // chunk
    n_chunks = int(per_tensor.sum())
    chunk_tensor = torch.repeat_interleave(torch.arange(n_tensors, dtype=torch.int64), per_tensor)
    first_chunk = torch.cumsum(per_tensor, 0) - per_tensor
    chunk_start = (torch.arange(n_chunks, dtype=torch.int64) - first_chunk[chunk_tensor]) * chunk

    table = torch.empty(1 + 3 * n_tensors + 2 * n_chunks, dtype=torch.int64, pin_memory=pin)
    table[0] = 0
    t = 1
    table[t : t + n_tensors] = torch.tensor(ptrs, dtype=torch.int64)
    table[t + n_tensors : t + 2 * n_tensors] = numels
    table[t + 2 * n_tensors : t + 3 * n_tensors] = torch.tensor([_DTYPE_CODE[k[2]] for k in key], dtype=torch.int64)
    c = t + 3 * n_tensors
    table[c : c + n_chunks] = chunk_tensor
    table[c + n_chunks :] = chunk_start
    return _HostTable(table, n_tensors, n_chunks, all(ptr % 16 == 0 for ptr in ptrs))


def _make_plan(table: torch.Tensor, host: _HostTable, device: torch.device) -> _Plan:
    t, c = host.n_tensors, host.n_chunks
    s = 1 + 3 * t
    return _Plan(
        table=table,
        addr=table[1 : 1 + t],
        numel=table[1 + t : 1 + 2 * t],
        code=table[1 + 2 * t : s],
        chunk_tensor=table[s : s + c],
        chunk_start=table[s + c : s + 2 * c],
        counter=table[0:1].view(torch.int32),
        partials=torch.empty(c, dtype=torch.float64, device=device),
        n_chunks=c,
        aligned=host.aligned,
    )


def _get_plan(tensors: list[torch.Tensor], op: str) -> _Plan | None:
    """The table for the non-empty tensors (None when there are none); see the module docstring.

    Call it under the tensors' device guard: the capture check and the copy use
    that device's current stream.
    """
    key = tuple((t.data_ptr(), t.numel(), t.dtype) for t in tensors if t.numel() > 0)
    if not key:
        return None
    device = tensors[0].device
    hkey = (_CHUNK, key)
    if device.type != "cuda":
        # Triton's interpreter on CPU tensors: the host table is the device table.
        plan = _lru_get(_device_plans, (device, hkey))
        if plan is None:
            host = _build_host_table(key, _CHUNK, pin=False)
            plan = _make_plan(host.table, host, device)
            _lru_put(_device_plans, (device, hkey), plan, _DEVICE_CACHE_SIZE)
        return plan

    capturing = torch.cuda.is_current_stream_capturing()
    stream = torch.cuda.current_stream(device).cuda_stream
    if not capturing:
        plan = _lru_get(_device_plans, (device, stream, hkey))
        if plan is not None:
            return plan

    host = _lru_get(_host_tables, hkey)
    if host is None:
        host = _graph_host_tables.get(hkey)
    if host is None:
        try:
            host = _build_host_table(key, _CHUNK, pin=True)
        except RuntimeError as e:
            if not capturing:
                raise
            # NOTE: cudaHostAlloc is refused while a stream is capturing (global capture mode).
            raise RuntimeError(
                f"slimops.{op}: the pinned pointer table for this tensor list could not be allocated during "
                "CUDA graph capture; call the op once on the same tensors before capturing (warm-up)"
            ) from e
        _lru_put(_host_tables, hkey, host, _HOST_CACHE_SIZE)
    if capturing:
        _graph_host_tables[hkey] = host
    # Pinned source + non_blocking: an async copy on the current stream (a memcpy node under capture).
    plan = _make_plan(host.table.to(device, non_blocking=True), host, device)
    if not capturing:
        _lru_put(_device_plans, (device, stream, hkey), plan, _DEVICE_CACHE_SIZE)
    return plan


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------


def _norm_kind(norm_type: float) -> int:
    if math.isinf(norm_type):
        return _PINF
    if norm_type == 1.0:
        return _P1
    if norm_type == 2.0:
        return _P2
    return _PGEN


def _launch_norm(plan: _Plan, out, norm_type, root, inv_scale, found_inf, device) -> None:
    track_bad = inv_scale is not None and found_inf is not None
    kind = _norm_kind(norm_type)
    _multi_tensor_norm_kernel[(plan.n_chunks,)](
        plan.addr,
        plan.numel,
        plan.code,
        plan.chunk_tensor,
        plan.chunk_start,
        plan.partials,
        plan.counter,
        out,
        inv_scale if inv_scale is not None else out,  # placeholder, never read
        found_inf if track_bad else out,  # placeholder, never written
        plan.n_chunks,
        float(norm_type) if kind == _PGEN else 1.0,
        NORM=kind,
        ROOT=bool(root),
        HAS_INV_SCALE=inv_scale is not None,
        TRACK_BAD=track_bad,
        ALIGNED=plan.aligned,
        EXACT_POW=device.type == "cuda",
        CHUNK=_CHUNK,
        BLOCK=_BLOCK,
        RBLOCK=_RBLOCK,
        num_warps=_NUM_WARPS,
    )


def _launch_scale(plan: _Plan, total_norm, max_norm, inv_scale) -> None:
    _multi_tensor_scale_kernel[(plan.n_chunks,)](
        plan.addr,
        plan.numel,
        plan.code,
        plan.chunk_tensor,
        plan.chunk_start,
        total_norm,
        inv_scale if inv_scale is not None else total_norm,  # placeholder, never read
        float(max_norm),
        HAS_INV_SCALE=inv_scale is not None,
        ALIGNED=plan.aligned,
        CHUNK=_CHUNK,
        BLOCK=_BLOCK,
        num_warps=_NUM_WARPS,
    )


def _device_of(tensors: list[torch.Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


def multi_tensor_norm(tensors: list[torch.Tensor], norm_type: float, root: bool = True) -> torch.Tensor:
    """The p-norm of all elements of ``tensors`` seen as one vector. One launch, no sync.

    fp32 terms and per-lane sums, an fp64 tree and root, one rounding to fp32.

    Args:
        tensors: float32/float16/bfloat16 non-overlapping dense tensors on one device
            (mixed shapes and dtypes; permuted layouts are read in place).
        norm_type: p > 0, or ``inf`` for the max norm.
        root: ``False`` returns ``sum |x|^p`` (``max |x|`` for inf) without the p-th root.

    Returns:
        A 0-d float32 tensor on the tensors' device (CPU for an empty list); 0 if
        there are no elements, NaN if any element is NaN.
    """
    op = "multi_tensor_norm"  # arguments checked in C++ by the op before this is called
    device = _device_of(tensors)
    with device_guard(device):
        plan = _get_plan(tensors, op)
        if plan is None:
            return torch.zeros((), dtype=torch.float32, device=device)
        out = torch.empty((), dtype=torch.float32, device=device)
        _launch_norm(plan, out, norm_type, root, None, None, device)
    return out


def multi_tensor_scale_(tensors: list[torch.Tensor], total_norm: torch.Tensor, max_norm: float) -> None:
    """In place: ``x = to(dtype, x * min(1, max_norm / (total_norm + 1e-6)))``. One launch, no sync.

    The coefficient is computed on the device from ``total_norm``; programs whose
    coefficient is 1 write nothing.

    Args:
        tensors: float32/float16/bfloat16 non-overlapping dense tensors on one
            device, no two sharing memory.
        total_norm: one-element float32 tensor on that device.
        max_norm: >= 0.
    """
    op = "multi_tensor_scale_"  # arguments checked in C++ by the op before this is called
    if not tensors:
        return
    with device_guard(tensors[0].device):
        plan = _get_plan(tensors, op)
        if plan is not None:
            _launch_scale(plan, total_norm, max_norm, None)


def clip_grad_norm_fused_(
    grads: list[torch.Tensor],
    max_norm: float,
    norm_type: float,
    inv_scale: torch.Tensor | None = None,
    found_inf: torch.Tensor | None = None,
) -> torch.Tensor:
    """Norm of the (unscaled) gradients, then in-place unscale and clip. Two launches, no sync.

    Launch 1 reduces ``u = g [* inv_scale]`` to the norm (and sets ``found_inf``);
    launch 2 writes ``g = to(dtype, u * coef)`` with ``coef`` from that norm in
    device memory.

    Args:
        grads: gradients on one device (mixed shapes and dtypes), no two sharing memory.
        max_norm: >= 0.
        norm_type: p > 0 or ``inf``.
        inv_scale: optional GradScaler ``1 / scale`` (one-element float32).
        found_inf: optional one-element float32; set to 1 when ``inv_scale`` is
            given and an unscaled element is inf or NaN (never reset).

    Returns:
        The total norm of the (unscaled) gradients, a 0-d float32 tensor.
    """
    op = "clip_grad_norm_fused_"  # arguments checked in C++ by the op before this is called
    device = _device_of(grads)
    with device_guard(device):
        plan = _get_plan(grads, op)
        if plan is None:
            return torch.zeros((), dtype=torch.float32, device=device)
        total = torch.empty((), dtype=torch.float32, device=device)
        _launch_norm(plan, total, norm_type, True, inv_scale, found_inf, device)
        _launch_scale(plan, total, max_norm, inv_scale)
    return total
