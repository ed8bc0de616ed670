// The 4-bit packed weight layout shared by the int4 and codebook4 CPU kernels, in one place:
// reading a nibble, unpacking 16-byte (AVX-512) or 8-byte (AVX2) steps of a chunk to int32
// lanes, and the dequantize-then-GEMM path both take above the in-register M.
//
// Layout (python/slimops/reference/int4.py): a row is ceil(K / 32) chunks of 16 bytes; byte
// 16c + i holds input 32c + i in its low nibble and input 32c + 16 + i in its high nibble.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SLIMOPS_NIBBLES_X86 1
#else
#define SLIMOPS_NIBBLES_X86 0
#endif

namespace slimops {

// Inputs per packed chunk: 16 bytes hold 32 nibbles.
constexpr int64_t kNibbleChunk = 32;

// The nibble of input k in a packed row.
inline uint8_t nibble_at(const uint8_t* row, int64_t k) {
  const int64_t c = k / kNibbleChunk * kNibbleChunk, i = k - c;
  const uint8_t b = row[c / 2 + (i & 15)];
  return i < 16 ? (b & 0x0F) : (b >> 4);
}

// NOTE: the hardware prefetcher alone left int4's M = 1 loop at ~7 GB/s of weights (fp32's GEMV streams
// ~19 GB/s on the same core): each weight row is its own stream, so the kernels fetch this far ahead.
constexpr int64_t kNibblePrefetchBytes = 512;

#if SLIMOPS_NIBBLES_X86
// 16 bytes of a chunk at `bytes` -> inputs c..c+15 (low nibbles) and c+16..c+31 (high), int32 lanes.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline void unpack_nibbles_avx512(const uint8_t* bytes,
                                                                                      __m512i& lo, __m512i& hi) {
  const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes)));
  lo = _mm512_and_si512(b, _mm512_set1_epi32(0x0F));
  hi = _mm512_srli_epi32(b, 4);
}

// 8 bytes h..h+7 of a chunk at `bytes` -> inputs c+h..c+h+7 (low) and c+16+h..c+16+h+7 (high).
__attribute__((target("avx2,fma"))) inline void unpack_nibbles_avx2(const uint8_t* bytes, __m256i& lo, __m256i& hi) {
  const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(bytes)));
  lo = _mm256_and_si256(b, _mm256_set1_epi32(0x0F));
  hi = _mm256_srli_epi32(b, 4);
}

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// out^T [N, M] fp32 = W x^T, W dequantized `rows` weight rows at a time (dequantize_row(n, dst)
// writes row n's K fp32 values) and multiplied by ATen's GEMM, one thread per block: prefill
// sizes are compute bound, where the GEMM wins over any in-register unpack.
template <typename DequantizeRow>
void dequantize_and_mm(int64_t n, int64_t k, int64_t rows, const at::Tensor& x32, at::Tensor& out_t,
                       const DequantizeRow& dequantize_row) {
  const int64_t blocks = (n + rows - 1) / rows;
  // ATen ops on worker threads must see the caller's thread-local state; OpenMP workers do not inherit it.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    at::Tensor deq = at::empty({rows, k}, x32.options());
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * rows, r_end = std::min(rows, n - n0);
      for (int64_t r = 0; r < r_end; ++r) dequantize_row(n0 + r, deq.data_ptr<float>() + r * k);
      at::Tensor dst = out_t.narrow(0, n0, r_end);
      at::mm_out(dst, deq.narrow(0, 0, r_end), x32.t());
    }
  });
}

}  // namespace slimops
