// CUDA dispatch key of the clip-norm family: CUDA C++ (csrc/cuda/clip.cu) or
// Triton (kernels/clip.py), chosen per call in C++ (backend.h) from the total
// number of elements, so the CUDA path costs no Python. Built only with the
// CUDA kernels.
#include <torch/extension.h>  // pybind11 casters for at::Tensor, std::vector and std::optional
#include <torch/library.h>

#include <vector>

#include "backend.h"
#include "clip.h"

namespace slimops {
namespace {

int64_t total_numel(at::TensorList tensors) {
  int64_t n = 0;
  for (const at::Tensor& t : tensors) n += t.numel();
  return n;
}

// The Triton launchers take Python lists: pybind11 casts std::vector, not ArrayRef.
std::vector<at::Tensor> as_list(at::TensorList tensors) { return tensors.vec(); }

at::Tensor multi_tensor_norm_gpu(at::TensorList tensors, double norm_type, bool root) {
  static const OpBackend& op = op_backend("multi_tensor_norm");
  if (choose(op, total_numel(tensors), /*have_cuda=*/true) == GpuBackend::Triton) {
    return call_triton<at::Tensor>(op, as_list(tensors), norm_type, root);
  }
  return multi_tensor_norm_cuda(tensors, norm_type, root);
}

void multi_tensor_scale_gpu(at::TensorList tensors, const at::Tensor& total_norm, double max_norm) {
  static const OpBackend& op = op_backend("multi_tensor_scale_");
  if (choose(op, total_numel(tensors), /*have_cuda=*/true) == GpuBackend::Triton) {
    // The launcher scales in place and returns None (pybind11's object::cast<void> discards it).
    call_triton<void>(op, as_list(tensors), total_norm, max_norm);
    return;
  }
  multi_tensor_scale_cuda(tensors, total_norm, max_norm);
}

at::Tensor clip_grad_norm_fused_gpu(at::TensorList grads, double max_norm, double norm_type,
                                    const std::optional<at::Tensor>& inv_scale,
                                    const std::optional<at::Tensor>& found_inf) {
  static const OpBackend& op = op_backend("clip_grad_norm_fused_");
  if (choose(op, total_numel(grads), /*have_cuda=*/true) == GpuBackend::Triton) {
    return call_triton<at::Tensor>(op, as_list(grads), max_norm, norm_type, inv_scale, found_inf);
  }
  return clip_grad_norm_fused_cuda(grads, max_norm, norm_type, inv_scale, found_inf);
}

}  // namespace

TORCH_LIBRARY_IMPL(slimops, CUDA, m) {
  m.impl("multi_tensor_norm", &multi_tensor_norm_gpu);
  m.impl("multi_tensor_scale_", &multi_tensor_scale_gpu);
  m.impl("clip_grad_norm_fused_", &clip_grad_norm_fused_gpu);
}

}  // namespace slimops
