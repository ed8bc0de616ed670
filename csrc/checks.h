// Input checks shared by every host-side launcher (CPU and CUDA).
//
// Every message names the argument and states what was expected, so a user
// sees "slimops.quantize_per_token: x must be float32, float16 or bfloat16, got Int"
// rather than a crash deep inside a kernel.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#define SLIMOPS_CHECK(cond, op, ...) TORCH_CHECK(cond, "slimops.", op, ": ", __VA_ARGS__)

namespace slimops {

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
