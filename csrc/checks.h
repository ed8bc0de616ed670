// Input checks shared by every op's validator (csrc/<family>.cpp).
//
// An op's arguments are checked once per call, by its validator, before the
// backend is chosen (the op table in csrc/ops.cpp); the kernels behind it trust
// them. Every message names the argument and states what was expected, so a user
// sees "slimops.quantize_per_token: x must be float32, float16 or bfloat16, got Int"
// rather than a crash deep inside a kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/accumulate.h>

#define SLIMOPS_CHECK(cond, op, ...) TORCH_CHECK(cond, "slimops.", op, ": ", __VA_ARGS__)

namespace slimops {

// The shape of a linear-like op: x [..., K] (M rows) times a weight [N, K].
struct MatmulGeometry {
  int64_t m = 0;       // rows of the activation (product of its leading dims)
  int64_t n = 0;       // out_features
  int64_t k = 0;       // in_features
  int64_t groups = 1;  // weight scales per output row (per-group quantized weights); group_size = k / groups
};

// The rows of t [..., K] (at least 1-D, already validated): the product of its leading dims.
inline int64_t leading_rows(const at::Tensor& t) { return c10::multiply_integers(t.sizes().slice(0, t.dim() - 1)); }

// x [..., K] (at least 1-D, already validated) times a weight with n rows. No checks.
inline MatmulGeometry linear_geometry(const at::Tensor& x, int64_t n, int64_t groups = 1) {
  return {leading_rows(x), n, x.size(-1), groups};
}

inline bool is_float_activation(c10::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_float_input(const at::Tensor& t, const char* op, const char* name) {
  SLIMOPS_CHECK(is_float_activation(t.scalar_type()), op, name,
                " must be float32, float16 or bfloat16, got ", t.scalar_type());
  SLIMOPS_CHECK(t.layout() == at::kStrided, op, name, " must be a dense (strided) tensor, got layout ",
                t.layout());
}

inline void check_dtype(const at::Tensor& t, c10::ScalarType want, const char* op, const char* name) {
  SLIMOPS_CHECK(t.scalar_type() == want, op, name, " must be ", want, ", got ", t.scalar_type());
  SLIMOPS_CHECK(t.layout() == at::kStrided, op, name, " must be a dense (strided) tensor, got layout ",
                t.layout());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                              const char* name_b) {
  SLIMOPS_CHECK(a.device() == b.device(), op, name_a, " and ", name_b, " must be on the same device, got ",
                a.device(), " and ", b.device());
}

}  // namespace slimops
