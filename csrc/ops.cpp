// Every slimops op, defined once: its schema and its row of the op table.
//
// A row holds the op's argument checks (csrc/<family>.cpp, the only checks of
// a call), its C++ kernel (CPU, or a composite for every device), its CUDA C++
// kernel if it has one, whether it has a Triton launcher (kernels/, handed in
// from Python by one call, python/slimops/ops/_triton.py) and the rule between
// the two: Triton from a problem size up. The table generates the schema
// definitions, every dispatcher registration and what Python sees of it
// (slimops.backend.RULES, `slimops info`, the tests' backend lists).
//
// One call of torch.ops.slimops.<op>:
//   dispatcher -> Kernels<op>::cpu / ::cuda: checks -> choose -> C++ kernel (no Python),
//                                            or the Triton launcher (GIL held)
// Fake (meta) impls live in python/slimops/ops/, beside the typed wrappers; they
// run the same checks through slimops._C (_check_<op>) when sizes are concrete.
//
// pybind11 (torch's bundled copy, so at::Tensor converts) is only the module
// shell: build information, the backend-choice settings and the table.
#include <torch/extension.h>
#include <torch/library.h>

#include <string_view>
#include <type_traits>

#include "backend.h"
#include "clip.h"
#include "codebook4.h"
#include "decode_gemv.h"
#include "int4.h"
#include "quant_mm.h"
#include "quantize.h"
#include "sparse.h"
#include "sparse24.h"

namespace slimops {
namespace {

constexpr int64_t kNever = std::numeric_limits<int64_t>::max();  // a rule that never picks Triton

// Where an op's kernels are registered.
enum class Keys { Backends, Composite, BackendsAndComposite };

template <typename Ret, typename... Args>
struct OpDef {
  const char* schema;
  Keys keys;
  int64_t (*checks)(Args...);  // every argument check; returns the problem size the rule compares
  Ret (*kernel)(Args...);      // CPU kernel (Backends), or the composite (Composite)
  Ret (*cuda)(Args...);        // CUDA C++ kernel; nullptr when there is none or it is not built
  bool cuda_cpp;               // a CUDA C++ kernel exists in the sources (built or not)
  bool triton;                 // a Triton launcher exists in kernels/
  int64_t triton_min_size;     // the rule: Triton from this size up when both exist
  const char* size;            // what the rule's size counts (slimops info)
};

template <typename Ret, typename... Args>
constexpr OpDef<Ret, Args...> def(const char* schema, Keys keys, Ret (*kernel)(Args...),
                                  std::type_identity_t<int64_t (*)(Args...)> checks,
                                  std::type_identity_t<Ret (*)(Args...)> cuda, bool cuda_cpp, bool triton,
                                  int64_t triton_min_size = kNever, const char* size = "") {
  return {schema, keys, checks, kernel, cuda, cuda_cpp, triton, triton_min_size, size};
}

#ifdef SLIMOPS_WITH_CUDA
#define SLIMOPS_CUDA_CPP(fn) &fn, true
#else
#define SLIMOPS_CUDA_CPP(fn) nullptr, true
#endif
// The GPU implementations of a row: CUDA C++ and Triton (rule), Triton only, CUDA C++ only, or none.
#define CUDA_AND_TRITON(fn, min_size, size) SLIMOPS_CUDA_CPP(fn), true, min_size, size
#define TRITON_ONLY nullptr, false, true
#define CUDA_ONLY(fn) SLIMOPS_CUDA_CPP(fn), false
#define NO_GPU_KERNEL nullptr, false, false

using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;

// ------------------------------------------------------------------ the table
// Rules measured on an H200 (torch 2.11, triton 3.6, 2026-11-28; bench/results/*-h200-*):
// the CUDA C++ quantize and clip kernels beat Triton at every quick-suite shape
// (quantize_per_token 8192x8192 bf16: 66 vs 103 µs; GPT-2 clip: 374 vs 982 µs);
// weight_int8_linear's CUDA decode kernel wins at M = 1 and 16 (28-34 vs 114-166 µs)
// and Triton at M = 4096 (736 vs 6,043 µs). Between 17 and 4096 it is unmeasured.

// Dynamic symmetric int8, one scale per row. x [..., K] float -> q int8 [..., K], scale fp32 [..., 1].
constexpr auto quantize_per_token_op = def(
    "quantize_per_token(Tensor x) -> (Tensor, Tensor)", Keys::Backends, &quantize_per_token_cpu,
    [](const Tensor& x) -> int64_t {
      validate_quantize_per_token(x);
      return x.numel();
    },
    CUDA_AND_TRITON(quantize_per_token_cuda, kNever, "elements"));

// int8 with one scale (+ zero point) per slice along `axis`; scale fp32 / zero_point int32 keep x's rank.
constexpr auto quantize_per_channel_op = def(
    "quantize_per_channel(Tensor x, int axis, bool symmetric=True) -> (Tensor, Tensor, Tensor)", Keys::Backends,
    &quantize_per_channel_cpu,
    [](const Tensor& x, int64_t axis, bool) -> int64_t {
      validate_quantize_per_channel(x, axis);
      return x.numel();
    },
    CUDA_AND_TRITON(quantize_per_channel_cuda, kNever, "elements"));

// ((q - zero_point) * scale) in fp32, rounded once to out_dtype (float32, float16 or bfloat16).
constexpr auto dequantize_op = def(
    "dequantize(Tensor q, Tensor scale, Tensor? zero_point, ScalarType out_dtype) -> Tensor", Keys::Backends,
    &dequantize_cpu,
    [](const Tensor& q, const Tensor& scale, const OptTensor& zp, c10::ScalarType out_dtype) -> int64_t {
      validate_dequantize(q, scale, zp, out_dtype);
      return q.numel();
    },
    CUDA_AND_TRITON(dequantize_cuda, kNever, "elements"));

// int8 GEMM with exact int32 accumulation and a fused epilogue, nn.Linear layout (b is [N, K]):
// out[m, n] = (sum_k a[m,k] b[n,k]) * a_scale[m] * b_scale[n] + bias[n] in fp32, rounded once to out_dtype.
constexpr auto int8_mm_op = def(
    "int8_mm(Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, Tensor? bias=None, ScalarType out_dtype=float) "
    "-> Tensor",
    Keys::Backends, &int8_mm_cpu,
    [](const Tensor& a, const Tensor& b, const Tensor& sa, const Tensor& sb, const OptTensor& bias,
       c10::ScalarType out_dtype) -> int64_t { return validate_int8_mm(a, b, sa, sb, bias, out_dtype).m; },
    TRITON_ONLY);

// W8A8: x [..., K] float quantized per token (quantize_per_token), then int8_mm; returns x's dtype.
constexpr auto int8_dynamic_linear_op = def(
    "int8_dynamic_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias=None) -> Tensor",
    Keys::Composite, &int8_dynamic_linear, &validate_int8_dynamic_linear, NO_GPU_KERNEL);

// W8A16: x [..., K] float times int8 weight [N, K] with scale [N] (per channel) or [N, G] (per group
// of K / G inputs), dequantized in registers; fp32 accumulation, returns x's dtype.
// Rule: the CUDA C++ decode kernel below M = 17 rows, Triton from there (DESIGN.md: CUDA C++ for M <= 16).
constexpr auto weight_int8_linear_op = def(
    "weight_int8_linear(Tensor x, Tensor weight, Tensor scale, Tensor? bias=None) -> Tensor", Keys::Backends,
    &weight_int8_linear_cpu,
    [](const Tensor& x, const Tensor& w, const Tensor& s, const OptTensor& bias) -> int64_t {
      return validate_weight_int8_linear(x, w, s, bias).m;
    },
    CUDA_AND_TRITON(weight_int8_linear_cuda, 17, "rows M"));

// Dynamic float8_e4m3fn, one scale (amax / 448) per row. x [..., K] -> q [..., K], scale fp32 [..., 1].
constexpr auto quantize_fp8_per_row_op = def(
    "quantize_fp8_per_row(Tensor x) -> (Tensor, Tensor)", Keys::Backends, &quantize_fp8_per_row_cpu,
    [](const Tensor& x) -> int64_t {
      validate_quantize_fp8_per_row(x);
      return x.numel();
    }, TRITON_ONLY);

// fp8 W8A8: x quantized per row (quantize_fp8_per_row) times an e4m3 weight [N, K] with per-row
// scales, through torch._scaled_mm; K and N multiples of 16. Returns x's dtype.
constexpr auto fp8_dynamic_linear_op = def(
    "fp8_dynamic_linear(Tensor x, Tensor weight, Tensor weight_scale, Tensor? bias=None) -> Tensor",
    Keys::Composite, &fp8_dynamic_linear, &validate_fp8_dynamic_linear, NO_GPU_KERNEL);

// Sparse family (python/slimops/reference/sparse.py). Weights are [N, K] as in nn.Linear.
// y = x (W ⊙ M)^T + b with a bool mask [N, K]; fp32 accumulation, returns x's dtype.
constexpr auto masked_linear_op = def(
    "masked_linear(Tensor x, Tensor weight, Tensor mask, Tensor? bias=None) -> Tensor", Keys::Backends,
    &masked_linear_cpu,
    [](const Tensor& x, const Tensor& w, const Tensor& mask, const OptTensor& bias) -> int64_t {
      return validate_masked_linear(x, w, mask, bias).m;
    },
    TRITON_ONLY);

// Backward of masked_linear: grad_x = grad (W ⊙ M); grad_W = (grad^T x) ⊙ M over all leading dims.
constexpr auto masked_linear_grad_input_op = def(
    "masked_linear_grad_input(Tensor grad, Tensor weight, Tensor mask) -> Tensor", Keys::Backends,
    &masked_linear_grad_input_cpu,
    [](const Tensor& grad, const Tensor& w, const Tensor& mask) -> int64_t {
      return validate_masked_linear_grad_input(grad, w, mask).m;
    },
    TRITON_ONLY);
constexpr auto masked_linear_grad_weight_op = def(
    "masked_linear_grad_weight(Tensor grad, Tensor x, Tensor mask) -> Tensor", Keys::Backends,
    &masked_linear_grad_weight_cpu,
    [](const Tensor& grad, const Tensor& x, const Tensor& mask) -> int64_t {
      return validate_masked_linear_grad_weight(grad, x, mask).m;
    },
    TRITON_ONLY);

// BSR of the kept block_n x block_k tiles: (values [nnz, block_n, block_k], row_ptr int32, col_idx int32).
constexpr auto block_sparse_pack_op = def(
    "block_sparse_pack(Tensor weight, Tensor? mask, int block_n, int block_k) -> (Tensor, Tensor, Tensor)",
    Keys::Composite, &block_sparse_pack,
    [](const Tensor& w, const OptTensor& mask, int64_t bn, int64_t bk) -> int64_t {
      validate_block_sparse_pack(w, mask, bn, bk);
      return 0;
    },
    NO_GPU_KERNEL);

// y = x W^T + b for a packed weight, skipping the tiles that are not stored.
constexpr auto block_sparse_linear_op = def(
    "block_sparse_linear(Tensor x, Tensor values, Tensor row_ptr, Tensor col_idx, Tensor? bias=None) -> Tensor",
    Keys::Backends, &block_sparse_linear_cpu,
    [](const Tensor& x, const Tensor& v, const Tensor& rp, const Tensor& ci, const OptTensor& bias) -> int64_t {
      return validate_block_sparse_linear(x, v, rp, ci, bias).m;
    },
    TRITON_ONLY);

// 2:4: (values [N, K/2], meta uint8 [N, K/8]: 2-bit positions of the kept entries, 4 per byte, low bits first).
constexpr auto sparse24_compress_op = def(
    "sparse24_compress(Tensor weight) -> (Tensor, Tensor)", Keys::Composite, &sparse24_compress,
    [](const Tensor& w) -> int64_t {
      validate_sparse24_compress(w);
      return 0;
    }, NO_GPU_KERNEL);

// y = x W^T + b for a compressed 2:4 weight (sparse tensor cores on GPU; Triton has no sparse MMA,
// so SLIMOPS_BACKEND and use_backend do not apply to it).
constexpr auto sparse24_linear_op = def(
    "sparse24_linear(Tensor x, Tensor values, Tensor meta, Tensor? bias=None) -> Tensor", Keys::Backends,
    &sparse24_linear_cpu,
    [](const Tensor& x, const Tensor& v, const Tensor& meta, const OptTensor& bias) -> int64_t {
      return validate_sparse24_linear(x, v, meta, bias).m;
    },
    CUDA_ONLY(sparse24_linear_cuda));

// sum(|x|^p) over every element of every tensor (max|x| for p = inf) in fp32, then the p-th root
// unless root=False: a 0-d fp32 tensor. Mixed shapes and dtypes, one device.
// NOTE (the three clip ops): a call with no tensor at all (an empty list, and no total_norm /
// inv_scale / found_inf) has no dispatch key; the dispatcher sends it to the CompositeExplicitAutograd
// kernel, here the CPU one, which gives the reference's answer (a CPU zero). Backend kernels still
// take precedence, and a tensor of a backend with no kernel (sparse, say) reaches the checks.
constexpr auto multi_tensor_norm_op = def(
    "multi_tensor_norm(Tensor[] tensors, float norm_type, bool root=True) -> Tensor", Keys::BackendsAndComposite,
    &multi_tensor_norm_cpu, &validate_multi_tensor_norm,
    CUDA_AND_TRITON(multi_tensor_norm_cuda, kNever, "elements"));

// In place: every tensor *= min(1, max_norm / (total_norm + 1e-6)), the coefficient computed on the device.
constexpr auto multi_tensor_scale_op = def(
    "multi_tensor_scale_(Tensor(a!)[] tensors, Tensor total_norm, float max_norm) -> ()",
    Keys::BackendsAndComposite, &multi_tensor_scale_cpu, &validate_multi_tensor_scale_,
    CUDA_AND_TRITON(multi_tensor_scale_cuda, kNever, "elements"));

// Norm, then scale, in at most two launches; returns the fp32 norm. With inv_scale, grads are unscaled
// in the same passes and found_inf is set to 1 if any unscaled element is non-finite (GradScaler).
constexpr auto clip_grad_norm_fused_op = def(
    "clip_grad_norm_fused_(Tensor(a!)[] grads, float max_norm, float norm_type, Tensor? inv_scale=None, "
    "Tensor(b!)? found_inf=None) -> Tensor",
    Keys::BackendsAndComposite, &clip_grad_norm_fused_cpu, &validate_clip_grad_norm_fused_,
    CUDA_AND_TRITON(clip_grad_norm_fused_cuda, kNever, "elements"));

// W4A16: x [..., K] float times an int4 weight, two per byte in chunks of 32 inputs (qweight uint8
// [N, ceil(K/32)*16]; python/slimops/reference/int4.py), w = (q - zero_point) * scale per group of
// group_size inputs (zero_point None: symmetric, 8); fp32 accumulation, returns x's dtype.
constexpr auto weight_int4_linear_op = def(
    "weight_int4_linear(Tensor x, Tensor qweight, Tensor scale, Tensor? zero_point, int group_size, "
    "Tensor? bias=None) -> Tensor",
    Keys::Backends, &weight_int4_linear_cpu,
    [](const Tensor& x, const Tensor& q, const Tensor& s, const OptTensor& z, int64_t gs,
       const OptTensor& bias) -> int64_t { return validate_weight_int4_linear(x, q, s, z, gs, bias).m; },
    // The CUDA C++ decode kernel (csrc/cuda/decode_gemv.cu) has never run on a GPU: triton_min_size = 0 keeps
    // Triton the default at every M (SLIMOPS_BACKEND=cuda forces the kernel); the H200 run of
    // bench/gpu_check.sh (bench/decode_sweep.py) decides the rule.
    CUDA_AND_TRITON(weight_int4_linear_cuda, 0, "rows M"));

// W4A16 with a 16-entry codebook (NF4 or k-means): x [..., K] float times w = codebook[c, q] * scale per
// block of group_size inputs, q 4-bit indices in int4's nibble layout, c = 0 (codebook [1, 16]) or the
// output row (codebook [N, 16]); python/slimops/reference/codebook4.py. fp32 accumulation, x's dtype.
constexpr auto weight_codebook4_linear_op = def(
    "weight_codebook4_linear(Tensor x, Tensor qweight, Tensor codebook, Tensor scale, int group_size, "
    "Tensor? bias=None) -> Tensor",
    Keys::Backends, &weight_codebook4_linear_cpu,
    [](const Tensor& x, const Tensor& q, const Tensor& cb, const Tensor& s, int64_t gs,
       const OptTensor& bias) -> int64_t { return validate_weight_codebook4_linear(x, q, cb, s, gs, bias).m; },
    // The CUDA C++ decode kernel (csrc/cuda/decode_gemv.cu) has never run on a GPU: triton_min_size = 0 keeps
    // Triton the default at every M (SLIMOPS_BACKEND=cuda forces the kernel); the H200 run decides the rule.
    CUDA_AND_TRITON(weight_codebook4_linear_cuda, 0, "rows M"));
// Block-sparse int8 weight-only: block_sparse_linear's BSR tiles stored as int8 (values int8
// [nnz, block_n, block_k]) with one fp32 scale per output row (scale [N]); zero tiles skipped,
// tiles dequantized in registers, fp32 accumulation, returns x's dtype.
// Rule: triton_min_size 0 keeps Triton the GPU path at every M (SLIMOPS_BACKEND=cuda forces the
// CUDA C++ decode kernel, csrc/cuda/block_sparse_int8.cu, M <= 16 only). That kernel has never
// run: the H200 run (bench/gpu_check.sh, bench/block_sparse_int8_sweep.py) decides the rule.
constexpr auto block_sparse_int8_linear_op = def(
    "block_sparse_int8_linear(Tensor x, Tensor values, Tensor row_ptr, Tensor col_idx, Tensor scale, "
    "Tensor? bias=None) -> Tensor",
    Keys::Backends, &block_sparse_int8_linear_cpu,
    [](const Tensor& x, const Tensor& v, const Tensor& rp, const Tensor& ci, const Tensor& s,
       const OptTensor& bias) -> int64_t { return validate_block_sparse_int8_linear(x, v, rp, ci, s, bias).m; },
    CUDA_AND_TRITON(block_sparse_int8_linear_cuda, 0, "rows M"));
// 2:4 + int8 weight-only: the kept values of sparse24_compress as int8 [N, K/2] with one fp32 scale
// per output row [N], the same meta; y = x (values * scale scattered by meta)^T + bias, fp32
// accumulation, returns x's dtype.
// NOTE: its CUDA C++ decode GEMV (csrc/cuda/sparse24_int8.cu) has never run; it has no Triton path to
// stay behind, so the layer (Sparse24Int8Linear) routes CUDA inputs to dequantize + cuBLAS instead
// (nn/routing.py) until the H200 run (bench/gpu_check.sh) decides.
constexpr auto sparse24_int8_linear_op = def(
    "sparse24_int8_linear(Tensor x, Tensor values, Tensor meta, Tensor scale, Tensor? bias=None) -> Tensor",
    Keys::Backends, &sparse24_int8_linear_cpu,
    [](const Tensor& x, const Tensor& v, const Tensor& meta, const Tensor& s, const OptTensor& bias) -> int64_t {
      return validate_sparse24_int8_linear(x, v, meta, s, bias).m;
    },
    CUDA_ONLY(sparse24_int8_linear_cuda));

// ------------------------------------------------------------------ what the table generates

std::string op_name(const char* schema) {
  const std::string_view s(schema);
  return std::string(s.substr(0, s.find('(')));
}

template <auto& op, typename Kernel = decltype(op.kernel)>
struct Kernels;

template <auto& op, typename Ret, typename... Args>
struct Kernels<op, Ret (*)(Args...)> {
  // The op's backend state, looked up once.
  static OpBackend& state() {
    static OpBackend& s = op_backend(op_name(op.schema));
    return s;
  }

  // CPU key (and the composite fallback of the clip ops): the C++ kernel, or
  // the Triton launcher under the interpreter when Triton is forced.
  static Ret cpu(Args... args) {
    op.checks(args...);
    if (op.triton && cpu_runs_triton(state())) return call_triton<Ret>(state(), args...);
    return op.kernel(args...);
  }

  // CUDA key: the rule picks CUDA C++ or Triton; the CUDA C++ path never enters Python.
  static Ret cuda(Args... args) {
    const int64_t size = op.checks(args...);
    if (op.triton && choose(state(), size, op.cuda != nullptr) == GpuBackend::Triton) {
      return call_triton<Ret>(state(), args...);
    }
    SLIMOPS_CHECK(op.cuda != nullptr, state().name.c_str(),
                  "has no GPU kernel in this build (its CUDA C++ kernel was not compiled)");
    return op.cuda(args...);
  }

  // CompositeExplicitAutograd: checks, then the composite of other ops, on any device.
  static Ret composite(Args... args) {
    op.checks(args...);
    return op.kernel(args...);
  }

  // What Python passes in is what the dispatcher would: lists for Tensor[].
  template <typename T>
  using PyArg = std::conditional_t<std::is_same_v<T, at::TensorList>, const std::vector<at::Tensor>&, T>;
  // slimops._C._check_<op>: the checks alone, for the fakes.
  static void check(PyArg<Args>... args) { op.checks(args...); }

  static void define(torch::Library& m) {
    m.def(op.schema);
    state().triton_min_size = op.triton_min_size;  // the rule's default; Python may change it (backend.RULES)
  }
  static void impl(torch::Library& m, c10::DispatchKey key) {
    const std::string name = op_name(op.schema);
    const bool backends = op.keys != Keys::Composite;
    if (key == c10::DispatchKey::CPU && backends) m.impl(name.c_str(), &cpu);
    if (key == c10::DispatchKey::CUDA && backends) m.impl(name.c_str(), &cuda);
    if (key == c10::DispatchKey::CompositeExplicitAutograd) {
      if (op.keys == Keys::Composite) m.impl(name.c_str(), &composite);
      if (op.keys == Keys::BackendsAndComposite) m.impl(name.c_str(), &cpu);
    }
  }
  static void bind(pybind11::module& m, pybind11::list& table) {
    const std::string name = op_name(op.schema);
    m.def(("_check_" + name).c_str(), &check);
    pybind11::dict row;
    row["name"] = name;
    row["composite"] = op.keys == Keys::Composite;
    row["cuda_cpp"] = op.cuda_cpp;
    row["cuda_cpp_built"] = op.cuda != nullptr;
    row["triton"] = op.triton;
    row["triton_min_size"] = op.triton_min_size == kNever ? pybind11::object(pybind11::none())
                                                          : pybind11::object(pybind11::int_(op.triton_min_size));
    row["size"] = op.size;
    table.append(row);
  }
};

template <auto&... ops>
struct Table {
  static void define(torch::Library& m) { (Kernels<ops>::define(m), ...); }
  static void impl(torch::Library& m, c10::DispatchKey key) { (Kernels<ops>::impl(m, key), ...); }
  static pybind11::list bind(pybind11::module& m) {
    pybind11::list table;
    (Kernels<ops>::bind(m, table), ...);
    return table;
  }
};

using Ops = Table<quantize_per_token_op, quantize_per_channel_op, dequantize_op, int8_mm_op, int8_dynamic_linear_op,
                  weight_int8_linear_op, quantize_fp8_per_row_op, fp8_dynamic_linear_op, masked_linear_op,
                  masked_linear_grad_input_op, masked_linear_grad_weight_op, block_sparse_pack_op,
                  block_sparse_linear_op, sparse24_compress_op, sparse24_linear_op, multi_tensor_norm_op,
                  multi_tensor_scale_op, clip_grad_norm_fused_op, weight_int4_linear_op,
                  weight_codebook4_linear_op, block_sparse_int8_linear_op,
                  sparse24_int8_linear_op>;

}  // namespace
}  // namespace slimops

TORCH_LIBRARY(slimops, m) { slimops::Ops::define(m); }
TORCH_LIBRARY_IMPL(slimops, CPU, m) { slimops::Ops::impl(m, c10::DispatchKey::CPU); }
TORCH_LIBRARY_IMPL(slimops, CUDA, m) { slimops::Ops::impl(m, c10::DispatchKey::CUDA); }
TORCH_LIBRARY_IMPL(slimops, CompositeExplicitAutograd, m) {
  slimops::Ops::impl(m, c10::DispatchKey::CompositeExplicitAutograd);
}

namespace {

std::vector<std::string> cuda_archs() {
  std::vector<std::string> out;
  std::string csv = SLIMOPS_CUDA_ARCHS;
  size_t start = 0;
  while (start < csv.size()) {
    size_t end = csv.find(',', start);
    if (end == std::string::npos) end = csv.size();
    out.push_back("sm_" + csv.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "slimops compiled backend: op schemas, CPU kernels and (when built) CUDA kernels";
#ifdef SLIMOPS_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
  m.attr("cuda_archs") = cuda_archs();
  m.attr("compiler") = std::string(__VERSION__);

  // The op table, one dict per op (python/slimops/backend.py reads it), and _check_<op> per op.
  m.attr("ops") = slimops::Ops::bind(m);

  // Backend choice settings, driven by python/slimops/backend.py. Backends are
  // ints: -1 unset (use the process default), 0 auto (the rules), 1 cuda, 2 triton.
  using slimops::GpuBackend;
  m.def("_set_default_backend", [](int b) { slimops::set_default_backend(static_cast<GpuBackend>(b)); });
  m.def("_thread_backend", [] { return static_cast<int>(slimops::thread_backend()); });
  m.def("_set_thread_backend", [](int b) { slimops::set_thread_backend(static_cast<GpuBackend>(b)); });
  m.def("_set_triton_min_size", [](const std::string& op, int64_t n) { slimops::op_backend(op).triton_min_size = n; });
  // The one way Triton launchers reach the ops: {op name: launcher or None}, and (when
  // given) whether they take CPU tensors too (Triton's interpreter).
  m.def(
      "_set_triton_impls",
      [](const pybind11::dict& impls, std::optional<bool> on_cpu) {
        for (const auto& [name, fn] : impls) {
          PyObject* ref = nullptr;
          if (!fn.is_none()) ref = pybind11::reinterpret_borrow<pybind11::object>(fn).inc_ref().ptr();
          // The GIL is held here; a replaced launcher is released.
          Py_XDECREF(slimops::op_backend(name.cast<std::string>()).triton.exchange(ref));
        }
        if (on_cpu.has_value()) slimops::set_triton_on_cpu(*on_cpu);
      },
      pybind11::arg("impls"), pybind11::arg("on_cpu") = pybind11::none());
  // The int8 CPU kernels each op runs now (SLIMOPS_CPU_ISA or the best ISA), as [(key, text)].
  m.def("_cpu_int8_kernels", &slimops::cpu_int8_kernels);
  m.def("_choose", [](const std::string& op, int64_t size, bool have_cuda) {
    return static_cast<int>(slimops::choose(slimops::op_backend(op), size, have_cuda));
  });
  // The decode GEMV family (csrc/decode_gemv.h), not a public op: its variant table, the host
  // emulator (CPU tensors) and, in a CUDA build, one variant on the GPU (bench/decode_sweep.py).
  m.def("_decode_gemv_formats", [] {
    std::vector<std::string> out;
    for (int f = 0; f < slimops::decode::kNumFormats; ++f) out.emplace_back(slimops::decode::format_name(f));
    return out;
  });
  m.def("_decode_gemv_variants", [] {
    pybind11::list out;
    for (int v = 0; v < slimops::decode::kNumVariants; ++v) {
      const slimops::DecodeVariant d = slimops::decode_variant(v);
      pybind11::dict row;
      row["id"] = d.id;
      row["rows"] = d.rows;
      row["warps"] = d.warps;
      row["unroll"] = d.unroll;
      row["ksplit"] = d.ksplit;
      out.append(row);
    }
    return out;
  });
  m.def("_decode_gemv_emulate", &slimops::decode_gemv_emulate, pybind11::arg("format"), pybind11::arg("variant"),
        pybind11::arg("x"), pybind11::arg("qweight"), pybind11::arg("scale"), pybind11::arg("zero_point"),
        pybind11::arg("codebook"), pybind11::arg("bias"), pybind11::arg("group_size"));
#ifdef SLIMOPS_WITH_CUDA
  m.def("_decode_gemv", &slimops::decode_gemv_cuda, pybind11::arg("format"), pybind11::arg("variant"),
        pybind11::arg("x"), pybind11::arg("qweight"), pybind11::arg("scale"), pybind11::arg("zero_point"),
        pybind11::arg("codebook"), pybind11::arg("bias"), pybind11::arg("group_size"));
  // Weight-only fp8 decode for Fp8DynamicLinear's routing path "fp8_weight_only" (not a default rule).
  m.def("_fp8_weight_only_linear", &slimops::fp8_weight_only_linear_cuda, pybind11::arg("x"),
        pybind11::arg("qweight"), pybind11::arg("scale"), pybind11::arg("bias"));
#endif
}
