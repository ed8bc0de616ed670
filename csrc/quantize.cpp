// Argument validation for the int8 quantize / dequantize family, run once per
// call by the op table (csrc/ops.cpp) before any backend. See quantize.h.
#include "quantize.h"

namespace slimops {

std::tuple<int64_t, int64_t> validate_quantize_per_token(const at::Tensor& x, const char* op) {
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension (rows of the last dimension), got a 0-d tensor");
  const int64_t K = x.size(-1);
  const int64_t rows = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  SLIMOPS_CHECK(K > 0 || rows == 0, op, "x must have a non-empty last dimension, got shape ", x.sizes());
  return {rows, K};
}

ChannelGeometry validate_quantize_per_channel(const at::Tensor& x, int64_t axis) {
  const char* op = "quantize_per_channel";
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension, got a 0-d tensor");
  SLIMOPS_CHECK(axis >= -x.dim() && axis < x.dim(), op, "axis must be in [", -x.dim(), ", ", x.dim(), ") for x of shape ",
                x.sizes(), ", got ", axis);
  const ChannelGeometry g = channel_geometry(x, axis);
  SLIMOPS_CHECK(g.channels == 0 || g.outer * g.inner > 0, op,
                "x must have at least one element per channel, got shape ", x.sizes(), " with axis ", axis);
  return g;
}

ChannelGeometry channel_geometry(const at::Tensor& x, int64_t axis) {
  const int64_t a = axis < 0 ? axis + x.dim() : axis;
  ChannelGeometry g;
  g.outer = c10::multiply_integers(x.sizes().slice(0, a));
  g.channels = x.size(a);
  g.inner = c10::multiply_integers(x.sizes().slice(a + 1));
  return g;
}

ChannelGeometry dequantize_geometry(const at::Tensor& q, const at::Tensor& scale) {
  int64_t first = -1, last = -1;
  for (int64_t d = 0; d < q.dim(); ++d) {
    if (scale.size(d) != 1) {
      if (first < 0) first = d;
      last = d;
    }
  }
  ChannelGeometry g;
  if (first < 0) {
    g.inner = q.numel();
  } else {
    g.outer = c10::multiply_integers(q.sizes().slice(0, first));
    g.channels = c10::multiply_integers(q.sizes().slice(first, last + 1 - first));
    g.inner = c10::multiply_integers(q.sizes().slice(last + 1));
  }
  return g;
}

std::vector<int64_t> channel_scale_shape(const at::Tensor& x, int64_t axis) {
  const int64_t a = axis < 0 ? axis + x.dim() : axis;
  std::vector<int64_t> shape(x.dim(), 1);
  shape[a] = x.size(a);
  return shape;
}

ChannelGeometry validate_dequantize(const at::Tensor& q, const at::Tensor& scale,
                                    const std::optional<at::Tensor>& zero_point, c10::ScalarType out_dtype) {
  const char* op = "dequantize";
  check_dtype(q, at::kChar, op, "q");
  check_dtype(scale, at::kFloat, op, "scale");
  check_same_device(q, scale, op, "q", "scale");
  SLIMOPS_CHECK(is_float_activation(out_dtype), op, "out_dtype must be float32, float16 or bfloat16, got ", out_dtype);
  SLIMOPS_CHECK(scale.dim() == q.dim(), op, "scale must have the rank of q (keepdim layout), got scale shape ",
                scale.sizes(), " for q of shape ", q.sizes());
  // The non-1 dims of scale must be one contiguous run where scale matches q.
  int64_t first = -1, last = -1;
  for (int64_t d = 0; d < q.dim(); ++d) {
    SLIMOPS_CHECK(scale.size(d) == 1 || scale.size(d) == q.size(d), op, "scale must have size 1 or ", q.size(d),
                  " in dim ", d, ", got scale shape ", scale.sizes(), " for q of shape ", q.sizes());
    if (scale.size(d) != 1) {
      if (first < 0) first = d;
      last = d;
    }
  }
  for (int64_t d = first; first >= 0 && d <= last; ++d) {
    SLIMOPS_CHECK(scale.size(d) == q.size(d), op,
                  "scale must vary along one contiguous run of dims (per-tensor, per-token or per-channel), got scale "
                  "shape ",
                  scale.sizes(), " for q of shape ", q.sizes());
  }
  if (zero_point.has_value()) {
    check_dtype(*zero_point, at::kInt, op, "zero_point");
    check_same_device(q, *zero_point, op, "q", "zero_point");
    SLIMOPS_CHECK(zero_point->sizes() == scale.sizes(), op, "zero_point must have the shape of scale ", scale.sizes(),
                  ", got ", zero_point->sizes());
  }
  return dequantize_geometry(q, scale);
}

}  // namespace slimops
