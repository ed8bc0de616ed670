// Checks and preparation of the decode GEMV family (see decode_gemv.h), shared by the CUDA
// launcher and the CPU emulator so that both run exactly the same Problem.
#include "decode_gemv.h"

#include <ATen/ops/empty.h>

#include <limits>

#include "codebook4.h"
#include "int4.h"

namespace slimops {

namespace {

constexpr const char* kOp = "decode_gemv";

// fp32, contiguous: the kernels read scales, zero points, codebooks and bias as fp32 arrays.
at::Tensor fp32_contiguous(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

void check_rowwise_scale(const at::Tensor& scale, int64_t n) {
  check_float_input(scale, kOp, "scale");
  SLIMOPS_CHECK((scale.dim() == 1 && scale.size(0) == n) || (scale.dim() == 2 && scale.size(0) == n &&
                                                             scale.size(1) == 1),
                kOp, "scale must be [", n, "] or [", n, ", 1] (one per output channel), got shape ", scale.sizes());
}

}  // namespace

DecodeVariant decode_variant(int v) {
  SLIMOPS_CHECK(v >= 0 && v < decode::kNumVariants, kOp, "variant must be in [0, ", decode::kNumVariants,
                "), got ", v);
  const decode::Shape s = decode::kShapes[v / decode::kNumSplits];
  return {v, s.rows, s.warps, s.unroll, decode::kSplits[v % decode::kNumSplits]};
}

DecodeCall prepare_decode_gemv(int64_t format, int64_t variant, const at::Tensor& x, const at::Tensor& qweight,
                               const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                               const std::optional<at::Tensor>& codebook, const std::optional<at::Tensor>& bias,
                               int64_t group_size) {
  using namespace decode;
  SLIMOPS_CHECK(format >= 0 && format < kNumFormats, kOp, "format must be in [0, ", int(kNumFormats), "), got ",
                format);
  const DecodeVariant var = decode_variant(static_cast<int>(variant));
  const char* fname = format_name(static_cast<int>(format));
  SLIMOPS_CHECK(x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16, kOp,
                "x must be float16 or bfloat16 (the decode kernels stage 16-bit activations; float32 takes the "
                "op's other kernels), got ", x.scalar_type());
  SLIMOPS_CHECK(x.dim() >= 1 && x.size(-1) >= 1, kOp, "x must be [..., K] with K >= 1, got shape ", x.sizes());
  const int64_t K = x.size(-1);
  SLIMOPS_CHECK(K < (int64_t(1) << 30), kOp, "x must have K < 2^30 inputs, got ", K);
  const int64_t M = x.numel() / K;
  const int64_t N = qweight.dim() >= 1 ? qweight.size(0) : 0;
  SLIMOPS_CHECK(qweight.dim() == 2, kOp, "qweight must be 2-D [N, bytes per row], got shape ", qweight.sizes());
  int64_t groups = 1;
  const bool nibbles = is_nibble_format(static_cast<int>(format));
  SLIMOPS_CHECK(zero_point.has_value() == (format == kInt4Asym), kOp, "zero_point is ",
                format == kInt4Asym ? "required" : "not taken", " for format ", fname);
  SLIMOPS_CHECK(codebook.has_value() == (format == kCodebook4), kOp, "codebook is ",
                format == kCodebook4 ? "required" : "not taken", " for format ", fname);
  if (format == kInt4Asym || format == kInt4Sym) {
    groups = validate_weight_int4_linear(x, qweight, scale, zero_point, group_size, bias).groups;
  } else if (nibbles) {  // codebook4: int4's geometry and a codebook (the op's own checks)
    groups = validate_weight_codebook4_linear(x, qweight, *codebook, scale, group_size, bias).groups;
  } else {
    const bool fp8 = format == kFp8Channel;
    check_dtype(qweight, fp8 ? at::kFloat8_e4m3fn : at::kChar, kOp, "qweight");
    SLIMOPS_CHECK(qweight.size(1) == K, kOp, "qweight must be [N, K] with K = ", K, ", got shape ",
                  qweight.sizes());
    SLIMOPS_CHECK(K % 16 == 0, kOp, "K must be a multiple of 16 for format ", fname,
                  " (16-byte weight loads of aligned rows), got ", K);
    if (format == kInt8Group) {
      SLIMOPS_CHECK(group_size >= 16 && group_size % 16 == 0 && K % group_size == 0, kOp,
                    "group_size must be a positive multiple of 16 that divides K = ", K, ", got ", group_size);
      groups = K / group_size;
      check_float_input(scale, kOp, "scale");
      SLIMOPS_CHECK(scale.dim() == 2 && scale.size(0) == N && scale.size(1) == groups, kOp, "scale must be [", N,
                    ", ", groups, "], got shape ", scale.sizes());
    } else {
      check_rowwise_scale(scale, N);
      group_size = K;
    }
  }
  if (bias.has_value()) {
    check_float_input(*bias, kOp, "bias");
    SLIMOPS_CHECK(bias->dim() == 1 && bias->size(0) == N, kOp, "bias must be [", N, "], got shape ", bias->sizes());
  }
  for (const auto& [t, name] : {std::pair{&qweight, "qweight"}, std::pair{&scale, "scale"}}) {
    check_same_device(x, *t, kOp, "x", name);
  }
  if (zero_point) check_same_device(x, *zero_point, kOp, "x", "zero_point");
  if (codebook) check_same_device(x, *codebook, kOp, "x", "codebook");
  if (bias) check_same_device(x, *bias, kOp, "x", "bias");

  DecodeCall c;
  c.format = static_cast<int>(format);
  c.xtype = x.scalar_type() == at::kBFloat16 ? kXBF16 : kXF16;
  c.shape = static_cast<int>(variant) / kNumSplits;
  c.ksplit = var.ksplit;
  c.tokens = tokens_per_cta(M);
  // x as [M, K] rows with element stride 1: a row-strided view is read in place.
  c.x = x.reshape({M, K});
  if (c.x.stride(1) != 1 || (M > 1 && c.x.stride(0) < K)) c.x = c.x.contiguous();
  c.w = qweight.is_contiguous() ? qweight : qweight.contiguous();
  SLIMOPS_CHECK(reinterpret_cast<uintptr_t>(c.w.const_data_ptr()) % 16 == 0, kOp,
                "qweight must start on a 16-byte boundary (16-byte loads), got address ", c.w.const_data_ptr());
  c.scale = fp32_contiguous(scale);
  if (zero_point) c.zero = fp32_contiguous(*zero_point);
  if (codebook) c.codebook = fp32_contiguous(*codebook);
  if (bias) c.bias = fp32_contiguous(*bias);
  c.out_shape = x.sizes().vec();
  c.out_shape.back() = N;
  c.out = at::empty({M, N}, x.options());

  Problem& p = c.p;
  p.x = reinterpret_cast<const uint16_t*>(c.x.const_data_ptr());
  p.x_stride = M > 1 ? c.x.stride(0) : K;
  p.w = reinterpret_cast<const uint8_t*>(c.w.const_data_ptr());
  p.row_bytes = c.w.size(1);
  p.scale = c.scale.const_data_ptr<float>();
  p.zero = c.zero.defined() ? c.zero.const_data_ptr<float>() : nullptr;
  p.codebook = c.codebook.defined() ? c.codebook.const_data_ptr<float>() : nullptr;
  p.codebook_rows = c.codebook.defined() ? c.codebook.size(0) : 0;
  p.bias = c.bias.defined() ? c.bias.const_data_ptr<float>() : nullptr;
  p.out = reinterpret_cast<uint16_t*>(c.out.mutable_data_ptr());
  p.ws = nullptr;
  p.M = M;
  p.N = N;
  p.K = K;
  p.groups = groups;
  p.group_size = group_size;
  const int cw = nibbles ? 32 : 16;
  p.chunks = (K + cw - 1) / cw;
  p.chunks_per_split = (p.chunks + c.ksplit - 1) / c.ksplit;
  p.ksplit = c.ksplit;
  return c;
}

}  // namespace slimops
