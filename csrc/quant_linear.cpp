// The dynamic linear ops, composed from the family's kernels on every device:
//   int8_dynamic_linear = quantize_per_token -> int8_mm (scales and bias in its epilogue)
//   fp8_dynamic_linear  = quantize_fp8_per_row -> torch._scaled_mm (cuBLAS rowwise fp8)
//
// Registered (by the op table, csrc/ops.cpp) as CompositeExplicitAutograd so that
// each op stays one node under torch.compile (its fake is in
// python/slimops/ops/quant_mm.py) and runs here, in C++, eagerly: the two
// launches cost no Python. The table checks the arguments first
// (validate_*_dynamic_linear); the inner ops check their own.
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/_scaled_mm.h>
#include <ATen/ops/empty.h>
#include <vector>

#include "quant_mm.h"

namespace slimops {
namespace {

// x [..., K] -> K, and the output shape [..., N].
std::vector<int64_t> linear_out_shape(const at::Tensor& x, int64_t n) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = n;
  return shape;
}

// Checks shared by both ops: x float [..., K], weight [N, K] of `weight_dtype`,
// weight_scale fp32 [N] or [N, 1], bias float [N] or none, one device.
int64_t validate_dynamic_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                                const std::optional<at::Tensor>& bias, c10::ScalarType weight_dtype, const char* op) {
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension [..., K], got a 0-d tensor");
  const int64_t k = x.size(-1);
  check_dtype(weight, weight_dtype, op, "weight");
  SLIMOPS_CHECK(weight.dim() == 2, op, "weight must be 2-D [out_features, in_features], got shape ", weight.sizes());
  SLIMOPS_CHECK(weight.size(1) == k, op, "weight has in_features ", weight.size(1), " but x has K = ", k,
                " (mismatched K): weight must be [N, K] as in nn.Linear");
  const int64_t n = weight.size(0);
  check_dtype(weight_scale, at::kFloat, op, "weight_scale");
  const bool vec = (weight_scale.dim() == 1 && weight_scale.size(0) == n) ||
                   (weight_scale.dim() == 2 && weight_scale.size(0) == n && weight_scale.size(1) == 1);
  SLIMOPS_CHECK(vec, op, "weight_scale must have shape [", n, "] or [", n, ", 1] (one scale per output row), got ",
                weight_scale.sizes());
  check_same_device(x, weight, op, "x", "weight");
  check_same_device(x, weight_scale, op, "x", "weight_scale");
  if (bias.has_value()) {
    check_float_input(*bias, op, "bias");
    SLIMOPS_CHECK(bias->dim() == 1 && bias->size(0) == n, op, "bias must have shape [", n,
                  "] (out_features), got ", bias->sizes());
    check_same_device(x, *bias, op, "x", "bias");
  }
  return n;
}

}  // namespace

int64_t validate_int8_dynamic_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                                     const std::optional<at::Tensor>& bias) {
  validate_dynamic_linear(x, weight, weight_scale, bias, at::kChar, "int8_dynamic_linear");
  return 0;
}

int64_t validate_fp8_dynamic_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                                    const std::optional<at::Tensor>& bias) {
  const char* op = "fp8_dynamic_linear";
  const int64_t n = validate_dynamic_linear(x, weight, weight_scale, bias, at::kFloat8_e4m3fn, op);
  const int64_t k = x.size(-1);
  // cuBLAS fp8 GEMMs need 16-byte aligned rows of both operands and of the output.
  SLIMOPS_CHECK(k % 16 == 0, op, "x's K = ", k,
                " must be a multiple of 16 (fp8 GEMM alignment); Fp8DynamicLinear pads the weight for you");
  SLIMOPS_CHECK(n % 16 == 0, op, "weight's out_features N = ", n,
                " must be a multiple of 16 (fp8 GEMM alignment); Fp8DynamicLinear pads the weight for you");
  return 0;
}

at::Tensor int8_dynamic_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                               const std::optional<at::Tensor>& bias) {
  const int64_t n = weight.size(0);
  static const auto quantize = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("slimops::quantize_per_token", "")
                                   .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  static const auto mm = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("slimops::int8_mm", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&, const std::optional<at::Tensor>&, c10::ScalarType)>();
  const int64_t k = x.size(-1);
  auto [q, s] = quantize.call(x);
  at::Tensor out = mm.call(q.reshape({-1, k}), weight, s.reshape({-1, 1}), weight_scale, bias, x.scalar_type());
  return out.reshape(linear_out_shape(x, n));
}

at::Tensor fp8_dynamic_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& weight_scale,
                              const std::optional<at::Tensor>& bias) {
  const int64_t n = weight.size(0), k = x.size(-1);
  static const auto quantize = c10::Dispatcher::singleton()
                                   .findSchemaOrThrow("slimops::quantize_fp8_per_row", "")
                                   .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  if (x.numel() == 0 && k > 0) return at::empty(linear_out_shape(x, n), x.options());  // no rows
  auto [q, s] = quantize.call(x);
  // Rowwise-scaled fp8 GEMMs in cuBLAS write bf16 only (with a bf16 bias), so
  // every device computes in bf16 and converts to x's dtype afterwards.
  std::optional<at::Tensor> bias_bf16;
  if (bias.has_value()) bias_bf16 = bias->to(at::kBFloat16);
  at::Tensor out = at::_scaled_mm(q.reshape({-1, k}), weight.contiguous().t(), s.reshape({-1, 1}),
                                  // _scaled_mm takes only contiguous scales (a strided one: "Invalid scaling configuration")
                                  weight_scale.contiguous().reshape({1, n}),
                                  bias_bf16, /*scale_result=*/std::nullopt, at::kBFloat16, /*use_fast_accum=*/false);
  return out.to(x.scalar_type()).reshape(linear_out_shape(x, n));
}

}  // namespace slimops
