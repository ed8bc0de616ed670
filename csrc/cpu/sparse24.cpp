// CPU kernel of sparse24_linear: decode (values, meta) to the dense fp32
// weight in one pass, then one fp32 GEMM, rounded once to x's dtype (as the
// GPU kernels accumulate in fp32). A CPU has no sparse tensor cores, and the
// decode costs less than the GEMM for every M past a few rows.
//
// The decode also checks the metadata (the 2 positions of a group strictly
// increasing), which is cheap here, where every byte is read anyway.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>

#include "sparse24.h"

namespace slimops {
namespace {

// Rows per parallel task: 16 rows of K <= 16384 fp32 are at most 1 MB.
constexpr int64_t kRowsPerTask = 16;

// Group c of a row is valid when its positions p0 < p1 (entries 2c, 2c+1: nibble c % 2 of byte c / 2).
inline bool group_ok(const uint8_t* meta_row, int64_t c, int& p0, int& p1) {
  const int nib = (meta_row[c >> 1] >> (4 * (c & 1))) & 0xF;
  p0 = nib & 3;
  p1 = nib >> 2;
  return p0 < p1;
}

template <typename scalar_t>
void decode(const scalar_t* values, const uint8_t* meta, float* dense, int64_t n, int64_t k,
            std::atomic<bool>& bad) {
  const int64_t groups = k / 4;
  at::parallel_for(0, n, kRowsPerTask, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* d = dense + r * k;
      const scalar_t* v = values + r * (k / 2);
      const uint8_t* m = meta + r * (k / 8);
      std::fill(d, d + k, 0.0f);
      bool row_bad = false;
      for (int64_t c = 0; c < groups; ++c) {
        int p0, p1;
        row_bad |= !group_ok(m, c, p0, p1);
        d[4 * c + p0] = static_cast<float>(v[2 * c]);
        d[4 * c + p1] = static_cast<float>(v[2 * c + 1]);
      }
      if (row_bad) bad.store(true, std::memory_order_relaxed);
    }
  });
}

// The first group whose positions are not increasing: an error that names it.
void report_bad_meta(const uint8_t* meta, int64_t n, int64_t k) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k / 4; ++c) {
      int p0, p1;
      SLIMOPS_CHECK(group_ok(meta + r * (k / 8), c, p0, p1), "sparse24_linear",
                    "meta is not 2:4 metadata: row ", r, ", inputs ", 4 * c, "..", 4 * c + 3, " have positions (", p0,
                    ", ", p1, "); the 2 positions of a group must be increasing (make meta with sparse24_compress)");
    }
  }
}

}  // namespace

at::Tensor sparse24_linear_cpu(const at::Tensor& x,       // [..., K] float
                               const at::Tensor& values,  // [N, K/2], x's dtype
                               const at::Tensor& meta,    // [N, K/8] uint8
                               const std::optional<at::Tensor>& bias) {  // [N] float
  // validated: validate_sparse24_linear
  const Sparse24Geometry g{leading_rows(x), values.size(0), x.size(-1)};
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: no graph for its inner ops
  const at::Tensor v = values.contiguous();
  const at::Tensor m = meta.contiguous();
  at::Tensor w = at::empty({g.n, g.k}, x.options().dtype(at::kFloat));
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, v.scalar_type(), "sparse24_linear_cpu", [&] {
    decode(v.const_data_ptr<scalar_t>(), m.const_data_ptr<uint8_t>(), w.mutable_data_ptr<float>(), g.n, g.k, bad);
  });
  if (bad.load()) report_bad_meta(m.const_data_ptr<uint8_t>(), g.n, g.k);
  std::optional<at::Tensor> bias_f;
  if (bias.has_value()) bias_f = bias->to(at::kFloat);
  return at::linear(x.to(at::kFloat), w, bias_f).to(x.scalar_type());
}

}  // namespace slimops
