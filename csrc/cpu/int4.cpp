// CPU kernel of weight_int4_linear (semantics: python/slimops/reference/int4.py).
//
// Each output is computed group by group as
//   out[m, n] = sum_g s[n, g] * (sum_{k in g} x[m, k] * q[n, k]  -  z[n, g] * xsum[m, g]) + bias[n]
// with q the unsigned nibble (0..15), z the zero point (8 when symmetric) and xsum[m, g] the
// sum of x over the group, computed once per call. So the inner loop is unpack + fp32 FMA
// only: the zero point and the scale are applied once per group, not once per weight.
// (fp32 throughout; the error bound the tests hold it to counts |q| + |z|, not |q - z|.)
//
// Layout: in each chunk of 32 inputs, byte i holds input i (low nibble) and input 16 + i
// (high nibble). One 16-byte load therefore gives 16 consecutive inputs from its low nibbles
// and the next 16 from its high nibbles: one zmm each after a widen, a mask and a shift, with
// no shuffle to put interleaved pairs back in order.
//
// Paths, picked per call from csrc/cpu/cpu_isa.h (SLIMOPS_CPU_ISA forces one):
//   avx512vnni  zmm: 16 weights per conversion      (any CPU with AVX-512 F/BW/VL runs this code;
//   avxvnni, avx2  ymm: 8 weights per conversion     it is chosen where cpu_isa.h reports avx512vnni)
//   generic     portable C++
// Rows of x up to kMaxRowsInRegisters share each unpacked weight vector; above that the weight
// is dequantized a block of rows at a time into fp32 and handed to ATen's GEMM (prefill sizes
// are compute bound, where the GEMM wins).
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/nibbles.h"
#include "int4.h"

#define SLIMOPS_INT4_X86 SLIMOPS_NIBBLES_X86

namespace slimops {
namespace {

constexpr int64_t kMaxRowsInRegisters = 4;  // rows of x per register block (and the in-register limit x 4)
constexpr int64_t kInRegisterMaxM = 16;     // above: dequantize + GEMM
constexpr int64_t kDequantRows = 64;        // weight rows per GEMM call on the dequantize path
constexpr int kRowsPerBlock = 4;            // weight rows sharing each x load

// What every path reads: fp32 x [M, K] (contiguous), its group sums [M, G], and per weight row
// its packed bytes [N, bytes], scales and zero points [N, G] in fp32.
struct Problem {
  const float* x;
  const float* xsum;
  const uint8_t* q;
  const float* s;
  const float* z;  // nullptr: symmetric (8)
  int64_t m, n, k, groups, group_size, bytes;
};

// sum_k x[k] * q[k] over inputs [k0, k1) of one packed row (k0 a multiple of 32): the portable
// path, and the tail (a last chunk shorter than 32) of the vector paths.
inline float dot_scalar(const float* x, const uint8_t* q, int64_t k0, int64_t k1) {
  float acc = 0.f;
  for (int64_t c = k0; c < k1; c += kInt4Chunk) {
    const uint8_t* b = q + c / 2;
    const int64_t lo_end = std::min<int64_t>(16, k1 - c), hi_end = std::min<int64_t>(16, k1 - c - 16);
    for (int64_t i = 0; i < lo_end; ++i) acc += x[c + i] * static_cast<float>(b[i] & 0x0F);
    for (int64_t i = 0; i < hi_end; ++i) acc += x[c + 16 + i] * static_cast<float>(b[i] >> 4);
  }
  return acc;
}

// sum_g s[n, g] * dot_g(x[m], q[n]) over the full chunks of every group, for x rows [m0, m0 + mr)
// and weight rows [n0, n0 + nr): the portable path. out[i * nr + j].
void scaled_dots_generic(const Problem& p, int64_t m0, int64_t mr, int64_t n0, int64_t nr, float* out) {
  const int64_t full_end = p.k / kInt4Chunk * kInt4Chunk;
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) {
      const float* xr = p.x + (m0 + i) * p.k;
      const uint8_t* qr = p.q + (n0 + j) * p.bytes;
      const float* sr = p.s + (n0 + j) * p.groups;
      float total = 0.f;
      for (int64_t k0 = 0, g = 0; k0 < full_end; k0 += p.group_size, ++g)
        total += sr[g] * dot_scalar(xr, qr, k0, std::min(full_end, k0 + p.group_size));
      out[i * nr + j] = total;
    }
}

#if SLIMOPS_INT4_X86
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define SLIMOPS_INT4_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define SLIMOPS_INT4_AVX2 __attribute__((target("avx2,fma")))

SLIMOPS_INT4_AVX512 inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

// As scaled_dots_generic for MR rows of x and NR weight rows. Per chunk, 16 bytes of each
// weight row widen to 16 x int32: low nibbles are inputs c..c+15, high nibbles c+16..c+31.
// Each group's dot stays in a vector and is scaled there; one horizontal sum per output.
template <int MR, int NR>
SLIMOPS_INT4_AVX512 void scaled_dots_avx512(const Problem& p, int64_t m0, int64_t n0, float* out) {
  __m512 total[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) total[i][j] = _mm512_setzero_ps();
  const int64_t full_end = p.k / kInt4Chunk * kInt4Chunk;
  for (int64_t k0 = 0, g = 0; k0 < full_end; k0 += p.group_size, ++g) {
    const int64_t k1 = std::min(full_end, k0 + p.group_size);
    __m512 acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    for (int64_t c = k0; c < k1; c += kInt4Chunk) {
      __m512 lo[NR], hi[NR];
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {
        _mm_prefetch(reinterpret_cast<const char*>(p.q + (n0 + j) * p.bytes + c / 2 + kNibblePrefetchBytes), _MM_HINT_T0);
        __m512i lo_q, hi_q;
        unpack_nibbles_avx512(p.q + (n0 + j) * p.bytes + c / 2, lo_q, hi_q);
        lo[j] = _mm512_cvtepi32_ps(lo_q);
        hi[j] = _mm512_cvtepi32_ps(hi_q);
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
    for (int j = 0; j < NR; ++j) out[i * NR + j] = hsum512(total[i][j]);
}

// As scaled_dots_avx512 with 8 bytes per step: bytes h..h+7 of a chunk give inputs c+h..c+h+7
// (low nibbles) and c+16+h..c+16+h+7 (high).
template <int MR, int NR>
SLIMOPS_INT4_AVX2 void scaled_dots_avx2(const Problem& p, int64_t m0, int64_t n0, float* out) {
  __m256 total[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) total[i][j] = _mm256_setzero_ps();
  const int64_t full_end = p.k / kInt4Chunk * kInt4Chunk;
  for (int64_t k0 = 0, g = 0; k0 < full_end; k0 += p.group_size, ++g) {
    const int64_t k1 = std::min(full_end, k0 + p.group_size);
    __m256 acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
    for (int64_t c = k0; c < k1; c += kInt4Chunk) {
      for (int h = 0; h < 16; h += 8) {
        __m256 lo[NR], hi[NR];
#pragma GCC unroll 4
        for (int j = 0; j < NR; ++j) {
          if (h == 0)
            _mm_prefetch(reinterpret_cast<const char*>(p.q + (n0 + j) * p.bytes + c / 2 + kNibblePrefetchBytes), _MM_HINT_T0);
          __m256i lo_q, hi_q;
          unpack_nibbles_avx2(p.q + (n0 + j) * p.bytes + c / 2 + h, lo_q, hi_q);
          lo[j] = _mm256_cvtepi32_ps(lo_q);
          hi[j] = _mm256_cvtepi32_ps(hi_q);
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
#endif  // SLIMOPS_INT4_X86

using Path = FmaPath;  // csrc/cpu/cpu_isa.h

// scaled dots of a full block (mr x kRowsPerBlock) on the vector paths; partial blocks one output at a time.
void scaled_dots(Path path, const Problem& p, int64_t m0, int64_t mr, int64_t n0, int64_t nr, float* out) {
#if SLIMOPS_INT4_X86
  if (path != Path::kGeneric && nr == kRowsPerBlock) {
    const bool z = path == Path::kAvx512;
    switch (mr) {
      case 1: return z ? scaled_dots_avx512<1, 4>(p, m0, n0, out) : scaled_dots_avx2<1, 4>(p, m0, n0, out);
      case 2: return z ? scaled_dots_avx512<2, 4>(p, m0, n0, out) : scaled_dots_avx2<2, 4>(p, m0, n0, out);
      case 3: return z ? scaled_dots_avx512<3, 4>(p, m0, n0, out) : scaled_dots_avx2<3, 4>(p, m0, n0, out);
      case 4: return z ? scaled_dots_avx512<4, 4>(p, m0, n0, out) : scaled_dots_avx2<4, 4>(p, m0, n0, out);
      default: break;
    }
  }
  if (path != Path::kGeneric) {
    for (int64_t i = 0; i < mr; ++i)
      for (int64_t j = 0; j < nr; ++j) {
        float* o = out + i * nr + j;
        if (path == Path::kAvx512) scaled_dots_avx512<1, 1>(p, m0 + i, n0 + j, o);
        else scaled_dots_avx2<1, 1>(p, m0 + i, n0 + j, o);
      }
    return;
  }
#endif
  scaled_dots_generic(p, m0, mr, n0, nr, out);
}

// out [M, N] fp32 = the scaled dots, plus the last partial chunk (scalar), minus the zero-point
// term sum_g s z xsum. x rows in register blocks; weight rows split across threads.
void gemv_in_registers(Path path, const Problem& p, float* out) {
  const int64_t row_blocks = (p.n + kRowsPerBlock - 1) / kRowsPerBlock;
  const int64_t full_end = p.k / kInt4Chunk * kInt4Chunk, tail_group = full_end / p.group_size;
  // ~64 KB of packed weight per task, so two threads share even small layers.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(p.bytes * kRowsPerBlock, 1));
  at::parallel_for(0, row_blocks, grain, [&](int64_t b0, int64_t b1) {
    float tile[kMaxRowsInRegisters * kRowsPerBlock];
    for (int64_t m0 = 0; m0 < p.m; m0 += kMaxRowsInRegisters) {
      const int64_t mr = std::min(kMaxRowsInRegisters, p.m - m0);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t n0 = blk * kRowsPerBlock, nr = std::min<int64_t>(kRowsPerBlock, p.n - n0);
        scaled_dots(path, p, m0, mr, n0, nr, tile);
        for (int64_t i = 0; i < mr; ++i) {
          const float* xr = p.x + (m0 + i) * p.k;
          const float* xs = p.xsum + (m0 + i) * p.groups;
          for (int64_t j = 0; j < nr; ++j) {
            const int64_t row = n0 + j;
            const float* sr = p.s + row * p.groups;
            float v = tile[i * nr + j];
            if (full_end < p.k) v += sr[tail_group] * dot_scalar(xr, p.q + row * p.bytes, full_end, p.k);
            float zero_term = 0.f;
            for (int64_t g = 0; g < p.groups; ++g)
              zero_term += sr[g] * (p.z == nullptr ? 8.f : p.z[row * p.groups + g]) * xs[g];
            out[(m0 + i) * p.n + row] = v - zero_term;
          }
        }
      }
    }
  });
}

// One weight row dequantized to fp32: (q - z) * s, K values.
void dequantize_row(const Problem& p, int64_t row, float* dst) {
  const uint8_t* q = p.q + row * p.bytes;
  for (int64_t k = 0; k < p.k; ++k) {
    const int64_t g = k / p.group_size;
    const float z = p.z == nullptr ? 8.f : p.z[row * p.groups + g];
    dst[k] = (static_cast<float>(nibble_at(q, k)) - z) * p.s[row * p.groups + g];
  }
}

}  // namespace

at::Tensor weight_int4_linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                                  const std::optional<at::Tensor>& zero_point, int64_t group_size,
                                  const std::optional<at::Tensor>& bias) {
  // validated: validate_weight_int4_linear
  const Path path = fma_path_for(chosen_cpu_isa());
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the op has no autograd formula (see quant_mm.cpp)
  MatmulGeometry g = linear_geometry(x, qweight.size(0), scale.size(1));
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = g.n;
  if (g.m == 0 || g.n == 0) return at::empty(out_shape, x.options());
  const at::Tensor x32 = x.reshape({g.m, g.k}).to(at::kFloat).contiguous();
  const at::Tensor Q = qweight.contiguous();
  const at::Tensor S = scale.to(at::kFloat).contiguous();
  const at::Tensor Z = zero_point.has_value() ? zero_point->to(at::kFloat).contiguous() : at::Tensor();
  Problem p{x32.data_ptr<float>(), nullptr, Q.data_ptr<uint8_t>(), S.data_ptr<float>(),
            Z.defined() ? Z.data_ptr<float>() : nullptr, g.m, g.n, g.k, g.groups, group_size, Q.size(1)};

  at::Tensor out;
  if (g.m <= kInRegisterMaxM) {
    // xsum [M, G]: sum of x over each group (fp32), for the zero-point term.
    std::vector<float> xsum(static_cast<size_t>(g.m * g.groups));
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const int64_t k0 = grp * group_size, k1 = std::min(g.k, k0 + group_size);
        float acc = 0.f;
        for (int64_t k = k0; k < k1; ++k) acc += p.x[i * g.k + k];
        xsum[i * g.groups + grp] = acc;
      }
    p.xsum = xsum.data();
    out = at::empty({g.m, g.n}, x32.options());
    gemv_in_registers(path, p, out.data_ptr<float>());
  } else {
    at::Tensor out_t = at::empty({g.n, g.m}, x32.options());
    dequantize_and_mm(g.n, g.k, kDequantRows, x32, out_t,
                      [&](int64_t row, float* dst) { dequantize_row(p, row, dst); });
    out = out_t.t();
  }
  if (bias.has_value()) out = out.add(bias->to(at::kFloat));
  return out.to(x.scalar_type()).contiguous().reshape(out_shape);
}

}  // namespace slimops
