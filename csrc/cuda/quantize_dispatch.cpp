// CUDA dispatch key of the quantize family: CUDA C++ (csrc/cuda/quantize.cu)
// or Triton (kernels/quantize.py), chosen per call in C++ (backend.h), so the
// CUDA path costs no Python. Built only with the CUDA kernels.
#include <torch/extension.h>  // pybind11 casters for at::Tensor and ScalarType
#include <torch/library.h>

#include "backend.h"
#include "quantize.h"

namespace slimops {
namespace {

std::tuple<at::Tensor, at::Tensor> quantize_per_token_gpu(const at::Tensor& x) {
  static const OpBackend& op = op_backend("quantize_per_token");
  if (choose(op, x.numel(), /*have_cuda=*/true) == GpuBackend::Triton) {
    return call_triton<std::tuple<at::Tensor, at::Tensor>>(op, x);
  }
  return quantize_per_token_cuda(x);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_channel_gpu(const at::Tensor& x, int64_t axis,
                                                                        bool symmetric) {
  static const OpBackend& op = op_backend("quantize_per_channel");
  if (choose(op, x.numel(), /*have_cuda=*/true) == GpuBackend::Triton) {
    return call_triton<std::tuple<at::Tensor, at::Tensor, at::Tensor>>(op, x, axis, symmetric);
  }
  return quantize_per_channel_cuda(x, axis, symmetric);
}

at::Tensor dequantize_gpu(const at::Tensor& q, const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                          c10::ScalarType out_dtype) {
  static const OpBackend& op = op_backend("dequantize");
  if (choose(op, q.numel(), /*have_cuda=*/true) == GpuBackend::Triton) {
    return call_triton<at::Tensor>(op, q, scale, zero_point, out_dtype);
  }
  return dequantize_cuda(q, scale, zero_point, out_dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(slimops, CUDA, m) {
  m.impl("quantize_per_token", &quantize_per_token_gpu);
  m.impl("quantize_per_channel", &quantize_per_channel_gpu);
  m.impl("dequantize", &dequantize_gpu);
}

}  // namespace slimops
