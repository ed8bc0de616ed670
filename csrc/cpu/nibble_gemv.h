// The in-register GEMV of the 4-bit weight formats (int4: csrc/cpu/int4.cpp, codebook4:
// csrc/cpu/codebook4.cpp), for decode-sized M. The two differ only in what a nibble q means:
//   int4      w = q (0..15) as a float; the op subtracts its zero-point term afterwards
//   codebook  w = T[q], the row's 16-entry table, looked up in registers (AVX-512: one vpermps
//             over the 16 entries in a zmm; AVX2: vpermps on each 8-entry half + a blend on bit 3)
// so one kernel takes that as a template flag (kTable) and the unpack + FMA loop is written once:
//   scaled[m, n] = sum_g s[n, g] * sum_{k in g} x[m, k] * w[n, k]
// Each group's dot stays in a vector and is scaled there; one horizontal sum per output. The last
// chunk, when shorter than 32 inputs, is done by the scalar path.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "cpu/cpu_isa.h"
#include "cpu/nibbles.h"

namespace slimops {

// What the kernel reads: fp32 x [M, K] (contiguous); per weight row its packed bytes [N, bytes]
// and block scales [N, G] in fp32; with a table, codebook + row * table_stride (stride 0: one
// table for the layer, 16: one per row).
struct NibbleProblem {
  const float* x;
  const uint8_t* q;
  const float* s;
  const float* codebook;  // nullptr for int4
  int64_t table_stride;
  int64_t m, n, k, groups, group_size, bytes;

  const float* table(int64_t row) const { return codebook + row * table_stride; }
};

namespace nibble_gemv {

constexpr int64_t kMaxRowsInRegisters = 4;  // rows of x per register block
constexpr int kRowsPerBlock = 4;            // weight rows sharing each x load

// sum_k x[k] * w[k] over inputs [k0, k1) of weight row `row`: the portable path, and the tail.
template <bool kTable>
inline float dot_scalar(const NibbleProblem& p, const float* x, int64_t row, int64_t k0, int64_t k1) {
  const uint8_t* q = p.q + row * p.bytes;
  float acc = 0.f;
  if constexpr (kTable) {
    const float* t = p.table(row);
    for (int64_t k = k0; k < k1; ++k) acc += x[k] * t[nibble_at(q, k)];
  } else {
    for (int64_t k = k0; k < k1; ++k) acc += x[k] * static_cast<float>(nibble_at(q, k));
  }
  return acc;
}

// Scaled dot of one x row and one weight row over the full chunks [0, full_end).
template <bool kTable>
inline float scaled_dot_scalar(const NibbleProblem& p, int64_t m, int64_t row, int64_t full_end) {
  const float* xr = p.x + m * p.k;
  float total = 0.f;
  for (int64_t k0 = 0, g = 0; k0 < full_end; k0 += p.group_size, ++g)
    total += p.s[row * p.groups + g] * dot_scalar<kTable>(p, xr, row, k0, std::min(full_end, k0 + p.group_size));
  return total;
}

#if SLIMOPS_NIBBLES_X86
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define SLIMOPS_NIBBLE_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define SLIMOPS_NIBBLE_AVX2 __attribute__((target("avx2,fma")))

// MR rows of x x NR weight rows over the full chunks: 16 bytes of each weight row per step give
// inputs c..c+15 (low nibbles) and c+16..c+31 (high), one zmm each.
template <bool kTable, int MR, int NR>
SLIMOPS_NIBBLE_AVX512 void scaled_dots_avx512(const NibbleProblem& p, int64_t m0, int64_t n0, float* out) {
  __m512 total[MR][NR], table[NR];
  if constexpr (kTable)
    for (int j = 0; j < NR; ++j) table[j] = _mm512_loadu_ps(p.table(n0 + j));
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) total[i][j] = _mm512_setzero_ps();
  const int64_t full_end = p.k / kNibbleChunk * kNibbleChunk;
  for (int64_t k0 = 0, g = 0; k0 < full_end; k0 += p.group_size, ++g) {
    const int64_t k1 = std::min(full_end, k0 + p.group_size);
    __m512 acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t c = k0; c < k1; c += kNibbleChunk) {
      __m512 lo[NR], hi[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {
        const uint8_t* bytes = p.q + (n0 + j) * p.bytes + c / 2;
        _mm_prefetch(reinterpret_cast<const char*>(bytes + kNibblePrefetchBytes), _MM_HINT_T0);
        __m512i lo_q, hi_q;
        unpack_nibbles_avx512(bytes, lo_q, hi_q);
        if constexpr (kTable) {
          lo[j] = _mm512_permutexvar_ps(lo_q, table[j]);
          hi[j] = _mm512_permutexvar_ps(hi_q, table[j]);
        } else {
          lo[j] = _mm512_cvtepi32_ps(lo_q);
          hi[j] = _mm512_cvtepi32_ps(hi_q);
        }
      }
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const float* xr = p.x + (m0 + i) * p.k + c;
        const __m512 x0 = _mm512_loadu_ps(xr), x1 = _mm512_loadu_ps(xr + 16);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(x1, hi[j], _mm512_fmadd_ps(x0, lo[j], acc[i][j]));
      }
    }
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __m512 sv = _mm512_set1_ps(p.s[(n0 + j) * p.groups + g]);
      for (int i = 0; i < MR; ++i) total[i][j] = _mm512_fmadd_ps(sv, acc[i][j], total[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * NR + j] = _mm512_reduce_add_ps(total[i][j]);
}

// T[idx] for 8 indices 0..15 with the table in two ymm halves: vpermps uses the low 3 bits, and
// bit 3 (shifted into the sign bit) picks the half.
SLIMOPS_NIBBLE_AVX2 inline __m256 lookup_avx2(__m256i idx, __m256 table_lo, __m256 table_hi) {
  const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(table_lo, idx), _mm256_permutevar8x32_ps(table_hi, idx), upper);
}

// As scaled_dots_avx512 with 8 bytes per step: bytes h..h+7 of a chunk give inputs c+h..c+h+7
// (low nibbles) and c+16+h..c+16+h+7 (high).
template <bool kTable, int MR, int NR>
SLIMOPS_NIBBLE_AVX2 void scaled_dots_avx2(const NibbleProblem& p, int64_t m0, int64_t n0, float* out) {
  __m256 total[MR][NR], table_lo[NR], table_hi[NR];
  if constexpr (kTable)
    for (int j = 0; j < NR; ++j) {
      table_lo[j] = _mm256_loadu_ps(p.table(n0 + j));
      table_hi[j] = _mm256_loadu_ps(p.table(n0 + j) + 8);
    }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) total[i][j] = _mm256_setzero_ps();
  const int64_t full_end = p.k / kNibbleChunk * kNibbleChunk;
  for (int64_t k0 = 0, g = 0; k0 < full_end; k0 += p.group_size, ++g) {
    const int64_t k1 = std::min(full_end, k0 + p.group_size);
    __m256 acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
    for (int64_t c = k0; c < k1; c += kNibbleChunk) {
      for (int h = 0; h < 16; h += 8) {
        __m256 lo[NR], hi[NR];
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
          const uint8_t* bytes = p.q + (n0 + j) * p.bytes + c / 2;
          if (h == 0) _mm_prefetch(reinterpret_cast<const char*>(bytes + kNibblePrefetchBytes), _MM_HINT_T0);
          __m256i lo_q, hi_q;
          unpack_nibbles_avx2(bytes + h, lo_q, hi_q);
          if constexpr (kTable) {
            lo[j] = lookup_avx2(lo_q, table_lo[j], table_hi[j]);
            hi[j] = lookup_avx2(hi_q, table_lo[j], table_hi[j]);
          } else {
            lo[j] = _mm256_cvtepi32_ps(lo_q);
            hi[j] = _mm256_cvtepi32_ps(hi_q);
          }
        }
#pragma GCC unroll 4
        for (int i = 0; i < MR; ++i) {
          const float* xr = p.x + (m0 + i) * p.k + c + h;
          const __m256 x0 = _mm256_loadu_ps(xr), x1 = _mm256_loadu_ps(xr + 16);
#pragma GCC unroll 4
          for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(x1, hi[j], _mm256_fmadd_ps(x0, lo[j], acc[i][j]));
        }
      }
    }
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const __m256 sv = _mm256_set1_ps(p.s[(n0 + j) * p.groups + g]);
      for (int i = 0; i < MR; ++i) total[i][j] = _mm256_fmadd_ps(sv, acc[i][j], total[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * NR + j] = hsum256(total[i][j]);
}

#pragma GCC diagnostic pop
#endif  // SLIMOPS_NIBBLES_X86

// out[i * nr + j] = scaled[m0 + i, n0 + j] over every input: the vector kernels for the full
// chunks (a whole mr x 4 block at once, a partial block one output at a time), then the tail.
template <bool kTable>
void scaled_dots(FmaPath path, const NibbleProblem& p, int64_t m0, int64_t mr, int64_t n0, int64_t nr, float* out) {
  const int64_t full_end = p.k / kNibbleChunk * kNibbleChunk;
  bool done = false;
#if SLIMOPS_NIBBLES_X86
  if (path != FmaPath::kGeneric) {
    const bool z = path == FmaPath::kAvx512;
    done = true;
    switch (nr == kRowsPerBlock ? mr : 0) {
      case 1: z ? scaled_dots_avx512<kTable, 1, 4>(p, m0, n0, out) : scaled_dots_avx2<kTable, 1, 4>(p, m0, n0, out); break;
      case 2: z ? scaled_dots_avx512<kTable, 2, 4>(p, m0, n0, out) : scaled_dots_avx2<kTable, 2, 4>(p, m0, n0, out); break;
      case 3: z ? scaled_dots_avx512<kTable, 3, 4>(p, m0, n0, out) : scaled_dots_avx2<kTable, 3, 4>(p, m0, n0, out); break;
      case 4: z ? scaled_dots_avx512<kTable, 4, 4>(p, m0, n0, out) : scaled_dots_avx2<kTable, 4, 4>(p, m0, n0, out); break;
      default:
        for (int64_t i = 0; i < mr; ++i)
          for (int64_t j = 0; j < nr; ++j) {
            float* o = out + i * nr + j;
            z ? scaled_dots_avx512<kTable, 1, 1>(p, m0 + i, n0 + j, o)
              : scaled_dots_avx2<kTable, 1, 1>(p, m0 + i, n0 + j, o);
          }
    }
  }
#endif
  if (!done)
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t j = 0; j < nr; ++j) out[i * nr + j] = scaled_dot_scalar<kTable>(p, m0 + i, n0 + j, full_end);
  if (full_end == p.k) return;
  const int64_t tail_group = full_end / p.group_size;
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      const int64_t row = n0 + j;
      out[i * nr + j] +=
          p.s[row * p.groups + tail_group] * dot_scalar<kTable>(p, p.x + (m0 + i) * p.k, row, full_end, p.k);
    }
}

// out [M, N] fp32 = finish(m, n, scaled[m, n]): x rows in register blocks, weight rows split
// across threads (~64 KB of packed weight per task, so two threads share even small layers).
template <bool kTable, typename Finish>
void gemv(FmaPath path, const NibbleProblem& p, float* out, const Finish& finish) {
  const int64_t row_blocks = (p.n + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(p.bytes * kRowsPerBlock, 1));
  at::parallel_for(0, row_blocks, grain, [&](int64_t b0, int64_t b1) {
    float tile[kMaxRowsInRegisters * kRowsPerBlock];
    for (int64_t m0 = 0; m0 < p.m; m0 += kMaxRowsInRegisters) {
      const int64_t mr = std::min(kMaxRowsInRegisters, p.m - m0);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n0 = blk * kRowsPerBlock, nr = std::min<int64_t>(kRowsPerBlock, p.n - n0);
        scaled_dots<kTable>(path, p, m0, mr, n0, nr, tile);
        for (int64_t i = 0; i < mr; ++i)
          for (int64_t j = 0; j < nr; ++j) out[(m0 + i) * p.n + n0 + j] = finish(m0 + i, n0 + j, tile[i * nr + j]);
      }
    }
  });
}

}  // namespace nibble_gemv
}  // namespace slimops
