// CPU kernels of the masked and block-sparse linears.
//
// The masked linears materialize W ⊙ M (a CPU has the memory; the GPU kernels
// apply the mask in registers) and compute in fp32, rounded once to the
// input's dtype as the GPU kernels do. The block-sparse linear multiplies
// only the stored tiles, one block row per parallel task.
#include <ATen/ThreadLocalState.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/masked_fill.h>
#include <ATen/ops/logical_not.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <vector>

#include "sparse.h"

namespace slimops {
namespace {

std::vector<int64_t> with_last(const at::Tensor& t, int64_t last) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape.back() = last;
  return shape;
}

// A select, not a product: a pruned weight contributes exactly 0 even if it holds inf or NaN.
at::Tensor masked_weight_f32(const at::Tensor& weight, const at::Tensor& mask) {
  return weight.to(at::kFloat).masked_fill(mask.logical_not(), 0.0);
}

}  // namespace

// The op table has run validate_* on the arguments of each kernel below.

at::Tensor masked_linear_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                             const std::optional<at::Tensor>& bias) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // a kernel: no graph for its inner ops
  std::optional<at::Tensor> bias_f;
  if (bias.has_value()) bias_f = bias->to(at::kFloat);
  return at::linear(x.to(at::kFloat), masked_weight_f32(weight, mask), bias_f).to(x.scalar_type());
}

at::Tensor masked_linear_grad_input_cpu(const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& mask) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return at::matmul(grad.to(at::kFloat), masked_weight_f32(weight, mask)).to(grad.scalar_type());
}

at::Tensor masked_linear_grad_weight_cpu(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mask) {
  const MatmulGeometry g = linear_geometry(x, grad.size(-1));
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const at::Tensor g2 = grad.reshape({g.m, g.n}).to(at::kFloat);
  const at::Tensor x2 = x.reshape({g.m, g.k}).to(at::kFloat);
  return at::mm(g2.t(), x2).masked_fill_(mask.logical_not(), 0.0).to(x.scalar_type());
}


at::Tensor block_sparse_linear_cpu(const at::Tensor& x, const at::Tensor& values, const at::Tensor& row_ptr,
                                   const at::Tensor& col_idx, const std::optional<at::Tensor>& bias) {
  const MatmulGeometry g = linear_geometry(x, (row_ptr.size(0) - 1) * values.size(1));
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t bn = values.size(1), bk = values.size(2), rows = row_ptr.numel() - 1;
  const at::Tensor rp = row_ptr.contiguous(), ci = col_idx.contiguous();
  const at::Tensor x2 = x.reshape({g.m, g.k}).to(at::kFloat).contiguous();
  const at::Tensor vals = values.to(at::kFloat).contiguous();
  // out^T [N, M]: block row r fills the contiguous rows r*bn .. r*bn + bn - 1.
  at::Tensor out_t = at::zeros({g.n, g.m}, x2.options());
  const int32_t* rpp = rp.data_ptr<int32_t>();
  const int32_t* cip = ci.data_ptr<int32_t>();
  // ATen ops on the worker threads must see the caller's thread-local state (inference
  // mode, dispatch-key guards); OpenMP workers do not inherit it.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    at::ThreadLocalStateGuard state_guard(caller_state);
    for (int64_t r = r0; r < r1; ++r) {
      at::Tensor dst = out_t.narrow(0, r * bn, bn);
      for (int32_t t = rpp[r]; t < rpp[r + 1]; ++t) {
        // dst += values[t] @ x[:, tile]^T  (nested in parallel_for: one thread per GEMM)
        dst.addmm_(vals.select(0, t), x2.narrow(1, int64_t{cip[t]} * bk, bk).t());
      }
    }
  });
  at::Tensor out = out_t.t();
  if (bias.has_value()) out = out.add(bias->to(at::kFloat));
  return out.to(x.scalar_type()).contiguous().reshape(with_last(x, g.n));
}

}  // namespace slimops
