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

namespace {

int64_t total_numel(at::TensorList tensors) {
  int64_t n = 0;
  for (const at::Tensor& t : tensors) n += t.numel();
  return n;
}

}  // namespace

int64_t validate_multi_tensor_norm(at::TensorList tensors, double norm_type, bool /*root*/) {
  const char* op = "multi_tensor_norm";
  validate_multi_tensor(tensors, op);
  validate_norm_type(norm_type, op);
  return total_numel(tensors);
}

int64_t validate_multi_tensor_scale_(at::TensorList tensors, const at::Tensor& total_norm, double max_norm) {
  const char* op = "multi_tensor_scale_";
  validate_multi_tensor(tensors, op);
  validate_max_norm(max_norm, op);
  if (tensors.empty()) return 0;  // nothing to scale: total_norm is never read
  validate_scalar_tensor(total_norm, "total_norm", tensors[0].device(), op);
  return total_numel(tensors);
}

int64_t validate_clip_grad_norm_fused_(at::TensorList grads, double max_norm, double norm_type,
                                       const std::optional<at::Tensor>& inv_scale,
                                       const std::optional<at::Tensor>& found_inf) {
  const char* op = "clip_grad_norm_fused_";
  validate_multi_tensor(grads, op);
  validate_max_norm(max_norm, op);
  validate_norm_type(norm_type, op);
  // An empty list has no device: the scalars are taken as they are (the reference's CPU zero is returned).
  if (!grads.empty()) {
    const at::Device device = grads[0].device();
    if (inv_scale.has_value()) validate_scalar_tensor(*inv_scale, "inv_scale", device, op);
    if (found_inf.has_value()) validate_scalar_tensor(*found_inf, "found_inf", device, op);
  }
  return total_numel(grads);
}

}  // namespace slimops
