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

#include <atomic>

#include "cpu/sparse24_meta.h"
#include "sparse24.h"

namespace slimops {
namespace {

// Rows per parallel task: 16 rows of K <= 16384 fp32 are at most 1 MB.
constexpr int64_t kRowsPerTask = 16;

template <typename scalar_t>
void decode(const scalar_t* values, const uint8_t* meta, float* dense, int64_t n, int64_t k,
            std::atomic<bool>& bad) {
  at::parallel_for(0, n, kRowsPerTask, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if (!sparse24::decode_row(values + r * (k / 2), meta + r * (k / 8), dense + r * k, k))
        bad.store(true, std::memory_order_relaxed);
    }
  });
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
  if (bad.load()) sparse24::report_bad_meta("sparse24_linear", m.const_data_ptr<uint8_t>(), g.n, g.k);
  std::optional<at::Tensor> bias_f;
  if (bias.has_value()) bias_f = bias->to(at::kFloat);
  return at::linear(x.to(at::kFloat), w, bias_f).to(x.scalar_type());
}

}  // namespace slimops
