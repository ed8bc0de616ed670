// Argument validation of the int4 weight-only family: run once per call by the op
// table (csrc/ops.cpp) before any backend, CPU or Triton. See int4.h.
#include "int4.h"

namespace slimops {

MatmulGeometry validate_nibble_weight(const char* op, const at::Tensor& x, const at::Tensor& qweight,
                                      const at::Tensor& scale, int64_t group_size,
                                      const std::optional<at::Tensor>& bias) {
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension [..., K], got a 0-d tensor");
  MatmulGeometry g = linear_geometry(x, 0);
  SLIMOPS_CHECK(g.k >= 1, op, "x must have K >= 1 inputs, got K = 0");
  SLIMOPS_CHECK(group_size >= kInt4Chunk && group_size % kInt4Chunk == 0, op,
                "group_size must be a positive multiple of 32 (a packed chunk of 32 inputs never straddles "
                "two groups), got ", group_size);
  const int64_t bytes = (g.k + kInt4Chunk - 1) / kInt4Chunk * (kInt4Chunk / 2);
  check_dtype(qweight, at::kByte, op, "qweight");
  SLIMOPS_CHECK(qweight.dim() == 2, op, "qweight must be 2-D [N, ceil(K / 32) * 16] (two int4 per byte), got shape ",
                qweight.sizes());
  SLIMOPS_CHECK(qweight.size(1) == bytes, op, "qweight must have ceil(K / 32) * 16 = ", bytes,
                " bytes per row for K = ", g.k, " (two int4 per byte, in chunks of 32 inputs), got ",
                qweight.size(1));
  g.n = qweight.size(0);
  g.groups = (g.k + group_size - 1) / group_size;
  check_float_input(scale, op, "scale");
  SLIMOPS_CHECK(scale.dim() == 2 && scale.size(0) == g.n && scale.size(1) == g.groups, op, "scale must be [", g.n,
                ", ", g.groups, "] (one per group of ", group_size, " inputs, ceil(K / group_size) groups), got shape ",
                scale.sizes());
  check_same_device(x, qweight, op, "x", "qweight");
  check_same_device(x, scale, op, "x", "scale");
  if (bias.has_value()) {
    check_float_input(*bias, op, "bias");
    SLIMOPS_CHECK(bias->dim() == 1 && bias->size(0) == g.n, op, "bias must have shape [", g.n,
                  "] (out_features), got ", bias->sizes());
    check_same_device(x, *bias, op, "x", "bias");
  }
  return g;
}

MatmulGeometry validate_weight_int4_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                                           const std::optional<at::Tensor>& zero_point, int64_t group_size,
                                           const std::optional<at::Tensor>& bias) {
  const char* op = "weight_int4_linear";
  const MatmulGeometry g = validate_nibble_weight(op, x, qweight, scale, group_size, bias);
  if (zero_point.has_value()) {
    check_float_input(*zero_point, op, "zero_point");
    SLIMOPS_CHECK(zero_point->sizes() == scale.sizes(), op, "zero_point must have scale's shape [", g.n, ", ",
                  g.groups, "], got shape ", zero_point->sizes());
    check_same_device(x, *zero_point, op, "x", "zero_point");
  }
  return g;
}

}  // namespace slimops
