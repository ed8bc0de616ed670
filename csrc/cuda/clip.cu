// Multi-tensor clip-norm: CUDA kernels and their launchers.
//
// Semantics are python/slimops/reference/clip.py: the norm of every element of
// every tensor seen as one vector, accumulated in fp32 (max |x| for p = inf,
// NaN propagating), coef = min(1, max_norm / (norm + 1e-6)) in fp32 with NaN
// kept, and x [* inv_scale] * coef in fp32 rounded once to x's dtype. This
// file must never be built with --use_fast_math (the coefficient is one IEEE
// division, the products are not reassociated).
//
// Multi-tensor apply, without any host-to-device copy of metadata:
//   Every tensor is cut into chunks of 2^shift elements (shift in [12, 16],
//   picked from the total size so the grid has a few thousand blocks); one
//   block per chunk. The tensor table of a launch (pointer, cumulative chunk
//   count, length of the last chunk, dtype code) is one kernel parameter
//   struct, read from the constant bank; a block finds its tensor by binary
//   search over the cumulative chunk counts. Tensors of fp32, fp16 and bf16 mix
//   in one launch: the dtype branch is uniform per block. A table holds
//   kSmallCap = 256 tensors (< 4 KB of parameters, any toolkit); longer lists
//   use kLargeCap = 2048 (< 32764 bytes, CUDA >= 12.1 toolkit and driver, every
//   GPU from Volta on) or, failing that, several launches.
//
// Launches:
//   multi_tensor_norm      a 4-byte memset of the counter + 1 norm launch per table.
//   multi_tensor_scale_    1 scale launch per table.
//   clip_grad_norm_fused_  memset + 1 norm launch per table, then 1 scale launch
//                          per table: 2 kernels for up to 256 (or 2048) tensors.
// norm_kernel writes one fp32 partial per block; the last block of the last
// launch to finish (threadfence + atomic ticket) reduces all partials, of every
// launch, in a fixed order (deterministic), writes the norm and resets the
// ticket. scale_kernel reads the norm from device memory and derives the
// coefficient itself (one division per block; multi_tensor_scale_ shares it),
// so nothing ever waits on the host (CUDA-graph safe: the scratch comes from
// the caching allocator, the memset is a graph node). It writes nothing when
// coef == 1 and there is no inv_scale (or it is 1): x * 1 == x.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "clip.h"
#include "cuda/common.cuh"
#include "cuda/nan_math.cuh"

#if defined(CUDART_VERSION) && CUDART_VERSION >= 12010
// CUDA 12.1 raised the kernel parameter limit from 4096 to 32764 bytes.
#define SLIMOPS_CLIP_LARGE_PARAMS 1
#else
#define SLIMOPS_CLIP_LARGE_PARAMS 0
#endif

namespace slimops {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;  // independent 16-byte loads in flight per thread
constexpr int kMinShift = 12;
constexpr int kMaxShift = 16;  // the last chunk's length - 1 must fit in 16 bits
constexpr int64_t kTargetChunks = 8192;
constexpr int64_t kMaxGrid = 0x7fffffff;  // gridDim.x
constexpr int kSmallCap = 256;
constexpr int kLargeCap = 2048;

enum NormKind : int { kL1 = 0, kL2 = 1, kLinf = 2, kLp = 3 };

// ---------------------------------------------------------------- launch metadata

// The tensors of one launch, passed by value (constant bank). Arrays of
// structures would pad each entry to 16 bytes; four arrays take 15 per tensor.
template <int CAP>
struct TensorTable {
  void* ptr[CAP];             // first element (lowest address: dense, positive strides)
  uint32_t chunk_end[CAP];    // chunks of tensors 0..i in this launch (inclusive prefix sum)
  uint16_t tail_m1[CAP];      // elements in the tensor's last chunk, minus 1
  uint8_t dtype[CAP];         // DtypeCode
  int32_t ntensors;
  int32_t shift;              // chunk = 2^shift elements
  int64_t first_partial;      // index of block 0's partial in the scratch
};

struct NormArgs {
  float* partials;            // [n_partials], every launch of the call; never read through the nc path
  unsigned int* counter;      // ticket of the final launch, 0 on entry, reset to 0 by its last block
  float* out;                 // [] the norm (or the power sum / max when !root)
  const float* inv_scale;     // [1] or nullptr
  float* found_inf;           // [1] or nullptr
  int64_t n_partials;
  double inv_p;               // 1 / norm_type, for the root of kLp
  float p;                    // norm_type for kLp
  int32_t final_launch;       // this launch reduces the partials
  int32_t root;
};

struct ScaleArgs {
  const float* total_norm;    // [1]
  const float* inv_scale;     // [1] or nullptr
  float max_norm;
};

static_assert(sizeof(TensorTable<kSmallCap>) + sizeof(NormArgs) <= 4096, "small table must fit 4 KB of params");
static_assert(sizeof(TensorTable<kLargeCap>) + sizeof(NormArgs) <= 32764, "large table must fit 32764 B of params");

// ---------------------------------------------------------------- elements

// 16-byte vectors of kVec<E> elements, unpacked to fp32.
template <typename E>
constexpr int kVec = 16 / sizeof(typename E::Bits);

// 16-bit types: element 2k sits in the low half of word k (little endian).
template <typename E>
__device__ __forceinline__ void unpack(const uint4& r, float (&f)[8]) {
  E::unpack2(r.x, f[0], f[1]);
  E::unpack2(r.y, f[2], f[3]);
  E::unpack2(r.z, f[4], f[5]);
  E::unpack2(r.w, f[6], f[7]);
}

template <typename E>
__device__ __forceinline__ uint4 pack(const float (&f)[8]) {
  return make_uint4(E::pack2(f[0], f[1]), E::pack2(f[2], f[3]), E::pack2(f[4], f[5]), E::pack2(f[6], f[7]));
}

template <typename E>
__device__ __forceinline__ void unpack_vec(const uint4& r, float (&f)[kVec<E>]) {
  if constexpr (kVec<E> == 4) {
    f[0] = __uint_as_float(r.x);
    f[1] = __uint_as_float(r.y);
    f[2] = __uint_as_float(r.z);
    f[3] = __uint_as_float(r.w);
  } else {
    unpack<E>(r, f);
  }
}

template <typename E>
__device__ __forceinline__ uint4 pack_vec(const float (&f)[kVec<E>]) {
  if constexpr (kVec<E> == 4) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  } else {
    return pack<E>(f);
  }
}

// ---------------------------------------------------------------- norm terms


// acc + |u|^p (max for p = inf). Every term is >= 0 or NaN, so sums never see inf - inf.
template <int KIND>
__device__ __forceinline__ float norm_add(float acc, float u, float p) {
  if constexpr (KIND == kL1) {
    return acc + fabsf(u);
  } else if constexpr (KIND == kL2) {
    return fmaf(u, u, acc);
  } else if constexpr (KIND == kLinf) {
    return max_nan(acc, fabsf(u));
  } else {
    return acc + powf(fabsf(u), p);
  }
}

template <int KIND>
__device__ __forceinline__ float norm_combine(float a, float b) {
  if constexpr (KIND == kLinf) {
    return max_nan(a, b);
  } else {
    return a + b;
  }
}

// Block-wide combine in a fixed tree (deterministic). The result is valid in
// thread 0. Every thread must call it; smem is this call's own [kWarps].
template <int KIND>
__device__ __forceinline__ float block_reduce(float v, float* smem) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = norm_combine<KIND>(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? smem[lane] : 0.0f;  // 0 is the identity of + and of max over values >= 0
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = norm_combine<KIND>(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

// Per-thread state of the norm pass: kUnroll accumulators (one per load slot,
// so the adds of independent loads do not chain), the GradScaler unscale and
// its non-finite flag.
template <int KIND, bool HAS_INV>
struct NormVisitor {
  float acc[kUnroll];
  float inv;
  float p;
  bool bad;

  __device__ __forceinline__ NormVisitor(float inv_, float p_) : inv(inv_), p(p_), bad(false) {
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) acc[k] = 0.0f;
  }
  __device__ __forceinline__ void operator()(float x, int slot) {
    float u = x;
    if constexpr (HAS_INV) {
      u = x * inv;
      bad |= !isfinite(u);
    }
    acc[slot] = norm_add<KIND>(acc[slot], u, p);
  }
  __device__ __forceinline__ float result() const {
    float v = acc[0];
#pragma unroll
    for (int k = 1; k < kUnroll; ++k) v = norm_combine<KIND>(v, acc[k]);
    return v;
  }
};

// Elements [0, len) at p, len >= 1: a scalar head up to the first 16-byte
// boundary, 16-byte vectors, a scalar tail. p is element aligned (host check).
template <typename E>
struct Split {
  int head, nvec, tail_start, tail;
  __device__ __forceinline__ Split(const typename E::Bits* p, int len) {
    constexpr int V = kVec<E>;
    const int mis = static_cast<int>((reinterpret_cast<uintptr_t>(p) & 15u) / sizeof(typename E::Bits));
    head = mis == 0 ? 0 : min(V - mis, len);
    nvec = (len - head) / V;
    tail_start = head + nvec * V;
    tail = len - tail_start;  // < V
  }
};

template <typename E, typename Visitor>
__device__ __forceinline__ void norm_range(const typename E::Bits* __restrict__ p, int len, Visitor& vis) {
  constexpr int V = kVec<E>;
  const Split<E> s(p, len);
  const int t = threadIdx.x;
  if (t < s.head) vis(E::to_float(p[t]), 0);
  const uint4* __restrict__ pv = reinterpret_cast<const uint4*>(p + s.head);
  for (int i = t; i < s.nvec; i += kThreads * kUnroll) {
    uint4 r[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      r[k] = make_uint4(0u, 0u, 0u, 0u);
      if (i + k * kThreads < s.nvec) r[k] = __ldg(pv + i + k * kThreads);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      if (i + k * kThreads < s.nvec) {
        float f[V];
        unpack_vec<E>(r[k], f);
#pragma unroll
        for (int e = 0; e < V; ++e) vis(f[e], k);
      }
    }
  }
  if (t < s.tail) vis(E::to_float(p[s.tail_start + t]), 0);
}

// The chunk of block `chunk` of this launch: its tensor and element range.
struct ChunkLoc {
  int tensor;
  int64_t begin;  // first element, in the tensor
  int len;        // 1 .. 2^shift
};

template <int CAP>
__device__ __forceinline__ ChunkLoc locate(const TensorTable<CAP>& tab, uint32_t chunk) {
  // First tensor whose inclusive chunk end exceeds `chunk` (uniform per block).
  int lo = 0, hi = tab.ntensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (tab.chunk_end[mid] > chunk) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  const uint32_t first = lo == 0 ? 0u : tab.chunk_end[lo - 1];
  const uint32_t c = chunk - first;
  const bool last = c + 1 == tab.chunk_end[lo] - first;
  ChunkLoc loc;
  loc.tensor = lo;
  loc.begin = static_cast<int64_t>(c) << tab.shift;
  loc.len = last ? static_cast<int>(tab.tail_m1[lo]) + 1 : (1 << tab.shift);
  return loc;
}

// One block per chunk: the chunk's partial norm term; the last block of the
// final launch also reduces every partial of the call and writes the norm.
template <int KIND, bool HAS_INV, int CAP>
__global__ void __launch_bounds__(kThreads)
    norm_kernel(const __grid_constant__ TensorTable<CAP> tab, const NormArgs args) {
  __shared__ float s_block[kWarps];
  __shared__ float s_final[kWarps];
  __shared__ int s_last;

  const ChunkLoc loc = locate(tab, blockIdx.x);
  NormVisitor<KIND, HAS_INV> vis(HAS_INV ? __ldg(args.inv_scale) : 1.0f, args.p);
  const void* base = tab.ptr[loc.tensor];
  switch (tab.dtype[loc.tensor]) {
    case kF32:
      norm_range<F32>(static_cast<const uint32_t*>(base) + loc.begin, loc.len, vis);
      break;
    case kF16:
      norm_range<F16>(static_cast<const uint16_t*>(base) + loc.begin, loc.len, vis);
      break;
    default:
      norm_range<BF16>(static_cast<const uint16_t*>(base) + loc.begin, loc.len, vis);
      break;
  }
  const float v = block_reduce<KIND>(vis.result(), s_block);
  if constexpr (HAS_INV) {
    // found_inf is only ever set: concurrent stores all write 1.0f.
    if (__syncthreads_or(vis.bad) && threadIdx.x == 0 && args.found_inf != nullptr) *args.found_inf = 1.0f;
  }
  if (threadIdx.x == 0) args.partials[tab.first_partial + blockIdx.x] = v;
  if (!args.final_launch) return;  // uniform over the grid

  // Last block: the partial above is made visible device-wide before the
  // ticket is taken; the block that takes the last ticket then sees every
  // other block's partial (their fence precedes their ticket).
  if (threadIdx.x == 0) {
    __threadfence();
    const unsigned int ticket = atomicAdd(args.counter, 1u);
    s_last = ticket == gridDim.x - 1;
  }
  __syncthreads();
  if (!s_last) return;
  __threadfence();

  // Fixed order: thread t folds partials t, t + kThreads, ... then the block
  // tree. Plain loads (not ld.global.nc: the partials were written in this
  // grid), kFinalBatch in flight: this tail is serial, one block on one SM.
  constexpr int kFinalBatch = 8;
  float acc = 0.0f;
  const float* partials = args.partials;
  const int64_t n = args.n_partials;
  for (int64_t i = threadIdx.x; i < n; i += int64_t(kThreads) * kFinalBatch) {
    float v[kFinalBatch];
#pragma unroll
    for (int k = 0; k < kFinalBatch; ++k) v[k] = i + k * kThreads < n ? partials[i + k * kThreads] : 0.0f;
#pragma unroll
    for (int k = 0; k < kFinalBatch; ++k) acc = norm_combine<KIND>(acc, v[k]);
  }
  const float total = block_reduce<KIND>(acc, s_final);
  if (threadIdx.x == 0) {
    float out = total;
    if (args.root) {
      if constexpr (KIND == kL2) {
        out = sqrtf(total);
      } else if constexpr (KIND == kLp) {
        out = static_cast<float>(pow(static_cast<double>(total), args.inv_p));
      }
    }
    *args.out = out;
    *args.counter = 0u;  // every ticket of this launch is taken: the scratch is reusable (graph replay)
  }
}

// min(1, max_norm / (norm + eps)) in fp32, NaN kept (fminf would drop it).
__device__ __forceinline__ float clip_coef(float max_norm, float norm) {
  const float c = max_norm / (norm + kClipEps);
  return isnan(c) ? c : fminf(c, 1.0f);
}

template <typename E, bool HAS_INV>
__device__ __forceinline__ void scale_range(typename E::Bits* __restrict__ p, int len, float inv, float coef) {
  constexpr int V = kVec<E>;
  // (x * inv) * coef: two fp32 products in this order, rounded once to E.
  auto apply = [inv, coef](float x) { return HAS_INV ? (x * inv) * coef : x * coef; };
  const Split<E> s(p, len);
  const int t = threadIdx.x;
  if (t < s.head) p[t] = E::from_float(apply(E::to_float(p[t])));
  uint4* __restrict__ pv = reinterpret_cast<uint4*>(p + s.head);
  for (int i = t; i < s.nvec; i += kThreads * kUnroll) {
    uint4 r[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      r[k] = make_uint4(0u, 0u, 0u, 0u);
      if (i + k * kThreads < s.nvec) r[k] = pv[i + k * kThreads];
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      if (i + k * kThreads < s.nvec) {
        float f[V];
        unpack_vec<E>(r[k], f);
#pragma unroll
        for (int e = 0; e < V; ++e) f[e] = apply(f[e]);
        pv[i + k * kThreads] = pack_vec<E>(f);
      }
    }
  }
  if (t < s.tail) p[s.tail_start + t] = E::from_float(apply(E::to_float(p[s.tail_start + t])));
}

// One block per chunk, in reverse chunk order: right after norm_kernel the
// last chunks it read are the likeliest to still be in L2.
template <bool HAS_INV, int CAP>
__global__ void __launch_bounds__(kThreads)
    scale_kernel(const __grid_constant__ TensorTable<CAP> tab, const ScaleArgs args) {
  const float coef = clip_coef(args.max_norm, __ldg(args.total_norm));
  const float inv = HAS_INV ? __ldg(args.inv_scale) : 1.0f;
  // x * 1 == x for every x (NaN stays NaN): nothing to write. Uniform over the grid.
  if (coef == 1.0f && inv == 1.0f) return;
  const ChunkLoc loc = locate(tab, gridDim.x - 1 - blockIdx.x);
  void* base = tab.ptr[loc.tensor];
  switch (tab.dtype[loc.tensor]) {
    case kF32:
      scale_range<F32, HAS_INV>(static_cast<uint32_t*>(base) + loc.begin, loc.len, inv, coef);
      break;
    case kF16:
      scale_range<F16, HAS_INV>(static_cast<uint16_t*>(base) + loc.begin, loc.len, inv, coef);
      break;
    default:
      scale_range<BF16, HAS_INV>(static_cast<uint16_t*>(base) + loc.begin, loc.len, inv, coef);
      break;
  }
}

// ---------------------------------------------------------------- host helpers


struct Item {
  void* ptr;
  int64_t numel;
  int64_t bytes;
  uint8_t dtype;
};

// The work of one call: the non-empty tensors, the chunk size, and the tables
// (index ranges into items) with the first partial of each.
struct Plan {
  std::vector<Item> items;
  int shift = kMinShift;
  int cap = kSmallCap;
  std::vector<std::pair<size_t, size_t>> groups;
  std::vector<int64_t> first_chunk;  // per group, then the total at the end
  int64_t total_chunks() const { return first_chunk.empty() ? 0 : first_chunk.back(); }
};

bool large_params_supported() {
#if SLIMOPS_CLIP_LARGE_PARAMS
  static const bool ok = [] {
    int driver = 0;
    return cudaDriverGetVersion(&driver) == cudaSuccess && driver >= 12010;
  }();
  return ok;
#else
  return false;
#endif
}

// Checks that every tensor is a CUDA tensor, element aligned (vector loads
// start at the first 16-byte boundary of each chunk, scalar loads need element
// alignment), and plans the launches. One pass: lists can hold thousands.
// `writes`: the call scales the tensors (mutable_data_ptr, so a lazily cloned
// storage is materialised); a norm alone only reads them.
Plan make_plan(at::TensorList tensors, bool writes, const char* op, const char* name) {
  Plan plan;
  int64_t total = 0;
  plan.items.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = tensors[i];
    SLIMOPS_CHECK(t.is_cuda(), op, name, "[", i, "] must be a CUDA tensor, got ", t.device());
    const int64_t numel = t.numel();
    if (numel == 0) continue;  // nothing to read or scale
    void* ptr = writes ? t.mutable_data_ptr() : const_cast<void*>(t.const_data_ptr());
    const int64_t size = t.element_size();
    SLIMOPS_CHECK(reinterpret_cast<uintptr_t>(ptr) % size == 0, op, name, "[", i,
                  "] must be aligned to its element size (", size, " bytes)");
    plan.items.push_back({ptr, numel, numel * size, dtype_code(t.scalar_type())});
    total += numel;
  }
  // Chunks of 2^12..2^16 elements, about kTargetChunks blocks for large lists:
  // small chunks keep the drain at the end of each pass short, large ones keep
  // the partials (and the serial final reduction) few.
  while (plan.shift < kMaxShift && (total >> plan.shift) > kTargetChunks) ++plan.shift;
  plan.cap = plan.items.size() > static_cast<size_t>(kSmallCap) && large_params_supported() ? kLargeCap : kSmallCap;

  const int64_t chunk = int64_t(1) << plan.shift;
  int64_t chunks_before = 0;
  size_t i = 0;
  while (i < plan.items.size()) {
    const size_t begin = i;
    int64_t chunks = 0;
    while (i < plan.items.size() && i - begin < static_cast<size_t>(plan.cap)) {
      const int64_t c = ceil_div(plan.items[i].numel, chunk);
      if (chunks + c > kMaxGrid) break;
      chunks += c;
      ++i;
    }
    TORCH_CHECK(i > begin, "slimops: a tensor of ", plan.items[i].numel, " elements is too large for one launch");
    plan.groups.emplace_back(begin, i);
    plan.first_chunk.push_back(chunks_before);
    chunks_before += chunks;
  }
  plan.first_chunk.push_back(chunks_before);
  return plan;
}

template <int CAP>
void fill_table(TensorTable<CAP>& tab, const Plan& plan, size_t g) {
  const auto [begin, end] = plan.groups[g];
  const int64_t chunk = int64_t(1) << plan.shift;
  uint32_t chunks = 0;
  for (size_t i = begin; i < end; ++i) {
    const Item& it = plan.items[i];
    const int64_t c = ceil_div(it.numel, chunk);
    const int j = static_cast<int>(i - begin);
    chunks += static_cast<uint32_t>(c);
    tab.ptr[j] = it.ptr;
    tab.chunk_end[j] = chunks;
    tab.tail_m1[j] = static_cast<uint16_t>(it.numel - (c - 1) * chunk - 1);
    tab.dtype[j] = it.dtype;
  }
  tab.ntensors = static_cast<int32_t>(end - begin);
  tab.shift = plan.shift;
  tab.first_partial = plan.first_chunk[g];
}

int group_blocks(const Plan& plan, size_t g) {
  return static_cast<int>(plan.first_chunk[g + 1] - plan.first_chunk[g]);
}

// Launches norm_kernel over every table; the last launch reduces. args.counter
// must be 0 and args.partials hold plan.total_chunks() floats.
template <int KIND, bool HAS_INV, int CAP>
void launch_norm(const Plan& plan, NormArgs args, cudaStream_t stream) {
  auto tab = std::make_unique<TensorTable<CAP>>();  // up to 30 KB: not on the stack
  for (size_t g = 0; g < plan.groups.size(); ++g) {
    fill_table(*tab, plan, g);
    args.final_launch = g + 1 == plan.groups.size();
    norm_kernel<KIND, HAS_INV, CAP><<<group_blocks(plan, g), kThreads, 0, stream>>>(*tab, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <bool HAS_INV, int CAP>
void launch_scale(const Plan& plan, const ScaleArgs& args, cudaStream_t stream) {
  auto tab = std::make_unique<TensorTable<CAP>>();
  // Last table first, as the blocks within a launch: L2 still holds its tail.
  for (size_t g = plan.groups.size(); g-- > 0;) {
    fill_table(*tab, plan, g);
    scale_kernel<HAS_INV, CAP><<<group_blocks(plan, g), kThreads, 0, stream>>>(*tab, args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <int KIND, bool HAS_INV>
void launch_norm_cap(const Plan& plan, const NormArgs& args, cudaStream_t stream) {
  if (plan.cap == kLargeCap) {
#if SLIMOPS_CLIP_LARGE_PARAMS
    launch_norm<KIND, HAS_INV, kLargeCap>(plan, args, stream);
#endif
  } else {
    launch_norm<KIND, HAS_INV, kSmallCap>(plan, args, stream);
  }
}

int norm_kind(double norm_type) {
  if (std::isinf(norm_type)) return kLinf;
  if (norm_type == 2.0) return kL2;
  if (norm_type == 1.0) return kL1;
  return kLp;
}

// The norm of every element of plan's tensors into out ([] fp32), optionally
// unscaled by inv_scale (setting found_inf). Needs plan.total_chunks() > 0.
void run_norm(const Plan& plan, double norm_type, bool root, at::Tensor& out, const float* inv_scale,
              float* found_inf, cudaStream_t stream) {
  const int64_t n = plan.total_chunks();
  // [counter, 3 words of padding, partials...]
  at::Tensor scratch = at::empty({4 + n}, out.options());
  float* base = scratch.mutable_data_ptr<float>();
  NormArgs args{};
  args.partials = base + 4;
  args.counter = reinterpret_cast<unsigned int*>(base);
  args.out = out.mutable_data_ptr<float>();
  args.inv_scale = inv_scale;
  args.found_inf = found_inf;
  args.n_partials = n;
  args.inv_p = 1.0 / norm_type;
  args.p = static_cast<float>(norm_type);
  args.root = root;
  // The caching allocator hands back used memory: the ticket starts at 0 by a
  // memset (a graph node under capture, not a kernel of ours).
  C10_CUDA_CHECK(cudaMemsetAsync(args.counter, 0, sizeof(unsigned int), stream));

  const bool has_inv = inv_scale != nullptr;
  switch (norm_kind(norm_type)) {
    case kL1:
      has_inv ? launch_norm_cap<kL1, true>(plan, args, stream) : launch_norm_cap<kL1, false>(plan, args, stream);
      break;
    case kL2:
      has_inv ? launch_norm_cap<kL2, true>(plan, args, stream) : launch_norm_cap<kL2, false>(plan, args, stream);
      break;
    case kLinf:
      has_inv ? launch_norm_cap<kLinf, true>(plan, args, stream) : launch_norm_cap<kLinf, false>(plan, args, stream);
      break;
    default:
      has_inv ? launch_norm_cap<kLp, true>(plan, args, stream) : launch_norm_cap<kLp, false>(plan, args, stream);
      break;
  }
}

void run_scale(const Plan& plan, const float* total_norm, double max_norm, const float* inv_scale,
               cudaStream_t stream) {
  const ScaleArgs args{total_norm, inv_scale, static_cast<float>(max_norm)};
  const bool large = plan.cap == kLargeCap;
#if SLIMOPS_CLIP_LARGE_PARAMS
  if (large) {
    inv_scale ? launch_scale<true, kLargeCap>(plan, args, stream) : launch_scale<false, kLargeCap>(plan, args, stream);
    return;
  }
#endif
  (void)large;
  inv_scale ? launch_scale<true, kSmallCap>(plan, args, stream) : launch_scale<false, kSmallCap>(plan, args, stream);
}

bool overlaps(const void* scalar, const void* ptr, int64_t bytes) {
  const auto* s = static_cast<const char*>(scalar);
  const auto* b = static_cast<const char*>(ptr);
  return s < b + bytes && b < s + sizeof(float);
}

// A one-element tensor the kernels read while they write the tensors (or
// found_inf) must not share memory with them: blocks would read it before or
// after it is changed, where the reference reads it once, first. Use a copy.
// NOTE: the tensors themselves must not overlap each other (as for torch's
// foreach ops); that is not checked (it would cost a sort per call).
at::Tensor unaliased(const at::Tensor& scalar, const Plan& plan, const at::Tensor* also = nullptr) {
  const void* s = scalar.const_data_ptr();
  if (also != nullptr && overlaps(s, also->const_data_ptr(), sizeof(float))) return scalar.clone();
  for (const Item& it : plan.items) {
    if (overlaps(s, it.ptr, it.bytes)) return scalar.clone();
  }
  return scalar;
}

at::Device list_device(at::TensorList tensors) { return tensors.empty() ? at::Device(at::kCPU) : tensors[0].device(); }

}  // namespace

at::Tensor multi_tensor_norm_cuda(at::TensorList tensors,  // [any] x n, fp32/fp16/bf16, one device
                                  double norm_type, bool root) {
  constexpr const char* op = "multi_tensor_norm";  // validated (validate_multi_tensor_norm)
  if (tensors.empty()) return at::zeros({}, at::TensorOptions().dtype(at::kFloat));  // as the reference: CPU 0
  const Plan plan = make_plan(tensors, /*writes=*/false, op, "tensors");  // checks: CUDA, aligned
  if (plan.total_chunks() == 0) return at::zeros({}, tensors[0].options().dtype(at::kFloat));
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor out = at::empty({}, tensors[0].options().dtype(at::kFloat));  // [] fp32
  run_norm(plan, norm_type, root, out, nullptr, nullptr, stream);
  return out;
}

void multi_tensor_scale_cuda(at::TensorList tensors,         // [any] x n, scaled in place
                             const at::Tensor& total_norm,   // [1] fp32
                             double max_norm) {
  constexpr const char* op = "multi_tensor_scale_";  // validated (validate_multi_tensor_scale_)
  if (tensors.empty()) return;
  const Plan plan = make_plan(tensors, /*writes=*/true, op, "tensors");  // checks: CUDA, aligned
  if (plan.total_chunks() == 0) return;
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const at::Tensor norm = unaliased(total_norm, plan);
  run_scale(plan, norm.const_data_ptr<float>(), max_norm, nullptr, stream);
}

at::Tensor clip_grad_norm_fused_cuda(at::TensorList grads,                        // [any] x n, scaled in place
                                     double max_norm, double norm_type,
                                     const std::optional<at::Tensor>& inv_scale,  // [1] fp32
                                     const std::optional<at::Tensor>& found_inf) {  // [1] fp32, set to 1
  constexpr const char* op = "clip_grad_norm_fused_";  // validated (validate_clip_grad_norm_fused_)
  const at::Device device = list_device(grads);
  if (grads.empty()) return at::zeros({}, at::TensorOptions().dtype(at::kFloat));  // as the reference: CPU 0
  const Plan plan = make_plan(grads, /*writes=*/true, op, "grads");  // checks: CUDA, aligned
  // All empty: the norm is 0 and nothing is scaled or non-finite.
  if (plan.total_chunks() == 0) return at::zeros({}, grads[0].options().dtype(at::kFloat));
  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();


  at::Tensor inv;
  if (inv_scale.has_value()) inv = unaliased(*inv_scale, plan, found_inf.has_value() ? &*found_inf : nullptr);
  const float* inv_ptr = inv.defined() ? inv.const_data_ptr<float>() : nullptr;
  // found_inf matters only with inv_scale, as in the reference.
  float* found_ptr = inv.defined() && found_inf.has_value() ? found_inf->mutable_data_ptr<float>() : nullptr;

  at::Tensor total = at::empty({}, grads[0].options().dtype(at::kFloat));  // [] fp32
  run_norm(plan, norm_type, /*root=*/true, total, inv_ptr, found_ptr, stream);
  run_scale(plan, total.const_data_ptr<float>(), max_norm, inv_ptr, stream);
  return total;
}

}  // namespace slimops
