// int4 weight-only family: argument validation and kernel declarations.
//
// Semantics: python/slimops/reference/int4.py. The packed format (two int4 per
// byte, "32-input chunks": byte 16c + i holds input 32c + i in its low nibble
// and input 32c + 16 + i in its high nibble) is documented there and in
// python/slimops/nn/int4.py, which packs it.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "checks.h"

namespace slimops {

// Inputs per packed chunk: 16 bytes hold 32 int4 weights.
constexpr int64_t kInt4Chunk = 32;

// The checks every 4-bit packed weight op shares (int4, codebook4), with `op` in the messages:
// x float [..., K] (K >= 1); group_size a positive multiple of 32; qweight uint8 [N, ceil(K / 32) * 16];
// scale float [N, ceil(K / group_size)]; bias float [N] or none; all on x's device.
MatmulGeometry validate_nibble_weight(const char* op, const at::Tensor& x, const at::Tensor& qweight,
                                      const at::Tensor& scale, int64_t group_size,
                                      const std::optional<at::Tensor>& bias);

// weight_int4_linear: x float [..., K]; qweight uint8 [N, ceil(K / 32) * 16]; scale float
// [N, ceil(K / group_size)]; zero_point float [N, groups] or none (symmetric: 8); group_size a
// positive multiple of 32; bias float [N] or none. Returns the geometry (groups = scale's columns).
MatmulGeometry validate_weight_int4_linear(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                                           const std::optional<at::Tensor>& zero_point, int64_t group_size,
                                           const std::optional<at::Tensor>& bias);

// ---------------------------------------------------------------- CPU (csrc/cpu/int4.cpp)
at::Tensor weight_int4_linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                                  const std::optional<at::Tensor>& zero_point, int64_t group_size,
                                  const std::optional<at::Tensor>& bias);

}  // namespace slimops
