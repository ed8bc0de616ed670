// Multi-tensor clip-norm: argument validation and launcher declarations.
//
// Semantics are defined by python/slimops/reference/clip.py. The op table
// (csrc/ops.cpp) runs the op-level validate_* functions below (csrc/clip.cpp)
// once per call, before any backend touches data, so a bad call scales nothing.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "checks.h"

namespace slimops {

constexpr float kClipEps = 1e-6f;

// Every tensor: float32/float16/bfloat16, strided, non-overlapping and dense
// (so its numel elements are one block of memory from data_ptr), and on the
// device of tensors[0]. norm_type > 0 (inf allowed), not NaN.
void validate_multi_tensor(at::TensorList tensors, const char* op);
void validate_norm_type(double norm_type, const char* op);
// max_norm >= 0 and not NaN.
void validate_max_norm(double max_norm, const char* op);
// A one-element float32 tensor on `device` (total_norm, inv_scale, found_inf).
void validate_scalar_tensor(const at::Tensor& t, const char* name, const at::Device& device, const char* op);

// The three ops' checks; each returns the total number of elements (the size of the backend rule).
int64_t validate_multi_tensor_norm(at::TensorList tensors, double norm_type, bool root);
int64_t validate_multi_tensor_scale_(at::TensorList tensors, const at::Tensor& total_norm, double max_norm);
int64_t validate_clip_grad_norm_fused_(at::TensorList grads, double max_norm, double norm_type,
                                       const std::optional<at::Tensor>& inv_scale,
                                       const std::optional<at::Tensor>& found_inf);

// ---------------------------------------------------------------- CPU
at::Tensor multi_tensor_norm_cpu(at::TensorList tensors, double norm_type, bool root);
void multi_tensor_scale_cpu(at::TensorList tensors, const at::Tensor& total_norm, double max_norm);
at::Tensor clip_grad_norm_fused_cpu(at::TensorList grads, double max_norm, double norm_type,
                                    const std::optional<at::Tensor>& inv_scale,
                                    const std::optional<at::Tensor>& found_inf);

// ---------------------------------------------------------------- CUDA
#ifdef SLIMOPS_WITH_CUDA
at::Tensor multi_tensor_norm_cuda(at::TensorList tensors, double norm_type, bool root);
void multi_tensor_scale_cuda(at::TensorList tensors, const at::Tensor& total_norm, double max_norm);
at::Tensor clip_grad_norm_fused_cuda(at::TensorList grads, double max_norm, double norm_type,
                                     const std::optional<at::Tensor>& inv_scale,
                                     const std::optional<at::Tensor>& found_inf);
#endif

}  // namespace slimops
