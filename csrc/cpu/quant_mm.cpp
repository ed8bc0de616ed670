// CPU kernels of the quantized matmul family.
//
// int8_mm accumulates exactly in int32 and applies the epilogue in fp32, as
// the GPU kernels do. weight_int8_linear dequantizes one block of weight rows
// at a time into a small fp32 buffer and hands it to ATen's fp32 GEMM, so the
// full dequantized weight never exists. quantize_fp8_per_row follows
// python/slimops/reference/quant_mm.py bit for bit.
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
#include <limits>
#include <vector>

#include "quant_mm.h"

namespace slimops {
namespace {

// Output rows of b (weights) per parallel task: 32 rows of K <= 11008 int8
// stay in L2 while every row of a streams past them.
constexpr int64_t kInt8RowsPerTask = 32;
// Weight rows dequantized per GEMM call: 64 x K fp32 is ~2.8 MB at K = 11008.
constexpr int64_t kDequantRows = 64;

inline int32_t dot_int8(const int8_t* a, const int8_t* b, int64_t k) {
  int32_t acc = 0;
  // Exact in any order (integer adds); GCC vectorises it with pmaddwd.
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < k; ++i) acc += static_cast<int32_t>(a[i]) * static_cast<int32_t>(b[i]);
  return acc;
}

template <typename out_t>
void int8_mm_kernel(const at::Tensor& a, const at::Tensor& b, const float* a_scale, const float* b_scale,
                    const float* bias, at::Tensor& out) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(0);
  const int8_t* A = a.data_ptr<int8_t>();
  const int8_t* B = b.data_ptr<int8_t>();
  out_t* O = out.data_ptr<out_t>();
  const int64_t tasks = (N + kInt8RowsPerTask - 1) / kInt8RowsPerTask;
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = t * kInt8RowsPerTask, n1 = std::min(N, n0 + kInt8RowsPerTask);
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = n0; n < n1; ++n) {
          // Same order as the GPU epilogue: (acc * a_scale) * b_scale + bias, in fp32.
          float v = static_cast<float>(dot_int8(A + m * K, B + n * K, K)) * a_scale[m] * b_scale[n];
          if (bias != nullptr) v += bias[n];
          O[m * N + n] = static_cast<out_t>(v);
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

at::Tensor int8_mm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                       const at::Tensor& b_scale, const std::optional<at::Tensor>& bias, c10::ScalarType out_dtype) {
  const MatmulGeometry g = validate_int8_mm(a, b, a_scale, b_scale, bias, out_dtype);
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
  const MatmulGeometry g = validate_weight_int8_linear(x, weight, scale, bias);
  // The op has no autograd formula; ATen's mm_out below refuses inputs that
  // require grad unless the autograd keys are skipped, as inside any kernel.
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = g.n;
  if (g.m == 0 || g.n == 0) return at::empty(out_shape, x.options());
  const at::Tensor x32 = x.reshape({g.m, g.k}).to(at::kFloat).contiguous();
  const at::Tensor W = weight.contiguous();
  const at::Tensor S = scale.reshape({g.n, g.groups}).to(at::kFloat).contiguous();
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
  const auto [rows, K] = validate_quantize_fp8_per_row(x);
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

TORCH_LIBRARY_IMPL(slimops, CPU, m) {
  m.impl("int8_mm", &int8_mm_cpu);
  m.impl("weight_int8_linear", &weight_int8_linear_cpu);
  m.impl("quantize_fp8_per_row", &quantize_fp8_per_row_cpu);
}

}  // namespace slimops
