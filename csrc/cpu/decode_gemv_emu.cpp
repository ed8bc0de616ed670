// Host emulation of the decode GEMV kernels (csrc/cuda/decode_gemv.cuh): the same plan and
// format policies (decode_gemv_plan.h), run CTA by CTA and thread by thread on the CPU, with
// the warp shuffles and the shared-memory reduction replayed in the kernel's order. The tests
// run every variant and format through it against the float64 references: this is how the
// CUDA kernels' index math is checked on a machine without a GPU. Slow by design (one thread).
#include <ATen/ops/empty.h>

#include <vector>

#include "decode_gemv.h"

namespace slimops {

namespace {

using namespace decode;

// One CTA (bx, by, bz), as decode_gemv_kernel runs it.
template <int F, int XT, int ROWS, int WARPS, int U, int MT>
void emulate_cta(const Problem& p, int64_t bx, int64_t by, int bz, std::vector<uint16_t>& xs, std::vector<float>& cb,
                 std::vector<float>& red) {
  constexpr int T = WARPS * 32;
  const Cta c = cta_plan(p, ROWS, MT, bx, by, bz, /*m_begin=*/0);
  for (int tid = 0; tid < T; ++tid) stage_cta<F, ROWS, MT>(p, c, xs.data(), cb.data(), tid, T);
  // __syncthreads()
  std::vector<float> acc_all(size_t(T) * MT * ROWS);
  for (int tid = 0; tid < T; ++tid) {
    float acc[MT][ROWS];
    thread_partial<F, XT, ROWS, U, MT>(p, c, xs.data(), cb.data(), tid, T, acc);
    for (int m = 0; m < MT; ++m)
      for (int r = 0; r < ROWS; ++r) acc_all[(size_t(tid) * MT + m) * ROWS + r] = acc[m][r];
  }
  // The warp shuffle tree: at each offset, lane l adds lane l ^ offset's value.
  for (int warp = 0; warp < WARPS; ++warp)
    for (int m = 0; m < MT; ++m)
      for (int r = 0; r < ROWS; ++r) {
        float v[32], nv[32];
        for (int l = 0; l < 32; ++l) v[l] = acc_all[(size_t(warp * 32 + l) * MT + m) * ROWS + r];
        for (int off = 16; off > 0; off >>= 1) {
          for (int l = 0; l < 32; ++l) nv[l] = v[l] + v[l ^ off];
          std::copy(nv, nv + 32, v);
        }
        red[(warp * MT + m) * ROWS + r] = v[0];
      }
  // __syncthreads()
  for (int i = 0; i < MT * ROWS; ++i) finish_cta<XT, ROWS, WARPS, MT>(p, c, red.data(), i);
}

}  // namespace

at::Tensor decode_gemv_emulate(int64_t format, int64_t variant, const at::Tensor& x, const at::Tensor& qweight,
                               const at::Tensor& scale, const std::optional<at::Tensor>& zero_point,
                               const std::optional<at::Tensor>& codebook, const std::optional<at::Tensor>& bias,
                               int64_t group_size) {
  DecodeCall c = prepare_decode_gemv(format, variant, x, qweight, scale, zero_point, codebook, bias, group_size);
  SLIMOPS_CHECK(c.x.device().is_cpu(), "decode_gemv", "the emulator takes CPU tensors, got x on ", c.x.device());
  Problem& p = c.p;
  at::Tensor ws;
  if (p.ksplit > 1) {
    ws = at::empty({p.ksplit, p.M, p.N}, c.x.options().dtype(at::kFloat));
    p.ws = ws.mutable_data_ptr<float>();
  }
  dispatch_decode(c.format, c.xtype, c.shape, c.tokens, [&](auto f, auto xt, auto s, auto mt) {
    constexpr int F = decltype(f)::value, XT = decltype(xt)::value, MT = decltype(mt)::value;
    constexpr Shape sh = kShapes[decltype(s)::value];
    constexpr int CW = kChunkInputs<F>;
    std::vector<uint16_t> xs(size_t(MT) * x_stage_elems(p, CW));
    std::vector<float> cb(sh.rows * 16), red(size_t(sh.warps) * MT * sh.rows);
    const int64_t gx = (p.N + sh.rows - 1) / sh.rows, gy = (p.M + MT - 1) / MT;
    for (int bz = 0; bz < p.ksplit; ++bz)
      for (int64_t by = 0; by < gy; ++by)
        for (int64_t bx = 0; bx < gx; ++bx)
          emulate_cta<F, XT, sh.rows, sh.warps, sh.unroll, MT>(p, bx, by, bz, xs, cb, red);
    if (p.ksplit > 1)
      for (int64_t i = 0; i < p.M * p.N; ++i) reduce_splits<XT>(p, i);
  });
  return c.out.reshape(c.out_shape);
}

}  // namespace slimops
