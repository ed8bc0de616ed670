// GPU backend choice; see backend.h.
#include "backend.h"

#include <memory>
#include <mutex>
#include <unordered_map>

#include "checks.h"

namespace slimops {
namespace {

std::atomic<GpuBackend> g_default{GpuBackend::Auto};
std::atomic<bool> g_triton_on_cpu{false};
thread_local GpuBackend t_override = GpuBackend::Unset;

}  // namespace

OpBackend& op_backend(const std::string& op) {
  static std::mutex mutex;
  static auto* ops = new std::unordered_map<std::string, std::unique_ptr<OpBackend>>();
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = (*ops)[op];
  if (!slot) slot = std::make_unique<OpBackend>(op);
  return *slot;
}

void set_default_backend(GpuBackend b) { g_default.store(b); }
GpuBackend thread_backend() { return t_override; }
void set_thread_backend(GpuBackend b) { t_override = b; }

void set_triton_on_cpu(bool on) { g_triton_on_cpu.store(on); }

bool cpu_runs_triton(const OpBackend& op) {
  if (!g_triton_on_cpu.load(std::memory_order_relaxed)) return false;  // the common case: one load
  const GpuBackend forced = t_override == GpuBackend::Unset ? g_default.load() : t_override;
  return forced == GpuBackend::Triton && op.triton.load() != nullptr;
}

GpuBackend choose(const OpBackend& op, int64_t size, bool have_cuda) {
  const GpuBackend forced = t_override == GpuBackend::Unset ? g_default.load() : t_override;
  const bool have_triton = op.triton.load() != nullptr;
  const char* name = op.name.c_str();
  if (forced == GpuBackend::Cuda) {
    SLIMOPS_CHECK(have_cuda, name, "backend 'cuda' was requested but this op has no CUDA C++ kernel in this build (not compiled, or Triton only)");
    return forced;
  }
  if (forced == GpuBackend::Triton) {
    SLIMOPS_CHECK(have_triton, name,
                  "backend 'triton' was requested but no Triton implementation is registered (is triton installed?)");
    return forced;
  }
  SLIMOPS_CHECK(have_cuda || have_triton, name, "no GPU backend is available (no CUDA kernels, no triton)");
  if (!have_triton) return GpuBackend::Cuda;
  if (!have_cuda) return GpuBackend::Triton;
  return size >= op.triton_min_size.load() ? GpuBackend::Triton : GpuBackend::Cuda;
}

}  // namespace slimops
