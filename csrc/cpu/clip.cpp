// CPU kernels for the multi-tensor clip-norm family.
//
// Semantics are those of python/slimops/reference/clip.py: the norm of every
// element of every tensor seen as one vector, accumulated in fp32 (terms and
// 32-term partial sums in fp32, the partial sums then added in fp64, which only
// adds accuracy: about 1 ulp from the exact norm); the coefficient
// min(1, max_norm / (total_norm + 1e-6)) in fp32 with NaN propagating; the
// products in fp32, rounded once (half to even) to the tensor's dtype.
//
// One parallel pass, not a per-tensor loop: the list is one virtual vector of
// `numel` elements cut into fixed tasks of kChunk elements (a task may cover
// many small tensors, a large tensor spans many tasks). One at::parallel_for
// runs over the tasks; each writes its own partial and the partials are reduced
// in task order, so the result depends on the list alone, not on the thread
// count. The fused op reads every gradient twice: the norm pass, then one scale
// pass over the same tasks.
//
// Loops are written so that GCC vectorises them at -O3 without -ffast-math:
// sums run over kLanes independent fp32 lanes (the order is fixed at compile
// time), and max|x| is an integer max over the bits of |x| (monotonic for
// non-negative floats), which keeps NaN (its bits sort above inf) where
// std::max would drop it. The build targets baseline x86-64 (SSE2), where fp16
// conversion takes ~20 instructions an element: on CPUs that have them (asked
// at run time), fp16 goes through the F16C conversions and the bf16 stores
// through an AVX2 build of the same loop, with the same results.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__)
#define SLIMOPS_CLIP_X86 1
#include <immintrin.h>
#else
#define SLIMOPS_CLIP_X86 0
#endif

#include "clip.h"

namespace slimops {
namespace {

// Elements per task: 128 KiB of fp32, enough to amortise the task (and the
// per-tensor setup of tiny tensors), small enough to balance two cores on
// lists of a few hundred thousand elements.
constexpr int64_t kChunk = 1 << 15;
// Independent fp32 accumulators: 8 SSE (4 AVX) registers hide the add latency.
constexpr int kLanes = 32;
// Elements summed in fp32 before the partial sums move to fp64 (see Lanes).
constexpr int64_t kRun = 1024;
// fp16 goes through a stack buffer of this many elements; kRun itself, so each
// element meets the same lane and run as without the buffer (same result).
constexpr int64_t kBlock = kRun;
constexpr uint32_t kInfBits = 0x7F800000u;

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// ---------------------------------------------------------------- elements

// Element access by storage type: load as fp32, store rounded once from fp32.
// Half and BFloat16 go through their bits, with selects written as masks: GCC
// does not if-convert a ?: whose arms hold fp operations (they could trap), and
// a branch stops the vectoriser.
template <typename T>
struct Elem;

template <>
struct Elem<float> {
  using raw = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};

template <>
struct Elem<c10::Half> {
  using raw = uint16_t;
  // The algorithms of c10::detail::fp16_ieee_{to,from}_fp32_value (exact
  // widening; round half to even narrowing, NaN -> quiet NaN), bit for bit.
  static float load(uint16_t h) {
    const uint32_t w = static_cast<uint32_t>(h) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normalized = bits_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormalized = bits_float((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t denormal = 0u - static_cast<uint32_t>(two_w < (1u << 27));
    return bits_float(sign | (float_bits(denormalized) & denormal) | (float_bits(normalized) & ~denormal));
  }
  static uint16_t store(float f) {
    const float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
    const uint32_t w = float_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t bias = std::max(shl1_w & 0xFF000000u, 0x71000000u);
    const uint32_t bits = float_bits(bits_float((bias >> 1) + 0x07800000u) + base);
    const uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
    const uint32_t nan = 0u - static_cast<uint32_t>(shl1_w > 0xFF000000u);
    return static_cast<uint16_t>((sign >> 16) | (0x7E00u & nan) | (nonsign & ~nan));
  }
};

template <>
struct Elem<c10::BFloat16> {
  using raw = uint16_t;
  static float load(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }
  // Round half to even, NaN -> canonical quiet NaN: the same result as
  // c10::BFloat16(float), written branch-free (c10's branches on isnan).
  static uint16_t store(float f) {
    const uint32_t u = float_bits(f);
    const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7FFFFFFFu) > kInfBits;
    return nan ? uint16_t{0x7FC0} : static_cast<uint16_t>(rounded);
  }
};

// ---------------------------------------------------------------- kernels

enum class Norm { kL1, kL2, kInf, kP };

template <Norm K>
constexpr bool kUsesSum = K != Norm::kInf;
template <Norm K, bool kUnscale>
constexpr bool kUsesMax = K == Norm::kInf || kUnscale;

// One task's running reduction. Terms are summed in kLanes fp32 lanes over
// runs of at most kRun elements (kRun / kLanes terms a lane), and each run's
// lanes are then added into fp64 lanes: the fp32 rounding error stays that of
// a 32-term sum whatever the task's size (a pure fp32 task sum was ~5 ulp off
// on large lists), at no cost out of cache (~20% of the in-L1 throughput). A
// task zeroes the lanes once, feeds every piece of every tensor it covers
// through them and folds them once at its end, in a fixed order.
struct Lanes {
  double s[kLanes];    // sum of |x|^p (p finite)
  uint32_t m[kLanes];  // max over the bits of |x|: above kInfBits means a NaN was seen
};

// One task's result.
struct Partial {
  double sum = 0.0;
  uint32_t maxbits = 0;
};

// One element into one lane. With kUnscale, x is first multiplied by inv_scale
// and max|u| is tracked whatever p is, to detect a non-finite unscaled value.
template <Norm K, bool kUnscale>
inline void lane_step(float v, float p, float inv, float& s, uint32_t& m) {
  if constexpr (kUnscale) v = v * inv;
  const float a = std::fabs(v);
  if constexpr (K == Norm::kL1) {
    s += a;
  } else if constexpr (K == Norm::kL2) {
    s += a * a;
  } else if constexpr (K == Norm::kP) {
    s += std::pow(a, p);  // not vectorised (no vector powf without -ffast-math)
  }
  if constexpr (kUsesMax<K, kUnscale>) m = std::max(m, float_bits(a));
}

// One run: x[0, n), n <= kRun, summed into fresh fp32 lanes `out` (element i
// meets lane i % kLanes) and maxed into m. Kept out of line: inlined into the
// loop over runs, GCC spills the lanes to the stack on every iteration.
template <typename T, Norm K, bool kUnscale>
__attribute__((noinline)) void sum_run(const typename Elem<T>::raw* x, int64_t n, float p, float inv,
                                       float (&out)[kLanes], uint32_t (&max_bits)[kLanes]) {
  // Local lanes, which the compiler keeps in registers (out could alias x).
  float s[kLanes] = {};
  uint32_t m[kLanes];
  if constexpr (kUsesMax<K, kUnscale>) std::memcpy(m, max_bits, sizeof(m));
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
#pragma omp simd
    for (int j = 0; j < kLanes; ++j) lane_step<K, kUnscale>(Elem<T>::load(x[i + j]), p, inv, s[j], m[j]);
  }
  for (int j = 0; i + j < n; ++j) lane_step<K, kUnscale>(Elem<T>::load(x[i + j]), p, inv, s[j], m[j]);
  if constexpr (kUsesSum<K>) std::memcpy(out, s, sizeof(s));
  if constexpr (kUsesMax<K, kUnscale>) std::memcpy(max_bits, m, sizeof(m));
}

// x[0, n) into the lanes, one run of kRun elements at a time.
template <typename T, Norm K, bool kUnscale>
void accumulate(const typename Elem<T>::raw* x, int64_t n, float p, float inv, Lanes& lanes) {
  for (int64_t r = 0; r < n; r += kRun) {
    float s[kLanes];
    sum_run<T, K, kUnscale>(x + r, std::min(kRun, n - r), p, inv, s, lanes.m);
    if constexpr (kUsesSum<K>) {
#pragma omp simd
      for (int j = 0; j < kLanes; ++j) lanes.s[j] += static_cast<double>(s[j]);
    }
  }
}

// Folds the lanes in a fixed tree order.
Partial fold(Lanes& lanes) {
  for (int w = kLanes / 2; w > 0; w /= 2) {
    for (int j = 0; j < w; ++j) {
      lanes.s[j] += lanes.s[j + w];
      lanes.m[j] = std::max(lanes.m[j], lanes.m[j + w]);
    }
  }
  return {lanes.s[0], lanes.m[0]};
}

// In place: x = round((x [* inv]) * coef), the two products in fp32 in that order.
template <typename T, bool kUnscale>
__attribute__((always_inline)) inline void scale_loop(typename Elem<T>::raw* x, int64_t n, float inv, float coef) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float v = Elem<T>::load(x[i]);
    if constexpr (kUnscale) v = v * inv;
    x[i] = Elem<T>::store(v * coef);
  }
}

template <typename T, bool kUnscale>
void scale(typename Elem<T>::raw* x, int64_t n, float inv, float coef) {
  scale_loop<T, kUnscale>(x, n, inv, coef);
}

// ---------------------------------------------------------------- x86 fast paths

struct Isa {
  bool f16c = false;  // with AVX: 8 fp16 <-> fp32 conversions an instruction
  bool avx2 = false;
};

const Isa& isa() {
  static const Isa value = [] {
    Isa v;
#if SLIMOPS_CLIP_X86
    __builtin_cpu_init();
    v.f16c = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
    v.avx2 = __builtin_cpu_supports("avx2");
#endif
    return v;
  }();
  return value;
}

#if SLIMOPS_CLIP_X86
// Exact widening, and round half to even narrowing (the immediate overrides
// MXCSR): the results of Elem<c10::Half> for every non-NaN value.
__attribute__((target("avx,f16c"))) void half_to_float_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  for (; i < n; ++i) dst[i] = _cvtsh_ss(src[i]);
}

__attribute__((target("avx,f16c"))) void float_to_half_f16c(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = _cvtss_sh(src[i], _MM_FROUND_TO_NEAREST_INT);
}

// SSE2 has no 32 -> 16 bit unsigned pack, so the bf16 store loop is ~2x faster
// compiled for AVX2. Same code, same results.
template <bool kUnscale>
__attribute__((target("avx2"))) void scale_bf16_avx2(uint16_t* x, int64_t n, float inv, float coef) {
  scale_loop<c10::BFloat16, kUnscale>(x, n, inv, coef);
}
#endif

template <Norm K, bool kUnscale>
void accumulate_half(const uint16_t* x, int64_t n, float p, float inv, Lanes& lanes, bool f16c) {
#if SLIMOPS_CLIP_X86
  if (f16c) {
    float buf[kBlock];
    for (int64_t i = 0; i < n; i += kBlock) {
      const int64_t m = std::min(kBlock, n - i);
      half_to_float_f16c(x + i, buf, m);
      accumulate<float, K, kUnscale>(buf, m, p, inv, lanes);
    }
    return;
  }
#endif
  accumulate<c10::Half, K, kUnscale>(x, n, p, inv, lanes);
}

template <bool kUnscale>
void scale_half(uint16_t* x, int64_t n, float inv, float coef, bool f16c) {
#if SLIMOPS_CLIP_X86
  if (f16c) {
    float buf[kBlock];
    for (int64_t i = 0; i < n; i += kBlock) {
      const int64_t m = std::min(kBlock, n - i);
      half_to_float_f16c(x + i, buf, m);
      scale<float, kUnscale>(buf, m, inv, coef);
      float_to_half_f16c(buf, x + i, m);
    }
    return;
  }
#endif
  scale<c10::Half, kUnscale>(x, n, inv, coef);
}

template <bool kUnscale>
void scale_bf16(uint16_t* x, int64_t n, float inv, float coef, bool avx2) {
#if SLIMOPS_CLIP_X86
  if (avx2) return scale_bf16_avx2<kUnscale>(x, n, inv, coef);
#endif
  scale<c10::BFloat16, kUnscale>(x, n, inv, coef);
}

// ---------------------------------------------------------------- the task list

// A non-empty tensor's block of memory and its place in the virtual vector.
struct Span {
  void* ptr;
  int64_t begin;
  int64_t numel;
  at::ScalarType dtype;
};

struct Plan {
  std::vector<Span> spans;  // non-empty tensors only, in list order
  int64_t numel = 0;
  int64_t tasks = 0;
};

// Validated tensors are non-overlapping and dense, so their `numel` elements
// are one block from data_ptr (in some order, which neither the norm nor the
// elementwise scale cares about).
Plan make_plan(at::TensorList tensors, bool writable) {
  Plan plan;
  plan.spans.reserve(tensors.size());
  for (const at::Tensor& t : tensors) {
    const int64_t n = t.numel();
    if (n == 0) continue;
    // mutable_data_ptr before any read: it materialises a copy-on-write tensor.
    void* ptr = writable ? t.mutable_data_ptr() : const_cast<void*>(t.const_data_ptr());
    plan.spans.push_back({ptr, plan.numel, n, t.scalar_type()});
    plan.numel += n;
  }
  plan.tasks = (plan.numel + kChunk - 1) / kChunk;
  return plan;
}

// Small tensors are separate allocations, each a fresh start for the hardware
// prefetcher; fetching the head of the next one while this one is processed
// hides most of that latency (1 thread, 4000 x 1k fp32: about 25% faster).
constexpr int64_t kPrefetchBytes = 4096;
inline void prefetch_head(const Span& s) {
  const int64_t bytes = std::min<int64_t>(s.numel * (s.dtype == at::kFloat ? 4 : 2), kPrefetchBytes);
  const char* p = static_cast<const char*>(s.ptr);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(p + b);
}

// Calls fn(span, offset, count) for each piece of task `task`, in list order.
template <typename Fn>
inline void for_each_piece(const Plan& plan, int64_t task, const Fn& fn) {
  int64_t lo = task * kChunk;
  const int64_t hi = std::min(lo + kChunk, plan.numel);
  auto it = std::upper_bound(plan.spans.begin(), plan.spans.end(), lo,
                             [](int64_t v, const Span& s) { return v < s.begin; });
  for (--it; lo < hi; ++it) {
    const int64_t off = lo - it->begin;
    const int64_t count = std::min(hi, it->begin + it->numel) - lo;
    if (lo + count < hi) prefetch_head(*(it + 1));
    fn(*it, off, count);
    lo += count;
  }
}

// ---------------------------------------------------------------- passes

struct NormResult {
  double sum = 0.0;
  uint32_t maxbits = 0;
  bool nonfinite() const { return maxbits >= kInfBits; }  // meaningful for p = inf or with inv_scale
};

template <Norm K, bool kUnscale>
NormResult norm_pass(const Plan& plan, float p, float inv) {
  const bool f16c = isa().f16c;
  std::vector<Partial> parts(plan.tasks);
  at::parallel_for(0, plan.tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      Lanes lanes{};
      for_each_piece(plan, t, [&](const Span& s, int64_t off, int64_t n) {
        switch (s.dtype) {
          case at::kFloat:
            accumulate<float, K, kUnscale>(static_cast<const float*>(s.ptr) + off, n, p, inv, lanes);
            break;
          case at::kHalf:
            accumulate_half<K, kUnscale>(static_cast<const uint16_t*>(s.ptr) + off, n, p, inv, lanes, f16c);
            break;
          default:  // kBFloat16 (validated)
            accumulate<c10::BFloat16, K, kUnscale>(static_cast<const uint16_t*>(s.ptr) + off, n, p, inv, lanes);
            break;
        }
      });
      parts[t] = fold(lanes);
    }
  });
  NormResult r;
  for (const Partial& part : parts) {  // task order: independent of the thread count
    r.sum += part.sum;
    r.maxbits = std::max(r.maxbits, part.maxbits);
  }
  return r;
}

template <bool kUnscale>
NormResult norm_pass_p(const Plan& plan, double norm_type, float inv) {
  if (std::isinf(norm_type)) return norm_pass<Norm::kInf, kUnscale>(plan, 0.f, inv);
  if (norm_type == 2.0) return norm_pass<Norm::kL2, kUnscale>(plan, 2.f, inv);
  if (norm_type == 1.0) return norm_pass<Norm::kL1, kUnscale>(plan, 1.f, inv);
  return norm_pass<Norm::kP, kUnscale>(plan, static_cast<float>(norm_type), inv);
}

// The norm (or, without the root, the p-th power sum / the max) as fp32.
float finish_norm(const NormResult& r, double norm_type, bool root) {
  if (std::isinf(norm_type)) {
    return r.maxbits > kInfBits ? std::numeric_limits<float>::quiet_NaN() : bits_float(r.maxbits);
  }
  if (!root || norm_type == 1.0) return static_cast<float>(r.sum);
  if (norm_type == 2.0) return static_cast<float>(std::sqrt(r.sum));
  return static_cast<float>(std::pow(r.sum, 1.0 / norm_type));
}

template <bool kUnscale>
void scale_pass(const Plan& plan, float inv, float coef) {
  const bool f16c = isa().f16c, avx2 = isa().avx2;
  at::parallel_for(0, plan.tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      for_each_piece(plan, t, [&](const Span& s, int64_t off, int64_t n) {
        switch (s.dtype) {
          case at::kFloat:
            scale<float, kUnscale>(static_cast<float*>(s.ptr) + off, n, inv, coef);
            break;
          case at::kHalf:
            scale_half<kUnscale>(static_cast<uint16_t*>(s.ptr) + off, n, inv, coef, f16c);
            break;
          default:  // kBFloat16 (validated)
            scale_bf16<kUnscale>(static_cast<uint16_t*>(s.ptr) + off, n, inv, coef, avx2);
            break;
        }
      });
    }
  });
}

// min(1, max_norm / (total_norm + 1e-6)) in fp32; a NaN norm gives a NaN coefficient.
float clip_coef(float total_norm, double max_norm) {
  const float c = static_cast<float>(max_norm) / (total_norm + kClipEps);
  return std::isnan(c) ? c : std::min(c, 1.0f);
}

void check_cpu(at::TensorList tensors, const char* name, const char* op) {
  // validate_multi_tensor has put every tensor on the device of tensors[0].
  if (tensors.empty()) return;
  SLIMOPS_CHECK(tensors[0].device().is_cpu(), op, name, " must be CPU tensors for the CPU kernel, got ",
                tensors[0].device());
}

at::Tensor scalar_result(float value, at::TensorList tensors) {
  const at::Device device = tensors.empty() ? at::Device(at::kCPU) : tensors[0].device();
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(at::kFloat).device(device));
  *out.mutable_data_ptr<float>() = value;
  return out;
}

}  // namespace

at::Tensor multi_tensor_norm_cpu(at::TensorList tensors, double norm_type, bool root) {
  check_cpu(tensors, "tensors", "multi_tensor_norm");  // validated: validate_multi_tensor_norm

  const Plan plan = make_plan(tensors, /*writable=*/false);
  if (plan.numel == 0) return scalar_result(0.f, tensors);
  const NormResult r = norm_pass_p<false>(plan, norm_type, 1.f);
  return scalar_result(finish_norm(r, norm_type, root), tensors);
}

void multi_tensor_scale_cpu(at::TensorList tensors, const at::Tensor& total_norm, double max_norm) {
  if (tensors.empty()) return;
  check_cpu(tensors, "tensors", "multi_tensor_scale_");  // validated: validate_multi_tensor_scale_

  const float coef = clip_coef(*total_norm.const_data_ptr<float>(), max_norm);
  // x * 1 rounds back to x (a NaN stays a NaN), so an unclipped call writes nothing.
  if (coef == 1.0f) return;
  const Plan plan = make_plan(tensors, /*writable=*/true);
  scale_pass<false>(plan, 1.f, coef);
}

at::Tensor clip_grad_norm_fused_cpu(at::TensorList grads, double max_norm, double norm_type,
                                    const std::optional<at::Tensor>& inv_scale,
                                    const std::optional<at::Tensor>& found_inf) {
  check_cpu(grads, "grads", "clip_grad_norm_fused_");  // validated: validate_clip_grad_norm_fused_

  const Plan plan = make_plan(grads, /*writable=*/true);
  if (plan.numel == 0) return scalar_result(0.f, grads);

  const bool unscale = inv_scale.has_value();
  const float inv = unscale ? *inv_scale->const_data_ptr<float>() : 1.f;
  const NormResult r = unscale ? norm_pass_p<true>(plan, norm_type, inv) : norm_pass_p<false>(plan, norm_type, inv);
  // As in the reference, found_inf is only looked at when grads are unscaled.
  if (unscale && found_inf.has_value() && r.nonfinite()) *found_inf->mutable_data_ptr<float>() = 1.0f;

  const float total = finish_norm(r, norm_type, /*root=*/true);
  const float coef = clip_coef(total, max_norm);
  if (unscale) {
    scale_pass<true>(plan, inv, coef);
  } else if (coef != 1.0f) {
    // coef == 1 means a finite norm, so every element is finite and g * 1 == g.
    scale_pass<false>(plan, 1.f, coef);
  }
  return scalar_result(total, grads);
}

}  // namespace slimops
