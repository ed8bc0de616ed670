// CPU kernel of sparse24_int8_linear (semantics: python/slimops/reference/sparse24_int8.py).
//
//   out[m, n] = scale[n] * sum_c (v[n, 2c] x[m, 4c + p0(n, c)] + v[n, 2c + 1] x[m, 4c + p1(n, c)]) + bias[n]
//
// with v the int8 kept values and p0 < p1 the 2-bit positions of group c in meta (csrc/sparse24.h).
// At decode sizes the op is bound by the weight bytes: 0.5 byte of value + 0.125 byte of metadata
// per weight, against 4 for fp32 and 1 for dense int8. So the weight is never expanded in memory:
//   rows of x up to kInRegisterMaxM: each step converts 16 (zmm) or 8 (ymm) int8 values to fp32 and
//     turns their 2-bit positions into lane indices (a variable shift of the broadcast meta word plus
//     the group base); one permute per x row then gathers the x elements those values multiply, and
//     one FMA accumulates. The scale multiplies the finished dot product, once per output.
//   more rows: the weight is decoded (times its scale) a block of rows at a time into fp32 and
//     handed to ATen's GEMM (prefill sizes are compute bound, where the GEMM wins).
// Paths, picked per call from csrc/cpu/cpu_isa.h (SLIMOPS_CPU_ISA forces one):
//   avx512vnni  zmm, vpermt2ps over 32 x values (needs AVX-512 F/BW/VL only)
//   avxvnni, avx2  ymm, two vpermps + a blend (the 8 values of a step span 16 inputs)
//   generic     portable C++
// Every path checks the metadata as it reads it (sparse24::word_ok) and reports the first group
// whose positions are not increasing as an error.
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/sparse24_meta.h"
#include "cpu/w8a16_gemv.h"  // w8a16::hsum_avx2
#include "sparse24.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SLIMOPS_S24I8_X86 1
#else
#define SLIMOPS_S24I8_X86 0
#endif

namespace slimops {
namespace {

constexpr const char* kOp = "sparse24_int8_linear";
constexpr int64_t kInRegisterMaxM = 16;  // above: decode + GEMM
constexpr int64_t kMaxRowsInRegisters = 4;  // rows of x sharing each converted value vector
constexpr int64_t kDecodeRows = 64;      // weight rows per GEMM call on the decode path

// What every path reads: fp32 x [M, K] (contiguous), per weight row its int8 values [N, K/2],
// meta [N, K/8] and fp32 scale [N]; out fp32 [M, N].
struct Problem {
  const float* x;
  const int8_t* v;
  const uint8_t* meta;
  const float* s;
  int64_t m, n, k;
};

// sum over groups [c0, c1) of one weight row against one x row (unscaled); `ok` cleared on a bad group.
inline float dot_scalar(const float* x, const int8_t* v, const uint8_t* meta, int64_t c0, int64_t c1, bool& ok) {
  float acc = 0.f;
  for (int64_t c = c0; c < c1; ++c) {
    int p0, p1;
    ok &= sparse24::group_ok(meta, c, p0, p1);
    acc += static_cast<float>(v[2 * c]) * x[4 * c + p0] + static_cast<float>(v[2 * c + 1]) * x[4 * c + p1];
  }
  return acc;
}

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t w;
  std::memcpy(&w, p, sizeof(w));
  return w;
}

// Unscaled dots of x rows [m0, m0 + mr) and weight rows [n0, n0 + nr): out[i * nr + j].
bool dots_generic(const Problem& p, int64_t m0, int64_t mr, int64_t n0, int64_t nr, float* out) {
  bool ok = true;
  for (int64_t j = 0; j < nr; ++j)
    for (int64_t i = 0; i < mr; ++i)
      out[i * nr + j] = dot_scalar(p.x + (m0 + i) * p.k, p.v + (n0 + j) * (p.k / 2), p.meta + (n0 + j) * (p.k / 8),
                                   0, p.k / 4, ok);
  return ok;
}

#if SLIMOPS_S24I8_X86
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define SLIMOPS_S24I8_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define SLIMOPS_S24I8_AVX2 __attribute__((target("avx2,fma")))

// NOTE: as in the int4 kernel, each weight row is its own stream; the hardware prefetcher alone
// does not keep up with several at M = 1, so fetch ahead explicitly.
constexpr int64_t kPrefetchBytes = 512;

// As dots_generic for MR x rows and NR weight rows. Step: 32 inputs = 16 values + 4 meta bytes.
// Lane l of a step holds value l of the row: group l / 2, position p(l) = (meta word >> 2l) & 3,
// so it multiplies x[32 step + 4 (l / 2) + p(l)]: index 4 (l / 2) + p(l) into the 32 x values
// of the step, which vpermt2ps gathers from two zmm.
// Whether the 16 meta words (64 bytes: 512 inputs) at p are valid: sparse24::word_ok on 16 lanes.
SLIMOPS_S24I8_AVX512 inline bool words_ok_avx512(const uint8_t* p) {
  const __m512i w = _mm512_loadu_si512(p);
  const __m512i low2 = _mm512_set1_epi32(0x33333333);
  const __m512i p0 = _mm512_and_si512(w, low2), p1 = _mm512_and_si512(_mm512_srli_epi32(w, 2), low2);
  const __m512i bit2 = _mm512_set1_epi32(0x44444444);
  const __m512i t = _mm512_sub_epi32(_mm512_sub_epi32(_mm512_or_si512(p1, bit2), p0), _mm512_set1_epi32(0x11111111));
  return _mm512_cmpneq_epi32_mask(_mm512_and_si512(t, bit2), bit2) == 0;
}

// As dots_generic for MR x rows and NR weight rows. Step: 32 inputs = 16 values + 4 meta bytes.
// Lane l of a step holds value l of the row: group l / 2, position p(l) = (meta word >> 2l) & 3,
// so it multiplies x[32 step + 4 (l / 2) + p(l)]: index 4 (l / 2) + p(l) into the 32 x values
// of the step, which vpermt2ps gathers from two zmm. The metadata is checked 64 bytes at a time
// (16 steps), outside the step: per step, the indices cost a broadcast, a shift and a ternlog.
template <int MR, int NR>
SLIMOPS_S24I8_AVX512 bool dots_avx512(const Problem& p, int64_t m0, int64_t n0, float* out) {
  const int64_t lv = p.k / 2, lm = p.k / 8, steps = p.k / 32;
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const __m512i shifts = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i base = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i three = _mm512_set1_epi32(3);
  bool ok = true;
  for (int64_t st0 = 0; st0 < steps; st0 += 16) {
    const int64_t st1 = std::min(steps, st0 + 16);
    for (int j = 0; j < NR; ++j) {
      const uint8_t* mrow = p.meta + (n0 + j) * lm + 4 * st0;
      _mm_prefetch(reinterpret_cast<const char*>(mrow + kPrefetchBytes), _MM_HINT_T0);
      if (st1 - st0 == 16) {
        ok &= words_ok_avx512(mrow);
      } else {
        for (int64_t st = st0; st < st1; ++st) ok &= sparse24::word_ok(load_u32(mrow + 4 * (st - st0)));
      }
    }
    for (int64_t st = st0; st < st1; ++st) {
      __m512 w[NR];
      __m512i idx[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {
        const int8_t* vr = p.v + (n0 + j) * lv + 16 * st;
        if ((st & 3) == 0) _mm_prefetch(reinterpret_cast<const char*>(vr + kPrefetchBytes), _MM_HINT_T0);
        w[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(vr))));
        const int word = static_cast<int>(load_u32(p.meta + (n0 + j) * lm + 4 * st));
        // (shifted & 3) | base in one ternlog (0xEA: (a & b) | c); base lanes are multiples of 4.
        idx[j] = _mm512_ternarylogic_epi32(_mm512_srlv_epi32(_mm512_set1_epi32(word), shifts), three, base, 0xEA);
      }
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const float* xr = p.x + (m0 + i) * p.k + 32 * st;
        const __m512 x0 = _mm512_loadu_ps(xr), x1 = _mm512_loadu_ps(xr + 16);
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j)
          acc[i][j] = _mm512_fmadd_ps(_mm512_permutex2var_ps(x0, idx[j], x1), w[j], acc[i][j]);
      }
    }
  }
  // The last K % 32 inputs (0, 8, 16 or 24): scalar.
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      out[i * NR + j] = _mm512_reduce_add_ps(acc[i][j]) +
                        dot_scalar(p.x + (m0 + i) * p.k, p.v + (n0 + j) * lv, p.meta + (n0 + j) * lm, 8 * steps,
                                   p.k / 4, ok);
  return ok;
}

// As dots_avx512 with a step of 16 inputs = 8 values + 2 meta bytes. Lanes 0-3 (groups 0, 1) read
// x[0..7] of the step and lanes 4-7 x[8..15]: the index 4 (l / 2 % 2) + p(l) permutes each half,
// a fixed blend picks per lane.
template <int MR, int NR>
SLIMOPS_S24I8_AVX2 bool dots_avx2(const Problem& p, int64_t m0, int64_t n0, float* out) {
  const int64_t lv = p.k / 2, lm = p.k / 8, steps = p.k / 16;
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
  const __m256i base = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
  const __m256i three = _mm256_set1_epi32(3);
  bool ok = true;
  for (int64_t st = 0; st < steps; ++st) {
    __m256 w[NR];
    __m256i idx[NR];
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      const int8_t* vr = p.v + (n0 + j) * lv + 8 * st;
      const uint8_t* mrow = p.meta + (n0 + j) * lm + 2 * st;
      if ((st & 7) == 0) {
        _mm_prefetch(reinterpret_cast<const char*>(vr + kPrefetchBytes), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(mrow + kPrefetchBytes), _MM_HINT_T0);
      }
      w[j] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(vr))));
      const uint32_t word = static_cast<uint32_t>(mrow[0]) | (static_cast<uint32_t>(mrow[1]) << 8);
      ok &= sparse24::word_ok(word | 0x44440000u);  // the 2 bytes, padded with valid (0, 1) groups
      const __m256i pos = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts), three);
      idx[j] = _mm256_add_epi32(pos, base);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const float* xr = p.x + (m0 + i) * p.k + 16 * st;
      const __m256 x0 = _mm256_loadu_ps(xr), x1 = _mm256_loadu_ps(xr + 8);
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {
        const __m256 xg = _mm256_blend_ps(_mm256_permutevar8x32_ps(x0, idx[j]), _mm256_permutevar8x32_ps(x1, idx[j]),
                                          0xF0);
        acc[i][j] = _mm256_fmadd_ps(xg, w[j], acc[i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j)
      out[i * NR + j] = w8a16::hsum_avx2(acc[i][j]) + dot_scalar(p.x + (m0 + i) * p.k, p.v + (n0 + j) * lv,
                                                        p.meta + (n0 + j) * lm, 4 * steps, p.k / 4, ok);
  return ok;
}

#pragma GCC diagnostic pop
#endif  // SLIMOPS_S24I8_X86

using Path = FmaPath;

// Weight rows per register block: 4 x 4 accumulators + 4 values + 4 indices + 2 x fit 32 zmm;
// 4 x 2 + 2 + 2 + 2 (+ the 2 permutes) fit 16 ymm.
constexpr int64_t block_rows(Path path) { return path == Path::kAvx512 ? 4 : path == Path::kAvx2 ? 2 : 4; }

template <int MR>
bool dots_full_block(Path path, const Problem& p, int64_t m0, int64_t n0, float* out) {
#if SLIMOPS_S24I8_X86
  if (path == Path::kAvx512) return dots_avx512<MR, 4>(p, m0, n0, out);
  return dots_avx2<MR, 2>(p, m0, n0, out);
#else
  (void)path, (void)p, (void)m0, (void)n0, (void)out;
  return true;
#endif
}

// Unscaled dots of a block (mr x nr) on the chosen path: full blocks in registers; a partial
// block (the last weight rows) one weight row at a time.
bool dots(Path path, const Problem& p, int64_t m0, int64_t mr, int64_t n0, int64_t nr, float* out) {
#if SLIMOPS_S24I8_X86
  if (path != Path::kGeneric && nr == block_rows(path)) {
    switch (mr) {
      case 1: return dots_full_block<1>(path, p, m0, n0, out);
      case 2: return dots_full_block<2>(path, p, m0, n0, out);
      case 3: return dots_full_block<3>(path, p, m0, n0, out);
      case 4: return dots_full_block<4>(path, p, m0, n0, out);
      default: break;
    }
  }
  if (path != Path::kGeneric) {
    bool ok = true;
    float col[kMaxRowsInRegisters];
    for (int64_t j = 0; j < nr; ++j) {
      for (int64_t i = 0; i < mr; ++i)
        ok &= path == Path::kAvx512 ? dots_avx512<1, 1>(p, m0 + i, n0 + j, col + i)
                                    : dots_avx2<1, 1>(p, m0 + i, n0 + j, col + i);
      for (int64_t i = 0; i < mr; ++i) out[i * nr + j] = col[i];
    }
    return ok;
  }
#endif
  return dots_generic(p, m0, mr, n0, nr, out);
}

// out [M, N] = scale * dots. Weight blocks split across threads; inside a block, every x row
// (in groups of kMaxRowsInRegisters) runs against it while it is in L1/L2.
bool gemv_in_registers(Path path, const Problem& p, float* out) {
  const int64_t nr_full = block_rows(path);
  const int64_t blocks = (p.n + nr_full - 1) / nr_full;
  // ~64 KB of packed weight per task, so two threads share even small layers.
  const int64_t row_bytes = p.k / 2 + p.k / 8;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(row_bytes * nr_full, 1));
  std::atomic<bool> ok{true};
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    float tile[kMaxRowsInRegisters * 4];
    bool task_ok = true;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * nr_full, nr = std::min(nr_full, p.n - n0);
      for (int64_t m0 = 0; m0 < p.m; m0 += kMaxRowsInRegisters) {
        const int64_t mr = std::min(kMaxRowsInRegisters, p.m - m0);
        task_ok &= dots(path, p, m0, mr, n0, nr, tile);
        for (int64_t i = 0; i < mr; ++i)
          for (int64_t j = 0; j < nr; ++j) out[(m0 + i) * p.n + n0 + j] = tile[i * nr + j] * p.s[n0 + j];
      }
    }
    if (!task_ok) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

// out^T [N, M] fp32: blocks of weight rows decoded (times their scale) and multiplied by x^T with
// ATen's GEMM, one thread per block.
bool decode_and_mm(const Problem& p, const at::Tensor& x32, at::Tensor& out_t) {
  const int64_t blocks = (p.n + kDecodeRows - 1) / kDecodeRows;
  std::atomic<bool> ok{true};
  // ATen ops on worker threads must see the caller's thread-local state; OpenMP workers do not inherit it.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    at::Tensor dense = at::empty({kDecodeRows, p.k}, x32.options());
    bool task_ok = true;
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * kDecodeRows, rows = std::min(kDecodeRows, p.n - n0);
      for (int64_t r = 0; r < rows; ++r)
        task_ok &= sparse24::decode_row(p.v + (n0 + r) * (p.k / 2), p.meta + (n0 + r) * (p.k / 8),
                                        dense.data_ptr<float>() + r * p.k, p.k, p.s[n0 + r]);
      at::Tensor dst = out_t.narrow(0, n0, rows);
      at::mm_out(dst, dense.narrow(0, 0, rows), x32.t());
    }
    if (!task_ok) ok.store(false, std::memory_order_relaxed);
  });
  return ok.load();
}

}  // namespace

at::Tensor sparse24_int8_linear_cpu(const at::Tensor& x,       // [..., K] float
                                    const at::Tensor& values,  // [N, K/2] int8
                                    const at::Tensor& meta,    // [N, K/8] uint8
                                    const at::Tensor& scale,   // [N] fp32
                                    const std::optional<at::Tensor>& bias) {  // [N] float
  // validated: validate_sparse24_int8_linear
  const Path path = fma_path_for(chosen_cpu_isa());
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: no graph for its inner ops
  const Sparse24Geometry g{leading_rows(x), values.size(0), x.size(-1)};
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = g.n;
  if (g.m == 0 || g.n == 0) return at::empty(out_shape, x.options());
  const at::Tensor x32 = x.reshape({g.m, g.k}).to(at::kFloat).contiguous();
  const at::Tensor V = values.contiguous();
  const at::Tensor M = meta.contiguous();
  const at::Tensor S = scale.contiguous();
  const Problem p{x32.const_data_ptr<float>(), V.const_data_ptr<int8_t>(), M.const_data_ptr<uint8_t>(),
                  S.const_data_ptr<float>(), g.m, g.n, g.k};
  at::Tensor out;
  bool ok;
  if (g.m <= kInRegisterMaxM) {
    out = at::empty({g.m, g.n}, x32.options());
    ok = gemv_in_registers(path, p, out.mutable_data_ptr<float>());
  } else {
    at::Tensor out_t = at::empty({g.n, g.m}, x32.options());
    ok = decode_and_mm(p, x32, out_t);
    out = out_t.t();
  }
  if (!ok) sparse24::report_bad_meta(kOp, p.meta, g.n, g.k);
  if (bias.has_value()) out = out.add(bias->to(at::kFloat));
  return out.to(x.scalar_type()).contiguous().reshape(out_shape);
}

}  // namespace slimops
