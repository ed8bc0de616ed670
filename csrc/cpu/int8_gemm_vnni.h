// Exact int8 x int8 -> int32 dot-product blocks on VNNI (vpdpbusd), for int8_mm.
//
// C[i, j] = sum_k A[i, k] * B[j, k], A [M, K] and B [N, K] both K-contiguous int8,
// as int8_mm's a and b (no packing, no widening).
//
// vpdpbusd multiplies unsigned bytes by signed bytes, four products per int32
// lane, and adds them into the lane without saturation. B is made unsigned by
// flipping its sign bit (b ^ 0x80 = b + 128 in [0, 255], one vpxor per B vector,
// shared by the MR rows of A), so each lane sums (b + 128) * a and
//   sum_k (b + 128) a = C[i, j] + 128 * sum_k a[i, k].
// The caller passes a_corr[i] = 128 * sum_k A[i, k] (mod 2^32) and we subtract it.
// Every product (b + 128) * a lies in [-32640, 32385] and the four-product sum
// in a lane never saturates, so this is exact for every int8 value, -128 on both
// sides included. Partial sums may pass 2^31 when K is near int8_mm's limit, but
// all adds wrap modulo 2^32 (vpdpbusd, vpaddd and the unsigned arithmetic
// below), and the true C fits in int32, so the wrapped result is C exactly.
//
// Two flavours, same contract:
// - avx512vnni: zmm (64 bytes of K per instruction), masked loads for the K tail;
// - avxvnni: ymm, VEX-encoded (CPUs with AVX-VNNI and no AVX-512), K tail copied
//   into zeroed buffers.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SLIMOPS_VNNI_X86 1
#else
#define SLIMOPS_VNNI_X86 0
#endif

namespace slimops {
namespace int8_gemm {

// 128 * sum_k a[k] modulo 2^32, the VNNI correction of one row of A.
inline int32_t vnni_row_correction(const int8_t* a, int64_t k) {
  int64_t s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t p = 0; p < k; ++p) s += a[p];
  return static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(s) * 128u));
}

// The exact C from the biased lane sum: sum - corr modulo 2^32 (no signed overflow).
inline int32_t vnni_unbias(int32_t sum, int32_t corr) {
  return static_cast<int32_t>(static_cast<uint32_t>(sum) - static_cast<uint32_t>(corr));
}

#if SLIMOPS_VNNI_X86

// acc += lane sums of u8 * s8, in place.
// NOTE: written in asm: with the intrinsics, GCC 12 at -O3 copies each of the 24
// accumulators through the stack on every K step (2x slower than -O2 code).
#define SLIMOPS_DPBUSD(acc, u8, s8) __asm__("vpdpbusd {%2, %1, %0|%0, %1, %2}" : "+v"(acc) : "v"(u8), "v"(s8))
// AVX-VNNI: the VEX encoding (on a CPU without AVX-512 the EVEX form would fault).
#define SLIMOPS_DPBUSD_VEX(acc, u8, s8) \
  __asm__("%{vex%} vpdpbusd {%2, %1, %0|%0, %1, %2}" : "+x"(acc) : "x"(u8), "x"(s8))

// ---------------------------------------------------------------- avx512vnni

#define SLIMOPS_AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// Rows of B per register block for MR rows of A: MR x NR accumulators + NR B vectors + 1 A vector <= 32 zmm.
// NR is a multiple of 4 (see sum4_avx512), or 1 for the last rows of B.
constexpr int avx512vnni_cols(int mr) { return mr <= 2 ? 8 : 4; }

// The lane sums of four accumulators, as 4 int32: 13 shuffles and adds instead of 4 x 8
// (at K = 768 the one-by-one reductions cost a third of the dot products).
SLIMOPS_AVX512VNNI inline __m128i sum4_avx512(__m512i v0, __m512i v1, __m512i v2, __m512i v3) {
  const __m512i t0 = _mm512_add_epi32(_mm512_unpacklo_epi32(v0, v1), _mm512_unpackhi_epi32(v0, v1));
  const __m512i t1 = _mm512_add_epi32(_mm512_unpacklo_epi32(v2, v3), _mm512_unpackhi_epi32(v2, v3));
  // Per 128-bit lane: [v0, v1, v2, v3] partial sums.
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t0, t1), _mm512_unpackhi_epi64(t0, t1));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}
constexpr int kVnniMaxRows = 6;

template <int MR, int NR>
SLIMOPS_AVX512VNNI inline void micro_avx512vnni(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k,
                                               const int32_t* a_corr, int32_t* c, int64_t ldc) {
  __m512i acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  int64_t p = 0;
  for (; p + 64 <= k; p += 64) {
    __m512i bv[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) bv[j] = _mm512_xor_si512(_mm512_loadu_si512(b + j * ldb + p), flip);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      __m512i av = _mm512_loadu_si512(a + i * lda + p);
      // NOTE: pins the chunk of A in a register: GCC would otherwise fold the load
      // into each of the NR vpdpbusd (NR loads instead of one).
      __asm__("" : "+v"(av));
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) SLIMOPS_DPBUSD(acc[i][j], bv[j], av);
    }
  }
  if (p < k) {
    // Lanes past K load as 0: B's become 0x80 (128) and A's 0, so their products are 0.
    const __mmask64 m = ~uint64_t{0} >> (64 - (k - p));
    __m512i bv[NR];
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) bv[j] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, b + j * ldb + p), flip);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_maskz_loadu_epi8(m, a + i * lda + p);
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) SLIMOPS_DPBUSD(acc[i][j], bv[j], av);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if constexpr (NR % 4 == 0) {
      // Wrapping int32 subtraction, as vnni_unbias.
      const __m128i corr = _mm_set1_epi32(a_corr[i]);
#pragma GCC unroll 8
      for (int j = 0; j < NR; j += 4) {
        const __m128i sums = sum4_avx512(acc[i][j], acc[i][j + 1], acc[i][j + 2], acc[i][j + 3]);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(c + i * ldc + j), _mm_sub_epi32(sums, corr));
      }
    } else {
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) c[i * ldc + j] = vnni_unbias(_mm512_reduce_add_epi32(acc[i][j]), a_corr[i]);
    }
  }
}

template <int MR>
SLIMOPS_AVX512VNNI inline void rows_avx512vnni(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k,
                                              int64_t nb, const int32_t* a_corr, int32_t* c, int64_t ldc) {
  constexpr int NR = avx512vnni_cols(MR);
  int64_t j = 0;
  for (; j + NR <= nb; j += NR) micro_avx512vnni<MR, NR>(a, lda, b + j * ldb, ldb, k, a_corr, c + j, ldc);
  if constexpr (NR > 4) {
    for (; j + 4 <= nb; j += 4) micro_avx512vnni<MR, 4>(a, lda, b + j * ldb, ldb, k, a_corr, c + j, ldc);
  }
  for (; j < nb; ++j) micro_avx512vnni<MR, 1>(a, lda, b + j * ldb, ldb, k, a_corr, c + j, ldc);
}

// c[i * ldc + j] = dot(a row i, b row j) for i < mb, j < nb; a_corr[i] = vnni_row_correction(a row i).
SLIMOPS_AVX512VNNI inline void dot_block_avx512vnni(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb,
                                                   int64_t k, int64_t mb, int64_t nb, const int32_t* a_corr,
                                                   int32_t* c, int64_t ldc) {
  int64_t i = 0;
  for (; i + kVnniMaxRows <= mb; i += kVnniMaxRows)
    rows_avx512vnni<kVnniMaxRows>(a + i * lda, lda, b, ldb, k, nb, a_corr + i, c + i * ldc, ldc);
  const int8_t* ai = a + i * lda;
  int32_t* ci = c + i * ldc;
  switch (mb - i) {
    case 5: rows_avx512vnni<5>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    case 4: rows_avx512vnni<4>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    case 3: rows_avx512vnni<3>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    case 2: rows_avx512vnni<2>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    case 1: rows_avx512vnni<1>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    default: break;
  }
}

// ---------------------------------------------------------------- avxvnni

#define SLIMOPS_AVXVNNI __attribute__((target("avx2,avxvnni")))

// 16 ymm: MR x NR accumulators + NR B vectors + 1 A vector.
constexpr int avxvnni_cols(int mr) { return mr <= 2 ? 4 : mr == 3 ? 3 : 2; }

// acc[i][j] += lane sums of (brow[j] ^ 0x80) * arow[i] over 32 bytes.
template <int MR, int NR>
SLIMOPS_AVXVNNI inline void step_avxvnni(__m256i (&acc)[MR][NR], const int8_t* const (&brow)[NR],
                                        const int8_t* const (&arow)[MR]) {
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256i bv[NR];
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j)
    bv[j] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(brow[j])), flip);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(arow[i]));
    __asm__("" : "+x"(av));  // one load of A per chunk (see micro_avx512vnni)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) SLIMOPS_DPBUSD_VEX(acc[i][j], bv[j], av);
  }
}

template <int MR, int NR>
SLIMOPS_AVXVNNI inline void micro_avxvnni(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k,
                                         const int32_t* a_corr, int32_t* c, int64_t ldc) {
  __m256i acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
  const int64_t k32 = k & ~int64_t{31};
  for (int64_t p = 0; p < k32; p += 32) {
    const int8_t* brow[NR];
    const int8_t* arow[MR];
    for (int j = 0; j < NR; ++j) brow[j] = b + j * ldb + p;
    for (int i = 0; i < MR; ++i) arow[i] = a + i * lda + p;
    step_avxvnni<MR, NR>(acc, brow, arow);
  }
  if (k32 < k) {
    // The last k % 32 bytes copied into zeros: A's zeros make the padding's products 0.
    alignas(32) int8_t bt[NR][32] = {}, at[MR][32] = {};
    const int8_t* brow[NR];
    const int8_t* arow[MR];
    for (int j = 0; j < NR; ++j) {
      std::memcpy(bt[j], b + j * ldb + k32, static_cast<size_t>(k - k32));
      brow[j] = bt[j];
    }
    for (int i = 0; i < MR; ++i) {
      std::memcpy(at[i], a + i * lda + k32, static_cast<size_t>(k - k32));
      arow[i] = at[i];
    }
    step_avxvnni<MR, NR>(acc, brow, arow);
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[i][j]), _mm256_extracti128_si256(acc[i][j], 1));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
      s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
      c[i * ldc + j] = vnni_unbias(_mm_cvtsi128_si32(s), a_corr[i]);
    }
}

template <int MR>
SLIMOPS_AVXVNNI inline void rows_avxvnni(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k,
                                        int64_t nb, const int32_t* a_corr, int32_t* c, int64_t ldc) {
  constexpr int NR = avxvnni_cols(MR);
  int64_t j = 0;
  for (; j + NR <= nb; j += NR) micro_avxvnni<MR, NR>(a, lda, b + j * ldb, ldb, k, a_corr, c + j, ldc);
  for (; j < nb; ++j) micro_avxvnni<MR, 1>(a, lda, b + j * ldb, ldb, k, a_corr, c + j, ldc);
}

// Same contract as dot_block_avx512vnni.
SLIMOPS_AVXVNNI inline void dot_block_avxvnni(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k,
                                             int64_t mb, int64_t nb, const int32_t* a_corr, int32_t* c, int64_t ldc) {
  int64_t i = 0;
  for (; i + kVnniMaxRows <= mb; i += kVnniMaxRows)
    rows_avxvnni<kVnniMaxRows>(a + i * lda, lda, b, ldb, k, nb, a_corr + i, c + i * ldc, ldc);
  const int8_t* ai = a + i * lda;
  int32_t* ci = c + i * ldc;
  switch (mb - i) {
    case 5: rows_avxvnni<5>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    case 4: rows_avxvnni<4>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    case 3: rows_avxvnni<3>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    case 2: rows_avxvnni<2>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    case 1: rows_avxvnni<1>(ai, lda, b, ldb, k, nb, a_corr + i, ci, ldc); break;
    default: break;
  }
}

#endif  // SLIMOPS_VNNI_X86

}  // namespace int8_gemm
}  // namespace slimops
