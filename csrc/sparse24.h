// 2:4 semi-structured sparsity: argument validation and the launcher declarations.
//
// Semantics: python/slimops/reference/sparse.py (sparse24_split,
// sparse24_to_dense, sparse24_linear). The compressed form of a weight
// [N, K] (nn.Linear layout) is
//   values [N, K/2]     the 2 kept weights of every group of 4 inputs, in input order;
//   meta uint8 [N, K/8] byte j of row n holds the 2-bit positions (0..3 in their group) of
//                       the kept entries of inputs 8j..8j+7: 4 entries (2 per group, in
//                       increasing position), entry e in bits 2e..2e+1.
// So every group of 4 inputs has one nibble, first position in its low 2 bits:
// the per-group code of the PTX sparse-MMA metadata, in the same order.
//
// The validate_* functions are the only checks of an op's arguments: the op
// table (csrc/ops.cpp) runs them once per call, before any backend.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

#include "checks.h"

namespace slimops {

struct Sparse24Geometry {
  int64_t m = 0;  // rows of x (product of its leading dims)
  int64_t n = 0;  // out_features
  int64_t k = 0;  // in_features (a multiple of 8)
};

// sparse24_compress: weight float32/float16/bfloat16 [N, K], K % 8 == 0.
// (Whether the weight is 2:4 depends on its values: sparse24_compress checks that itself.)
void validate_sparse24_compress(const at::Tensor& weight);

// sparse24_linear: x float [..., K], values [N, K/2] of x's dtype, meta uint8
// [N, K/8], bias float [N] or none, all on one device; K % 8 == 0.
Sparse24Geometry validate_sparse24_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                          const std::optional<at::Tensor>& bias);

// sparse24_int8_linear: as sparse24_linear, with values int8 [N, K/2] and scale float32 [N] (one per
// output row, on x's device): the weight is values * scale[n], kept 2:4 (the Sparse-Marlin idea, in int8).
Sparse24Geometry validate_sparse24_int8_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                               const at::Tensor& scale, const std::optional<at::Tensor>& bias);

// Every device (csrc/sparse24.cpp): reads the weight back to check it is 2:4.
std::tuple<at::Tensor, at::Tensor> sparse24_compress(const at::Tensor& weight);

// CPU (csrc/cpu/sparse24.cpp): decodes to the dense weight.
at::Tensor sparse24_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                               const std::optional<at::Tensor>& bias);

// CPU (csrc/cpu/sparse24_int8.cpp): in registers up to 16 rows of x, else decoded blocks + ATen's GEMM.
at::Tensor sparse24_int8_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                    const at::Tensor& scale, const std::optional<at::Tensor>& bias);

#ifdef SLIMOPS_WITH_CUDA
// mma.sp kernels (csrc/cuda/sparse24.cu): fp16/bf16 x, any M, any K % 8 == 0.
at::Tensor sparse24_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                const std::optional<at::Tensor>& bias);

// Decode GEMV (csrc/cuda/sparse24_int8.cu): fp16/bf16/fp32 x, M <= 16 per launch (larger M in slices).
at::Tensor sparse24_int8_linear_cuda(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                     const at::Tensor& scale, const std::optional<at::Tensor>& bias);
#endif

}  // namespace slimops
