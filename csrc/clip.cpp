// Argument validation for the multi-tensor clip-norm family; see clip.h.
#include "clip.h"

#include <cmath>

namespace slimops {

void validate_multi_tensor(at::TensorList tensors, const char* op) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    SLIMOPS_CHECK(t.layout() == at::kStrided, op, "tensors[", i, "] must be a dense (strided) tensor, got layout ",
                  t.layout(), " (sparse gradients cannot be clipped by norm)");
    SLIMOPS_CHECK(is_float_activation(t.scalar_type()), op, "tensors[", i,
                  "] must be float32, float16 or bfloat16, got ", t.scalar_type());
    SLIMOPS_CHECK(t.is_non_overlapping_and_dense(), op, "tensors[", i,
                  "] must be non-overlapping and dense (contiguous or a permutation of it), got strides ",
                  t.strides(), " for shape ", t.sizes());
    SLIMOPS_CHECK(t.device() == tensors[0].device(), op, "tensors[", i, "] is on ", t.device(), " but tensors[0] is on ",
                  tensors[0].device(), ": one call takes tensors on one device");
  }
}

void validate_norm_type(double norm_type, const char* op) {
  SLIMOPS_CHECK(norm_type > 0 && !std::isnan(norm_type), op, "norm_type must be > 0 (or inf), got ", norm_type);
}

void validate_max_norm(double max_norm, const char* op) {
  SLIMOPS_CHECK(max_norm >= 0 && !std::isnan(max_norm), op, "max_norm must be >= 0, got ", max_norm);
}

void validate_scalar_tensor(const at::Tensor& t, const char* name, const at::Device& device, const char* op) {
  SLIMOPS_CHECK(t.scalar_type() == at::kFloat && t.numel() == 1, op, name,
                " must be a one-element float32 tensor, got ", t.scalar_type(), " of shape ", t.sizes());
  SLIMOPS_CHECK(t.device() == device, op, name, " must be on ", device, " with the tensors, got ", t.device());
}

}  // namespace slimops
