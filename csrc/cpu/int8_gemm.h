// Exact int8 x int8 -> int32 dot-product blocks for the CPU int8_mm kernel.
//
// C[i, j] = sum_k A[i, k] * B[j, k] for a block of rows of A and rows of B,
// both K-contiguous as int8_mm's a [M, K] and b [N, K]. A arrives widened to
// int16 with its rows zero-padded to a multiple of 16 (widen_rows); B stays
// int8. The float epilogue stays with the caller (csrc/cpu/quant_mm.cpp).
//
// Two implementations give the same int32 to the bit (integer sums are exact
// in any order while |C| < 2^31, i.e. K < 131072 even at -128 * -128):
// - generic: portable C++, for any CPU;
// - avx2: register-blocked MR x NR micro-kernels on vpmaddwd. A 16-byte chunk
//   of each B row is sign-extended to 16 int16 (vpmovsxbw) and multiplied by
//   16 int16 of A with _mm256_madd_epi16, which forms the 32-bit pair sums
//   a0*b0 + a1*b1. For int8 inputs a product lies in [-16256, 16384] and a
//   pair sum in [-32512, 32768]: exact in int32 for every int8 value, -128
//   included. The int32 lanes then accumulate with vpaddd.
//   NOTE: not vpmaddubsw (u8 x s8, 32 MACs per instruction): it saturates
//   its int16 pair sums, which a + 128 as u8 overflows (255 * 127 * 2 > 32767),
//   and the sign trick (|a| as u8 times b * sign(a)) cannot negate b = -128.
//   It would be inexact on int8's full range; vpmaddwd is exact on all of it.
//
// The avx2 functions carry __attribute__((target("avx2"))), so this file builds
// without -mavx2 and the caller picks one at run time with cpu_has_avx2().
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SLIMOPS_INT8_GEMM_X86 1
#else
#define SLIMOPS_INT8_GEMM_X86 0
#endif

namespace slimops {
namespace int8_gemm {

// Row length of a widened A: K rounded up to whole 16-element (one ymm) chunks.
inline int64_t padded_k(int64_t k) { return (k + 15) / 16 * 16; }

// a [rows, k] int8 -> out [rows, kp] int16, zeros in columns k .. kp - 1.
inline void widen_rows(const int8_t* a, int64_t rows, int64_t k, int16_t* out, int64_t kp) {
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* src = a + r * k;
    int16_t* dst = out + r * kp;
    for (int64_t i = 0; i < k; ++i) dst[i] = src[i];
    for (int64_t i = k; i < kp; ++i) dst[i] = 0;
  }
}

// ---------------------------------------------------------------- generic

// c[i * ldc + j] = dot(a row i, b row j) for i < mb, j < nb.
// a: [mb, lda] int16; b: [nb, ldb] int8; k <= lda, k <= ldb.
inline void dot_block_generic(const int16_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k, int64_t mb,
                              int64_t nb, int32_t* c, int64_t ldc) {
  for (int64_t i = 0; i < mb; ++i) {
    const int16_t* ai = a + i * lda;
    for (int64_t j = 0; j < nb; ++j) {
      const int8_t* bj = b + j * ldb;
      int32_t acc = 0;
      // Exact in any order (integer adds); compilers vectorise it with pmaddwd.
#pragma omp simd reduction(+ : acc)
      for (int64_t p = 0; p < k; ++p) acc += static_cast<int32_t>(ai[p]) * static_cast<int32_t>(bj[p]);
      c[i * ldc + j] = acc;
    }
  }
}

// ---------------------------------------------------------------- avx2

#if SLIMOPS_INT8_GEMM_X86

// Whether this CPU runs AVX2 code (GCC and Clang also check that the OS saves ymm state).
inline bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
}

// Rows of A per register block; columns (rows of B) per register block for MR rows.
constexpr int kAvx2MaxRows = 6;
constexpr int avx2_cols(int mr) { return mr == 1 ? 4 : mr == 2 ? 4 : mr == 3 ? 3 : 2; }

__attribute__((target("avx2"))) inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// acc[i][j] += pair sums of a[i][p .. p + 15] * bv[j]: MR x NR vpmaddwd + vpaddd.
template <int MR, int NR>
__attribute__((target("avx2"), always_inline)) inline void madd_chunk(__m256i (&acc)[MR][NR], __m256i (&bv)[NR],
                                                                      const int16_t* a, int64_t lda, int64_t p) {
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) __asm__("" : "+x"(bv[j]));
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * lda + p));
    // NOTE: an empty asm pins each chunk of a in a register: GCC would otherwise
    // fold the load into every vpmaddwd (NR loads instead of one) and lose ~30%.
    __asm__("" : "+x"(av));
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const __m256i m = _mm256_madd_epi16(av, bv[j]);
      // NOTE: the add is written in asm, in place: with _mm256_add_epi32, GCC 12
      // adds into the product's register and copies it back (or spills), which
      // costs ~40% at MR x NR = 6 x 2. The int32 add wraps exactly as vpaddd does.
      __asm__("vpaddd {%1, %0, %0|%0, %0, %1}" : "+x"(acc[i][j]) : "x"(m));
    }
  }
}

// c[i, j] = dot(a row i, b row j) over k elements, for MR rows of a and NR rows of b:
// MR x NR ymm accumulators of 8 int32 lanes each, reduced once at the end. Each
// chunk of a is loaded once for NR rows of b, each chunk of b widened once for MR rows of a.
// a's rows are readable up to k rounded up to 16 (zero padding past k).
template <int MR, int NR>
__attribute__((target("avx2"))) inline void micro_avx2(const int16_t* a, int64_t lda, const int8_t* b, int64_t ldb,
                                                      int64_t k, int32_t* c, int64_t ldc) {
  __m256i acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
  const int64_t k16 = k & ~int64_t{15};
  for (int64_t p = 0; p < k16; p += 16) {
    __m256i bv[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j)
      bv[j] = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + j * ldb + p)));
    madd_chunk<MR, NR>(acc, bv, a, lda, p);
  }
  if (k16 < k) {
    // The last k % 16 elements: b's tail copied into zeros, so no read passes a row's end.
    __m256i bv[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      alignas(16) int8_t tail[16] = {};
      for (int64_t p = k16; p < k; ++p) tail[p - k16] = b[j * ldb + p];
      bv[j] = _mm256_cvtepi8_epi16(_mm_load_si128(reinterpret_cast<const __m128i*>(tail)));
    }
    madd_chunk<MR, NR>(acc, bv, a, lda, k16);
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = hsum_epi32(acc[i][j]);
}

// MR rows of a against nb rows of b, NR at a time (one at a time for the last nb % NR).
template <int MR>
__attribute__((target("avx2"))) inline void rows_avx2(const int16_t* a, int64_t lda, const int8_t* b, int64_t ldb,
                                                     int64_t k, int64_t nb, int32_t* c, int64_t ldc) {
  constexpr int NR = avx2_cols(MR);
  int64_t j = 0;
  for (; j + NR <= nb; j += NR) micro_avx2<MR, NR>(a, lda, b + j * ldb, ldb, k, c + j, ldc);
  for (; j < nb; ++j) micro_avx2<MR, 1>(a, lda, b + j * ldb, ldb, k, c + j, ldc);
}

// Same contract as dot_block_generic, with lda a multiple of 16 >= padded_k(k)
// and a's rows zero-padded (widen_rows).
__attribute__((target("avx2"))) inline void dot_block_avx2(const int16_t* a, int64_t lda, const int8_t* b,
                                                          int64_t ldb, int64_t k, int64_t mb, int64_t nb, int32_t* c,
                                                          int64_t ldc) {
  // NOTE: no blocking over K: a's 6 rows stream from L2 at ~30 B/cycle, which the
  // core sustains; K blocks of 1024 measured 5-10% slower (partial sums, more reductions).
  int64_t i = 0;
  for (; i + kAvx2MaxRows <= mb; i += kAvx2MaxRows)
    rows_avx2<kAvx2MaxRows>(a + i * lda, lda, b, ldb, k, nb, c + i * ldc, ldc);
  const int16_t* ai = a + i * lda;
  int32_t* ci = c + i * ldc;
  switch (mb - i) {
    case 5: rows_avx2<5>(ai, lda, b, ldb, k, nb, ci, ldc); break;
    case 4: rows_avx2<4>(ai, lda, b, ldb, k, nb, ci, ldc); break;
    case 3: rows_avx2<3>(ai, lda, b, ldb, k, nb, ci, ldc); break;
    case 2: rows_avx2<2>(ai, lda, b, ldb, k, nb, ci, ldc); break;
    case 1: rows_avx2<1>(ai, lda, b, ldb, k, nb, ci, ldc); break;
    default: break;
  }
}

#else

inline bool cpu_has_avx2() { return false; }

#endif  // SLIMOPS_INT8_GEMM_X86

// dot_block_avx2 where `avx2` (true only where cpu_has_avx2()), else dot_block_generic.
inline void dot_block(bool avx2, const int16_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k, int64_t mb,
                      int64_t nb, int32_t* c, int64_t ldc) {
#if SLIMOPS_INT8_GEMM_X86
  if (avx2) {
    dot_block_avx2(a, lda, b, ldb, k, mb, nb, c, ldc);
    return;
  }
#endif
  (void)avx2;
  dot_block_generic(a, lda, b, ldb, k, mb, nb, c, ldc);
}

}  // namespace int8_gemm
}  // namespace slimops
