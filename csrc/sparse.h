// Masked and block-sparse linears: argument validation and kernel declarations.
//
// Semantics: python/slimops/reference/sparse.py. The validate_* functions are
// the only checks of an op's arguments: the op table (csrc/ops.cpp) runs them
// once per call, before any backend (CPU here; Triton in kernels/ on a GPU).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "checks.h"

namespace slimops {

MatmulGeometry validate_masked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                                      const std::optional<at::Tensor>& bias);
MatmulGeometry validate_masked_linear_grad_input(const at::Tensor& grad, const at::Tensor& weight,
                                                 const at::Tensor& mask);
MatmulGeometry validate_masked_linear_grad_weight(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mask);
void validate_block_sparse_pack(const at::Tensor& weight, const std::optional<at::Tensor>& mask, int64_t block_n,
                                int64_t block_k);
MatmulGeometry validate_block_sparse_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                            const at::Tensor& col_idx, const std::optional<at::Tensor>& bias);
// block_sparse_int8_linear: the BSR checks of block_sparse_linear with int8 values, plus scale fp32 [N].
MatmulGeometry validate_block_sparse_int8_linear(const at::Tensor& x, const at::Tensor& values,
                                                 const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                                 const at::Tensor& scale, const std::optional<at::Tensor>& bias);

// ---------------------------------------------------------------- every device (csrc/sparse.cpp)
std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_pack(const at::Tensor& weight,
                                                                 const std::optional<at::Tensor>& mask,
                                                                 int64_t block_n, int64_t block_k);

// ---------------------------------------------------------------- CPU (csrc/cpu/sparse.cpp)
at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                             const std::optional<at::Tensor>& bias);
at::Tensor masked_linear_grad_input_cpu(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& mask);
at::Tensor masked_linear_grad_weight_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mask);
at::Tensor block_sparse_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                   const at::Tensor& col_idx, const std::optional<at::Tensor>& bias);

// ---------------------------------------------------------------- CPU (csrc/cpu/block_sparse_int8.cpp)
at::Tensor block_sparse_int8_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                        const at::Tensor& col_idx, const at::Tensor& scale,
                                        const std::optional<at::Tensor>& bias);

// ---------------------------------------------------------------- CUDA (csrc/cuda/block_sparse_int8.cu)
at::Tensor block_sparse_int8_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                         const at::Tensor& col_idx, const at::Tensor& scale,
                                         const std::optional<at::Tensor>& bias);

}  // namespace slimops
