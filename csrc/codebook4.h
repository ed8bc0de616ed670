// Codebook (non-uniform) 4-bit weight-only family: argument validation and kernel declarations.
//
// Semantics: python/slimops/reference/codebook4.py. qweight holds 4-bit codebook indices in the
// int4 nibble layout (csrc/cpu/nibbles.h); the weight is
//   w[n, k] = codebook[c, q[n, k]] * scale[n, k / group_size],  c = 0 (one table) or n (one per row)
// (NF4, or k-means fitted on the weights normalised by their block absmax: python/slimops/nn/codebook.py).
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "checks.h"

namespace slimops {

// Entries per codebook: 4-bit indices.
constexpr int64_t kCodebookEntries = 16;

// weight_codebook4_linear: x float [..., K]; qweight uint8 [N, ceil(K / 32) * 16]; codebook float
// [1 or N, 16]; scale float [N, ceil(K / group_size)]; group_size a positive multiple of 32; bias
// float [N] or none. Returns the geometry (groups = scale's columns).
MatmulGeometry validate_weight_codebook4_linear(const at::Tensor& x, const at::Tensor& qweight,
                                                const at::Tensor& codebook, const at::Tensor& scale,
                                                int64_t group_size, const std::optional<at::Tensor>& bias);

// ---------------------------------------------------------------- CPU (csrc/cpu/codebook4.cpp)
at::Tensor weight_codebook4_linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& codebook,
                                       const at::Tensor& scale, int64_t group_size,
                                       const std::optional<at::Tensor>& bias);

}  // namespace slimops
