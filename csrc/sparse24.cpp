// 2:4 semi-structured sparsity: validation and sparse24_compress.
//
// sparse24_compress is built from ATen ops so that it runs on every device
// (it runs once per weight, when a model is converted); the op table registers
// it as CompositeExplicitAutograd, one node under torch.compile with its fake in
// python/slimops/ops/sparse24.py. Whether a weight is 2:4 depends on its
// values, so compress reads them back (a GPU synchronizes once per weight).
#include "sparse24.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>

#include <array>
#include <cstdint>
#include <tuple>

namespace slimops {

void validate_sparse24_compress(const at::Tensor& weight) {
  const char* op = "sparse24_compress";
  check_float_input(weight, op, "weight");
  SLIMOPS_CHECK(weight.dim() == 2, op, "weight must be 2-D [out_features, in_features], got shape ", weight.sizes());
  SLIMOPS_CHECK(weight.size(1) % 8 == 0, op, "weight has in_features K = ", weight.size(1),
                ", which must be a multiple of 8 (each meta byte covers 8 inputs: 2 groups of 4)");
}

namespace {

// What sparse24_linear and sparse24_int8_linear share: x [..., K], values [N, K/2] (dtype: x's when
// values_dtype is none, else values_dtype), meta uint8 [N, K/8], bias float [N] or none, one device.
Sparse24Geometry check_sparse24_operands(const char* op, const at::Tensor& x, const at::Tensor& values,
                                         const at::Tensor& meta, const std::optional<at::Tensor>& bias,
                                         std::optional<c10::ScalarType> values_dtype) {
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension [..., K], got a 0-d tensor");
  const int64_t k = x.size(-1);
  SLIMOPS_CHECK(values.layout() == at::kStrided, op, "values must be a dense (strided) tensor, got layout ",
                values.layout());
  SLIMOPS_CHECK(values.dim() == 2, op, "values must be 2-D [N, K/2], got shape ", values.sizes());
  if (values_dtype.has_value()) {
    check_dtype(values, *values_dtype, op, "values");
  } else {
    SLIMOPS_CHECK(values.scalar_type() == x.scalar_type(), op, "values must have x's dtype ", x.scalar_type(),
                  ", got ", values.scalar_type());
  }
  SLIMOPS_CHECK(k % 8 == 0, op, "x has K = ", k,
                ", which must be a multiple of 8 (each meta byte covers 8 inputs: 2 groups of 4)");
  SLIMOPS_CHECK(values.size(1) * 2 == k, op, "values has ", values.size(1), " columns but x has K = ", k,
                " (mismatched K): values must be [N, K/2] = [N, ", k / 2, "]");
  const int64_t n = values.size(0);
  check_dtype(meta, at::kByte, op, "meta");
  SLIMOPS_CHECK(meta.dim() == 2 && meta.size(0) == n && meta.size(1) == k / 8, op, "meta must have shape [N, K/8] = [",
                n, ", ", k / 8, "], got ", meta.sizes());
  check_same_device(x, values, op, "x", "values");
  check_same_device(x, meta, op, "x", "meta");
  if (bias.has_value()) {
    check_float_input(*bias, op, "bias");
    SLIMOPS_CHECK(bias->dim() == 1 && bias->size(0) == n, op, "bias must have shape [", n, "] (out_features), got ",
                  bias->sizes());
    check_same_device(x, *bias, op, "x", "bias");
  }
  Sparse24Geometry g;
  g.m = c10::multiply_integers(x.sizes().slice(0, x.dim() - 1));
  g.n = n;
  g.k = k;
  return g;
}

}  // namespace

Sparse24Geometry validate_sparse24_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                          const std::optional<at::Tensor>& bias) {
  return check_sparse24_operands("sparse24_linear", x, values, meta, bias, std::nullopt);
}

Sparse24Geometry validate_sparse24_int8_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& meta,
                                               const at::Tensor& scale, const std::optional<at::Tensor>& bias) {
  const char* op = "sparse24_int8_linear";
  const Sparse24Geometry g = check_sparse24_operands(op, x, values, meta, bias, at::kChar);
  check_dtype(scale, at::kFloat, op, "scale");
  SLIMOPS_CHECK(scale.dim() == 1 && scale.size(0) == g.n, op, "scale must have shape [", g.n,
                "] (one float32 scale per output row), got ", scale.sizes());
  check_same_device(x, scale, op, "x", "scale");
  return g;
}

namespace {

// For every 4-bit non-zero pattern of a group (bit p set: input p is non-zero)
// with at most 2 bits: the 2 kept positions, as in the reference
// (sparse24_split): the non-zeros, then the lowest zero positions, in
// increasing order. kKeep is their bit mask, kNibble their code (first
// position in bits 0-1, second in bits 2-3). Patterns with 3 or 4 bits are
// rejected before these are read.
struct GroupTables {
  std::array<uint8_t, 16> keep{};
  std::array<uint8_t, 16> nibble{};
  constexpr GroupTables() {
    for (int code = 0; code < 16; ++code) {
      int kept[2] = {0, 0};
      int have = 0;
      for (int p = 0; p < 4 && have < 2; ++p)
        if (code & (1 << p)) kept[have++] = p;
      for (int p = 0; p < 4 && have < 2; ++p)
        if (!(code & (1 << p))) kept[have++] = p;
      const int lo = kept[0] < kept[1] ? kept[0] : kept[1];
      const int hi = kept[0] < kept[1] ? kept[1] : kept[0];
      keep[code] = static_cast<uint8_t>((1 << lo) | (1 << hi));
      nibble[code] = static_cast<uint8_t>(lo | (hi << 2));
    }
  }
};
constexpr GroupTables kTables;

// A 16-entry uint8 table on `device` (from_blob over static storage; only read).
at::Tensor table_on(const std::array<uint8_t, 16>& t, const at::Device& device) {
  return at::from_blob(const_cast<uint8_t*>(t.data()), {16}, at::TensorOptions().dtype(at::kByte)).to(device);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sparse24_compress(const at::Tensor& weight) {
  const char* op = "sparse24_compress";
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: no graph for its inner ops
  const int64_t n = weight.size(0), k = weight.size(1), groups = k / 4;
  const auto byte_opts = weight.options().dtype(at::kByte);

  // code[n, c] = the non-zero pattern of group c (bit p: input 4c + p). NaN counts as non-zero.
  const at::Tensor bits = at::full({4}, 1, byte_opts).bitwise_left_shift(at::arange(4, byte_opts));  // 1, 2, 4, 8
  const at::Tensor nz = weight.reshape({n, groups, 4}).ne(0);
  const at::Tensor code = nz.to(at::kByte).mul(bits).sum(2, /*keepdim=*/false, at::kByte);  // [n, groups]
  const at::Tensor count = nz.sum(2, /*keepdim=*/false, at::kByte);
  const at::Tensor over = count.gt(2);
  if (over.numel() > 0 && over.any().item<bool>()) {
    const int64_t first = over.reshape({-1}).to(at::kInt).argmax().item<int64_t>();  // the first offending group
    const int64_t row = first / groups, c = first % groups;
    const int64_t nonzeros = count.reshape({-1})[first].item<int64_t>();
    SLIMOPS_CHECK(false, op, "weight is not 2:4: row ", row, ", inputs ", 4 * c, "..", 4 * c + 3, " hold ", nonzeros,
                  " non-zeros (at most 2 of every 4 consecutive inputs may be non-zero; prune it first)");
  }

  const at::Tensor code_idx = code.reshape({-1}).to(at::kLong);
  const at::Tensor keep = table_on(kTables.keep, weight.device()).index_select(0, code_idx).reshape({n, groups, 1});
  const at::Tensor keep_mask = keep.bitwise_and(bits).ne(0).reshape({n, k});  // exactly 2 per group
  // masked_select keeps row-major order: each group's 2 values in increasing position.
  at::Tensor values = weight.masked_select(keep_mask).reshape({n, k / 2});

  const at::Tensor nib = table_on(kTables.nibble, weight.device()).index_select(0, code_idx).reshape({n, k / 8, 2});
  at::Tensor meta = nib.select(2, 0).bitwise_or(nib.select(2, 1).bitwise_left_shift(4)).contiguous();
  return {values, meta};
}

}  // namespace slimops
