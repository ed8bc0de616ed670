// CPU kernels of the quantized matmul family.
//
// int8_mm accumulates exactly in int32 and applies the epilogue in fp32, as
// the GPU kernels do. Its integer dot products come from, by ISA
// (csrc/cpu/cpu_isa.h: picked per call, SLIMOPS_CPU_ISA forces one):
//   avx512vnni / avxvnni  vpdpbusd on int8 a and b as they are (csrc/cpu/int8_gemm_vnni.h)
//   avx2 / generic        vpmaddwd on a widened to int16, or portable C++ (csrc/cpu/int8_gemm.h)
//
// weight_int8_linear (W8A16), with x converted to fp32:
//   M <= 512 (avx512) or 32 (avx2, avxvnni): the weight is dequantized in
//     registers and used by FMAs straight away (csrc/cpu/w8a16_gemv.h), threads
//     over N. At decode sizes this reads 1 byte per weight where fp32 reads 4.
//   larger M, generic, or group sizes that are not a multiple of the vector
//     width: one block of weight rows at a time is dequantized into a small
//     fp32 buffer and handed to ATen's fp32 GEMM (MKL), so the full dequantized
//     weight never exists.
// quantize_fp8_per_row follows python/slimops/reference/quant_mm.py bit for bit.
#include <ATen/ThreadLocalState.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/add.h>
#include <c10/util/Float8_e4m3fn.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/int8_gemm.h"
#include "cpu/int8_gemm_vnni.h"
#include "cpu/w8a16_gemv.h"
#include "quant_mm.h"

namespace slimops {
namespace {

// Weight rows dequantized per GEMM call: 64 x K fp32 is ~2.8 MB at K = 11008.
constexpr int64_t kDequantRows = 64;
// Largest M that weight_int8_linear runs on the in-register kernel (w8a16_gemv.h); above
// it, dequantize + ATen's fp32 mm. Measured on an AMD EPYC (Zen 5), 1 thread, 768 -> 3072,
// medians of 10, 2026-12-02, in-register vs fp32 F.linear: zmm 2.5x at M = 32, 1.8-3.4x at
// 128, 1.9-2.3x at 512; ymm (avx2) 1.2-1.7x at M = 32, 0.9-1.2x at 128, 0.95-1.0x at 512.
constexpr int64_t kW8A16DirectMaxRowsAvx512 = 512;
constexpr int64_t kW8A16DirectMaxRowsAvx2 = 32;

int64_t w8a16_direct_max_rows(CpuIsa isa) {
  if (isa == CpuIsa::kGeneric) return 0;
  return isa == CpuIsa::kAvx512Vnni ? kW8A16DirectMaxRowsAvx512 : kW8A16DirectMaxRowsAvx2;
}

// weight_int8_linear's in-register kernel: out [M, N] fp32 (no bias), threads over N.
// Returns false (nothing written) where it does not apply: generic ISA, or a group
// size that is not a multiple of the vector width.
bool w8a16_direct(CpuIsa isa, const at::Tensor& x32, const at::Tensor& W, const at::Tensor& S, int64_t groups,
                  at::Tensor& out) {
#if SLIMOPS_W8A16_X86
  if (isa == CpuIsa::kGeneric) return false;
  const bool avx512 = isa == CpuIsa::kAvx512Vnni;
  const int64_t M = x32.size(0), K = x32.size(1), N = W.size(0);
  const int64_t width = avx512 ? w8a16::kAvx512Width : w8a16::kAvx2Width;
  if (groups > 1 && (K / groups) % width != 0) return false;
  const float* x = x32.data_ptr<float>();
  const int8_t* w = W.data_ptr<int8_t>();
  const float* s = S.data_ptr<float>();
  float* o = out.data_ptr<float>();
  // Blocks of 96 weight rows (a multiple of every register block's NR; 384 KB of int8 at
  // K = 4096, in L2 while the rows of x pass): 8 blocks for N = 768, enough for 2 threads.
  constexpr int64_t kRows = 96;
  const int64_t blocks = (N + kRows - 1) / kRows;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * kRows, nb = std::min(N, b1 * kRows) - n0;
    const int8_t* wp = w + n0 * K;
    const float* sp = s + n0 * groups;
    if (avx512) {
      if (groups > 1) w8a16::linear_block<true, true>(x, K, M, wp, K, sp, groups, K, nb, o + n0, N);
      else w8a16::linear_block<true, false>(x, K, M, wp, K, sp, 1, K, nb, o + n0, N);
    } else {
      if (groups > 1) w8a16::linear_block<false, true>(x, K, M, wp, K, sp, groups, K, nb, o + n0, N);
      else w8a16::linear_block<false, false>(x, K, M, wp, K, sp, 1, K, nb, o + n0, N);
    }
  });
  return true;
#else
  (void)isa, (void)x32, (void)W, (void)S, (void)groups, (void)out;
  return false;
#endif
}

// How int8_mm splits out [M, N] into tasks: tm rows of a x tn rows of b each.
struct Int8Tiling {
  int64_t tm, tn, m_tasks, n_tasks;
};

Int8Tiling int8_tiling(int64_t M, int64_t N, int64_t K) {
  // At most 72 rows of a per task (a multiple of the AVX2 kernel's 6-row register
  // block), and a panel of ~256 KB of b, which stays in L2 while every 6 rows of a
  // stream past it.
  const int64_t max_tm = 72;
  const int64_t max_tn = std::clamp<int64_t>((int64_t{256} << 10) / std::max<int64_t>(K, 1), 12, 192);
  const int64_t m_tasks = (M + max_tm - 1) / max_tm;
  int64_t n_tasks = (N + max_tn - 1) / max_tn;
  // At least two tasks per thread where N allows it (panels of >= 12 rows), so threads share the work evenly.
  const int64_t want = 2 * static_cast<int64_t>(at::get_num_threads());
  if (m_tasks * n_tasks < want) n_tasks = std::min((N + 11) / 12, (want + m_tasks - 1) / m_tasks);
  // Equal blocks: rows of a rounded up to the 6-row register block, rows of b to 8
  // (the register blocks take 1 to 8 rows of b; a remainder goes in smaller blocks).
  const int64_t tm = std::min(M, ((M + m_tasks - 1) / m_tasks + 5) / 6 * 6);
  const int64_t tn = std::min(N, ((N + n_tasks - 1) / n_tasks + 7) / 8 * 8);
  return {tm, tn, (M + tm - 1) / tm, (N + tn - 1) / tn};
}

// out[m, n] = (float(acc[m, n]) * a_scale[m]) * b_scale[n] + bias[n], acc the exact int32 dot.
template <typename out_t>
void int8_mm_kernel(const at::Tensor& a, const at::Tensor& b, const float* a_scale, const float* b_scale,
                    const float* bias, at::Tensor& out) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  const int8_t* A = a.data_ptr<int8_t>();
  const int8_t* B = b.data_ptr<int8_t>();
  out_t* O = out.data_ptr<out_t>();
  const CpuIsa isa = chosen_cpu_isa();
  const bool vnni = isa == CpuIsa::kAvx512Vnni || isa == CpuIsa::kAvxVnni;
  const int64_t row_grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(K, 1));
  // VNNI: a copied with a row stride of K rounded to 64 bytes plus 192, and each row's
  // correction (int8_gemm_vnni.h). NOTE: the copy is for speed: with K = 4096 the 6 rows
  // a register block reads are 4 KB apart, all in one L1 set, and evict each other
  // (M = 16, 4096 x 4096: 230 -> 290 GMAC/s with the stagger). Others: a widened to
  // int16 once, rows zero-padded to whole 16-element chunks: [M, kp].
  const int64_t kp = int8_gemm::padded_k(K);
  const int64_t lda = vnni ? (K + 63) / 64 * 64 + 192 : K;
  at::Tensor a16, corr, a_staggered;
  if (vnni) {
    corr = at::empty({M}, a.options().dtype(at::kInt));
    a_staggered = at::empty({M, lda}, a.options());
    int32_t* C = corr.data_ptr<int32_t>();
    int8_t* As = a_staggered.data_ptr<int8_t>();
    at::parallel_for(0, M, row_grain, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        std::memcpy(As + m * lda, A + m * K, static_cast<size_t>(K));
        C[m] = int8_gemm::vnni_row_correction(A + m * K, K);
      }
    });
  } else {
    a16 = at::empty({M, kp}, a.options().dtype(at::kShort));
    int16_t* A16 = a16.data_ptr<int16_t>();
    at::parallel_for(0, M, row_grain,
                     [&](int64_t m0, int64_t m1) { int8_gemm::widen_rows(A + m0 * K, m1 - m0, K, A16 + m0 * kp, kp); });
  }
  const int16_t* A16 = vnni ? nullptr : a16.data_ptr<int16_t>();
  const int8_t* Av = vnni ? a_staggered.data_ptr<int8_t>() : nullptr;
  const int32_t* Corr = vnni ? corr.data_ptr<int32_t>() : nullptr;

  const Int8Tiling tiling = int8_tiling(M, N, K);
  const int64_t tm = tiling.tm, tn = tiling.tn, m_tasks = tiling.m_tasks, n_tasks = tiling.n_tasks;
  // Task t covers rows block t % m_tasks of a and panel t / m_tasks of b: consecutive
  // tasks (one thread's share) reuse a panel of b. Each output is written by one task.
  at::parallel_for(0, m_tasks * n_tasks, 1, [&](int64_t t0, int64_t t1) {
    std::vector<int32_t> acc(static_cast<size_t>(tm * tn));  // [tm, tn] int32 tile
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t m0 = (t % m_tasks) * tm, mb = std::min(tm, M - m0);
      const int64_t n0 = (t / m_tasks) * tn, nb = std::min(tn, N - n0);
      const int8_t* Bp = B + n0 * K;
      switch (isa) {
#if SLIMOPS_VNNI_X86
        case CpuIsa::kAvx512Vnni:
          int8_gemm::dot_block_avx512vnni(Av + m0 * lda, lda, Bp, K, K, mb, nb, Corr + m0, acc.data(), tn);
          break;
        case CpuIsa::kAvxVnni:
          int8_gemm::dot_block_avxvnni(Av + m0 * lda, lda, Bp, K, K, mb, nb, Corr + m0, acc.data(), tn);
          break;
#endif
        default:
          int8_gemm::dot_block(isa == CpuIsa::kAvx2, A16 + m0 * kp, kp, Bp, K, K, mb, nb, acc.data(), tn);
      }
      for (int64_t i = 0; i < mb; ++i) {
        const int32_t* ci = acc.data() + i * tn;
        const float sa = a_scale[m0 + i];
        out_t* oi = O + (m0 + i) * N + n0;
        const float* bs = b_scale + n0;
        // Same order as the GPU epilogue: (acc * a_scale) * b_scale + bias, in fp32.
        // Two loops, so that each vectorises (fp32 output) without a branch inside.
        if (bias != nullptr) {
          const float* bi = bias + n0;
#pragma omp simd
          for (int64_t j = 0; j < nb; ++j) oi[j] = static_cast<out_t>(static_cast<float>(ci[j]) * sa * bs[j] + bi[j]);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < nb; ++j) oi[j] = static_cast<out_t>(static_cast<float>(ci[j]) * sa * bs[j]);
        }
      }
    }
  });
}

at::Tensor float_vector(const at::Tensor& t) { return t.reshape({-1}).to(at::kFloat).contiguous(); }

// One row of quantize_fp8_per_row; returns its scale.
template <typename scalar_t>
float quantize_fp8_row(const scalar_t* x, int64_t k, c10::Float8_e4m3fn* q) {
  constexpr float kMax = 448.0f;  // largest finite e4m3fn
  float amax = 0.f;
  int has_nan = 0;
#pragma omp simd reduction(max : amax) reduction(| : has_nan)
  for (int64_t i = 0; i < k; ++i) {
    const float v = static_cast<float>(x[i]);
    amax = std::max(amax, std::fabs(v));
    has_nan |= v != v;
  }
  const bool bad = has_nan || std::isinf(amax);
  float s = bad ? std::numeric_limits<float>::infinity() : amax / kMax;
  if (s == 0.f) s = 1.f;
  for (int64_t i = 0; i < k; ++i) {
    // c10's conversion rounds to nearest even; the clamp keeps it finite.
    const float v = bad ? 0.f : std::clamp(static_cast<float>(x[i]) / s, -kMax, kMax);
    q[i] = c10::Float8_e4m3fn(v);
  }
  return s;
}

}  // namespace

std::vector<std::pair<std::string, std::string>> cpu_int8_kernels() {
  const CpuIsa isa = chosen_cpu_isa();
  std::string mm, w8a16;
  switch (isa) {
    case CpuIsa::kAvx512Vnni: mm = "avx512vnni: vpdpbusd zmm, b ^ 0x80 with a row correction (exact int32)"; break;
    case CpuIsa::kAvxVnni: mm = "avxvnni: vpdpbusd ymm, b ^ 0x80 with a row correction (exact int32)"; break;
    case CpuIsa::kAvx2: mm = "avx2: vpmaddwd ymm on a widened to int16 (exact int32)"; break;
    default: mm = "generic: portable C++ (exact int32)";
  }
  const std::string small = "M <= " + std::to_string(w8a16_direct_max_rows(isa)) + ": ";
  const std::string large = "dequantize 64-row blocks + ATen fp32 mm";
  switch (isa) {
    case CpuIsa::kAvx512Vnni: w8a16 = small + "avx512 int8->fp32 in registers + FMA zmm; larger: " + large; break;
    case CpuIsa::kAvxVnni:
    case CpuIsa::kAvx2: w8a16 = small + "avx2 int8->fp32 in registers + FMA ymm; larger: " + large; break;
    default: w8a16 = large + " (every M)";
  }
  return {{"isa", cpu_isa_name(isa)},
          {"best_isa", cpu_isa_name(best_cpu_isa())},
          {"int8_mm", mm},
          {"int8_dynamic_linear", "quantize_per_token + int8_mm (" + std::string(cpu_isa_name(isa)) + ")"},
          {"weight_int8_linear", w8a16}};
}

at::Tensor int8_mm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                       const at::Tensor& b_scale, const std::optional<at::Tensor>& bias, c10::ScalarType out_dtype) {
  const MatmulGeometry g{a.size(0), b.size(0), a.size(1)};  // validated: validate_int8_mm
  at::Tensor out = at::empty({g.m, g.n}, a.options().dtype(out_dtype));
  if (g.m == 0 || g.n == 0) return out;
  const at::Tensor A = a.contiguous(), B = b.contiguous();
  const at::Tensor as = float_vector(a_scale), bs = float_vector(b_scale);
  const at::Tensor bias_f = bias.has_value() ? float_vector(*bias) : at::Tensor();
  const float* bias_ptr = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "slimops.int8_mm", [&] {
    int8_mm_kernel<scalar_t>(A, B, as.data_ptr<float>(), bs.data_ptr<float>(), bias_ptr, out);
  });
  return out;
}

at::Tensor weight_int8_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                  const std::optional<at::Tensor>& bias) {
  // validated: validate_weight_int8_linear
  const MatmulGeometry g = linear_geometry(x, weight.size(0), scale.dim() == 2 ? scale.size(1) : 1);
  // The op has no autograd formula; ATen's mm_out below refuses inputs that
  // require grad unless the autograd keys are skipped, as inside any kernel.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = g.n;
  if (g.m == 0 || g.n == 0) return at::empty(out_shape, x.options());
  const at::Tensor x32 = x.reshape({g.m, g.k}).to(at::kFloat).contiguous();
  const at::Tensor W = weight.contiguous();
  const at::Tensor S = scale.reshape({g.n, g.groups}).to(at::kFloat).contiguous();
  const CpuIsa isa = chosen_cpu_isa();
  if (g.m <= w8a16_direct_max_rows(isa)) {
    at::Tensor direct = at::empty({g.m, g.n}, x.options().dtype(at::kFloat));
    if (w8a16_direct(isa, x32, W, S, g.groups, direct)) {
      if (bias.has_value()) direct.add_(bias->to(at::kFloat));
      return direct.to(x.scalar_type()).reshape(out_shape);
    }
  }
  // out^T [N, M]: each block of weight rows fills a contiguous block of its rows.
  at::Tensor out_t = at::empty({g.n, g.m}, x.options().dtype(at::kFloat));
  const int64_t group_size = g.k / g.groups;
  const int8_t* w = W.data_ptr<int8_t>();
  const float* s = S.data_ptr<float>();
  const int64_t blocks = (g.n + kDequantRows - 1) / kDequantRows;
  // ATen ops on the worker threads must see the caller's thread-local state (inference
  // mode, dispatch-key guards); OpenMP workers do not inherit it.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    at::Tensor deq = at::empty({kDequantRows, g.k}, x32.options());
    float* d = deq.data_ptr<float>();
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * kDequantRows, rows = std::min(kDequantRows, g.n - n0);
      for (int64_t r = 0; r < rows; ++r) {
        const int8_t* wr = w + (n0 + r) * g.k;
        const float* sr = s + (n0 + r) * g.groups;
        float* dr = d + r * g.k;
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          const float sc = sr[grp];
          const int64_t k0 = grp * group_size;
#pragma omp simd
          for (int64_t i = 0; i < group_size; ++i) dr[k0 + i] = static_cast<float>(wr[k0 + i]) * sc;
        }
      }
      // Nested inside parallel_for, ATen's GEMM runs on this thread alone.
      at::Tensor dst = out_t.narrow(0, n0, rows);
      at::mm_out(dst, deq.narrow(0, 0, rows), x32.t());
    }
  });
  at::Tensor out = out_t.t();
  if (bias.has_value()) out = out.add(bias->to(at::kFloat));
  return out.to(x.scalar_type()).contiguous().reshape(out_shape);
}

std::tuple<at::Tensor, at::Tensor> quantize_fp8_per_row_cpu(const at::Tensor& x) {
  const int64_t rows = leading_rows(x), K = x.size(-1);  // validated: validate_quantize_fp8_per_row
  std::vector<int64_t> scale_shape(x.sizes().begin(), x.sizes().end());
  scale_shape.back() = 1;
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor scale = at::empty(scale_shape, x.options().dtype(at::kFloat));
  if (rows == 0) return {q, scale};
  const at::Tensor X = x.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "slimops.quantize_fp8_per_row", [&] {
    const scalar_t* xp = X.data_ptr<scalar_t>();
    auto* qp = q.data_ptr<c10::Float8_e4m3fn>();
    float* sp = scale.data_ptr<float>();
    const int64_t grain = std::max<int64_t>(1, (1 << 15) / K);
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) sp[r] = quantize_fp8_row(xp + r * K, K, qp + r * K);
    });
  });
  return {q, scale};
}

}  // namespace slimops
