// GPU backend choice (CUDA C++ or Triton), made in C++ by the op table
// (csrc/ops.cpp) so that the common path, an op whose rule picks CUDA C++,
// never enters Python.
//
// State, set from python/slimops/backend.py and python/slimops/ops/_triton.py:
//   process default  SLIMOPS_BACKEND, read once at import;
//   thread override  slimops.use_backend(...), saved and restored around a block;
//   per op           the rule (Triton for problem sizes >= a threshold; its
//                    default is in the op table) and the Triton launcher from
//                    kernels/, called with the GIL held;
//   triton on CPU    whether the launchers also take CPU tensors (Triton's
//                    interpreter, TRITON_INTERPRET=1: the tests' CPU GPU-stand-in).
#pragma once

#include <Python.h>
#include <ATen/core/Tensor.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace slimops {

enum class GpuBackend : int8_t { Unset = -1, Auto = 0, Cuda = 1, Triton = 2 };

struct OpBackend {
  explicit OpBackend(std::string n) : name(std::move(n)) {}
  const std::string name;
  std::atomic<int64_t> triton_min_size{std::numeric_limits<int64_t>::max()};
  // A strong reference, never released: ops may run during interpreter shutdown.
  std::atomic<PyObject*> triton{nullptr};
};

// The state of one op, created on first use and never freed, so kernels can
// keep a reference in a function-local static and skip the lookup per call.
OpBackend& op_backend(const std::string& op);

void set_default_backend(GpuBackend b);
// Raw thread state, so a context manager can restore exactly what it found.
GpuBackend thread_backend();
void set_thread_backend(GpuBackend b);

// The backend that runs `op` for a problem of characteristic `size`.
// Errors, naming the op, when a forced backend is not available.
GpuBackend choose(const OpBackend& op, int64_t size, bool have_cuda);

// On CPU tensors the C++ kernel runs, unless Triton is forced (use_backend or
// SLIMOPS_BACKEND), the op has a launcher and the launchers take CPU tensors.
void set_triton_on_cpu(bool on);
bool cpu_runs_triton(const OpBackend& op);

// A kernel argument as the Triton launchers take it: Python lists, not ArrayRef.
template <typename T>
const T& py_arg(const T& v) {
  return v;
}
inline std::vector<at::Tensor> py_arg(at::TensorList v) { return v.vec(); }

// Calls the Triton launcher registered for `op` with the GIL held.
template <typename Ret, typename... Args>
Ret call_triton(const OpBackend& op, const Args&... args) {
  pybind11::gil_scoped_acquire gil;
  PyObject* fn = op.triton.load();
  TORCH_CHECK(fn != nullptr, "slimops.", op.name, ": no Triton implementation is registered");
  return pybind11::reinterpret_borrow<pybind11::object>(fn)(py_arg(args)...).template cast<Ret>();
}

}  // namespace slimops
