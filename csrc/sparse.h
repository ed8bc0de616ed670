// Masked and block-sparse linears: argument validation and launcher declarations.
//
// Semantics: python/slimops/reference/sparse.py. The validate_* functions
// mirror python/slimops/ops/_checks_sparse.py message for message.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "checks.h"
#include "quant_mm.h"  // MatmulGeometry

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

}  // namespace slimops
