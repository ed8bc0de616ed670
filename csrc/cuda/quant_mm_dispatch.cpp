// CUDA dispatch key of weight_int8_linear: the CUDA C++ decode kernel
// (csrc/cuda/weight_int8.cu) for small M, Triton (kernels/weight_int8.py)
// from the rule's M up. The choice is made here, in C++ (backend.h), so the
// decode path never enters Python.
//
// int8_mm and quantize_fp8_per_row are Triton only; their CUDA key is
// registered from python/slimops/ops/quant_mm.py.
#include <torch/extension.h>  // pybind11 casters for at::Tensor
#include <torch/library.h>

#include "backend.h"
#include "quant_mm.h"

namespace slimops {
namespace {

at::Tensor weight_int8_linear_gpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scale,
                                  const std::optional<at::Tensor>& bias) {
  static const OpBackend& op = op_backend("weight_int8_linear");
  // The problem size of this op's rule is M, the number of activation rows.
  // Each backend validates its arguments itself, so nothing is checked twice.
  const int64_t rows = x.dim() == 0 || x.size(-1) == 0 ? x.numel() : x.numel() / x.size(-1);
  if (choose(op, rows, /*have_cuda=*/true) == GpuBackend::Triton) {
    return call_triton<at::Tensor>(op, x, weight, scale, bias);
  }
  return weight_int8_linear_cuda(x, weight, scale, bias);
}

}  // namespace

TORCH_LIBRARY_IMPL(slimops, CUDA, m) { m.impl("weight_int8_linear", &weight_int8_linear_gpu); }

}  // namespace slimops
