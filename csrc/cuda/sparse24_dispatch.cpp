// CUDA dispatch key of sparse24_linear: the mma.sp kernels
// (csrc/cuda/sparse24.cu). There is no Triton implementation (Triton has no
// sparse MMA), so there is no backend choice to make: SLIMOPS_BACKEND and
// slimops.use_backend do not apply to this op.
#include <torch/library.h>

#include "sparse24.h"

namespace slimops {
namespace {

at::Tensor sparse24_linear_gpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                               const std::optional<at::Tensor>& bias) {
  return sparse24_linear_cuda(x, values, meta, bias);  // validates its arguments first
}

}  // namespace

TORCH_LIBRARY_IMPL(slimops, CUDA, m) { m.impl("sparse24_linear", &sparse24_linear_gpu); }

}  // namespace slimops
