// Validation of the masked and block-sparse linears, and block_sparse_pack,
// which is built from ATen ops so that it runs on every device (it runs once
// per weight, when a model is converted; the op table registers it as
// CompositeExplicitAutograd).
#include "sparse.h"

#include <ATen/TensorIndexing.h>
#include <ATen/ops/any.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/nonzero.h>
#include <ATen/ops/zeros.h>

namespace slimops {
namespace {

constexpr int64_t kBlockSizes[] = {16, 32, 64, 128};

bool is_block_size(int64_t b) {
  for (int64_t s : kBlockSizes)
    if (s == b) return true;
  return false;
}

void check_bias(const std::optional<at::Tensor>& bias, int64_t n, const at::Tensor& x, const char* op) {
  if (!bias.has_value()) return;
  check_float_input(*bias, op, "bias");
  SLIMOPS_CHECK(bias->dim() == 1 && bias->size(0) == n, op, "bias must have shape [", n, "] (out_features), got ",
                bias->sizes());
  check_same_device(x, *bias, op, "x", "bias");
}

void check_mask(const at::Tensor& mask, at::IntArrayRef weight_shape, const at::Tensor& like, const char* like_name,
                const char* op) {
  check_dtype(mask, at::kBool, op, "mask");
  SLIMOPS_CHECK(mask.sizes() == weight_shape, op, "mask must have the weight's shape ", weight_shape, ", got ",
                mask.sizes());
  check_same_device(like, mask, op, like_name, "mask");
}

}  // namespace

MatmulGeometry validate_masked_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                                      const std::optional<at::Tensor>& bias) {
  const char* op = "masked_linear";
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension [..., K], got a 0-d tensor");
  const int64_t k = x.size(-1);
  SLIMOPS_CHECK(weight.dim() == 2, op, "weight must be 2-D [N, K], got shape ", weight.sizes());
  SLIMOPS_CHECK(weight.scalar_type() == x.scalar_type(), op, "weight must have x's dtype ", x.scalar_type(), ", got ",
                weight.scalar_type());
  SLIMOPS_CHECK(weight.size(1) == k, op, "weight has in_features ", weight.size(1), " but x has K = ", k,
                " (mismatched K)");
  check_same_device(x, weight, op, "x", "weight");
  check_mask(mask, weight.sizes(), x, "x", op);
  check_bias(bias, weight.size(0), x, op);
  return {leading_rows(x), weight.size(0), k, 1};
}

MatmulGeometry validate_masked_linear_grad_input(const at::Tensor& grad, const at::Tensor& weight,
                                                 const at::Tensor& mask) {
  const char* op = "masked_linear_grad_input";
  check_float_input(grad, op, "grad");
  SLIMOPS_CHECK(grad.dim() >= 1, op, "grad must have at least 1 dimension [..., N], got a 0-d tensor");
  SLIMOPS_CHECK(weight.dim() == 2, op, "weight must be 2-D [N, K], got shape ", weight.sizes());
  SLIMOPS_CHECK(weight.scalar_type() == grad.scalar_type(), op, "weight must have grad's dtype ", grad.scalar_type(),
                ", got ", weight.scalar_type());
  SLIMOPS_CHECK(weight.size(0) == grad.size(-1), op, "weight has out_features ", weight.size(0), " but grad has N = ",
                grad.size(-1));
  check_same_device(grad, weight, op, "grad", "weight");
  check_mask(mask, weight.sizes(), grad, "grad", op);
  return {leading_rows(grad), weight.size(0), weight.size(1), 1};
}

MatmulGeometry validate_masked_linear_grad_weight(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mask) {
  const char* op = "masked_linear_grad_weight";
  check_float_input(grad, op, "grad");
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(grad.dim() >= 1 && x.dim() >= 1, op, "grad and x must have at least 1 dimension, got a 0-d tensor");
  SLIMOPS_CHECK(grad.sizes().slice(0, grad.dim() - 1) == x.sizes().slice(0, x.dim() - 1), op, "grad ", grad.sizes(),
                " and x ", x.sizes(), " must share their leading dims");
  const int64_t n = grad.size(-1), k = x.size(-1);
  check_same_device(grad, x, op, "grad", "x");
  check_dtype(mask, at::kBool, op, "mask");
  SLIMOPS_CHECK(mask.dim() == 2 && mask.size(0) == n && mask.size(1) == k, op, "mask must have shape (", n, ", ", k,
                ") (grad's N, x's K), got ", mask.sizes());
  check_same_device(grad, mask, op, "grad", "mask");
  return {leading_rows(x), n, k, 1};
}

void validate_block_sparse_pack(const at::Tensor& weight, const std::optional<at::Tensor>& mask, int64_t block_n,
                                int64_t block_k) {
  const char* op = "block_sparse_pack";
  check_float_input(weight, op, "weight");
  SLIMOPS_CHECK(weight.dim() == 2, op, "weight must be 2-D [N, K], got shape ", weight.sizes());
  if (mask.has_value()) check_mask(*mask, weight.sizes(), weight, "weight", op);
  SLIMOPS_CHECK(is_block_size(block_n), op, "block_n must be one of (16, 32, 64, 128), got ", block_n);
  SLIMOPS_CHECK(is_block_size(block_k), op, "block_k must be one of (16, 32, 64, 128), got ", block_k);
  SLIMOPS_CHECK(weight.size(0) % block_n == 0 && weight.size(1) % block_k == 0, op, "block ", block_n, "x", block_k,
                " must divide the weight's shape ", weight.sizes(),
                " (pad the layer's features to a multiple of the block first)");
}

namespace {

// Whether t's elements are in host memory here: a real CPU tensor, not the fake
// (meta-backed) one that torch.compile's shape propagation passes to the checks.
bool has_host_data(const at::Tensor& t) { return t.is_cpu() && t.has_storage() && t.storage().data() != nullptr; }

// The index arrays come from the caller. On the CPU they are read here, once per
// call, where that is cheap, so a malformed one is an error rather than an
// out-of-bounds read; the CPU kernel and the Triton launcher (interpreted) both
// rely on it. On a GPU, reading them back would cost a device sync on every
// call (every decode step); the Triton kernel clamps row_ptr to [0, nnz] and
// skips tiles whose col_idx is out of range instead (kernels/block_sparse.py), so a
// malformed array cannot read out of bounds there either.
void check_bsr_indices(const char* op, const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t nnz,
                       int64_t tile_cols) {
  const int32_t* rp = row_ptr.const_data_ptr<int32_t>();
  const int64_t rows = row_ptr.numel() - 1;
  SLIMOPS_CHECK(rp[0] == 0 && rp[rows] == nnz, op, "row_ptr must start at 0 and end at nnz = ", nnz, ", got ", rp[0],
                " and ", rp[rows]);
  for (int64_t r = 0; r < rows; ++r) {
    SLIMOPS_CHECK(rp[r] <= rp[r + 1], op, "row_ptr must be non-decreasing, got ", rp[r], " then ", rp[r + 1],
                  " at block row ", r);
  }
  const int32_t* ci = col_idx.const_data_ptr<int32_t>();
  for (int64_t t = 0; t < nnz; ++t) {
    SLIMOPS_CHECK(ci[t] >= 0 && ci[t] < tile_cols, op, "col_idx[", t, "] = ", ci[t], " is outside [0, ", tile_cols,
                  ") (K / block_k tile columns)");
  }
}

// The BSR arguments every block-sparse linear shares (x, the tile shape, the index arrays and
// their contents, bias), whatever the values' element type; the callers check that type.
MatmulGeometry validate_bsr_linear(const char* op, const at::Tensor& x, const at::Tensor& values,
                                   const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                   const std::optional<at::Tensor>& bias) {
  SLIMOPS_CHECK(is_block_size(values.size(1)), op, "values' block_n must be one of (16, 32, 64, 128), got ",
                values.size(1));
  SLIMOPS_CHECK(is_block_size(values.size(2)), op, "values' block_k must be one of (16, 32, 64, 128), got ",
                values.size(2));
  check_dtype(row_ptr, at::kInt, op, "row_ptr");
  check_dtype(col_idx, at::kInt, op, "col_idx");
  SLIMOPS_CHECK(row_ptr.dim() == 1 && row_ptr.size(0) >= 1, op, "row_ptr must be 1-D [N / block_n + 1], got ",
                row_ptr.sizes());
  SLIMOPS_CHECK(col_idx.dim() == 1 && col_idx.size(0) == values.size(0), op, "col_idx must be [nnz] = [",
                values.size(0), "], got ", col_idx.sizes());
  const int64_t k = x.size(-1);
  SLIMOPS_CHECK(k % values.size(2) == 0, op, "x's K = ", k, " must be a multiple of block_k = ", values.size(2));
  check_same_device(x, values, op, "x", "values");
  check_same_device(x, row_ptr, op, "x", "row_ptr");
  check_same_device(x, col_idx, op, "x", "col_idx");
  const int64_t n = (row_ptr.size(0) - 1) * values.size(1);
  check_bias(bias, n, x, op);
  if (has_host_data(row_ptr) && (values.size(0) == 0 || has_host_data(col_idx))) {
    check_bsr_indices(op, row_ptr.contiguous(), col_idx.contiguous(), values.size(0), k / values.size(2));
  }
  return {leading_rows(x), n, k, 1};
}

}  // namespace

MatmulGeometry validate_block_sparse_linear(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                            const at::Tensor& col_idx, const std::optional<at::Tensor>& bias) {
  const char* op = "block_sparse_linear";
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension [..., K], got a 0-d tensor");
  SLIMOPS_CHECK(values.dim() == 3, op, "values must be [nnz, block_n, block_k], got ", values.sizes());
  SLIMOPS_CHECK(values.scalar_type() == x.scalar_type(), op, "values must have x's dtype ", x.scalar_type(), ", got ",
                values.scalar_type());
  return validate_bsr_linear(op, x, values, row_ptr, col_idx, bias);
}

MatmulGeometry validate_block_sparse_int8_linear(const at::Tensor& x, const at::Tensor& values,
                                                 const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                                 const at::Tensor& scale, const std::optional<at::Tensor>& bias) {
  const char* op = "block_sparse_int8_linear";
  check_float_input(x, op, "x");
  SLIMOPS_CHECK(x.dim() >= 1, op, "x must have at least 1 dimension [..., K], got a 0-d tensor");
  SLIMOPS_CHECK(values.dim() == 3, op, "values must be int8 [nnz, block_n, block_k], got ", values.sizes());
  check_dtype(values, at::kChar, op, "values");
  const MatmulGeometry g = validate_bsr_linear(op, x, values, row_ptr, col_idx, bias);
  check_dtype(scale, at::kFloat, op, "scale");
  SLIMOPS_CHECK(scale.dim() == 1 && scale.size(0) == g.n, op, "scale must be fp32 [", g.n,
                "] (one per output row, N = (row_ptr.numel() - 1) * block_n), got shape ", scale.sizes());
  check_same_device(x, scale, op, "x", "scale");
  return g;
}

// Device-agnostic: the same ATen ops as the reference, so CPU and CUDA weights pack alike.
std::tuple<at::Tensor, at::Tensor, at::Tensor> block_sparse_pack(const at::Tensor& weight,
                                                                 const std::optional<at::Tensor>& mask,
                                                                 int64_t block_n, int64_t block_k) {
  const int64_t n = weight.size(0), k = weight.size(1), rows = n / block_n, cols = k / block_k;
  const at::Tensor keep = mask.has_value() ? *mask : weight.ne(0);
  const at::Tensor w = mask.has_value() ? weight.mul(mask->to(weight.scalar_type())) : weight;
  const at::Tensor tiles = w.reshape({rows, block_n, cols, block_k}).permute({0, 2, 1, 3});
  const at::Tensor kept = keep.reshape({rows, block_n, cols, block_k}).any(3).any(1);  // [rows, cols]
  const at::Tensor where = at::nonzero(kept);                                           // [nnz, 2], row-major
  const at::Tensor r = where.select(1, 0), c = where.select(1, 1);
  at::Tensor values = tiles.index({r, c}).contiguous();
  at::Tensor row_ptr = at::zeros({rows + 1}, weight.options().dtype(at::kInt));
  row_ptr.narrow(0, 1, rows).copy_(at::cumsum(kept.sum(1), 0));
  return {values, row_ptr, c.to(at::kInt).contiguous()};
}

}  // namespace slimops
