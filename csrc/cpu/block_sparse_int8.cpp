// CPU kernel of block_sparse_int8_linear (semantics: python/slimops/reference/sparse.py).
//
//   out[m, r*BN + i] = scale[r*BN + i] * sum_{t in block row r} sum_j x[m, col_idx[t]*BK + j] * values[t, i, j]
//                      + bias[r*BN + i]
//
// Only the stored tiles are read. At decode sizes (M <= 16) the op is bound by the weight bytes,
// so the int8 tiles are never written back as floats: for each block row, each group of NR tile
// rows keeps MR x NR fp32 accumulators in registers across all of the row's tiles; every 16 (8)
// int8 weights are widened, converted and used by the MR rows' FMAs straight from registers
// (the helpers of csrc/cpu/w8a16_gemv.h, the dense W8A16 kernel's), and the per-row scale
// multiplies the finished dot product, once. Above M = 16 the tiles are converted to fp32
// (exactly: |q| <= 127) and handed to block_sparse_linear's kernel, whose per-tile GEMMs win
// once the work is compute bound; the scale multiplies its output.
//
// Paths, picked per call from csrc/cpu/cpu_isa.h (SLIMOPS_CPU_ISA forces one): avx512vnni ->
// zmm (AVX-512 F/BW/VL), avxvnni and avx2 -> ymm (AVX2 + FMA), generic -> portable C++.
// Accumulation is fp32 in lanes, so the order of the sum differs from a plain loop: within the
// fp32 dot-product bound the tests hold every path to.
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/w8a16_gemv.h"
#include "sparse.h"

namespace slimops {
namespace {

constexpr int64_t kInRegisterMaxM = 16;  // above: fp32 tiles + block_sparse_linear's kernel

// What every path reads: fp32 x [M, K] contiguous, the int8 tiles [nnz, BN, BK] contiguous,
// the index arrays (validated: csrc/sparse.cpp), fp32 scale [N]; out fp32 [M, N] contiguous.
struct Problem {
  const float* x;
  const int8_t* v;
  const int32_t* row_ptr;
  const int32_t* col_idx;
  const float* scale;
  float* out;
  int64_t m, n, k, bn, bk;
};

// Rows [j0, j0 + nr) of block row r against x rows [m0, m0 + mr): the portable path.
void rows_generic(const Problem& p, int64_t r, int64_t j0, int64_t nr, int64_t m0, int64_t mr) {
  const int64_t tile = p.bn * p.bk;
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = j0; j < j0 + nr; ++j) {
      float acc = 0.f;
      for (int32_t t = p.row_ptr[r]; t < p.row_ptr[r + 1]; ++t) {
        const int8_t* w = p.v + t * tile + j * p.bk;
        const float* xr = p.x + (m0 + i) * p.k + int64_t{p.col_idx[t]} * p.bk;
        for (int64_t q = 0; q < p.bk; ++q) acc += xr[q] * static_cast<float>(w[q]);
      }
      const int64_t col = r * p.bn + j;
      p.out[(m0 + i) * p.n + col] = acc * p.scale[col];
    }
}

#if SLIMOPS_W8A16_X86
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// NOTE: a block row's tiles are consecutive in memory, but this loop walks NR rows of each tile
// before moving to the next tile (a 4 KB stride at 64 x 64): the hardware prefetcher does not
// follow that, so the same rows two groups ahead are fetched explicitly.
constexpr int kPrefetchGroups = 2;

// NR tile rows (j0 ..) x MR rows of x, accumulated over every tile of block row r.
template <int MR, int NR>
SLIMOPS_W8A16_AVX512 void rows_avx512(const Problem& p, int64_t r, int64_t j0, int64_t m0) {
  using namespace w8a16;
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  const int64_t tile = p.bn * p.bk, ahead = kPrefetchGroups * NR * p.bk;
  const bool prefetch = j0 * p.bk + ahead < tile;
  for (int32_t t = p.row_ptr[r]; t < p.row_ptr[r + 1]; ++t) {
    const int8_t* w = p.v + t * tile + j0 * p.bk;
    const float* x = p.x + m0 * p.k + int64_t{p.col_idx[t]} * p.bk;
    if (prefetch)
      for (int64_t b = 0; b < NR * p.bk; b += 64) _mm_prefetch(reinterpret_cast<const char*>(w + ahead + b), _MM_HINT_T0);
    for (int64_t q = 0; q < p.bk; q += kAvx512Width) {
      __m512 wv[NR];
      load_w_avx512<NR>(wv, w, p.bk, q);
      fma_avx512<MR, NR>(acc, wv, x, p.k, q);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const int64_t col = r * p.bn + j0 + j;
      p.out[(m0 + i) * p.n + col] = _mm512_reduce_add_ps(acc[i][j]) * p.scale[col];
    }
}

template <int MR, int NR>
SLIMOPS_W8A16_AVX2 void rows_avx2(const Problem& p, int64_t r, int64_t j0, int64_t m0) {
  using namespace w8a16;
  __m256 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
  const int64_t tile = p.bn * p.bk, ahead = kPrefetchGroups * NR * p.bk;
  const bool prefetch = j0 * p.bk + ahead < tile;
  for (int32_t t = p.row_ptr[r]; t < p.row_ptr[r + 1]; ++t) {
    const int8_t* w = p.v + t * tile + j0 * p.bk;
    const float* x = p.x + m0 * p.k + int64_t{p.col_idx[t]} * p.bk;
    if (prefetch)
      for (int64_t b = 0; b < NR * p.bk; b += 64) _mm_prefetch(reinterpret_cast<const char*>(w + ahead + b), _MM_HINT_T0);
    for (int64_t q = 0; q < p.bk; q += kAvx2Width) {
      __m256 wv[NR];
      load_w_avx2<NR>(wv, w, p.bk, q);
      fma_avx2<MR, NR>(acc, wv, x, p.k, q);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const int64_t col = r * p.bn + j0 + j;
      p.out[(m0 + i) * p.n + col] = hsum_avx2(acc[i][j]) * p.scale[col];
    }
}

#pragma GCC diagnostic pop
#endif  // SLIMOPS_W8A16_X86

using Path = FmaPath;  // csrc/cpu/cpu_isa.h

// Rows of x per register block, and tile rows per block: MR x NR accumulators + NR weights + 1 x
// fit the register file (32 zmm: 6 x 4; 16 ymm: 2 x 4 or 4 x 2). NR divides every block_n (16..128).
constexpr int64_t kRowsAvx512 = 6;
constexpr int64_t kRowsAvx2 = 4;

#if SLIMOPS_W8A16_X86
template <int MR>
void block_row_x86(Path path, const Problem& p, int64_t r, int64_t m0) {
  if (path == Path::kAvx512) {
    for (int64_t j0 = 0; j0 < p.bn; j0 += 4) rows_avx512<MR, 4>(p, r, j0, m0);
  } else {
    constexpr int NR = MR <= 2 ? 4 : 2;
    for (int64_t j0 = 0; j0 < p.bn; j0 += NR) rows_avx2<MR, NR>(p, r, j0, m0);
  }
}
#endif

// Every output of block row r for x rows [m0, m0 + mr).
void block_row(Path path, const Problem& p, int64_t r, int64_t m0, int64_t mr) {
#if SLIMOPS_W8A16_X86
  if (path != Path::kGeneric) {
    switch (mr) {
      case 1: return block_row_x86<1>(path, p, r, m0);
      case 2: return block_row_x86<2>(path, p, r, m0);
      case 3: return block_row_x86<3>(path, p, r, m0);
      case 4: return block_row_x86<4>(path, p, r, m0);
      case 5: if (path == Path::kAvx512) return block_row_x86<5>(path, p, r, m0); break;
      case 6: if (path == Path::kAvx512) return block_row_x86<6>(path, p, r, m0); break;
      default: break;
    }
  }
#endif
  rows_generic(p, r, 0, p.bn, m0, mr);
}

void gemv_in_registers(Path path, const Problem& p) {
  const int64_t rows = p.n / p.bn;
  const int64_t max_rows = path == Path::kAvx512 ? kRowsAvx512 : kRowsAvx2;
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t m0 = 0; m0 < p.m; m0 += max_rows) block_row(path, p, r, m0, std::min(max_rows, p.m - m0));
  });
}

}  // namespace

at::Tensor block_sparse_int8_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                        const at::Tensor& col_idx, const at::Tensor& scale,
                                        const std::optional<at::Tensor>& bias) {
  // validated: validate_block_sparse_int8_linear (index contents included)
  const Path path = fma_path_for(chosen_cpu_isa());
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the op has no autograd formula (ops/_autograd.py)
  const MatmulGeometry g = linear_geometry(x, (row_ptr.size(0) - 1) * values.size(1));
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = g.n;
  if (g.m == 0 || g.n == 0) return at::empty(out_shape, x.options());
  const at::Tensor x32 = x.reshape({g.m, g.k}).to(at::kFloat).contiguous();
  const at::Tensor S = scale.contiguous();
  at::Tensor out;
  if (g.m <= kInRegisterMaxM) {
    const at::Tensor V = values.contiguous(), rp = row_ptr.contiguous(), ci = col_idx.contiguous();
    out = at::empty({g.m, g.n}, x32.options());
    const Problem p{x32.data_ptr<float>(), V.data_ptr<int8_t>(), rp.data_ptr<int32_t>(), ci.data_ptr<int32_t>(),
                    S.data_ptr<float>(),  out.data_ptr<float>(), g.m, g.n, g.k, values.size(1), values.size(2)};
    gemv_in_registers(path, p);
  } else {
    // Prefill: compute bound, so the GEMM of block_sparse_linear's kernel on exactly converted tiles.
    out = block_sparse_linear_cpu(x32, values.to(at::kFloat), row_ptr, col_idx, std::nullopt).mul_(S);
  }
  if (bias.has_value()) out.add_(bias->to(at::kFloat));
  return out.to(x.scalar_type()).reshape(out_shape);
}

}  // namespace slimops
