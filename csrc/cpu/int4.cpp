// CPU kernel of weight_int4_linear (semantics: python/slimops/reference/int4.py).
//
// Each output is computed group by group as
//   out[m, n] = sum_g s[n, g] * (sum_{k in g} x[m, k] * q[n, k]  -  z[n, g] * xsum[m, g]) + bias[n]
// with q the unsigned nibble (0..15), z the zero point (8 when symmetric) and xsum[m, g] the
// sum of x over the group, computed once per call. So the inner loop is unpack + fp32 FMA
// only: the zero point and the scale are applied once per group, not once per weight.
// (fp32 throughout; the error bound the tests hold it to counts |q| + |z|, not |q - z|.)
//
// Layout: in each chunk of 32 inputs, byte i holds input i (low nibble) and input 16 + i
// (high nibble). One 16-byte load therefore gives 16 consecutive inputs from its low nibbles
// and the next 16 from its high nibbles: one zmm each after a widen, a mask and a shift, with
// no shuffle to put interleaved pairs back in order.
//
// Paths, picked per call from csrc/cpu/cpu_isa.h (SLIMOPS_CPU_ISA forces one):
//   avx512vnni  zmm: 16 weights per conversion      (any CPU with AVX-512 F/BW/VL runs this code;
//   avxvnni, avx2  ymm: 8 weights per conversion     it is chosen where cpu_isa.h reports avx512vnni)
//   generic     portable C++
// Up to kInRegisterMaxM rows of x run the in-register GEMV shared with codebook4
// (csrc/cpu/nibble_gemv.h); above that the weight is dequantized a block of rows at a time into
// fp32 and handed to ATen's GEMM (prefill sizes are compute bound, where the GEMM wins).
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/cpu_isa.h"
#include "cpu/nibble_gemv.h"
#include "cpu/nibbles.h"
#include "int4.h"

namespace slimops {
namespace {

constexpr int64_t kInRegisterMaxM = 16;  // above: dequantize + GEMM
constexpr int64_t kDequantRows = 64;     // weight rows per GEMM call on the dequantize path

}  // namespace

at::Tensor weight_int4_linear_cpu(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scale,
                                  const std::optional<at::Tensor>& zero_point, int64_t group_size,
                                  const std::optional<at::Tensor>& bias) {
  // validated: validate_weight_int4_linear
  const FmaPath path = fma_path_for(chosen_cpu_isa());
  at::AutoDispatchBelowADInplaceOrView below_autograd;  // the op has no autograd formula (see quant_mm.cpp)
  MatmulGeometry g = linear_geometry(x, qweight.size(0), scale.size(1));
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = g.n;
  if (g.m == 0 || g.n == 0) return at::empty(out_shape, x.options());
  const at::Tensor x32 = x.reshape({g.m, g.k}).to(at::kFloat).contiguous();
  const at::Tensor Q = qweight.contiguous();
  const at::Tensor S = scale.to(at::kFloat).contiguous();
  const at::Tensor Z = zero_point.has_value() ? zero_point->to(at::kFloat).contiguous() : at::Tensor();
  const NibbleProblem p{x32.data_ptr<float>(), Q.data_ptr<uint8_t>(), S.data_ptr<float>(), nullptr, 0,
                        g.m, g.n, g.k, g.groups, group_size, Q.size(1)};
  const float* z = Z.defined() ? Z.data_ptr<float>() : nullptr;  // nullptr: symmetric (8)
  auto zero = [&](int64_t row, int64_t grp) { return z == nullptr ? 8.f : z[row * g.groups + grp]; };

  at::Tensor out;
  if (g.m <= kInRegisterMaxM) {
    // xsum [M, G]: sum of x over each group (fp32), for the zero-point term.
    std::vector<float> xsum(static_cast<size_t>(g.m * g.groups));
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const int64_t k0 = grp * group_size, k1 = std::min(g.k, k0 + group_size);
        float acc = 0.f;
        for (int64_t k = k0; k < k1; ++k) acc += p.x[i * g.k + k];
        xsum[i * g.groups + grp] = acc;
      }
    out = at::empty({g.m, g.n}, x32.options());
    // minus the zero-point term sum_g s z xsum
    nibble_gemv::gemv<false>(path, p, out.data_ptr<float>(), [&](int64_t m, int64_t row, float v) {
      const float* sr = p.s + row * g.groups;
      const float* xs = xsum.data() + m * g.groups;
      float zero_term = 0.f;
      for (int64_t grp = 0; grp < g.groups; ++grp) zero_term += sr[grp] * zero(row, grp) * xs[grp];
      return v - zero_term;
    });
  } else {
    at::Tensor out_t = at::empty({g.n, g.m}, x32.options());
    dequantize_and_mm(g.n, g.k, kDequantRows, x32, out_t,
                      [&](int64_t row, float* dst) {
                        // one weight row dequantized to fp32: (q - z) * s
                        const uint8_t* q = p.q + row * p.bytes;
                        for (int64_t k = 0; k < p.k; ++k) {
                          const int64_t grp = k / group_size;
                          dst[k] = (static_cast<float>(nibble_at(q, k)) - zero(row, grp)) * p.s[row * g.groups + grp];
                        }
                      });
    out = out_t.t();
  }
  if (bias.has_value()) out = out.add(bias->to(at::kFloat));
  return out.to(x.scalar_type()).contiguous().reshape(out_shape);
}

}  // namespace slimops
