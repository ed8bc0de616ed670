// CPU kernels for the int8 quantize / dequantize family.
//
// Bit-exact with python/slimops/reference/quantize.py: fp32 IEEE division,
// round half to even, saturation, scale 1 for all-zero groups and scale +inf /
// q 0 for groups holding inf or NaN. Loops are written so that GCC vectorises
// them at -O2/-O3 without -ffast-math (which would break the exactness).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <limits>
#include <vector>

#include "quantize.h"

namespace slimops {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
// Elements per parallel task: large enough to amortise the task, small enough
// to spread a single 4096-wide row batch over both cores.
constexpr int64_t kGrainElements = 1 << 15;

// Round half to even for |v| <= 2^22: adding 1.5 * 2^23 pushes the fraction
// out of the fp32 mantissa under the default round-to-nearest-even mode. It
// vectorises on plain SSE2, unlike std::nearbyint.
inline float round_half_even(float v) {
  constexpr float kMagic = 12582912.0f;
  return (v + kMagic) - kMagic;
}

// Running statistics of one quantization group.
struct GroupStats {
  float lo = 0.f;    // min(x, 0)
  float hi = 0.f;    // max(x, 0)
  bool bad = false;  // any inf or NaN

  template <typename scalar_t>
  void add(const scalar_t* x, int64_t n) {
    float l = lo, h = hi;
    int nan = 0;
    // NOTE: `omp simd` lets GCC vectorise the min/max reductions without
    // -ffast-math; min and max are exact in any order, and NaN (which
    // std::min/max skip here) is tracked on its own.
#pragma omp simd reduction(min : l) reduction(max : h) reduction(| : nan)
    for (int64_t i = 0; i < n; ++i) {
      const float v = static_cast<float>(x[i]);
      l = std::min(l, v);
      h = std::max(h, v);
      nan |= v != v;
    }
    lo = l;
    hi = h;
    bad = bad || nan || std::isinf(l) || std::isinf(h);
  }
};

struct QParams {
  float scale;
  int32_t zero_point;
  bool bad;  // the group holds inf/NaN: scale is +inf and every q is 0
};

// Must stay in step with reference._finish: the guards are applied in this order.
inline QParams symmetric_params(const GroupStats& s) {
  if (s.bad) return {kInf, 0, true};
  const float amax = std::max(-s.lo, s.hi);
  const float scale = amax / 127.0f;
  return {scale == 0.f ? 1.f : scale, 0, false};
}

inline QParams asymmetric_params(const GroupStats& s) {
  if (s.bad) return {kInf, 0, true};
  float scale = (s.hi - s.lo) / 255.0f;
  if (scale == 0.f) scale = 1.f;
  const float zp = round_half_even(std::max(s.lo / scale, -255.0f));
  return {scale, static_cast<int32_t>(std::clamp(-128.0f - zp, -128.0f, 127.0f)), false};
}

template <typename scalar_t>
void quantize_group(const scalar_t* x, int64_t n, QParams p, float qmin, int8_t* q) {
  if (p.bad) {
    std::fill(q, q + n, int8_t{0});
    return;
  }
  // Clamping before the rounding is the same as after it (the bounds are
  // integers) and keeps the magic-number rounding in its exact range.
  const float lo = qmin - static_cast<float>(p.zero_point);
  const float hi = 127.0f - static_cast<float>(p.zero_point);
  const float zp = static_cast<float>(p.zero_point);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float v = static_cast<float>(x[i]) / p.scale;
    v = std::min(std::max(v, lo), hi);
    q[i] = static_cast<int8_t>(round_half_even(v) + zp);
  }
}

// float -> bfloat16 bits, round half to even, NaN -> canonical quiet NaN: the
// same result as c10::BFloat16(float), written branch-free so the store loop
// vectorises (c10's version branches on isnan per element).
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return nan ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
}

int64_t grain_for(int64_t group_size) { return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(group_size, 1)); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_per_token_cpu(const at::Tensor& x) {
  const int64_t rows = leading_rows(x), K = x.size(-1);  // validated: validate_quantize_per_token
  std::vector<int64_t> scale_shape(x.sizes().begin(), x.sizes().end());
  scale_shape.back() = 1;
  auto q = at::empty(x.sizes(), x.options().dtype(at::kChar));            // [..., K]
  auto scale = at::empty(scale_shape, x.options().dtype(at::kFloat));     // [..., 1]
  if (x.numel() == 0) return {q, scale};

  // [rows, K] view; keeps a row stride so sliced rows are read in place.
  at::Tensor x2 = x.reshape({rows, K});
  if (x2.stride(1) != 1) x2 = x2.contiguous();
  const int64_t row_stride = x2.stride(0);
  int8_t* q_ptr = q.data_ptr<int8_t>();
  float* s_ptr = scale.data_ptr<float>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_per_token_cpu", [&] {
    const scalar_t* x_ptr = x2.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_for(K), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xr = x_ptr + r * row_stride;
        GroupStats stats;
        stats.add(xr, K);
        const QParams p = symmetric_params(stats);
        s_ptr[r] = p.scale;
        quantize_group(xr, K, p, -127.0f, q_ptr + r * K);
      }
    });
  });
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_per_channel_cpu(const at::Tensor& x, int64_t axis,
                                                                        bool symmetric) {
  const ChannelGeometry g = channel_geometry(x, axis);  // validated: validate_quantize_per_channel
  const auto scale_shape = channel_scale_shape(x, axis);
  auto q = at::empty(x.sizes(), x.options().dtype(at::kChar));
  auto scale = at::empty(scale_shape, x.options().dtype(at::kFloat));
  auto zero_point = at::zeros(scale_shape, x.options().dtype(at::kInt));
  if (x.numel() == 0) return {q, scale, zero_point};

  const at::Tensor xc = x.contiguous();  // [outer, channels, inner]
  int8_t* q_ptr = q.data_ptr<int8_t>();
  float* s_ptr = scale.data_ptr<float>();
  int32_t* z_ptr = zero_point.data_ptr<int32_t>();
  const float qmin = symmetric ? -127.0f : -128.0f;
  std::vector<QParams> params(g.channels);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "quantize_per_channel_cpu", [&] {
    const scalar_t* x_ptr = xc.const_data_ptr<scalar_t>();
    // Pass 1: statistics. Each task owns a block of channels and walks every
    // outer slice, so it reads contiguous [c0:c1, :] runs whatever the axis.
    at::parallel_for(0, g.channels, grain_for(g.outer * g.inner), [&](int64_t c0, int64_t c1) {
      std::vector<GroupStats> stats(c1 - c0);
      for (int64_t o = 0; o < g.outer; ++o) {
        for (int64_t c = c0; c < c1; ++c) {
          stats[c - c0].add(x_ptr + (o * g.channels + c) * g.inner, g.inner);
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        params[c] = symmetric ? symmetric_params(stats[c - c0]) : asymmetric_params(stats[c - c0]);
        s_ptr[c] = params[c].scale;
        z_ptr[c] = params[c].zero_point;
      }
    });
    // Pass 2: quantize each [inner] run with its channel's parameters.
    at::parallel_for(0, g.outer * g.channels, grain_for(g.inner), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % g.channels;
        quantize_group(x_ptr + r * g.inner, g.inner, params[c], qmin, q_ptr + r * g.inner);
      }
    });
  });
  return {q, scale, zero_point};
}

at::Tensor dequantize_cpu(const at::Tensor& q, const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                          c10::ScalarType out_dtype) {
  const ChannelGeometry g = dequantize_geometry(q, scale);  // validated: validate_dequantize
  auto out = at::empty(q.sizes(), q.options().dtype(out_dtype));
  if (q.numel() == 0) return out;

  const at::Tensor qc = q.contiguous();        // [outer, channels, inner]
  const at::Tensor sc = scale.contiguous();    // [channels]
  const at::Tensor zc = zero_point.has_value() ? zero_point->contiguous() : at::Tensor();
  const int8_t* q_ptr = qc.const_data_ptr<int8_t>();
  const float* s_ptr = sc.const_data_ptr<float>();
  const int32_t* z_ptr = zc.defined() ? zc.const_data_ptr<int32_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "dequantize_cpu", [&] {
    scalar_t* o_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, g.outer * g.channels, grain_for(g.inner), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % g.channels;
        const float s = s_ptr[c];
        const int32_t z = z_ptr ? z_ptr[c] : 0;
        const int8_t* qr = q_ptr + r * g.inner;
        scalar_t* orow = o_ptr + r * g.inner;
        if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
          uint16_t* obits = reinterpret_cast<uint16_t*>(orow);
          _Pragma("omp simd")  // (a #pragma cannot sit inside the dispatch macro's argument)
          for (int64_t i = 0; i < g.inner; ++i) {
            obits[i] = bf16_bits(static_cast<float>(static_cast<int32_t>(qr[i]) - z) * s);
          }
        } else {
          _Pragma("omp simd")
          for (int64_t i = 0; i < g.inner; ++i) {
            orow[i] = static_cast<scalar_t>(static_cast<float>(static_cast<int32_t>(qr[i]) - z) * s);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace slimops
