// 2:4 semi-structured linear on the sparse tensor cores (mma.sp): kernels and launcher.
//
// Semantics: python/slimops/reference/sparse.py::sparse24_linear on the dense
// weight W that (values, meta) stand for (csrc/sparse24.h has the format):
//   out[m, n] = sum_k x[m, k] W[n, k] + bias[n]
// with fp32 accumulation, bias added in fp32, one rounding to x's dtype.
// fp16 and bf16 only (the sparse tensor cores' inputs); fp32 is an error here.
//
// ---------------------------------------------------------------- the instruction
//
// mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.{f16,bf16}.{f16,bf16}.f32
//   D[16 x 8] += A[16 x 32] B[32 x 8], A 2:4 sparse, given as its 16 x 16
//   compressed values Ac plus metadata. swap-AB: A is 16 weight rows (the
//   sparse operand), B = x^T (8 tokens as its n8 columns), D = a tile of out^T.
//   So at decode sizes every weight byte loaded feeds 8 tokens per instruction.
//   "ordered_metadata": the 2 positions of a group are strictly increasing, so
//   the only meaningful group codes are 0b0100, 0b1000, 0b1001, 0b1100, 0b1101,
//   0b1110 (PTX ISA 9.7.14.6.1; others are undefined behaviour). sparse24_compress
//   only makes these; meta from elsewhere is not checked here (the CPU checks it).
//
// Fragments, lane = 4 g + t (PTX ISA, "Matrix fragments for mma.m16n8k32 with
// sparse matrix A, .f16/.bf16"; A is laid out as the dense m16n8k16 A fragment
// over the compressed Ac):
//   A  a0 = Ac[g][2t, 2t+1]   a1 = Ac[g+8][2t, 2t+1]   a2 = Ac[g][2t+8, 2t+9]   a3 = Ac[g+8][2t+8, 2t+9]
//   B  b_i = B[2t + 8i, 2t + 8i + 1][g], i = 0..3      (two 16-bit elements per register, the first low)
//   D  d0, d1 = D[g][2t, 2t+1]   d2, d3 = D[g+8][2t, 2t+1]
//   metadata, sparsity selector 0: the lanes with t = 0, 1 supply it. Lane 4g + h holds
//     bits  0..15: row g,   groups 4h..4h+3 of the 8 (inputs 16h..16h+15), one nibble per group, group 4h lowest;
//     bits 16..31: row g+8, the same groups.
//   In the nibble of group c, bits 0-1 are the position of Ac[r][2c] and bits 2-3
//   that of Ac[r][2c+1]: Ac[r][2c + e] multiplies B[4c + pos_e][.].
// Our meta byte j is the nibbles of groups 2j (low) and 2j + 1 (high), so 16
// consecutive inputs of a row are one little-endian 16-bit half-word of meta:
// the format needs no re-encoding, only a gather of half-words (or nibbles,
// below) into the lanes that supply them.
// NOTE: only selector 0 is used. Selector 1 (lanes t = 2, 3 supplying the
// metadata instead, also valid for m16n8k32) would let one register serve two
// mmas and save a few ALU ops per step, but selector 0 is the layout exercised
// on hardware by LLVM's sparse-mma-2-4-f16 integration test.
//
// ---------------------------------------------------------------- two kernels
//
// sp24_decode_kernel (M <= kDecodeMaxM, and any M when K % 64 != 0): memory
//   bound, a stream over values + meta (9/16 of the dense weight's bytes).
//   Block = 16 RT weight rows x 8 MT tokens; its 8 warps split K in steps of
//   64 inputs (warp w: steps w, w + 8, ...) and sum their partial tiles through
//   shared memory in a fixed order. Grid: x = token chunks (fastest, so the
//   chunks of one row block run together and re-read the weights from L2),
//   y = row blocks.
//   Each step, each lane loads 16 contiguous bytes of values per row (lane t:
//   compressed values [8t, 8t + 8) of the step's 32, i.e. its groups 4t..4t+3
//   of the step's 16). mma.sp pairs A's columns with B's rows by group, so any
//   permutation of whole groups, applied alike to A, B and the metadata, gives
//   the same sums; the step's two mmas (j = 0, 1) use
//       logical group lg of mma j  <->  physical group P = 4 (lg % 4) + 2 j + lg / 4
//   which puts a0/a1 (logical group t) in word 2j of the lane's 16 bytes and
//   a2/a3 (logical group t + 4) in word 2j + 1. Then
//   B: lane t needs inputs 2(t%2), +1 of logical groups 2i + t/2 (i = 0..3), i.e.
//      of physical groups 4(t/2) + 2j (b0), 8 + 4(t/2) + 2j (b1), and +1 of
//      those (b2, b3). Lane t loads x[k0 + 8t, +8) and x[k0 + 32 + 8t, +8)
//      (16 bytes each: regions r = 0, 1) and trades halves with lane t ^ 1;
//      then it holds inputs 2(t%2), +1 of physical groups 8r + 4(t/2) + q,
//      q = 0..3, in xb[r][q].
//   metadata: lane h (t = h = 0, 1) needs logical groups 4h + q = physical
//      4q + 2j + h: nibble h of meta bytes 2q + j of the step's 8. A byte_perm
//      gathers bytes j, 2+j, 4+j, 6+j; a shift and a mask keep nibble h of
//      each; a shift-or and a byte_perm pack the 4 nibbles of rows g and g+8.
//   K % 64 != 0 (or a tail) runs "natural" steps of 32 inputs instead: logical
//   = physical, 4-byte loads of values and x, byte loads of meta, everything
//   past K zero (meta: positions (0, 1)).
//
// sp24_tiled_kernel (M > kDecodeMaxM, K % 64 == 0): a GEMM. Block = 128 weight
//   rows x 128 tokens, 8 warps as 2 (rows) x 4 (tokens), warp tile 64 x 32 =
//   4 x 4 mmas. K in tiles of 64 through a 4-stage cp.async pipeline in shared
//   memory, natural order; fragments by ldmatrix (each mma's Ac is four 8x8
//   b16 matrices; x is stored [token][k], i.e. B = x^T column-major, so B's
//   fragment is four 8x8 matrices of x rows), metadata half-words by lds.
//
// Nothing reads outside the tensors or writes outside out: rows >= N, tokens
// >= M and inputs >= K are never loaded (zeros instead) and never stored.
//
// NOTE: a pruned weight is skipped, not multiplied: where x holds inf or NaN,
// the reference (dense x W^T) gives NaN through 0 * inf in every output of that
// token, while here only the kept weights (and a padding zero of a group with
// fewer than 2 non-zeros) see it.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "sparse24.h"
#include "cuda/common.cuh"

namespace slimops {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Positions (0, 1) in every group: the metadata of padding (rows past N, inputs past K), whose values are 0.
constexpr uint32_t kMetaPad = 0x44444444u;
// The decode kernel serves M up to this; the tiled one above it. Not measured yet: see bench/.
constexpr int64_t kDecodeMaxM = 64;

// bias [N] of any float dtype and stride, read in place (converting it first would cost a launch).
struct BiasParam {
  const void* ptr = nullptr;
  int64_t stride = 0;
  int dtype = kF32;

  __device__ __forceinline__ float load(int64_t n) const {
    const int64_t off = n * stride;
    if (dtype == kF32) return __ldg(static_cast<const float*>(ptr) + off);
    const uint16_t b = __ldg(static_cast<const unsigned short*>(ptr) + off);
    return dtype == kF16 ? F16::to_float(b) : BF16::to_float(b);
  }
};

// ---------------------------------------------------------------- the mma

// d += A B for one m16n8k32 tile, metadata e with sparsity selector 0 (fragments: see the top of the file).
template <typename E>
__device__ __forceinline__ void mma_sp(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e) {
  if constexpr (std::is_same_v<E, F16>) {
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  } else {
    static_assert(std::is_same_v<E, BF16>, "mma.sp operands are fp16 or bf16");
    asm volatile(
        "mma.sp::ordered_metadata.sync.aligned.m16n8k32.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9, %10, %11}, {%0, %1, %2, %3}, %12, 0x0;"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(b[2]), "r"(b[3]), "r"(e));
  }
}

// ---------------------------------------------------------------- loads

// Weight bytes are read once: bypass L1 (x lives there) and let L2 fetch the
// 256-byte neighbourhood (the next steps of the row).
__device__ __forceinline__ uint4 load_stream16(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

__device__ __forceinline__ uint2 load_stream8(const void* p) {
  uint2 v;
  asm("ld.global.nc.L1::no_allocate.v2.u32 {%0, %1}, [%2];" : "=r"(v.x), "=r"(v.y) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;  // i is a compile-time constant after unrolling
}

// ---------------------------------------------------------------- decode kernel: steps

// Everything one warp step of the decode kernel loads (64 inputs, permuted order).
template <int RT, int MT>
struct FastLoads {
  uint4 w[RT][2];   // values: rows 16 rt + g (h = 0) and + 8 (h = 1); compressed [8t, 8t + 8) of the step
  uint2 m[RT][2];   // meta: the step's 8 bytes of the same rows
  uint4 x[MT][2];   // x: token 8 mt + g, inputs [32 r + 8t, +8) of the step
};

// One 64-input step in the permuted order (see the top of the file), both mmas.
template <typename E, int RT, int MT>
__device__ __forceinline__ void fast_step(const FastLoads<RT, MT>& ld, int t, float (&acc)[RT][MT][4]) {
  const bool odd = (t & 1) != 0;
  // B: trade halves with lane t ^ 1. Lane t loaded physical groups 8r + 2t, 8r + 2t + 1 whole
  // (words: group 2t inputs 0-1, 2-3, group 2t+1 inputs 0-1, 2-3); it keeps inputs 2(t%2).. of
  // those and receives the same inputs of its partner's two groups.
  uint32_t xb[MT][2][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const uint4 w = ld.x[mt][r];
      const uint32_t give0 = odd ? w.x : w.y;
      const uint32_t give1 = odd ? w.z : w.w;
      const uint32_t got0 = __shfl_xor_sync(0xffffffffu, give0, 1);
      const uint32_t got1 = __shfl_xor_sync(0xffffffffu, give1, 1);
      // inputs 2(t%2).. of physical groups 8r + 4(t/2) + q, q = 0..3: the even lane loaded q = 0, 1, the odd one 2, 3.
      xb[mt][r][0] = odd ? got0 : w.x;
      xb[mt][r][1] = odd ? got1 : w.z;
      xb[mt][r][2] = odd ? w.y : got0;
      xb[mt][r][3] = odd ? w.w : got1;
    }
  }
  const uint32_t nibble_shift = 4u * static_cast<uint32_t>(t & 1);  // lane h = t keeps nibble h
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    // Metadata of mma j: for each row, nibble h of bytes j, 2 + j, 4 + j, 6 + j -> 16 bits, group 4h + q at 4q.
    uint32_t e[RT];
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
      uint32_t packed[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const uint32_t gathered = __byte_perm(ld.m[rt][h].x, ld.m[rt][h].y, j == 0 ? 0x6420u : 0x7531u);
        const uint32_t y = (gathered >> nibble_shift) & 0x0F0F0F0Fu;  // nibble q at bits 8q
        packed[h] = y | (y >> 4);                                     // nibbles 0, 1 in byte 0; 2, 3 in byte 2
      }
      e[rt] = __byte_perm(packed[0], packed[1], 0x6420u);  // row g low, row g + 8 high
    }
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) {
      const uint32_t a[4] = {word_of(ld.w[rt][0], 2 * j), word_of(ld.w[rt][1], 2 * j), word_of(ld.w[rt][0], 2 * j + 1),
                             word_of(ld.w[rt][1], 2 * j + 1)};
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const uint32_t b[4] = {xb[mt][0][2 * j], xb[mt][1][2 * j], xb[mt][0][2 * j + 1], xb[mt][1][2 * j + 1]};
        mma_sp<E>(acc[rt][mt], a, b, e[rt]);
      }
    }
  }
}

// The rows and tokens of one lane of the decode kernel.
template <int RT, int MT>
struct LaneRows {
  const uint16_t* v[RT][2];  // values row (row 0 when out of range)
  const uint8_t* m[RT][2];   // meta row
  bool row_ok[RT][2];
  const uint16_t* x[MT];  // x row (row 0 when out of range)
  bool tok_ok[MT];
};

// One 32-input step in natural order, any K % 8 == 0: k0 is a multiple of 32, inputs >= K are zeros.
template <typename E, int RT, int MT>
__device__ __forceinline__ void natural_step(const LaneRows<RT, MT>& lr, int64_t k0, int64_t K, int t,
                                             float (&acc)[RT][MT][4]) {
  const int64_t groups = K / 4, meta_bytes = K / 8;
  const int64_t ga = k0 / 4 + t, gb = ga + 4;  // this lane's two groups (a0/a1 and a2/a3)
  const int64_t mb = k0 / 8 + 2 * (t & 1);     // metadata bytes mb, mb + 1 (lanes t = 0, 1)
  uint32_t a[RT][4];
  uint32_t e[RT];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool ok = lr.row_ok[rt][h];
      const uint16_t* v = lr.v[rt][h];
      a[rt][h] = (ok && ga < groups) ? __ldg(reinterpret_cast<const unsigned int*>(v + 2 * ga)) : 0u;
      a[rt][h + 2] = (ok && gb < groups) ? __ldg(reinterpret_cast<const unsigned int*>(v + 2 * gb)) : 0u;
    }
    uint32_t bytes[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int h = i >> 1;  // bytes 0, 1: row g; 2, 3: row g + 8
      const int64_t idx = mb + (i & 1);
      bytes[i] = (lr.row_ok[rt][h] && idx < meta_bytes) ? static_cast<uint32_t>(__ldg(lr.m[rt][h] + idx)) : 0x44u;
    }
    e[rt] = bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (bytes[3] << 24);
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    uint32_t b[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t kk = k0 + 2 * t + 8 * i;
      b[i] = (lr.tok_ok[mt] && kk < K) ? __ldg(reinterpret_cast<const unsigned int*>(lr.x[mt] + kk)) : 0u;
    }
#pragma unroll
    for (int rt = 0; rt < RT; ++rt) mma_sp<E>(acc[rt][mt], a[rt], b, e[rt]);
  }
}

// ---------------------------------------------------------------- decode kernel

// Block (token chunk bx, row block row_block_begin + by): rows [16 RT rb, +16 RT) x tokens [8 MT bx, +8 MT).
// fast_steps = K / 64 when the permuted 64-input steps apply (K % 64 == 0, 16-byte aligned rows),
// else 0 and every step is a natural 32-input one. UNROLL steps' loads are issued before the first mma.
template <typename E, int RT, int MT, int UNROLL>
__global__ void __launch_bounds__(kThreads, 2)
    sp24_decode_kernel(const uint16_t* __restrict__ x,       // [M, K] contiguous
                       const uint16_t* __restrict__ values,  // [N, K/2] contiguous
                       const uint8_t* __restrict__ meta,     // [N, K/8] contiguous
                       BiasParam bias,                       // [N], ptr == nullptr when none
                       uint16_t* __restrict__ out,           // [M, N] contiguous, x's dtype
                       int64_t M, int64_t N, int64_t K, int64_t fast_steps, int64_t row_block_begin) {
  constexpr int kRows = 16 * RT;
  constexpr int kTok = 8 * MT;
  __shared__ float red[kWarps][kTok][kRows];

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int64_t n0 = (row_block_begin + blockIdx.y) * kRows;
  const int64_t m0 = int64_t(blockIdx.x) * kTok;

  LaneRows<RT, MT> lr;
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = n0 + 16 * rt + 8 * h + g;
      lr.row_ok[rt][h] = n < N;
      const int64_t row = lr.row_ok[rt][h] ? n : 0;
      lr.v[rt][h] = values + row * (K / 2);
      lr.m[rt][h] = meta + row * (K / 8);
    }
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int64_t m = m0 + 8 * mt + g;
    lr.tok_ok[mt] = m < M;
    lr.x[mt] = x + (lr.tok_ok[mt] ? m : 0) * K;
  }

  float acc[RT][MT][4];
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[rt][mt][c] = 0.0f;
    }
  }

  // Permuted 64-input steps. `s < fast_steps` is uniform across the warp, as mma.sync requires.
  for (int64_t base = warp; base < fast_steps; base += int64_t(kWarps) * UNROLL) {
    FastLoads<RT, MT> ld[UNROLL];
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      const int64_t s = base + int64_t(u) * kWarps;
      if (s < fast_steps) {
        const int64_t k0 = s * 64;
#pragma unroll
        for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            if (lr.row_ok[rt][h]) {
              ld[u].w[rt][h] = load_stream16(lr.v[rt][h] + k0 / 2 + 8 * t);
              ld[u].m[rt][h] = load_stream8(lr.m[rt][h] + k0 / 8);
            } else {
              ld[u].w[rt][h] = make_uint4(0u, 0u, 0u, 0u);
              ld[u].m[rt][h] = make_uint2(kMetaPad, kMetaPad);
            }
          }
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
          for (int r = 0; r < 2; ++r) {
            ld[u].x[mt][r] = lr.tok_ok[mt] ? __ldg(reinterpret_cast<const uint4*>(lr.x[mt] + k0 + 32 * r + 8 * t))
                                           : make_uint4(0u, 0u, 0u, 0u);
          }
        }
      }
    }
    __syncwarp();  // the predicates above may diverge; shfl and mma.sync need the whole warp
#pragma unroll
    for (int u = 0; u < UNROLL; ++u) {
      if (base + int64_t(u) * kWarps < fast_steps) fast_step<E, RT, MT>(ld[u], t, acc);
    }
  }

  // Natural 32-input steps: the whole K when the permuted steps do not apply, else none.
  const int64_t nat_end = (K + 31) / 32;
  for (int64_t s = fast_steps * 2 + warp; s < nat_end; s += kWarps) {
    __syncwarp();
    natural_step<E, RT, MT>(lr, s * 32, K, t, acc);
  }

  // Sum the 8 warps' tiles in a fixed order (deterministic), then bias and store.
#pragma unroll
  for (int rt = 0; rt < RT; ++rt) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int tok = 8 * mt + 2 * t;
      const int row = 16 * rt + g;
      red[warp][tok][row] = acc[rt][mt][0];
      red[warp][tok + 1][row] = acc[rt][mt][1];
      red[warp][tok][row + 8] = acc[rt][mt][2];
      red[warp][tok + 1][row + 8] = acc[rt][mt][3];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kTok * kRows; i += kThreads) {
    const int tok = i / kRows;
    const int r = i % kRows;  // consecutive threads, consecutive n: coalesced stores
    const int64_t n = n0 + r;
    const int64_t m = m0 + tok;
    if (n < N && m < M) {
      float v = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) v += red[w][tok][r];
      if (bias.ptr != nullptr) v += bias.load(n);
      out[m * N + n] = E::from_float(v);
    }
  }
}

// ---------------------------------------------------------------- tiled kernel

constexpr int kTileRows = 128;   // weight rows per block
constexpr int kTileTok = 128;    // tokens per block
constexpr int kTileK = 64;       // inputs per pipeline stage
constexpr int kStages = 4;
// Shared-memory rows padded by 16 bytes: the 8 row addresses of one ldmatrix
// phase then fall on 8 different 4-bank groups (80 B = 20 words, 144 B = 36 words).
constexpr int kAStride = kTileK / 2 + 8;  // uint16 per values row: 32 + 8
constexpr int kXStride = kTileK + 8;      // uint16 per x row: 64 + 8
constexpr int kMStride = kTileK / 8;      // bytes per meta row: 8
constexpr int kStageA = kTileRows * kAStride * 2;
constexpr int kStageM = kTileRows * kMStride;
constexpr int kStageX = kTileTok * kXStride * 2;
constexpr int kStageBytes = kStageA + kStageM + kStageX;
constexpr int kTiledSmem = kStages * kStageBytes;
static_assert(kStageA % 16 == 0 && kStageM % 16 == 0 && kStageX % 16 == 0, "16-byte aligned stage parts");

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; src_bytes = 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes)
               : "memory");
}

__device__ __forceinline__ void cp_async8(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;" ::"r"(smem_addr(dst)), "l"(src) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// Stage layout: values [128][kAStride] uint16, meta [128][8] bytes, x [128][kXStride] uint16.
struct StagePtrs {
  uint16_t* a;
  uint8_t* m;
  uint16_t* x;
};

__device__ __forceinline__ StagePtrs stage_ptrs(unsigned char* smem, int stage) {
  unsigned char* base = smem + stage * kStageBytes;
  return {reinterpret_cast<uint16_t*>(base), base + kStageA, reinterpret_cast<uint16_t*>(base + kStageA + kStageM)};
}

// Issue the copies of K tile kt into stage st. Rows past N and tokens past M are zeros; their meta is kMetaPad.
__device__ __forceinline__ void tiled_load(const StagePtrs& sp, const uint16_t* __restrict__ x,
                                           const uint16_t* __restrict__ values, const uint8_t* __restrict__ meta,
                                           int64_t M, int64_t N, int64_t K, int64_t n0, int64_t m0, int64_t kt) {
  const int tid = threadIdx.x;
  const int64_t k0 = kt * kTileK;
  // values: 128 rows x 4 chunks of 16 bytes.
#pragma unroll
  for (int c = 0; c < (kTileRows * 4) / kThreads; ++c) {
    const int i = tid + c * kThreads;
    const int row = i >> 2, ch = i & 3;
    const bool ok = n0 + row < N;
    const uint16_t* src = ok ? values + (n0 + row) * (K / 2) + k0 / 2 + 8 * ch : values;
    cp_async16(sp.a + row * kAStride + 8 * ch, src, ok ? 16 : 0);
  }
  // meta: 128 rows x 8 bytes.
  if (tid < kTileRows) {
    const int row = tid;
    uint8_t* dst = sp.m + row * kMStride;
    if (n0 + row < N) {
      cp_async8(dst, meta + (n0 + row) * (K / 8) + k0 / 8);
    } else {
      *reinterpret_cast<uint2*>(dst) = make_uint2(kMetaPad, kMetaPad);
    }
  }
  // x: 128 tokens x 8 chunks of 16 bytes.
#pragma unroll
  for (int c = 0; c < (kTileTok * 8) / kThreads; ++c) {
    const int i = tid + c * kThreads;
    const int tok = i >> 3, ch = i & 7;
    const bool ok = m0 + tok < M;
    const uint16_t* src = ok ? x + (m0 + tok) * K + k0 + 8 * ch : x;
    cp_async16(sp.x + tok * kXStride + 8 * ch, src, ok ? 16 : 0);
  }
}

// Block (bx, by): weight rows [128 bx, +128) x tokens [128 (by_begin + by), +128). K % 64 == 0, rows of
// values / meta / x 16 / 8 / 16-byte aligned.
template <typename E>
__global__ void __launch_bounds__(kThreads, 1)
    sp24_tiled_kernel(const uint16_t* __restrict__ x,       // [M, K] contiguous
                      const uint16_t* __restrict__ values,  // [N, K/2] contiguous
                      const uint8_t* __restrict__ meta,     // [N, K/8] contiguous
                      BiasParam bias,                       // [N], ptr == nullptr when none
                      uint16_t* __restrict__ out,           // [M, N] contiguous
                      int64_t M, int64_t N, int64_t K, int64_t tok_block_begin) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t = lane & 3;
  const int warp_row = warp >> 2;  // 0..1: rows [64 warp_row, +64) of the tile
  const int warp_tok = warp & 3;   // 0..3: tokens [32 warp_tok, +32)
  const int64_t n0 = int64_t(blockIdx.x) * kTileRows;
  const int64_t m0 = (tok_block_begin + blockIdx.y) * kTileTok;
  const int64_t ktiles = K / kTileK;

  float acc[4][4][4];
#pragma unroll
  for (int rt = 0; rt < 4; ++rt) {
#pragma unroll
    for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[rt][mt][c] = 0.0f;
    }
  }

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ktiles) tiled_load(stage_ptrs(smem, s), x, values, meta, M, N, K, n0, m0, s);
    cp_async_commit();
  }

  // ldmatrix addresses: lane l gives row (l & 7) of matrix (l >> 3).
  const int lm = lane >> 3, lr = lane & 7;
  // A (values): matrix q = rows 8 (q & 1).., compressed columns 8 (q >> 1)..: a0..a3 in order.
  const int a_row = 64 * warp_row + lr + 8 * (lm & 1);
  const int a_col = 8 * (lm >> 1);
  // B (x): matrix i = inputs 8i.. of the 32-input k-step: b0..b3 in order.
  const int x_row = 32 * warp_tok + lr;
  const int x_col = 8 * lm;
  // Metadata (selector 0): lane 4g + h reads bytes 4kk + 2h, +1 of rows g and g + 8.
  const int m_byte = 2 * (t & 1);

  for (int64_t kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile kt is in its stage; every warp is done with the stage refilled below
    const int64_t next = kt + kStages - 1;
    if (next < ktiles) {
      tiled_load(stage_ptrs(smem, static_cast<int>(next % kStages)), x, values, meta, M, N, K, n0, m0, next);
    }
    cp_async_commit();

    const StagePtrs sp = stage_ptrs(smem, static_cast<int>(kt % kStages));
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      uint32_t a[4][4];
      uint32_t e[4];
#pragma unroll
      for (int rt = 0; rt < 4; ++rt) {
        ldmatrix_x4(a[rt], sp.a + (a_row + 16 * rt) * kAStride + 16 * kk + a_col);
        const int row = 64 * warp_row + 16 * rt + g;
        const uint32_t lo = *reinterpret_cast<const uint16_t*>(sp.m + row * kMStride + 4 * kk + m_byte);
        const uint32_t hi = *reinterpret_cast<const uint16_t*>(sp.m + (row + 8) * kMStride + 4 * kk + m_byte);
        e[rt] = lo | (hi << 16);
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        uint32_t b[4];
        ldmatrix_x4(b, sp.x + (x_row + 8 * mt) * kXStride + 32 * kk + x_col);
#pragma unroll
        for (int rt = 0; rt < 4; ++rt) mma_sp<E>(acc[rt][mt], a[rt], b, e[rt]);
      }
    }
  }
  cp_async_wait<0>();

#pragma unroll
  for (int rt = 0; rt < 4; ++rt) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = n0 + 64 * warp_row + 16 * rt + 8 * h + g;
      if (n >= N) continue;
      const float bn = bias.ptr != nullptr ? bias.load(n) : 0.0f;
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int64_t m = m0 + 32 * warp_tok + 8 * mt + 2 * t + c;
          if (m < M) out[m * N + n] = E::from_float(acc[rt][mt][2 * h + c] + bn);
        }
      }
    }
  }
}

// ---------------------------------------------------------------- host

// A contiguous copy starting on a 16-byte boundary, unless t already is one.
at::Tensor contiguous_aligned(const at::Tensor& t) {
  if (t.is_contiguous() && aligned(t.const_data_ptr(), 16)) return t;
  at::Tensor copy = at::empty(t.sizes(), t.options());
  copy.copy_(t);
  return copy;
}

struct Problem {
  const uint16_t* x;
  const uint16_t* values;
  const uint8_t* meta;
  BiasParam bias;
  uint16_t* out;
  int64_t M, N, K;
};

template <typename E, int RT, int MT, int UNROLL>
void launch_decode(const Problem& p, cudaStream_t stream) {
  constexpr int64_t kRows = 16 * RT, kTok = 8 * MT;
  const int64_t fast_steps = p.K % 64 == 0 ? p.K / 64 : 0;  // inputs aligned by contiguous_aligned
  const int64_t chunks = ceil_div(p.M, kTok);
  const int64_t row_blocks = ceil_div(p.N, kRows);
  for (int64_t rb = 0; rb < row_blocks; rb += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(std::min(row_blocks - rb, kMaxGridY)));
    sp24_decode_kernel<E, RT, MT, UNROLL><<<grid, kThreads, 0, stream>>>(p.x, p.values, p.meta, p.bias, p.out, p.M,
                                                                          p.N, p.K, fast_steps, rb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename E>
void launch_tiled(const Problem& p, cudaStream_t stream) {
  auto kernel = sp24_tiled_kernel<E>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kTiledSmem));
  const int64_t row_blocks = ceil_div(p.N, kTileRows);
  const int64_t tok_blocks = ceil_div(p.M, kTileTok);
  for (int64_t tb = 0; tb < tok_blocks; tb += kMaxGridY) {
    const dim3 grid(static_cast<unsigned>(row_blocks), static_cast<unsigned>(std::min(tok_blocks - tb, kMaxGridY)));
    kernel<<<grid, kThreads, kTiledSmem, stream>>>(p.x, p.values, p.meta, p.bias, p.out, p.M, p.N, p.K, tb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename E>
void run(const Problem& p, cudaStream_t stream) {
  if (p.M > kDecodeMaxM && p.K % kTileK == 0) {
    launch_tiled<E>(p, stream);
  } else if (p.M <= 8) {
    launch_decode<E, 1, 1, 4>(p, stream);
  } else if (p.M <= 16) {
    launch_decode<E, 1, 2, 2>(p, stream);
  } else {
    launch_decode<E, 2, 4, 1>(p, stream);  // chunks of 32 tokens
  }
}

}  // namespace

at::Tensor sparse24_linear_cuda(const at::Tensor& x,                     // [..., K] fp16/bf16
                                const at::Tensor& values,                // [N, K/2], x's dtype
                                const at::Tensor& meta,                  // [N, K/8] uint8
                                const std::optional<at::Tensor>& bias) {  // [N] float
  // validated (validate_sparse24_linear, by the op table)
  const Sparse24Geometry geo{leading_rows(x), values.size(0), x.size(-1)};
  constexpr const char* op = "sparse24_linear";
  check_cuda(x, op, "x");
  check_cuda(values, op, "values");
  check_cuda(meta, op, "meta");
  if (bias.has_value()) check_cuda(*bias, op, "bias");
  SLIMOPS_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, op,
                "on CUDA x and values must be float16 or bfloat16 (the sparse tensor cores' inputs), got ",
                x.scalar_type(), "; convert both, or run the float32 layer on the CPU");
  const c10::cuda::CUDAGuard guard(x.device());

  std::vector<int64_t> out_shape = x.sizes().vec();
  out_shape.back() = geo.n;
  at::Tensor out = at::empty(out_shape, x.options());  // [..., N] contiguous, x's dtype
  if (geo.m == 0 || geo.n == 0) return out;
  if (geo.k == 0) {  // an empty sum: out = bias (or 0), as in the reference
    out.zero_();
    if (bias.has_value()) out.add_(*bias);
    return out;
  }
  SLIMOPS_CHECK(ceil_div(geo.m, 8) <= std::numeric_limits<int32_t>::max() &&
                    ceil_div(geo.n, 16) <= std::numeric_limits<int32_t>::max(),
                op, "x has too many rows or the weight too many rows for one launch: M = ", geo.m, ", N = ", geo.n);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  // Kernels read [M, K], [N, K/2] and [N, K/8] row-major from 16-byte boundaries; copies
  // (only when needed) are cheap for activations, and real weights come contiguous from compress.
  const at::Tensor x2 = contiguous_aligned(x.reshape({geo.m, geo.k}));
  const at::Tensor v2 = contiguous_aligned(values);
  const at::Tensor m2 = contiguous_aligned(meta);

  Problem p;
  p.x = static_cast<const uint16_t*>(x2.const_data_ptr());
  p.values = static_cast<const uint16_t*>(v2.const_data_ptr());
  p.meta = m2.const_data_ptr<uint8_t>();
  if (bias.has_value()) {
    p.bias.ptr = bias->const_data_ptr();
    p.bias.stride = bias->stride(0);
    p.bias.dtype = dtype_code(bias->scalar_type());
  }
  p.out = static_cast<uint16_t*>(out.mutable_data_ptr());
  p.M = geo.m;
  p.N = geo.n;
  p.K = geo.k;

  if (x.scalar_type() == at::kHalf) {
    run<F16>(p, stream);
  } else {
    run<BF16>(p, stream);
  }
  return out;
}

}  // namespace slimops
