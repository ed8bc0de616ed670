// Quantized matmul family: argument validation and kernel declarations.
//
// Semantics are defined by python/slimops/reference/quant_mm.py. Weights use
// the nn.Linear layout [N, K] (out_features, in_features): y = x W^T.
// The validate_* functions are the only checks of an op's arguments: the op
// table (csrc/ops.cpp) runs them once per call, and the fakes call them
// through slimops._C on fake tensors with concrete sizes.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "checks.h"

namespace slimops {

// The largest K int8_mm takes: |a[m,k] * b[n,k]| <= 2^14, so K < 2^17 terms cannot overflow
// the int32 accumulator on any backend.
constexpr int64_t kInt8MaxK = (int64_t{1} << 17) - 1;

// int8_mm: a int8 [M, K], b int8 [N, K], a_scale fp32 [M] or [M, 1], b_scale
// fp32 [N] or [N, 1], bias float [N] or none, out_dtype float32/float16/bfloat16.
MatmulGeometry validate_int8_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                                const at::Tensor& b_scale, const std::optional<at::Tensor>& bias,
                                c10::ScalarType out_dtype);

// weight_int8_linear: x float [..., K], weight int8 [N, K], scale float [N]
// or [N, G] with K % G == 0, bias float [N] or none.
MatmulGeometry validate_weight_int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                           const std::optional<at::Tensor>& bias);

// quantize_fp8_per_row: x float [..., K]. Returns {rows, K}.
std::tuple<int64_t, int64_t> validate_quantize_fp8_per_row(const at::Tensor& x);

// int8_dynamic_linear / fp8_dynamic_linear: x float [..., K], weight [N, K] int8 (resp.
// float8_e4m3fn, with K and N multiples of 16), weight_scale fp32 [N] or [N, 1], bias float [N] or none.
int64_t validate_int8_dynamic_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                                     const std::optional<at::Tensor>& bias);
int64_t validate_fp8_dynamic_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                                    const std::optional<at::Tensor>& bias);

// ---------------------------------------------------------------- every device (csrc/quant_linear.cpp)
at::Tensor int8_dynamic_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                               const std::optional<at::Tensor>& bias);
at::Tensor fp8_dynamic_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                              const std::optional<at::Tensor>& bias);

// ---------------------------------------------------------------- CPU
at::Tensor int8_mm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                       const at::Tensor& b_scale, const std::optional<at::Tensor>& bias, c10::ScalarType out_dtype);
at::Tensor weight_int8_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                  const std::optional<at::Tensor>& bias);
std::tuple<at::Tensor, at::Tensor> quantize_fp8_per_row_cpu(const at::Tensor& x);
// What the int8 CPU kernels run for this call's ISA (csrc/cpu/cpu_isa.h): {"isa", "best_isa",
// then one entry per op naming its kernel}, for `slimops info` and the bench rows.
std::vector<std::pair<std::string, std::string>> cpu_int8_kernels();

// ---------------------------------------------------------------- CUDA
#ifdef SLIMOPS_WITH_CUDA
// Weight-only int8 for decode-sized batches (memory bound, GEMV-like). Correct
// for every M; the backend rules send it only the small M where it wins.
at::Tensor weight_int8_linear_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                   const std::optional<at::Tensor>& bias);
#endif

}  // namespace slimops
