// int8 quantize / dequantize: CUDA kernels and their launchers.
//
// Semantics are python/slimops/reference/quantize.py, bit for bit: every
// quotient is one correctly rounded fp32 division (this file must never be
// built with --use_fast_math), rounding is half to even, a group whose scale
// would be 0 gets scale 1, and a group holding inf or NaN gets scale +inf,
// zero point 0 and q = 0.
//
// Kernels:
//   quantize_rows_kernel          one group of threads per row ([rows, K], the
//                                 group is 32..1024 threads). Two passes: amax
//                                 (or min/max), then quantize. Rows up to 4
//                                 vectors per thread stay in registers between
//                                 the passes; longer rows are read twice (the
//                                 second read hits L1/L2). Used by per-token and
//                                 by per-channel when the channel slices are
//                                 contiguous (outer == 1).
//   channel_stats_*_kernel        per-channel min/max partials for outer > 1,
//   channel_finalize_kernel       then scales and zero points from them,
//   quantize_channels_kernel      then an elementwise quantize.
//   dequantize_kernel             elementwise.
// Loads and stores are 16-byte vectors on the x / out side when the shape and
// the pointers allow it, checked at run time; otherwise one element at a time.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "quantize.h"
#include "cuda/common.cuh"
#include "cuda/nan_math.cuh"

namespace slimops {
namespace {

// Adding 1.5 * 2^23 to a float v with |v| < 2^22 rounds v to an integer n, half
// to even, and leaves 2^22 + n in the mantissa field: the low byte of the sum's
// bits is n as an int8 (mod 256).
constexpr float kRoundMagic = 12582912.0f;
constexpr int kThreads = 256;

// ---------------------------------------------------------------- elements

// N consecutive elements moved by one load or store (16 bytes at most).
template <typename B, int N>
struct alignas(sizeof(B) * N) Chunk {
  B v[N];
};

template <typename B, int N>
__device__ __forceinline__ Chunk<B, N> load_chunk(const B* p) {
  return *reinterpret_cast<const Chunk<B, N>*>(p);
}

// The N elements of a chunk as fp32. 16-bit pairs are split as 32-bit words
// (bf16: one shift or mask per element).
template <typename T, int N>
__device__ __forceinline__ void to_floats(const Chunk<typename Elem<T>::Bits, N>& c, float (&f)[N]) {
  if constexpr (std::is_same_v<T, at::BFloat16> && N % 2 == 0) {
#pragma unroll
    for (int k = 0; k < N / 2; ++k) {
      uint32_t w;
      memcpy(&w, &c.v[2 * k], sizeof(w));
      f[2 * k] = __uint_as_float(w << 16);
      f[2 * k + 1] = __uint_as_float(w & 0xffff0000u);
    }
  } else if constexpr (std::is_same_v<T, at::Half> && N % 2 == 0) {
#pragma unroll
    for (int k = 0; k < N / 2; ++k) {
      __half2 h;
      memcpy(&h, &c.v[2 * k], sizeof(h));
      const float2 v = __half22float2(h);
      f[2 * k] = v.x;
      f[2 * k + 1] = v.y;
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) f[k] = Elem<T>::to_float(c.v[k]);
  }
}

// N fp32 / int32 values (scales, zero points) at p; float4 / int4 loads when N % 4 == 0
// (p must then be 16-byte aligned).
template <int N>
__device__ __forceinline__ void load_scales(const float* p, float (&out)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int k = 0; k < N / 4; ++k) {
      const float4 f = __ldg(reinterpret_cast<const float4*>(p) + k);
      out[4 * k] = f.x;
      out[4 * k + 1] = f.y;
      out[4 * k + 2] = f.z;
      out[4 * k + 3] = f.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = __ldg(p + k);
  }
}

template <int N>
__device__ __forceinline__ void load_scales(const int32_t* p, int32_t (&out)[N]) {
  if constexpr (N % 4 == 0) {
#pragma unroll
    for (int k = 0; k < N / 4; ++k) {
      const int4 i = __ldg(reinterpret_cast<const int4*>(p) + k);
      out[4 * k] = i.x;
      out[4 * k + 1] = i.y;
      out[4 * k + 2] = i.z;
      out[4 * k + 3] = i.w;
    }
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) out[k] = __ldg(p + k);
  }
}

// Store N int8 values whose low bytes sit in b[] (N * 1 bytes, aligned to N).
template <int N>
__device__ __forceinline__ void store_q(int8_t* p, const uint32_t (&b)[N]) {
  if constexpr (N == 1) {
    *p = static_cast<int8_t>(static_cast<uint8_t>(b[0] & 0xffu));
  } else {
    static_assert(N == 4 || N == 8 || N == 16, "int8 chunk of 4, 8 or 16");
    Chunk<uint32_t, N / 4> w;
#pragma unroll
    for (int k = 0; k < N / 4; ++k) {
      w.v[k] = __byte_perm(__byte_perm(b[4 * k], b[4 * k + 1], 0x0040), __byte_perm(b[4 * k + 2], b[4 * k + 3], 0x0040),
                           0x5410);
    }
    *reinterpret_cast<Chunk<uint32_t, N / 4>*>(p) = w;
  }
}

template <typename T, int N>
__device__ __forceinline__ void store_out(T* p, const float (&f)[N]) {
  using E = Elem<T>;
  if constexpr (N == 1) {
    *reinterpret_cast<typename E::Bits*>(p) = E::from_float(f[0]);
  } else if constexpr (sizeof(typename E::Bits) == 4) {
    Chunk<uint32_t, N> c;
#pragma unroll
    for (int k = 0; k < N; ++k) c.v[k] = E::from_float(f[k]);
    *reinterpret_cast<Chunk<uint32_t, N>*>(p) = c;
  } else {
    Chunk<uint32_t, N / 2> c;
#pragma unroll
    for (int k = 0; k < N / 2; ++k) c.v[k] = E::pack2(f[2 * k], f[2 * k + 1]);
    *reinterpret_cast<Chunk<uint32_t, N / 2>*>(p) = c;
  }
}


// Running statistics of one group. SYM: hi = max |x| (lo unused). Asymmetric:
// lo = min x, hi = max x. Any NaN makes them NaN, any inf makes them infinite.
template <bool SYM>
struct Stats {
  float lo;
  float hi;

  __device__ __forceinline__ void init() {
    lo = INFINITY;
    hi = SYM ? 0.0f : -INFINITY;
  }
  __device__ __forceinline__ void add(float v) {
    if constexpr (SYM) {
      hi = max_nan(hi, fabsf(v));
    } else {
      lo = min_nan(lo, v);
      hi = max_nan(hi, v);
    }
  }
  __device__ __forceinline__ void merge(float o_lo, float o_hi) {
    if constexpr (!SYM) lo = min_nan(lo, o_lo);
    hi = max_nan(hi, o_hi);
  }
  __device__ __forceinline__ void merge(const Stats& o) { merge(o.lo, o.hi); }
  __device__ __forceinline__ void shfl_merge(int offset) {
    float o_lo = 0.0f;
    if constexpr (!SYM) o_lo = __shfl_xor_sync(0xffffffffu, lo, offset);
    merge(o_lo, __shfl_xor_sync(0xffffffffu, hi, offset));
  }
};

// Reduce st over a group of `group` threads (a power of two >= 32, aligned in
// the block). Every thread of the block must call this (it may __syncthreads);
// every thread gets the group's result. smem holds one Stats per warp.
template <bool SYM>
__device__ __forceinline__ Stats<SYM> group_reduce(Stats<SYM> st, int group, Stats<SYM>* smem) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) st.shfl_merge(offset);
  if (group > 32) {  // uniform across the block
    const int warp = threadIdx.x >> 5;
    const int warps_per_group = group >> 5;
    if ((threadIdx.x & 31) == 0) smem[warp] = st;
    __syncthreads();
    const int first = warp & ~(warps_per_group - 1);
    st = smem[first];
    for (int w = 1; w < warps_per_group; ++w) st.merge(smem[first + w]);
    __syncthreads();  // smem is rewritten by the next call
  }
  return st;
}

// Scale, zero point and the clamp bounds (in units of x / scale, before the
// zero point is added) of one group, exactly as the reference computes them.
struct Params {
  float scale;
  int32_t zero_point;
  float lo;  // qmin - zero_point, or 0 for a non-finite group
  float hi;  // qmax - zero_point, or 0 for a non-finite group
};

template <bool SYM>
__device__ __forceinline__ Params group_params(const Stats<SYM>& st) {
  Params p;
  bool bad;
  if constexpr (SYM) {
    bad = !isfinite(st.hi);
    p.scale = st.hi / 127.0f;
    p.zero_point = 0;
  } else {
    bad = !(isfinite(st.lo) && isfinite(st.hi));
    const float lo = fminf(st.lo, 0.0f);
    const float hi = fmaxf(st.hi, 0.0f);
    p.scale = (hi - lo) / 255.0f;  // may overflow to +inf: the reference keeps that
    const float safe = p.scale == 0.0f ? 1.0f : p.scale;
    float zp = rintf(lo / safe);
    if (!isfinite(zp)) zp = 0.0f;
    zp = fminf(fmaxf(-128.0f - zp, -128.0f), 127.0f);
    p.zero_point = static_cast<int32_t>(zp);
  }
  if (p.scale == 0.0f) p.scale = 1.0f;
  const float qmin = SYM ? -127.0f : -128.0f;
  p.lo = qmin - static_cast<float>(p.zero_point);
  p.hi = 127.0f - static_cast<float>(p.zero_point);
  if (bad) {
    // Bounds [0, 0] send every x / inf (0 or NaN; fmaxf drops NaN) to q = 0.
    p.scale = INFINITY;
    p.zero_point = 0;
    p.lo = 0.0f;
    p.hi = 0.0f;
  }
  return p;
}

// x / b correctly rounded, for one b and many x, without a division per x.
// r = 1 / b is itself one IEEE division, so r = RN(1/b) exactly; then
//   q0 = RN(x r)                       within ~2^-23 relative of x / b,
//   q1 = RN(q0 + r RN(x - b q0))       within 2^-46 before rounding: faithful,
//   q2 = RN(q1 + r (x - b q1))         = RN(x / b) by Markstein's theorem (r
//                                      within 1/2 ulp of 1/b, q1 within 1 ulp).
// Valid while nothing underflows: for b in [2^-60, 2^60] and |x| / b >= 1/4
// every nonzero residual is a multiple of ulp(b) ulp(q) >= 2^-108. Smaller
// quotients come out below 1/2 either way and round to 0. 5 FP32 ops per x.
// NOTE: do not replay nvcc's own div.rn fast path (MUFU.RCP, one Newton step,
// one correction) with the reciprocal hoisted: that is exact only for the
// MUFU.RCP value the hardware happens to return. With another legal (1 ulp)
// value it is not: b = 2 - 2^-23, r0 = 0.5 gives r = 0.5 and 1 / b -> 0.5
// instead of 0.5 + 2^-24, so x = 1 quantizes to 0 instead of 1.
struct RecipDiv {
  float b, r;

  static __device__ __forceinline__ bool applies(float b) { return b >= 0x1p-60f && b <= 0x1p60f; }
  explicit __device__ __forceinline__ RecipDiv(float divisor) : b(divisor), r(1.0f / divisor) {}
  __device__ __forceinline__ float operator()(float x) const {
    float q = __fmul_rn(x, r);
    q = __fmaf_rn(r, __fmaf_rn(-b, q, x), q);
    return __fmaf_rn(r, __fmaf_rn(-b, q, x), q);
  }
};

struct ExactDiv {
  float b;
  __device__ __forceinline__ float operator()(float x) const { return x / b; }
};

// q = clamp(rne(x / scale) + zp, qmin, 127), returned in the low byte. Clamping
// before rounding is the same thing because the bounds are integers.
template <typename Div>
__device__ __forceinline__ uint32_t quantize_value(float x, const Div& div, const Params& p) {
  float v = div(x);
  v = fminf(fmaxf(v, p.lo), p.hi);
  return __float_as_uint(v + kRoundMagic) + static_cast<uint32_t>(p.zero_point);
}

// The same from a stored (scale, zero point) pair: a non-finite quotient gives
// q = zero point clamped, as torch.where(isfinite(q), q, 0) does.
template <bool SYM>
__device__ __forceinline__ uint32_t quantize_value(float x, float scale, int32_t zp) {
  float v = x / scale;
  if (!isfinite(v)) v = 0.0f;
  const float qmin = SYM ? -127.0f : -128.0f;
  v = fminf(fmaxf(v, qmin - static_cast<float>(zp)), 127.0f - static_cast<float>(zp));
  return __float_as_uint(v + kRoundMagic) + static_cast<uint32_t>(zp);
}

// ---------------------------------------------------------------- row-wise quantize

// One group of `group` threads per row (blockDim.x / group rows per block,
// grid-stride over rows). VW: elements per load (16 bytes, or 1 when the row
// pointers or K do not allow vectors). NV > 0: each thread keeps its NV chunks
// of the row in registers between the passes (requires K <= NV * group * VW);
// NV == 0: any K, the second pass reads the row again.
template <typename T, int VW, int NV, bool SYM>
__global__ void __launch_bounds__(1024)
    quantize_rows_kernel(const typename Elem<T>::Bits* __restrict__ x,  // [rows, K], rows x_row_stride apart
                         int64_t x_row_stride,
                         int8_t* __restrict__ q,              // [rows, K] contiguous
                         float* __restrict__ scale,           // [rows]
                         int32_t* __restrict__ zero_point,    // [rows], or nullptr
                         int64_t rows, int64_t K, int group) {
  using E = Elem<T>;
  using Bits = typename E::Bits;
  using In = Chunk<Bits, VW>;
  __shared__ Stats<SYM> smem[32];

  const int64_t nchunks = K / VW;  // VW divides K whenever VW > 1
  const int lane = threadIdx.x & (group - 1);
  const int rows_per_block = blockDim.x / group;
  const int64_t row_in_block = threadIdx.x / group;

  for (int64_t base = int64_t(blockIdx.x) * rows_per_block; base < rows; base += int64_t(gridDim.x) * rows_per_block) {
    const int64_t row = base + row_in_block;
    const bool active = row < rows;  // uniform within a group
    const Bits* xr = x + (active ? row : 0) * x_row_stride;
    int8_t* qr = q + (active ? row : 0) * K;

    // Pass 1: statistics. All loads of the cached chunks are issued before any is used.
    Stats<SYM> st;
    st.init();
    In cache[NV > 0 ? NV : 1];
    if (active) {
      if constexpr (NV > 0) {
#pragma unroll
        for (int k = 0; k < NV; ++k) {
          const int64_t c = int64_t(k) * group + lane;
          if (c < nchunks) cache[k] = load_chunk<Bits, VW>(xr + c * VW);
        }
#pragma unroll
        for (int k = 0; k < NV; ++k) {
          if (int64_t(k) * group + lane < nchunks) {
            float f[VW];
            to_floats<T, VW>(cache[k], f);
#pragma unroll
            for (int e = 0; e < VW; ++e) st.add(f[e]);
          }
        }
      } else {
#pragma unroll 4
        for (int64_t c = lane; c < nchunks; c += group) {
          float f[VW];
          to_floats<T, VW>(load_chunk<Bits, VW>(xr + c * VW), f);
#pragma unroll
          for (int e = 0; e < VW; ++e) st.add(f[e]);
        }
      }
    }

    st = group_reduce<SYM>(st, group, smem);
    const Params p = group_params<SYM>(st);
    if (!active) continue;
    if (lane == 0) {
      scale[row] = p.scale;
      if (zero_point != nullptr) zero_point[row] = p.zero_point;
    }

    // Pass 2: quantize and store.
    auto quantize_row = [&](const auto& div) {
      if constexpr (NV > 0) {
#pragma unroll
        for (int k = 0; k < NV; ++k) {
          const int64_t c = int64_t(k) * group + lane;
          if (c < nchunks) {
            float f[VW];
            to_floats<T, VW>(cache[k], f);
            uint32_t b[VW];
#pragma unroll
            for (int e = 0; e < VW; ++e) b[e] = quantize_value(f[e], div, p);
            store_q<VW>(qr + c * VW, b);
          }
        }
      } else {
#pragma unroll 2
        for (int64_t c = lane; c < nchunks; c += group) {
          float f[VW];
          to_floats<T, VW>(load_chunk<Bits, VW>(xr + c * VW), f);
          uint32_t b[VW];
#pragma unroll
          for (int e = 0; e < VW; ++e) b[e] = quantize_value(f[e], div, p);
          store_q<VW>(qr + c * VW, b);
        }
      }
    };
    if (RecipDiv::applies(p.scale)) {
      quantize_row(RecipDiv(p.scale));
    } else {
      quantize_row(ExactDiv{p.scale});
    }
  }
}

// ---------------------------------------------------------------- per-channel statistics (outer > 1)

// inner == 1: x is [outer, C]; block (32, 8) covers 32 channels, split s of
// the grid's y covers rows [s * rows_per_split, ...). Writes (min, max) partials.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    channel_stats_columns_kernel(const typename Elem<T>::Bits* __restrict__ x,  // [outer, C]
                                 float2* __restrict__ partial,                   // [S, C]
                                 int64_t outer, int64_t C, int64_t rows_per_split) {
  using E = Elem<T>;
  __shared__ float2 smem[8][32];
  const int64_t c = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t o_begin = int64_t(blockIdx.y) * rows_per_split;
  const int64_t o_end = min(o_begin + rows_per_split, outer);
  Stats<false> st;
  st.init();
  if (c < C) {
#pragma unroll 4
    for (int64_t o = o_begin + threadIdx.y; o < o_end; o += 8) st.add(E::to_float(x[o * C + c]));
  }
  smem[threadIdx.y][threadIdx.x] = make_float2(st.lo, st.hi);
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
#pragma unroll
    for (int y = 1; y < 8; ++y) st.merge(smem[y][threadIdx.x].x, smem[y][threadIdx.x].y);
    partial[int64_t(blockIdx.y) * C + c] = make_float2(st.lo, st.hi);
  }
}

// inner > 1: channel c's elements are `outer` runs of `inner` contiguous values,
// C * inner apart. Block (grid-stride over channels in x) and split s (grid y)
// cover flat positions [s * per_split, ...) of the outer * inner values.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    channel_stats_segments_kernel(const typename Elem<T>::Bits* __restrict__ x,  // [outer, C, inner]
                                  float2* __restrict__ partial,                   // [S, C]
                                  int64_t C, int64_t inner, int64_t per_channel, int64_t per_split) {
  using E = Elem<T>;
  __shared__ Stats<false> smem[32];
  const int64_t row_step = C * inner;  // between consecutive runs of one channel
  const int64_t f_begin = int64_t(blockIdx.y) * per_split + threadIdx.x;
  const int64_t f_end = min(int64_t(blockIdx.y) * per_split + per_split, per_channel);
  // Position advances by blockDim.x each step: step_o runs and step_i values.
  const int64_t step_o = blockDim.x / inner;
  const int64_t step_i = blockDim.x % inner;
  const int64_t addr_step = step_o * row_step + step_i;

  for (int64_t c = blockIdx.x; c < C; c += gridDim.x) {
    Stats<false> st;
    st.init();
    if (f_begin < f_end) {
      int64_t i = f_begin % inner;
      int64_t addr = (f_begin / inner) * row_step + c * inner + i;
#pragma unroll 4
      for (int64_t f = f_begin; f < f_end; f += blockDim.x) {
        st.add(E::to_float(x[addr]));
        addr += addr_step;
        i += step_i;
        if (i >= inner) {
          i -= inner;
          addr += row_step - inner;
        }
      }
    }
    st = group_reduce<false>(st, blockDim.x, smem);
    if (threadIdx.x == 0) partial[int64_t(blockIdx.y) * C + c] = make_float2(st.lo, st.hi);
  }
}

// One thread per channel: merge the S partials, then scale and zero point.
template <bool SYM>
__global__ void __launch_bounds__(kThreads)
    channel_finalize_kernel(const float2* __restrict__ partial,  // [S, C]
                            int64_t S, int64_t C,
                            float* __restrict__ scale,             // [C]
                            int32_t* __restrict__ zero_point) {    // [C]
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  Stats<false> mm;
  mm.init();
  for (int64_t s = 0; s < S; ++s) {
    const float2 v = partial[s * C + c];
    mm.merge(v.x, v.y);
  }
  Params p;
  if constexpr (SYM) {
    Stats<true> st;
    st.lo = 0.0f;
    st.hi = max_nan(fabsf(mm.lo), fabsf(mm.hi));
    p = group_params<true>(st);
  } else {
    p = group_params<false>(mm);
  }
  scale[c] = p.scale;
  zero_point[c] = p.zero_point;
}

// ---------------------------------------------------------------- elementwise ([outer, C, inner])

// For chunk index v of a contiguous [outer, C, inner] tensor cut into rows of
// `per_row` chunks (row mode: rows of `inner` elements, channel = row % C;
// column mode, inner == 1: rows of C elements, channel = position in the row),
// tracks col = v % per_row and chan = (v / per_row) % C. A grid-stride step
// adds (step_col, step_chan) with one carry each, so no division per chunk.
struct ChunkCursor {
  int64_t v, col, chan;

  __device__ __forceinline__ void init(int64_t v0, int64_t per_row, int64_t C) {
    v = v0;
    col = v0 % per_row;
    chan = (v0 / per_row) % C;
  }
  __device__ __forceinline__ void advance(int64_t stride, int64_t step_col, int64_t step_chan, int64_t per_row,
                                          int64_t C) {
    v += stride;
    col += step_col;
    chan += step_chan;
    if (col >= per_row) {
      col -= per_row;
      ++chan;
    }
    if (chan >= C) chan -= C;
  }
};

template <typename T, int VW, bool COLUMN, bool SYM>
__global__ void __launch_bounds__(kThreads)
    quantize_channels_kernel(const typename Elem<T>::Bits* __restrict__ x,  // [outer, C, inner] contiguous
                             const float* __restrict__ scale,               // [C]
                             const int32_t* __restrict__ zero_point,        // [C]
                             int8_t* __restrict__ q,                        // [outer, C, inner] contiguous
                             int64_t nchunks, int64_t per_row, int64_t C, int64_t step_col, int64_t step_chan) {
  using E = Elem<T>;
  using Bits = typename E::Bits;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  ChunkCursor cur;
  for (cur.init(int64_t(blockIdx.x) * blockDim.x + threadIdx.x, per_row, C); cur.v < nchunks;
       cur.advance(stride, step_col, step_chan, per_row, C)) {
    const Chunk<Bits, VW> ch = load_chunk<Bits, VW>(x + cur.v * VW);
    float s[VW];
    int32_t z[VW];
    if constexpr (COLUMN) {
      load_scales<VW>(scale + cur.col * VW, s);
      if constexpr (SYM) {
#pragma unroll
        for (int e = 0; e < VW; ++e) z[e] = 0;
      } else {
        load_scales<VW>(zero_point + cur.col * VW, z);
      }
    } else {
      const float s0 = __ldg(scale + cur.chan);
      const int32_t z0 = SYM ? 0 : __ldg(zero_point + cur.chan);
#pragma unroll
      for (int e = 0; e < VW; ++e) {
        s[e] = s0;
        z[e] = z0;
      }
    }
    float f[VW];
    to_floats<T, VW>(ch, f);
    uint32_t b[VW];
#pragma unroll
    for (int e = 0; e < VW; ++e) b[e] = quantize_value<SYM>(f[e], s[e], z[e]);
    store_q<VW>(q + cur.v * VW, b);
  }
}

template <typename OutT, int VW, bool COLUMN, bool HAS_ZP>
__global__ void __launch_bounds__(kThreads)
    dequantize_kernel(const int8_t* __restrict__ q,               // [outer, C, inner] contiguous
                      const float* __restrict__ scale,            // [C]
                      const int32_t* __restrict__ zero_point,     // [C], or nullptr when !HAS_ZP
                      OutT* __restrict__ out,                     // [outer, C, inner] contiguous
                      int64_t nchunks, int64_t per_row, int64_t C, int64_t step_col, int64_t step_chan) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  ChunkCursor cur;
  for (cur.init(int64_t(blockIdx.x) * blockDim.x + threadIdx.x, per_row, C); cur.v < nchunks;
       cur.advance(stride, step_col, step_chan, per_row, C)) {
    const Chunk<int8_t, VW> ch = load_chunk<int8_t, VW>(q + cur.v * VW);
    float s[VW];
    int32_t z[VW];
    if constexpr (COLUMN) {
      load_scales<VW>(scale + cur.col * VW, s);
      if constexpr (HAS_ZP) load_scales<VW>(zero_point + cur.col * VW, z);
    } else {
      const float s0 = __ldg(scale + cur.chan);
      const int32_t z0 = HAS_ZP ? __ldg(zero_point + cur.chan) : 0;
#pragma unroll
      for (int e = 0; e < VW; ++e) {
        s[e] = s0;
        z[e] = z0;
      }
    }
    float f[VW];
#pragma unroll
    for (int e = 0; e < VW; ++e) {
      int32_t d = ch.v[e];
      // int32 subtraction wraps, as torch's does.
      if constexpr (HAS_ZP) d = static_cast<int32_t>(static_cast<uint32_t>(d) - static_cast<uint32_t>(z[e]));
      f[e] = static_cast<float>(d) * s[e];
    }
    store_out<OutT, VW>(out + cur.v * VW, f);
  }
}

// ---------------------------------------------------------------- host helpers

int sm_count() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];
  const int dev = c10::cuda::current_device();
  if (dev >= 0 && dev < kMaxDevices) {
    const int n = cache[dev].load(std::memory_order_relaxed);
    if (n > 0) return n;
  }
  int n = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  n = std::max(n, 1);
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(n, std::memory_order_relaxed);
  return n;
}

// Smallest power of two >= n, at most `cap` (a power of two).
int next_pow2(int64_t n, int cap) {
  int p = 1;
  while (p < n && p < cap) p <<= 1;
  return p;
}

// Grid for a grid-stride kernel of `blocks` blocks of `threads`: at most 8 waves
// of a fully occupied device; more only costs block launches.
int capped_grid(int64_t blocks, int threads) {
  const int64_t cap = int64_t(sm_count()) * std::max(1, 2048 / threads) * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min(blocks, cap)));
}

template <typename T>
const typename Elem<T>::Bits* bits_ptr(const at::Tensor& t) {
  return reinterpret_cast<const typename Elem<T>::Bits*>(t.const_data_ptr<T>());
}

// x: [rows, K] with unit stride along K and rows x_row_stride elements apart.
template <typename T, bool SYM>
void launch_quantize_rows(const at::Tensor& x, int64_t x_row_stride, at::Tensor& q, at::Tensor& scale,
                          int32_t* zero_point, int64_t rows, int64_t K, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const auto* xp = bits_ptr<T>(x);
  int8_t* qp = q.mutable_data_ptr<int8_t>();
  float* sp = scale.mutable_data_ptr<float>();
  const bool vec = K % kVec == 0 && aligned(xp, 16) && (rows == 1 || x_row_stride % kVec == 0) && aligned(qp, kVec);

  auto launch = [&](auto kernel, int group) {
    const int threads = std::max(group, kThreads);
    const int blocks = capped_grid(ceil_div(rows, threads / group), threads);
    kernel<<<blocks, threads, 0, stream>>>(xp, x_row_stride, qp, sp, zero_point, rows, K, group);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };

  if (vec) {
    constexpr int kCached = 4;  // chunks per thread kept in registers
    const int64_t nchunks = K / kVec;
    if (nchunks <= int64_t(1024) * kCached) {
      launch(quantize_rows_kernel<T, kVec, kCached, SYM>, std::max(32, next_pow2(ceil_div(nchunks, kCached), 1024)));
    } else {
      launch(quantize_rows_kernel<T, kVec, 0, SYM>, 1024);
    }
  } else {
    const int group = std::max(32, next_pow2(ceil_div(K, 8), 1024));
    launch(quantize_rows_kernel<T, 1, 0, SYM>, group);
  }
}

// Host-side parameters of an elementwise launch over [outer, C, inner].
struct ChunkGrid {
  int blocks;
  int64_t nchunks, per_row, C, step_col, step_chan;
};

ChunkGrid chunk_grid(int64_t numel, int64_t vw, int64_t per_row_elems, int64_t C) {
  ChunkGrid g;
  g.nchunks = numel / vw;
  g.per_row = per_row_elems / vw;
  g.C = C;
  g.blocks = capped_grid(ceil_div(g.nchunks, kThreads), kThreads);
  const int64_t stride = int64_t(g.blocks) * kThreads;
  g.step_col = stride % g.per_row;
  g.step_chan = (stride / g.per_row) % C;
  return g;
}

template <typename T, bool SYM>
void launch_quantize_channels(const at::Tensor& x, const ChannelGeometry& geo, at::Tensor& q, at::Tensor& scale,
                              at::Tensor& zero_point, cudaStream_t stream) {
  const auto* xp = bits_ptr<T>(x);
  int8_t* qp = q.mutable_data_ptr<int8_t>();
  float* sp = scale.mutable_data_ptr<float>();
  int32_t* zp = zero_point.mutable_data_ptr<int32_t>();
  const int64_t C = geo.channels;
  const int64_t numel = x.numel();

  // 1. (min, max) partials per channel, S splits of each channel's values.
  const int64_t target_blocks = int64_t(sm_count()) * 8;
  int64_t S;
  at::Tensor partial;
  if (geo.inner == 1) {
    const int64_t gx = ceil_div(C, 32);
    S = std::min<int64_t>({ceil_div(target_blocks, gx), ceil_div(geo.outer, 64), 65535});
    S = std::max<int64_t>(S, 1);
    const int64_t rows_per_split = ceil_div(geo.outer, S);
    S = ceil_div(geo.outer, rows_per_split);
    partial = at::empty({S * C * 2}, x.options().dtype(at::kFloat));
    channel_stats_columns_kernel<T><<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(S)), dim3(32, 8), 0,
                                      stream>>>(xp, reinterpret_cast<float2*>(partial.mutable_data_ptr<float>()),
                                                geo.outer, C, rows_per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const int64_t per_channel = geo.outer * geo.inner;
    const int64_t gx = std::min<int64_t>(C, 0x7fffffff);
    S = std::min<int64_t>({ceil_div(target_blocks, gx), ceil_div(per_channel, 4096), 65535});
    S = std::max<int64_t>(S, 1);
    const int64_t per_split = ceil_div(per_channel, S);
    S = ceil_div(per_channel, per_split);
    partial = at::empty({S * C * 2}, x.options().dtype(at::kFloat));
    channel_stats_segments_kernel<T>
        <<<dim3(static_cast<unsigned>(gx), static_cast<unsigned>(S)), kThreads, 0, stream>>>(
            xp, reinterpret_cast<float2*>(partial.mutable_data_ptr<float>()), C, geo.inner, per_channel, per_split);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // 2. Scale and zero point per channel.
  channel_finalize_kernel<SYM><<<static_cast<unsigned>(ceil_div(C, kThreads)), kThreads, 0, stream>>>(
      reinterpret_cast<const float2*>(partial.const_data_ptr<float>()), S, C, sp, zp);
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // 3. Elementwise quantize.
  constexpr int kVec = 16 / sizeof(T);
  if (geo.inner == 1 && C % kVec == 0 && aligned(xp, 16) && aligned(qp, kVec) && aligned(sp, 16) &&
      aligned(zp, 16)) {
    const ChunkGrid g = chunk_grid(numel, kVec, C, C);
    quantize_channels_kernel<T, kVec, true, SYM><<<g.blocks, kThreads, 0, stream>>>(
        xp, sp, zp, qp, g.nchunks, g.per_row, g.C, g.step_col, g.step_chan);
  } else if (geo.inner % kVec == 0 && aligned(xp, 16) && aligned(qp, kVec)) {
    const ChunkGrid g = chunk_grid(numel, kVec, geo.inner, C);
    quantize_channels_kernel<T, kVec, false, SYM><<<g.blocks, kThreads, 0, stream>>>(
        xp, sp, zp, qp, g.nchunks, g.per_row, g.C, g.step_col, g.step_chan);
  } else {
    const ChunkGrid g = chunk_grid(numel, 1, geo.inner, C);
    quantize_channels_kernel<T, 1, false, SYM><<<g.blocks, kThreads, 0, stream>>>(
        xp, sp, zp, qp, g.nchunks, g.per_row, g.C, g.step_col, g.step_chan);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename OutT, bool HAS_ZP>
void launch_dequantize(const at::Tensor& q, const at::Tensor& scale, const int32_t* zp, const ChannelGeometry& geo,
                       at::Tensor& out, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(OutT);
  const int8_t* qp = q.const_data_ptr<int8_t>();
  const float* sp = scale.const_data_ptr<float>();
  OutT* op = out.mutable_data_ptr<OutT>();
  const int64_t C = geo.channels;
  const int64_t numel = q.numel();
  const bool vec_ptrs = aligned(qp, kVec) && aligned(op, 16);
  if (geo.inner == 1 && C % kVec == 0 && vec_ptrs && aligned(sp, 16) && (!HAS_ZP || aligned(zp, 16))) {
    const ChunkGrid g = chunk_grid(numel, kVec, C, C);
    dequantize_kernel<OutT, kVec, true, HAS_ZP><<<g.blocks, kThreads, 0, stream>>>(
        qp, sp, zp, op, g.nchunks, g.per_row, g.C, g.step_col, g.step_chan);
  } else if (geo.inner % kVec == 0 && vec_ptrs) {
    const ChunkGrid g = chunk_grid(numel, kVec, geo.inner, C);
    dequantize_kernel<OutT, kVec, false, HAS_ZP><<<g.blocks, kThreads, 0, stream>>>(
        qp, sp, zp, op, g.nchunks, g.per_row, g.C, g.step_col, g.step_chan);
  } else {
    const ChunkGrid g = chunk_grid(numel, 1, geo.inner, C);
    dequantize_kernel<OutT, 1, false, HAS_ZP><<<g.blocks, kThreads, 0, stream>>>(
        qp, sp, zp, op, g.nchunks, g.per_row, g.C, g.step_col, g.step_chan);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

#define SLIMOPS_DISPATCH_FLOAT_ACTIVATIONS(TYPE, NAME, ...)        \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

std::tuple<at::Tensor, at::Tensor> quantize_per_token_cuda(const at::Tensor& x) {  // x: [..., K]
  const int64_t rows = leading_rows(x), K = x.size(-1);  // validated (validate_quantize_per_token)
  check_cuda(x, "quantize_per_token", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  std::vector<int64_t> scale_shape = x.sizes().vec();
  scale_shape.back() = 1;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));             // [..., K]
  at::Tensor scale = at::empty(scale_shape, x.options().dtype(at::kFloat));      // [..., 1]
  if (x.numel() == 0) return {q, scale};

  // [rows, K]; a view (sliced rows need no copy) unless the last dim is strided.
  at::Tensor x2 = x.reshape({rows, K});
  if (K > 1 && x2.stride(1) != 1) x2 = x2.contiguous();
  const int64_t row_stride = x2.stride(0);
  SLIMOPS_DISPATCH_FLOAT_ACTIVATIONS(x.scalar_type(), "quantize_per_token_cuda", [&] {
    launch_quantize_rows<scalar_t, true>(x2, row_stride, q, scale, nullptr, rows, K, stream);
  });
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_channel_cuda(const at::Tensor& x,  // [...]
                                                                         int64_t axis, bool symmetric) {
  const ChannelGeometry geo = channel_geometry(x, axis);  // validated (validate_quantize_per_channel)
  check_cuda(x, "quantize_per_channel", "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const std::vector<int64_t> scale_shape = channel_scale_shape(x, axis);
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kChar));             // [...] like x
  at::Tensor scale = at::empty(scale_shape, x.options().dtype(at::kFloat));      // 1 except x.size(axis) at axis
  at::Tensor zero_point = at::empty(scale_shape, x.options().dtype(at::kInt));   // like scale
  if (x.numel() == 0) return {q, scale, zero_point};

  const at::Tensor xc = x.contiguous();  // [outer, channels, inner]
  SLIMOPS_DISPATCH_FLOAT_ACTIVATIONS(x.scalar_type(), "quantize_per_channel_cuda", [&] {
    if (geo.outer == 1) {
      // Each channel is one contiguous row of `inner` values: the row kernel.
      int32_t* zp = zero_point.mutable_data_ptr<int32_t>();
      if (symmetric) {
        launch_quantize_rows<scalar_t, true>(xc, geo.inner, q, scale, zp, geo.channels, geo.inner, stream);
      } else {
        launch_quantize_rows<scalar_t, false>(xc, geo.inner, q, scale, zp, geo.channels, geo.inner, stream);
      }
    } else if (symmetric) {
      launch_quantize_channels<scalar_t, true>(xc, geo, q, scale, zero_point, stream);
    } else {
      launch_quantize_channels<scalar_t, false>(xc, geo, q, scale, zero_point, stream);
    }
  });
  return {q, scale, zero_point};
}

at::Tensor dequantize_cuda(const at::Tensor& q,                        // [...] int8
                           const at::Tensor& scale,                    // keepdim layout, fp32
                           const std::optional<at::Tensor>& zero_point,  // like scale, int32
                           c10::ScalarType out_dtype) {
  const ChannelGeometry geo = dequantize_geometry(q, scale);  // validated (validate_dequantize)
  check_cuda(q, "dequantize", "q");
  check_cuda(scale, "dequantize", "scale");
  if (zero_point.has_value()) check_cuda(*zero_point, "dequantize", "zero_point");
  const c10::cuda::CUDAGuard guard(q.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor out = at::empty(q.sizes(), q.options().dtype(out_dtype));  // [...] like q
  if (q.numel() == 0) return out;

  const at::Tensor qc = q.contiguous();          // [outer, channels, inner]
  const at::Tensor sc = scale.contiguous();      // [channels]
  at::Tensor zc;                                 // [channels]
  if (zero_point.has_value()) zc = zero_point->contiguous();
  SLIMOPS_DISPATCH_FLOAT_ACTIVATIONS(out_dtype, "dequantize_cuda", [&] {
    if (zc.defined()) {
      launch_dequantize<scalar_t, true>(qc, sc, zc.const_data_ptr<int32_t>(), geo, out, stream);
    } else {
      launch_dequantize<scalar_t, false>(qc, sc, nullptr, geo, out, stream);
    }
  });
  return out;
}

}  // namespace slimops
