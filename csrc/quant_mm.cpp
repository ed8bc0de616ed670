// Argument validation of the quantized matmul family: run once per call by the
// op table (csrc/ops.cpp) before any backend, CPU, CUDA C++ or Triton. See quant_mm.h.
#include "quant_mm.h"

#include "quantize.h"

namespace slimops {
namespace {

// t is [length] or [length, 1].
void check_vector(const at::Tensor& t, int64_t length, const char* op, const char* name, const char* what) {
  const bool ok = (t.dim() == 1 && t.size(0) == length) || (t.dim() == 2 && t.size(0) == length && t.size(1) == 1);
  SLIMOPS_CHECK(ok, op, name, " must have shape [", length, "] or [", length, ", 1] (", what, "), got ", t.sizes());
}

int64_t check_weight(const at::Tensor& weight, c10::ScalarType dtype, int64_t k, const char* op) {
  check_dtype(weight, dtype, op, "weight");
  SLIMOPS_CHECK(weight.dim() == 2, op, "weight must be 2-D [out_features, in_features], got shape ", weight.sizes());
  SLIMOPS_CHECK(weight.size(1) == k, op, "weight has in_features ", weight.size(1), " but x has K = ", k,
                " (mismatched K): weight must be [N, K] as in nn.Linear");
  return weight.size(0);
}

void check_bias(const std::optional<at::Tensor>& bias, int64_t n, const at::Device& device, const char* op) {
  if (!bias.has_value()) return;
  check_float_input(*bias, op, "bias");
  SLIMOPS_CHECK(bias->dim() == 1 && bias->size(0) == n, op, "bias must have shape [", n, "] (out_features), got ",
                bias->sizes());
  SLIMOPS_CHECK(bias->device() == device, op, "bias must be on ", device, ", got ", bias->device());
}

}  // namespace

MatmulGeometry validate_int8_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                                const at::Tensor& b_scale, const std::optional<at::Tensor>& bias,
                                c10::ScalarType out_dtype) {
  const char* op = "int8_mm";
  check_dtype(a, at::kChar, op, "a");
  SLIMOPS_CHECK(a.dim() == 2, op, "a must be 2-D [M, K], got shape ", a.sizes());
  check_dtype(b, at::kChar, op, "b");
  SLIMOPS_CHECK(b.dim() == 2, op, "b must be 2-D [N, K], got shape ", b.sizes());
  SLIMOPS_CHECK(b.size(1) == a.size(1), op, "b has K = ", b.size(1), " but a has K = ", a.size(1),
                " (mismatched K): b must be [N, K]");
  MatmulGeometry g;
  g.m = a.size(0);
  g.k = a.size(1);
  g.n = b.size(0);
  // Every product is at most 128 * 128 = 2^14 in size, so K terms fit int32 while K < 2^17.
  SLIMOPS_CHECK(g.k <= kInt8MaxK, op, "K must be at most ", kInt8MaxK,
                " (the exact int32 accumulator could overflow past it), got K = ", g.k);
  check_dtype(a_scale, at::kFloat, op, "a_scale");
  check_vector(a_scale, g.m, op, "a_scale", "one scale per row of a");
  check_dtype(b_scale, at::kFloat, op, "b_scale");
  check_vector(b_scale, g.n, op, "b_scale", "one scale per row of b");
  check_same_device(a, b, op, "a", "b");
  check_same_device(a, a_scale, op, "a", "a_scale");
  check_same_device(a, b_scale, op, "a", "b_scale");
  check_bias(bias, g.n, a.device(), op);
  SLIMOPS_CHECK(is_float_activation(out_dtype), op, "out_dtype must be float32, float16 or bfloat16, got ",
                out_dtype);
  return g;
}

MatmulGeometry validate_weight_int8_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                           const std::optional<at::Tensor>& bias) {
  const char* op = "weight_int8_linear";
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension [..., K], got a 0-d tensor");
  MatmulGeometry g;
  g.k = x.size(-1);
  g.m = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  g.n = check_weight(weight, at::kChar, g.k, op);
  check_float_input(scale, op, "scale");
  SLIMOPS_CHECK((scale.dim() == 1 || scale.dim() == 2) && scale.size(0) == g.n, op, "scale must be [", g.n,
                "] (per channel) or [", g.n, ", groups] (per group), got shape ", scale.sizes());
  g.groups = scale.dim() == 2 ? scale.size(1) : 1;
  SLIMOPS_CHECK(g.groups >= 1 && g.k % g.groups == 0, op, "scale has ", g.groups,
                " groups per row, which must divide K = ", g.k, " (group_size = K / groups must be a whole number)");
  check_same_device(x, weight, op, "x", "weight");
  check_same_device(x, scale, op, "x", "scale");
  check_bias(bias, g.n, x.device(), op);
  return g;
}

std::tuple<int64_t, int64_t> validate_quantize_fp8_per_row(const at::Tensor& x) {
  return validate_quantize_per_token(x, "quantize_fp8_per_row");  // the int8 per-token quantizer's rules
}

}  // namespace slimops
