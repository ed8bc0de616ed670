// Weight-only int8 linear (W8A16) for decode-sized batches: CUDA kernels and
// their launcher.
//
// Semantics are python/slimops/reference/quant_mm.py::weight_int8_linear:
//   out[m, n] = sum_k x[m, k] * w[n, k] * scale[n, k / group_size] + bias[n]
// with the products and sums in fp32, bias added in fp32, and one rounding to
// x's dtype at the end. w is int8 [N, K] (nn.Linear layout); scale is [N]
// (one group of K) or [N, G] (group_size = K / G).
//
// At decode sizes (M = 1..16) the op is a stream over the weight: 45 MB for
// 11008 x 4096, 10.6 us at 4.27 TB/s, against which x, scale and the output
// are noise. What limits a kernel is then (1) bytes in flight per SM, and
// (2) the instructions spent per weight byte: at full bandwidth an H200 SM
// receives about 16 weight bytes per clock and issues 128 thread-instructions
// per clock, so at most ~8 instructions per weight element. Plain fp32 FMAs
// cost M per element (plus ~2.25 to turn the int8 into a float): fine up to
// M ~ 4, about 2x over budget at M = 16. So there are two kernels:
//
//   wi8_mma_kernel   x fp16/bf16, K % 64 == 0, group_size % 64 == 0, weight
//                    16-byte aligned. Tensor cores (mma.sync m16n8k16, fp32
//                    accumulators) do the multiply-adds: the weight rows are
//                    the A operand (16 rows x 16 k, converted exactly to
//                    fp16/bf16: |w| <= 128 has at most 8 significant bits),
//                    the tokens are the B operand (8 columns; 16 tokens use
//                    two B tiles). Instructions per element: ~1.3 (fp16) or
//                    ~2.8 (bf16) for the conversion, whatever M is.
//   wi8_simt_kernel  everything else (fp32 x, K or group_size not a multiple
//                    of 64, unaligned weights): fp32 FMAs, 16-byte weight
//                    loads when K % 16 == 0 and group_size % 16 == 0, else one
//                    int8 per lane per step. Correct for every shape, fast
//                    enough for small M.
//
// Both read each weight byte exactly once per chunk of tokens (16 tokens for
// the MMA kernel, 8 for the SIMT one: grid.y walks the chunks, so any M works),
// with ld.global.nc.L1::no_allocate: the weight is streamed and must not evict
// x, which every block re-reads from L1/L2. Scales and bias are read in place
// in whatever float dtype and strides they come in (dtype code in the kernel
// arguments): converting them first would cost an extra launch per call,
// a few us, which at a 10-20 us op is not noise.
//
// Nothing here writes outside out; rows >= N and tokens >= M are never loaded.
//
// NOTE: the scale multiplies partial sums (a 64-wide step, a 16-wide vector or
// one product), not each weight as the reference does: equal up to fp32
// rounding for finite scales. With an infinite scale the reference gives NaN
// for a row holding any zero weight (0 * inf); here such a row is +-inf unless
// one of its partial sums is 0.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "quant_mm.h"
#include "cuda/common.cuh"

namespace slimops {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

// SIMT kernel: output rows per warp (each weight vector load is reused by the
// MC tokens of the chunk; each x load by the kSimtRows rows).
constexpr int kSimtRows = 2;
constexpr int kSimtMaxTokens = 8;

// MMA kernel: one block = 16 output rows (one m16 tile) x 8 * MT tokens; its 8
// warps split K in steps of 64 (warp w takes steps w, w + 8, ...), and sum
// their partial tiles through shared memory at the end. 16 rows per block gives
// N / 16 blocks (256 for N = 4096, 688 for N = 11008): enough to fill 132 SMs
// without a cross-block reduction.
constexpr int kMmaRows = 16;
constexpr int kStep = 64;  // k per warp step: 4 lanes x 16 bytes of each weight row

// A float32/float16/bfloat16 tensor of at most 2 dims (scale, bias), read one
// element at a time with its own strides; the dtype is a kernel argument, so
// the branch is uniform and one kernel serves every scale/bias dtype.
struct FloatParam {
  const void* ptr = nullptr;
  int64_t stride0 = 0;
  int64_t stride1 = 0;
  int dtype = kF32;

  __device__ __forceinline__ float load(int64_t i, int64_t j) const {
    const int64_t off = i * stride0 + j * stride1;
    if (dtype == kF32) return __ldg(static_cast<const float*>(ptr) + off);
    const uint16_t b = __ldg(static_cast<const unsigned short*>(ptr) + off);
    return dtype == kF16 ? F16::to_float(b) : BF16::to_float(b);
  }
};

// ---------------------------------------------------------------- loads

// 16 weight bytes that are read once: bypass L1 (x lives there), and let L2
// fetch the 256-byte neighbourhood (the next warps of the block read it).
__device__ __forceinline__ void load_weight16(const int8_t* p, uint32_t (&w)[4]) {
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
      : "l"(p));
}

// 16 consecutive 16-bit activations as 8 words (element 2i in the low half of
// word i, little endian). p must be 16-byte aligned.
__device__ __forceinline__ void load_x16_words(const uint16_t* p, uint32_t (&w)[8]) {
  const uint4 a = __ldg(reinterpret_cast<const uint4*>(p));
  const uint4 b = __ldg(reinterpret_cast<const uint4*>(p) + 1);
  w[0] = a.x;
  w[1] = a.y;
  w[2] = a.z;
  w[3] = a.w;
  w[4] = b.x;
  w[5] = b.y;
  w[6] = b.z;
  w[7] = b.w;
}

// VEC consecutive activations as fp32 (VEC = 16: p 16-byte aligned; VEC = 1: any p).
template <typename E, int VEC>
__device__ __forceinline__ void load_x_floats(const typename E::Bits* p, float (&f)[VEC]) {
  if constexpr (VEC == 1) {
    f[0] = E::to_float(p[0]);
  } else if constexpr (std::is_same_v<E, F32>) {
    static_assert(VEC % 4 == 0, "fp32 vectors of 4");
#pragma unroll
    for (int i = 0; i < VEC / 4; ++i) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + i);
      f[4 * i] = __uint_as_float(v.x);
      f[4 * i + 1] = __uint_as_float(v.y);
      f[4 * i + 2] = __uint_as_float(v.z);
      f[4 * i + 3] = __uint_as_float(v.w);
    }
  } else {
    static_assert(VEC == 16, "16-bit vectors of 16");
    uint32_t w[8];
    load_x16_words(p, w);
#pragma unroll
    for (int i = 0; i < 8; ++i) E::unpack2(w[i], f[2 * i], f[2 * i + 1]);
  }
}

// ---------------------------------------------------------------- int8 -> float, exactly

// Byte b of w, as u = b + 128 in [0, 255] after the xor, is placed in the low
// mantissa byte of 2^23 (bits 0x4B0000uu = 2^23 + u); subtracting 2^23 + 128
// leaves b as an exact fp32. One PRMT and one FADD per element.
constexpr float kMagic23 = 8388736.0f;  // 2^23 + 128

__device__ __forceinline__ void int8x4_to_floats(uint32_t w, float (&f)[4]) {
  const uint32_t u = w ^ 0x80808080u;
  f[0] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7650)) - kMagic23;
  f[1] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7651)) - kMagic23;
  f[2] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7652)) - kMagic23;
  f[3] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7653)) - kMagic23;
}

// The 4 int8 of w as two packed 16-bit pairs: lo = (b0, b1), hi = (b2, b3),
// the first of each pair in the low half. Exact for every int8.
template <typename E>
__device__ __forceinline__ void int8x4_to_pairs(uint32_t w, uint32_t& lo, uint32_t& hi);

// fp16: 0x64uu is 1024 + u (exponent 2^10, u in the mantissa); one packed
// subtraction of 1152 = 1024 + 128 per pair gives b.
template <>
__device__ __forceinline__ void int8x4_to_pairs<F16>(uint32_t w, uint32_t& lo, uint32_t& hi) {
  const uint32_t u = w ^ 0x80808080u;
  const uint32_t lo_raw = __byte_perm(u, 0x64646464u, 0x4140);  // [u0, 0x64, u1, 0x64]
  const uint32_t hi_raw = __byte_perm(u, 0x64646464u, 0x4342);  // [u2, 0x64, u3, 0x64]
  const uint32_t bias = 0x64806480u;                            // (1152, 1152)
  asm("sub.f16x2 %0, %1, %2;" : "=r"(lo) : "r"(lo_raw), "r"(bias));
  asm("sub.f16x2 %0, %1, %2;" : "=r"(hi) : "r"(hi_raw), "r"(bias));
}

// bf16 has 7 mantissa bits, too few for 1024 + u: go through exact fp32 and
// keep the high halves (an integer of magnitude <= 128 has zero low halves).
template <>
__device__ __forceinline__ void int8x4_to_pairs<BF16>(uint32_t w, uint32_t& lo, uint32_t& hi) {
  float f[4];
  int8x4_to_floats(w, f);
  lo = __byte_perm(__float_as_uint(f[0]), __float_as_uint(f[1]), 0x7632);
  hi = __byte_perm(__float_as_uint(f[2]), __float_as_uint(f[3]), 0x7632);
}

// ---------------------------------------------------------------- tensor cores

// d = a * b + d for one m16n8k16 tile, fp32 accumulators. Fragment layouts
// (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"),
// g = lane / 4, t = lane % 4:
//   a[0] = A[g][2t..2t+1]     a[1] = A[g+8][2t..2t+1]
//   a[2] = A[g][2t+8..2t+9]   a[3] = A[g+8][2t+8..2t+9]
//   b0 = B[2t..2t+1][g]       b1 = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1]  d[2..3] = D[g+8][2t..2t+1]
template <typename E>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<E, F16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    static_assert(std::is_same_v<E, BF16>, "mma operands are fp16 or bf16");
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// One 64-wide k step of a warp: rows n0 + (0..15) times MT tiles of 8 tokens.
//
// Any bijection between the mma's 16 logical k and 16 physical k gives the
// same dot product, provided A and B use the same one. Lane (g, t) loaded the
// 16 physical k [16t, 16t + 16) of the step for its rows g, g + 8 (w[0], w[1])
// and for its tokens g (+ 8 per tile) (x[mt], 8 words). mma j (j = 0..3) maps
// the lane's logical k {2t, 2t+1, 2t+8, 2t+9} to physical 16t + 4j + {0, 1, 2, 3}:
//   A: bytes 0, 1 of word j -> a[0] (row g), a[1] (row g+8); bytes 2, 3 -> a[2], a[3]
//   B: x elements 4j, 4j+1 (word 2j) -> b0; 4j+2, 4j+3 (word 2j+1) -> b1
// so 4 mmas consume the 16 bytes each lane loaded, 64 k in all, with no
// shuffles. The step lies inside one scale group (group_size % 64 == 0): its
// partial tile is scaled once per row (sc[0] row g, sc[1] row g+8) and added.
template <typename E, int MT>
__device__ __forceinline__ void mma_step(const uint32_t (&w)[2][4], const uint32_t (&x)[MT][8], const float (&sc)[2],
                                         float (&acc)[MT][4]) {
  float part[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) part[mt][c] = 0.0f;
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    uint32_t a[4];
    int8x4_to_pairs<E>(w[0][j], a[0], a[2]);
    int8x4_to_pairs<E>(w[1][j], a[1], a[3]);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) mma_16816<E>(part[mt], a, x[mt][2 * j], x[mt][2 * j + 1]);
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    acc[mt][0] = fmaf(part[mt][0], sc[0], acc[mt][0]);
    acc[mt][1] = fmaf(part[mt][1], sc[0], acc[mt][1]);
    acc[mt][2] = fmaf(part[mt][2], sc[1], acc[mt][2]);
    acc[mt][3] = fmaf(part[mt][3], sc[1], acc[mt][3]);
  }
}

// ---------------------------------------------------------------- MMA kernel

// Block (blockIdx.x, blockIdx.y): output rows [16 bx, 16 bx + 16) x tokens
// [m_begin + 8 MT by, + 8 MT). Each warp covers its k steps, kUnroll of them
// per batch: all the batch's loads (2 x 16 weight bytes + MT x 32 x bytes per
// lane and step) are issued before the first mma. At 2 blocks per SM (the
// launch bound caps registers at 128 for that) 16 warps keep up to 64 KB of
// weights in flight per SM (48 KB at 16 tokens), above the ~20-30 KB that
// Little's law asks at ~32 GB/s per SM. Requires K % 64 == 0,
// steps_per_group = group_size / 64 >= 1, x and w 16-byte aligned, contiguous.
template <typename E, int MT>
__global__ void __launch_bounds__(kThreads, 2)
    wi8_mma_kernel(const uint16_t* __restrict__ x,  // [M, K] fp16/bf16 bits, contiguous
                   const int8_t* __restrict__ w,    // [N, K] contiguous
                   FloatParam scale,                // [N] or [N, G]
                   FloatParam bias,                 // [N], ptr == nullptr when none
                   uint16_t* __restrict__ out,      // [M, N] contiguous, x's dtype
                   int64_t M, int64_t N, int64_t K, int64_t groups, int64_t steps_per_group, int64_t m_begin) {
  constexpr int kTok = 8 * MT;
  // Steps per batch: 4 x 32 weight bytes per lane in flight; 3 for 16 tokens,
  // whose x words would otherwise push the batch past 128 registers (spills).
  constexpr int kUnroll = MT == 1 ? 4 : 3;
  __shared__ float red[kWarps][kTok][kMmaRows];

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int64_t n0 = int64_t(blockIdx.x) * kMmaRows;
  const int64_t m0 = m_begin + int64_t(blockIdx.y) * kTok;

  // This lane's weight rows (A rows g, g + 8) and token rows (B column g of each tile).
  int64_t n_row[2];
  bool w_ok[2];
  const int8_t* w_ptr[2];
  float row_scale[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    n_row[h] = n0 + 8 * h + g;
    w_ok[h] = n_row[h] < N;
    w_ptr[h] = w + (w_ok[h] ? n_row[h] : 0) * K + 16 * t;
    row_scale[h] = (groups == 1 && w_ok[h]) ? scale.load(n_row[h], 0) : 0.0f;
  }
  bool x_ok[MT];
  const uint16_t* x_ptr[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int64_t m = m0 + 8 * mt + g;
    x_ok[mt] = m < M;
    x_ptr[mt] = x + (x_ok[mt] ? m : 0) * K + 16 * t;
  }

  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[mt][c] = 0.0f;
  }

  const int64_t nsteps = K / kStep;
  // `s < nsteps` below is uniform across the warp, as mma.sync requires.
  for (int64_t base = warp; base < nsteps; base += int64_t(kWarps) * kUnroll) {
    uint32_t wv[kUnroll][2][4];
    uint32_t xv[kUnroll][MT][8];
    float sc[kUnroll][2];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t s = base + int64_t(u) * kWarps;
      if (s < nsteps) {
        const int64_t kb = s * kStep;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          if (w_ok[h]) {
            load_weight16(w_ptr[h] + kb, wv[u][h]);
          } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) wv[u][h][i] = 0u;
          }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if (x_ok[mt]) {
            load_x16_words(x_ptr[mt] + kb, xv[u][mt]);
          } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) xv[u][mt][i] = 0u;
          }
        }
        // 32-bit division (the host guarantees nsteps < 2^31): an int64 one is a ~40-instruction call.
        const int64_t grp = groups == 1 ? 0 : static_cast<uint32_t>(s) / static_cast<uint32_t>(steps_per_group);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          sc[u][h] = groups == 1 ? row_scale[h] : (w_ok[h] ? scale.load(n_row[h], grp) : 0.0f);
        }
      }
    }
    __syncwarp();  // the tail predicates above may diverge; mma.sync needs the whole warp
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (base + int64_t(u) * kWarps < nsteps) mma_step<E, MT>(wv[u], xv[u], sc[u], acc);
    }
  }

  // Sum the 8 warps' tiles in a fixed order (deterministic), then bias and store.
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int tok = 8 * mt + 2 * t;
    red[warp][tok][g] = acc[mt][0];
    red[warp][tok + 1][g] = acc[mt][1];
    red[warp][tok][g + 8] = acc[mt][2];
    red[warp][tok + 1][g + 8] = acc[mt][3];
  }
  __syncthreads();
  static_assert(kTok * kMmaRows <= kThreads, "one output per thread");
  if (threadIdx.x < kTok * kMmaRows) {
    const int tok = threadIdx.x / kMmaRows;
    const int r = threadIdx.x % kMmaRows;  // consecutive threads, consecutive n: coalesced stores
    const int64_t n = n0 + r;
    const int64_t m = m0 + tok;
    if (n < N && m < M) {
      float v = 0.0f;
#pragma unroll
      for (int i = 0; i < kWarps; ++i) v += red[i][tok][r];
      if (bias.ptr != nullptr) v += bias.load(n, 0);
      out[m * N + n] = E::from_float(v);
    }
  }
}

// ---------------------------------------------------------------- SIMT kernel

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Warp (blockIdx.x * 8 + warp) owns output rows [2 w, 2 w + 2) for the tokens
// [m_begin + MC by, + MC). Lane l takes k = 16 l, 16 l + 512, ... (VEC = 16:
// 16-byte weight loads, K % 16 == 0 and group_size % 16 == 0 so a vector
// never straddles a group) or k = l, l + 32, ... (VEC = 1: any K and groups).
// The per-vector partial dot product is scaled by its group's scale and
// added; a warp shuffle sums the lanes at the end. No barriers: idle warps
// return at once.
template <typename E, int MC, int VEC>
__global__ void __launch_bounds__(kThreads)
    wi8_simt_kernel(const typename E::Bits* __restrict__ x,  // [M, K] contiguous (16-byte aligned if VEC > 1)
                    const int8_t* __restrict__ w,            // [N, K] contiguous (16-byte aligned if VEC > 1)
                    FloatParam scale,                        // [N] or [N, G]
                    FloatParam bias,                         // [N], ptr == nullptr when none
                    typename E::Bits* __restrict__ out,      // [M, N] contiguous, x's dtype
                    int64_t M, int64_t N, int64_t K, int64_t groups, int64_t group_size, int64_t m_begin) {
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t n_first = (int64_t(blockIdx.x) * kWarps + warp) * kSimtRows;
  if (n_first >= N) return;
  const int64_t m0 = m_begin + int64_t(blockIdx.y) * MC;

  bool row_ok[kSimtRows];
  const int8_t* w_row[kSimtRows];
  float row_scale[kSimtRows];
#pragma unroll
  for (int r = 0; r < kSimtRows; ++r) {
    row_ok[r] = n_first + r < N;
    w_row[r] = w + (row_ok[r] ? n_first + r : n_first) * K;
    row_scale[r] = (groups == 1 && row_ok[r]) ? scale.load(n_first + r, 0) : 0.0f;
  }

  float acc[MC][kSimtRows];
#pragma unroll
  for (int m = 0; m < MC; ++m) {
#pragma unroll
    for (int r = 0; r < kSimtRows; ++r) acc[m][r] = 0.0f;
  }

#pragma unroll 2
  for (int64_t k0 = int64_t(lane) * VEC; k0 < K; k0 += 32 * VEC) {
    float wf[kSimtRows][VEC];
    float sc[kSimtRows];
    const int64_t grp = groups == 1 ? 0 : k0 / group_size;
#pragma unroll
    for (int r = 0; r < kSimtRows; ++r) {
      if constexpr (VEC == 16) {
        uint32_t v[4] = {0u, 0u, 0u, 0u};
        if (row_ok[r]) load_weight16(w_row[r] + k0, v);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float f[4];
          int8x4_to_floats(v[i], f);
#pragma unroll
          for (int e = 0; e < 4; ++e) wf[r][4 * i + e] = f[e];
        }
      } else {
        static_assert(VEC == 1, "VEC is 16 or 1");
        wf[r][0] = row_ok[r] ? static_cast<float>(__ldg(w_row[r] + k0)) : 0.0f;
      }
      sc[r] = groups == 1 ? row_scale[r] : (row_ok[r] ? scale.load(n_first + r, grp) : 0.0f);
    }
#pragma unroll
    for (int m = 0; m < MC; ++m) {
      if (m0 + m < M) {  // uniform across the warp
        float xf[VEC];
        load_x_floats<E, VEC>(x + (m0 + m) * K + k0, xf);
#pragma unroll
        for (int r = 0; r < kSimtRows; ++r) {
          float p = 0.0f;
#pragma unroll
          for (int e = 0; e < VEC; ++e) p = fmaf(xf[e], wf[r][e], p);
          acc[m][r] = fmaf(p, sc[r], acc[m][r]);
        }
      }
    }
  }

#pragma unroll
  for (int m = 0; m < MC; ++m) {
#pragma unroll
    for (int r = 0; r < kSimtRows; ++r) {
      float v = warp_sum(acc[m][r]);
      if (lane == 0 && row_ok[r] && m0 + m < M) {
        if (bias.ptr != nullptr) v += bias.load(n_first + r, 0);
        out[(m0 + m) * N + n_first + r] = E::from_float(v);
      }
    }
  }
}

// ---------------------------------------------------------------- host helpers

FloatParam float_param(const at::Tensor& t) {  // t: [L] or [L, C]
  FloatParam p;
  p.ptr = t.const_data_ptr();
  p.stride0 = t.stride(0);
  p.stride1 = t.dim() > 1 ? t.stride(1) : 0;
  p.dtype = dtype_code(t.scalar_type());
  return p;
}

// Everything a launch needs, once the tensors are in the kernels' layout.
struct Problem {
  const void* x;  // [M, K] contiguous, 16-byte aligned
  const int8_t* w;  // [N, K] contiguous
  FloatParam scale;
  FloatParam bias;
  void* out;  // [M, N] contiguous
  int64_t M, N, K, groups, group_size;
};

// Launches kernel over grid.x = blocks_x and enough grid.y slices of `tokens`
// tokens to cover M (several launches past 65535 slices).
template <typename Kernel, typename... Args>
void launch_token_chunks(Kernel kernel, int64_t blocks_x, int64_t M, int64_t tokens, cudaStream_t stream,
                         Args... args) {
  const int64_t chunks = ceil_div(M, tokens);
  for (int64_t c0 = 0; c0 < chunks; c0 += kMaxGridY) {
    const int64_t cy = std::min(chunks - c0, kMaxGridY);
    const dim3 grid(static_cast<unsigned>(blocks_x), static_cast<unsigned>(cy));
    kernel<<<grid, kThreads, 0, stream>>>(args..., /*m_begin=*/c0 * tokens);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename E, int MT>
void launch_mma(const Problem& p, cudaStream_t stream) {
  const int64_t blocks_x = ceil_div(p.N, kMmaRows);
  launch_token_chunks(wi8_mma_kernel<E, MT>, blocks_x, p.M, 8 * MT, stream, static_cast<const uint16_t*>(p.x), p.w,
                      p.scale, p.bias, static_cast<uint16_t*>(p.out), p.M, p.N, p.K, p.groups,
                      p.group_size / kStep);
}

template <typename E, int MC, int VEC>
void launch_simt(const Problem& p, cudaStream_t stream) {
  using Bits = typename E::Bits;
  const int64_t blocks_x = ceil_div(p.N, int64_t(kWarps) * kSimtRows);
  launch_token_chunks(wi8_simt_kernel<E, MC, VEC>, blocks_x, p.M, MC, stream, static_cast<const Bits*>(p.x), p.w,
                      p.scale, p.bias, static_cast<Bits*>(p.out), p.M, p.N, p.K, p.groups, p.group_size);
}

template <typename E, int VEC>
void launch_simt_tokens(const Problem& p, cudaStream_t stream) {
  // The smallest token chunk that holds M (accumulators stay in registers).
  if (p.M == 1) {
    launch_simt<E, 1, VEC>(p, stream);
  } else if (p.M == 2) {
    launch_simt<E, 2, VEC>(p, stream);
  } else if (p.M <= 4) {
    launch_simt<E, 4, VEC>(p, stream);
  } else {
    static_assert(kSimtMaxTokens == 8, "token chunks of 1, 2, 4, 8");
    launch_simt<E, kSimtMaxTokens, VEC>(p, stream);
  }
}

template <typename E>
void run(const Problem& p, bool use_mma, bool vec, cudaStream_t stream) {
  if constexpr (!std::is_same_v<E, F32>) {
    if (use_mma) {
      p.M <= 8 ? launch_mma<E, 1>(p, stream) : launch_mma<E, 2>(p, stream);
      return;
    }
  }
  vec ? launch_simt_tokens<E, 16>(p, stream) : launch_simt_tokens<E, 1>(p, stream);
}

}  // namespace

at::Tensor weight_int8_linear_cuda(const at::Tensor& x,                     // [..., K] float
                                   const at::Tensor& weight,                // [N, K] int8
                                   const at::Tensor& scale,                 // [N] or [N, G] float
                                   const std::optional<at::Tensor>& bias) {  // [N] float
  // validated (validate_weight_int8_linear, by the op table)
  const MatmulGeometry geo = linear_geometry(x, weight.size(0), scale.dim() == 2 ? scale.size(1) : 1);
  constexpr const char* op = "weight_int8_linear";
  check_cuda(x, op, "x");
  check_cuda(weight, op, "weight");
  check_cuda(scale, op, "scale");
  if (bias.has_value()) check_cuda(*bias, op, "bias");
  const c10::cuda::CUDAGuard guard(x.device());

  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = geo.n;
  at::Tensor out = at::empty(out_shape, x.options());  // [..., N] contiguous, x's dtype
  if (geo.m == 0 || geo.n == 0) return out;
  static_assert(kWarps * kSimtRows == kMmaRows, "both kernels cover 16 rows per block");
  SLIMOPS_CHECK(ceil_div(geo.n, kMmaRows) <= std::numeric_limits<int32_t>::max(), op,
                "weight has too many rows for one launch: N = ", geo.n);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // [M, K], contiguous and 16-byte aligned: activations are small at the sizes
  // this op serves, so a copy (only when needed) costs little.
  at::Tensor x2 = x.reshape({geo.m, geo.k});
  if (!x2.is_contiguous() || !aligned(x2.const_data_ptr(), 16)) {
    at::Tensor copy = at::empty({geo.m, geo.k}, x2.options());
    copy.copy_(x2);
    x2 = copy;
  }
  // Real weights are contiguous; a strided one is copied (once per call).
  const at::Tensor w = weight.is_contiguous() ? weight : weight.contiguous();

  Problem p;
  p.x = x2.const_data_ptr();
  p.w = w.const_data_ptr<int8_t>();
  p.scale = float_param(scale);
  if (bias.has_value()) p.bias = float_param(*bias);
  p.out = out.mutable_data_ptr();
  p.M = geo.m;
  p.N = geo.n;
  p.K = geo.k;
  p.groups = geo.groups;
  p.group_size = geo.k / geo.groups;  // validated: groups >= 1 divides K

  const bool w_aligned = aligned(p.w, 16);
  // 16-byte weight vectors stay inside one row and one scale group.
  const bool vec = w_aligned && p.K % 16 == 0 && p.group_size % 16 == 0;
  // A 64-wide step stays inside one scale group. K == 0 goes to the SIMT
  // kernel, whose loops are empty: out = bias (or 0), as in the reference.
  const bool use_mma = w_aligned && p.K > 0 && p.K % kStep == 0 && p.group_size % kStep == 0 &&
                       p.K / kStep <= std::numeric_limits<int32_t>::max();

  switch (x.scalar_type()) {
    case at::kHalf:
      run<F16>(p, use_mma, vec, stream);
      break;
    case at::kBFloat16:
      run<BF16>(p, use_mma, vec, stream);
      break;
    default:  // validated: float32
      run<F32>(p, use_mma, vec, stream);
      break;
  }
  return out;
}

}  // namespace slimops
