// W8A16 for small M on CPU: int8 weights dequantized in registers, fp32 FMA.
//
// out[i, j] = sum_k x[i, k] * (w[j, k] * s[j, g(k)])  for i < mb, j < nb,
// x fp32 [mb, K], w int8 [nb, K] (nn.Linear layout, K-contiguous), s fp32 [nb, groups]
// with g(k) = k / group_size. At decode sizes the op is bound by the weight bytes;
// reading int8 instead of fp32 is what makes it faster than fp32's GEMV, so the
// weight is never written back to memory as floats: each 16 (8) int8 weights are
// sign-extended, converted to fp32 and used by the M rows' FMAs straight from registers.
//   per channel (groups == 1): the scale multiplies the finished dot product, once;
//   per group: the scale multiplies the converted weights (group_size must be a
//     multiple of the vector width, else the caller takes the dequantize + GEMM path).
// Accumulation is in fp32, lane-parallel, so the sum's order differs from a plain
// loop: error within the fp32 dot-product bound the tests hold every path to.
#pragma once

#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SLIMOPS_W8A16_X86 1
#else
#define SLIMOPS_W8A16_X86 0
#endif

namespace slimops {
namespace w8a16 {

// Rows of x per register block: more rows share each converted weight vector (the
// int8 -> fp32 conversion is 2 vector ops per NR x 16 weights), as registers allow.
constexpr int kMaxRowsAvx512 = 8;
constexpr int kMaxRowsAvx2 = 4;

#if SLIMOPS_W8A16_X86

// NOTE: GCC 12's AVX-512 headers start conversions from _mm512_undefined_*(), which
// -Wall reports as uninitialised once inlined into target("avx512f") functions.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// ---------------------------------------------------------------- avx512 (zmm, 16 fp32)

#define SLIMOPS_W8A16_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

constexpr int64_t kAvx512Width = 16;
constexpr int avx512_cols(int mr) { return mr <= 2 ? 6 : mr <= 6 ? 4 : 3; }  // MR x NR acc + NR w + 1 x <= 32 zmm

template <int NR>
SLIMOPS_W8A16_AVX512 inline void load_w_avx512(__m512 (&wv)[NR], const int8_t* w, int64_t ldw, int64_t p) {
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j)
    wv[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + j * ldw + p))));
}

template <int MR, int NR>
SLIMOPS_W8A16_AVX512 inline void fma_avx512(__m512 (&acc)[MR][NR], const __m512 (&wv)[NR], const float* x, int64_t ldx,
                                            int64_t p) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m512 xv = _mm512_loadu_ps(x + i * ldx + p);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
  }
}

template <int MR, int NR, bool Grouped>
SLIMOPS_W8A16_AVX512 inline void micro_avx512(const float* x, int64_t ldx, const int8_t* w, int64_t ldw, const float* s,
                                              int64_t groups, int64_t k, float* out, int64_t ldo) {
  __m512 acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  if constexpr (Grouped) {
    // K = groups * group_size, group_size a multiple of 16: no tail.
    const int64_t gs = k / groups;
    for (int64_t g = 0; g < groups; ++g) {
      __m512 sv[NR];
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) sv[j] = _mm512_set1_ps(s[j * groups + g]);
      for (int64_t p = g * gs; p < (g + 1) * gs; p += kAvx512Width) {
        __m512 wv[NR];
        load_w_avx512<NR>(wv, w, ldw, p);
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) wv[j] = _mm512_mul_ps(wv[j], sv[j]);
        fma_avx512<MR, NR>(acc, wv, x, ldx, p);
      }
    }
  } else {
    const int64_t k16 = k & ~(kAvx512Width - 1);
    for (int64_t p = 0; p < k16; p += kAvx512Width) {
      __m512 wv[NR];
      load_w_avx512<NR>(wv, w, ldw, p);
      fma_avx512<MR, NR>(acc, wv, x, ldx, p);
    }
    if (k16 < k) {
      // Masked loads: lanes past K read as 0 in both operands.
      const __mmask16 m = static_cast<__mmask16>((1u << (k - k16)) - 1u);
      __m512 wv[NR];
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j)
        wv[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, w + j * ldw + k16)));
#pragma GCC unroll 8
      for (int i = 0; i < MR; ++i) {
        const __m512 xv = _mm512_maskz_loadu_ps(m, x + i * ldx + k16);
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(xv, wv[j], acc[i][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      const float dot = _mm512_reduce_add_ps(acc[i][j]);
      out[i * ldo + j] = Grouped ? dot : dot * s[j];
    }
}

// ---------------------------------------------------------------- avx2 (ymm, 8 fp32)

#define SLIMOPS_W8A16_AVX2 __attribute__((target("avx2,fma")))

constexpr int64_t kAvx2Width = 8;
constexpr int avx2_cols(int mr) { return mr <= 2 ? 4 : 2; }  // MR x NR acc + NR w + 1 x <= 16 ymm

// The sum of a ymm's 8 lanes.
SLIMOPS_W8A16_AVX2 inline float hsum_avx2(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int NR>
SLIMOPS_W8A16_AVX2 inline void load_w_avx2(__m256 (&wv)[NR], const int8_t* w, int64_t ldw, int64_t p) {
#pragma GCC unroll 8
  for (int j = 0; j < NR; ++j)
    wv[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + j * ldw + p))));
}

template <int MR, int NR>
SLIMOPS_W8A16_AVX2 inline void fma_avx2(__m256 (&acc)[MR][NR], const __m256 (&wv)[NR], const float* x, int64_t ldx,
                                        int64_t p) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m256 xv = _mm256_loadu_ps(x + i * ldx + p);
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
  }
}

template <int MR, int NR, bool Grouped>
SLIMOPS_W8A16_AVX2 inline void micro_avx2(const float* x, int64_t ldx, const int8_t* w, int64_t ldw, const float* s,
                                          int64_t groups, int64_t k, float* out, int64_t ldo) {
  __m256 acc[MR][NR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  int64_t k8 = k;
  if constexpr (Grouped) {
    const int64_t gs = k / groups;  // a multiple of 8: no tail
    for (int64_t g = 0; g < groups; ++g) {
      __m256 sv[NR];
#pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) sv[j] = _mm256_set1_ps(s[j * groups + g]);
      for (int64_t p = g * gs; p < (g + 1) * gs; p += kAvx2Width) {
        __m256 wv[NR];
        load_w_avx2<NR>(wv, w, ldw, p);
#pragma GCC unroll 8
        for (int j = 0; j < NR; ++j) wv[j] = _mm256_mul_ps(wv[j], sv[j]);
        fma_avx2<MR, NR>(acc, wv, x, ldx, p);
      }
    }
  } else {
    k8 = k & ~(kAvx2Width - 1);
    for (int64_t p = 0; p < k8; p += kAvx2Width) {
      __m256 wv[NR];
      load_w_avx2<NR>(wv, w, ldw, p);
      fma_avx2<MR, NR>(acc, wv, x, ldx, p);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      float dot = hsum_avx2(acc[i][j]);
      // Per channel only: the last k % 8 terms.
      for (int64_t p = k8; p < k; ++p) dot += x[i * ldx + p] * static_cast<float>(w[j * ldw + p]);
      out[i * ldo + j] = Grouped ? dot : dot * s[j];
    }
}

// ---------------------------------------------------------------- drivers

// MR rows of x against nb rows of w, NR rows of w at a time.
template <bool Avx512, bool Grouped, int MR>
inline void rows_block(const float* x, int64_t ldx, const int8_t* w, int64_t ldw, const float* s, int64_t groups,
                       int64_t k, int64_t nb, float* out, int64_t ldo) {
  constexpr int NR = Avx512 ? avx512_cols(MR) : avx2_cols(MR);
  int64_t j = 0;
  for (; j + NR <= nb; j += NR) {
    if constexpr (Avx512)
      micro_avx512<MR, NR, Grouped>(x, ldx, w + j * ldw, ldw, s + j * groups, groups, k, out + j, ldo);
    else
      micro_avx2<MR, NR, Grouped>(x, ldx, w + j * ldw, ldw, s + j * groups, groups, k, out + j, ldo);
  }
  for (; j < nb; ++j) {
    if constexpr (Avx512)
      micro_avx512<MR, 1, Grouped>(x, ldx, w + j * ldw, ldw, s + j * groups, groups, k, out + j, ldo);
    else
      micro_avx2<MR, 1, Grouped>(x, ldx, w + j * ldw, ldw, s + j * groups, groups, k, out + j, ldo);
  }
}

// out[i * ldo + j] for i < mb, j < nb (see the top of this file); x [mb, k] with row stride ldx,
// w [nb, k] with row stride ldw, s [nb, groups] contiguous. Blocks of 8 (zmm) or 4 (ymm) rows of x
// outside, the nb rows of w inside: w's block (nb x k int8) stays in L2 and x is read once;
// the other order re-reads all of x from L3 for every NR rows of w once x outgrows L2
// (M = 128, K = 4096: 2 MB of x; 0.95x fp32 instead of ~2x).
template <bool Avx512, bool Grouped>
inline void linear_block(const float* x, int64_t ldx, int64_t mb, const int8_t* w, int64_t ldw, const float* s,
                         int64_t groups, int64_t k, int64_t nb, float* out, int64_t ldo) {
  constexpr int kMaxRows = Avx512 ? kMaxRowsAvx512 : kMaxRowsAvx2;
  int64_t i = 0;
  for (; i + kMaxRows <= mb; i += kMaxRows)
    rows_block<Avx512, Grouped, kMaxRows>(x + i * ldx, ldx, w, ldw, s, groups, k, nb, out + i * ldo, ldo);
  switch (mb - i) {
    case 7:
      if constexpr (Avx512) rows_block<Avx512, Grouped, 7>(x + i * ldx, ldx, w, ldw, s, groups, k, nb, out + i * ldo, ldo);
      break;
    case 6:
      if constexpr (Avx512) rows_block<Avx512, Grouped, 6>(x + i * ldx, ldx, w, ldw, s, groups, k, nb, out + i * ldo, ldo);
      break;
    case 5:
      if constexpr (Avx512) rows_block<Avx512, Grouped, 5>(x + i * ldx, ldx, w, ldw, s, groups, k, nb, out + i * ldo, ldo);
      break;
    case 4:
      if constexpr (Avx512) rows_block<Avx512, Grouped, 4>(x + i * ldx, ldx, w, ldw, s, groups, k, nb, out + i * ldo, ldo);
      break;
    case 3: rows_block<Avx512, Grouped, 3>(x + i * ldx, ldx, w, ldw, s, groups, k, nb, out + i * ldo, ldo); break;
    case 2: rows_block<Avx512, Grouped, 2>(x + i * ldx, ldx, w, ldw, s, groups, k, nb, out + i * ldo, ldo); break;
    case 1: rows_block<Avx512, Grouped, 1>(x + i * ldx, ldx, w, ldw, s, groups, k, nb, out + i * ldo, ldo); break;
    default: break;
  }
}

#pragma GCC diagnostic pop

#endif  // SLIMOPS_W8A16_X86

}  // namespace w8a16
}  // namespace slimops
