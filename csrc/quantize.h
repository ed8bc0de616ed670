// int8 quantize / dequantize: argument validation and launcher declarations.
//
// Semantics are defined by python/slimops/reference/quantize.py; every backend
// must match it bit for bit. The validate_* functions below are the only checks
// of an op's arguments: the op table (csrc/ops.cpp) runs them once per call,
// before any backend; the kernels (CPU, CUDA C++, Triton) trust them and take
// the geometry from the unchecked *_geometry functions.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "checks.h"

namespace slimops {

// A tensor seen as [outer, channels, inner] with one scale (and zero point)
// per channel: per-token is [1, rows, K], per-channel along axis a is
// [prod(shape[:a]), shape[a], prod(shape[a+1:])], per-tensor is [1, 1, numel].
struct ChannelGeometry {
  int64_t outer = 1;
  int64_t channels = 1;
  int64_t inner = 1;
};

// quantize_per_token: x [..., K] float -> rows = numel / K.
// Returns {rows, K}. Rejects non-float dtypes and K == 0 with rows > 0.
// Shared by every per-row quantizer; `op` names the one being called.
std::tuple<int64_t, int64_t> validate_quantize_per_token(const at::Tensor& x, const char* op = "quantize_per_token");

// quantize_per_channel: x [...] float, axis in [-dim, dim).
// Returns the [outer, channels, inner] view of x around the (wrapped) axis.
ChannelGeometry validate_quantize_per_channel(const at::Tensor& x, int64_t axis);

// dequantize: q int8, scale fp32 in keepdim layout (same rank as q, each dim 1
// or q's size, the non-1 dims contiguous), zero_point int32 shaped like scale.
ChannelGeometry validate_dequantize(const at::Tensor& q, const at::Tensor& scale,
                                    const std::optional<at::Tensor>& zero_point, c10::ScalarType out_dtype);

// The [outer, channels, inner] view of x around `axis` (already validated). No checks.
ChannelGeometry channel_geometry(const at::Tensor& x, int64_t axis);
// The [outer, channels, inner] view of q that a keepdim scale (already validated) varies along. No checks.
ChannelGeometry dequantize_geometry(const at::Tensor& q, const at::Tensor& scale);

// Shape of the keepdim scale for a per-channel quantization along `axis`.
std::vector<int64_t> channel_scale_shape(const at::Tensor& x, int64_t axis);

// ---------------------------------------------------------------- CPU
std::tuple<at::Tensor, at::Tensor> quantize_per_token_cpu(const at::Tensor& x);
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_channel_cpu(const at::Tensor& x, int64_t axis,
                                                                        bool symmetric);
at::Tensor dequantize_cpu(const at::Tensor& q, const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                          c10::ScalarType out_dtype);

// ---------------------------------------------------------------- CUDA
#ifdef SLIMOPS_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> quantize_per_token_cuda(const at::Tensor& x);
std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_channel_cuda(const at::Tensor& x, int64_t axis,
                                                                         bool symmetric);
at::Tensor dequantize_cuda(const at::Tensor& q, const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                           c10::ScalarType out_dtype);
#endif

}  // namespace slimops
