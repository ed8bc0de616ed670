// CPU kernel of weight_codebook4_linear (semantics: python/slimops/reference/codebook4.py).
//
// Each output is computed block (group) by block as
//   out[m, n] = sum_g s[n, g] * (sum_{k in g} x[m, k] * T[q[n, k]]) + bias[n]
// with T the row's 16-entry fp32 codebook (row 0 for a layer-wide table). The table lookup
// happens in registers: the 16 entries sit in one zmm (AVX-512: vpermps picks 16 lanes by their
// 4-bit index) or two ymm (AVX2: vpermps on each 8-entry half by the index's low 3 bits, then a
// blend on bit 3). So the inner loop is unpack + one permute (two and a blend on AVX2) + FMA,
// the same count as int4's unpack + convert; the block scale is applied once per block.
//
// Paths, picked per call from csrc/cpu/cpu_isa.h (SLIMOPS_CPU_ISA forces one), as int4:
//   avx512vnni  zmm (needs only AVX-512 F/BW/VL)   avxvnni, avx2  ymm   generic  portable C++
// Up to kInRegisterMaxM rows of x go through the in-register kernel, kMaxRowsInRegisters at a
// time; above that the weight is dequantized a block of rows at a time and handed to ATen's
// GEMM (csrc/cpu/nibbles.h, shared with int4).
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "codebook4.h"
#include "cpu/cpu_isa.h"
#include "cpu/nibbles.h"

namespace slimops {
namespace {

constexpr int64_t kMaxRowsInRegisters = 4;  // rows of x per register block
constexpr int64_t kInRegisterMaxM = 16;     // above: dequantize + GEMM
constexpr int64_t kDequantRows = 64;        // weight rows per GEMM call on the dequantize path
constexpr int kRowsPerBlock = 4;            // weight rows sharing each x load

// What every path reads: fp32 x [M, K] (contiguous), per weight row its packed bytes [N, bytes],
// its table (codebook + row * table_stride: stride 0 for one table, 16 for one per row) and its
// block scales [N, G], in fp32.
struct Problem {
  const float* x;
  const uint8_t* q;
  const float* codebook;
  int64_t table_stride;
  const float* s;
  int64_t m, n, k, groups, group_size, bytes;

  const float* table(int64_t row) const { return codebook + row * table_stride; }
};

// sum_k x[k] * T[q[k]] over inputs [k0, k1) of one packed row: the portable path, and the tail
// (a last chunk shorter than 32) of the vector paths.
inline float dot_scalar(const float* x, const uint8_t* q, const float* table, int64_t k0, int64_t k1) {
  float acc = 0.f;
  for (int64_t k = k0; k < k1; ++k) acc += x[k] * table[nibble_at(q, k)];
  return acc;
}

// out[i * nr + j] = sum_g s[n, g] * dot_g(x[m0 + i], row n0 + j), every block including the tail: portable path.
void scaled_dots_generic(const Problem& p, int64_t m0, int64_t mr, int64_t n0, int64_t nr, float* out) {
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      const int64_t row = n0 + j;
      const float* xr = p.x + (m0 + i) * p.k;
      float total = 0.f;
      for (int64_t k0 = 0, g = 0; k0 < p.k; k0 += p.group_size, ++g)
        total += p.s[row * p.groups + g] *
                 dot_scalar(xr, p.q + row * p.bytes, p.table(row), k0, std::min(p.k, k0 + p.group_size));
      out[i * nr + j] = total;
    }
}

#if SLIMOPS_NIBBLES_X86
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define SLIMOPS_CB4_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define SLIMOPS_CB4_AVX2 __attribute__((target("avx2,fma")))

// As scaled_dots_generic over the full 32-input chunks, for MR rows of x and NR weight rows: each
// row's table is one zmm, and 16 indices become 16 weights with one vpermps.
template <int MR, int NR>
SLIMOPS_CB4_AVX512 void scaled_dots_avx512(const Problem& p, int64_t m0, int64_t n0, float* out) {
  __m512 total[MR][NR], table[NR];
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
        lo[j] = _mm512_permutexvar_ps(lo_q, table[j]);
        hi[j] = _mm512_permutexvar_ps(hi_q, table[j]);
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
SLIMOPS_CB4_AVX2 inline __m256 lookup_avx2(__m256i idx, __m256 table_lo, __m256 table_hi) {
  const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(table_lo, idx), _mm256_permutevar8x32_ps(table_hi, idx), upper);
}

// As scaled_dots_avx512 with 8 bytes per step (inputs c+h..c+h+7 low, c+16+h..c+16+h+7 high).
template <int MR, int NR>
SLIMOPS_CB4_AVX2 void scaled_dots_avx2(const Problem& p, int64_t m0, int64_t n0, float* out) {
  __m256 total[MR][NR], table_lo[NR], table_hi[NR];
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
          lo[j] = lookup_avx2(lo_q, table_lo[j], table_hi[j]);
          hi[j] = lookup_avx2(hi_q, table_lo[j], table_hi[j]);
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

using Path = FmaPath;  // csrc/cpu/cpu_isa.h, as int4

// The scaled dots of a block (mr x nr) over every input: vector kernels for the full chunks
// (whole blocks at once, partial blocks one output at a time) plus the scalar tail.
void scaled_dots(Path path, const Problem& p, int64_t m0, int64_t mr, int64_t n0, int64_t nr, float* out) {
  if (path == Path::kGeneric) return scaled_dots_generic(p, m0, mr, n0, nr, out);
#if SLIMOPS_NIBBLES_X86
  const bool z = path == Path::kAvx512;
  if (nr == kRowsPerBlock && mr == 4) {
    z ? scaled_dots_avx512<4, 4>(p, m0, n0, out) : scaled_dots_avx2<4, 4>(p, m0, n0, out);
  } else if (nr == kRowsPerBlock && mr == 3) {
    z ? scaled_dots_avx512<3, 4>(p, m0, n0, out) : scaled_dots_avx2<3, 4>(p, m0, n0, out);
  } else if (nr == kRowsPerBlock && mr == 2) {
    z ? scaled_dots_avx512<2, 4>(p, m0, n0, out) : scaled_dots_avx2<2, 4>(p, m0, n0, out);
  } else if (nr == kRowsPerBlock && mr == 1) {
    z ? scaled_dots_avx512<1, 4>(p, m0, n0, out) : scaled_dots_avx2<1, 4>(p, m0, n0, out);
  } else {
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t j = 0; j < nr; ++j) {
        float* o = out + i * nr + j;
        z ? scaled_dots_avx512<1, 1>(p, m0 + i, n0 + j, o) : scaled_dots_avx2<1, 1>(p, m0 + i, n0 + j, o);
      }
  }
  const int64_t full_end = p.k / kNibbleChunk * kNibbleChunk;
  if (full_end == p.k) return;
  const int64_t tail_group = full_end / p.group_size;
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      const int64_t row = n0 + j;
      out[i * nr + j] += p.s[row * p.groups + tail_group] *
                         dot_scalar(p.x + (m0 + i) * p.k, p.q + row * p.bytes, p.table(row), full_end, p.k);
    }
#else
  scaled_dots_generic(p, m0, mr, n0, nr, out);
#endif
}

// out [M, N] fp32: x rows in register blocks; weight rows split across threads.
void gemv_in_registers(Path path, const Problem& p, float* out) {
  const int64_t row_blocks = (p.n + kRowsPerBlock - 1) / kRowsPerBlock;
  // ~64 KB of packed weight per task, so two threads share even small layers.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(p.bytes * kRowsPerBlock, 1));
  at::parallel_for(0, row_blocks, grain, [&](int64_t b0, int64_t b1) {
    float tile[kMaxRowsInRegisters * kRowsPerBlock];
    for (int64_t m0 = 0; m0 < p.m; m0 += kMaxRowsInRegisters) {
      const int64_t mr = std::min(kMaxRowsInRegisters, p.m - m0);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n0 = blk * kRowsPerBlock, nr = std::min<int64_t>(kRowsPerBlock, p.n - n0);
        scaled_dots(path, p, m0, mr, n0, nr, tile);
        for (int64_t i = 0; i < mr; ++i)
          for (int64_t j = 0; j < nr; ++j) out[(m0 + i) * p.n + n0 + j] = tile[i * nr + j];
      }
    }
  });
}

}  // namespace

at::Tensor weight_codebook4_linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& codebook,
                                       const at::Tensor& scale, int64_t group_size,
                                       const std::optional<at::Tensor>& bias) {
  // validated: validate_weight_codebook4_linear
  const Path path = fma_path_for(chosen_cpu_isa());
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the op has no autograd formula (see quant_mm.cpp)
  MatmulGeometry g = linear_geometry(x, qweight.size(0), scale.size(1));
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = g.n;
  if (g.m == 0 || g.n == 0) return at::empty(out_shape, x.options());
  const at::Tensor x32 = x.reshape({g.m, g.k}).to(at::kFloat).contiguous();
  const at::Tensor Q = qweight.contiguous();
  const at::Tensor T = codebook.to(at::kFloat).contiguous();
  const at::Tensor S = scale.to(at::kFloat).contiguous();
  const Problem p{x32.data_ptr<float>(), Q.data_ptr<uint8_t>(), T.data_ptr<float>(),
                  T.size(0) == 1 ? 0 : kCodebookEntries, S.data_ptr<float>(), g.m, g.n, g.k, g.groups, group_size,
                  Q.size(1)};

  at::Tensor out;
  if (g.m <= kInRegisterMaxM) {
    out = at::empty({g.m, g.n}, x32.options());
    gemv_in_registers(path, p, out.data_ptr<float>());
  } else {
    at::Tensor out_t = at::empty({g.n, g.m}, x32.options());
    dequantize_and_mm(g.n, g.k, kDequantRows, x32, out_t, [&](int64_t row, float* dst) {
      const uint8_t* q = p.q + row * p.bytes;
      const float* table = p.table(row);
      for (int64_t k = 0; k < p.k; ++k) dst[k] = table[nibble_at(q, k)] * p.s[row * p.groups + k / p.group_size];
    });
    out = out_t.t();
  }
  if (bias.has_value()) out = out.add(bias->to(at::kFloat));
  return out.to(x.scalar_type()).contiguous().reshape(out_shape);
}

}  // namespace slimops
