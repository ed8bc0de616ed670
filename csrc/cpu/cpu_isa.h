// Which x86 instruction set the CPU int8 kernels use, decided per call.
//
// slimops is built without -march flags: every ISA-specific function carries a
// __attribute__((target(...))), and this header says at run time which of them
// this CPU runs. SLIMOPS_CPU_ISA, read on every call (so tests can force each
// path in turn in one process), overrides the choice:
//   auto (or unset)  the best this CPU runs: avx512vnni > avxvnni > avx2 > generic
//   avx512vnni       vpdpbusd on zmm (AVX-512 F/BW/VL + AVX512_VNNI)
//   avxvnni          vpdpbusd on ymm (AVX-VNNI, VEX-encoded: Alder Lake, Zen 5)
//   avx2             vpmaddwd on ymm
//   generic          portable C++
// Asking for an ISA this CPU lacks is an error naming the missing extension.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

namespace slimops {

enum class CpuIsa { kGeneric = 0, kAvx2 = 1, kAvxVnni = 2, kAvx512Vnni = 3 };

inline const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512Vnni: return "avx512vnni";
    case CpuIsa::kAvxVnni: return "avxvnni";
    case CpuIsa::kAvx2: return "avx2";
    default: return "generic";
  }
}

// Whether this CPU (and OS: GCC and Clang check the saved register state) runs `isa`'s code.
inline bool cpu_supports(CpuIsa isa) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  switch (isa) {
    case CpuIsa::kAvx512Vnni:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
    case CpuIsa::kAvxVnni:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("avxvnni");
    case CpuIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    default:
      return true;
  }
#else
  return isa == CpuIsa::kGeneric;
#endif
}

// The best ISA this CPU runs (cached: it cannot change within a process).
inline CpuIsa best_cpu_isa() {
  static const CpuIsa best = [] {
    for (CpuIsa isa : {CpuIsa::kAvx512Vnni, CpuIsa::kAvxVnni, CpuIsa::kAvx2})
      if (cpu_supports(isa)) return isa;
    return CpuIsa::kGeneric;
  }();
  return best;
}

// The ISA the kernels use for this call: SLIMOPS_CPU_ISA if set, else best_cpu_isa().
inline CpuIsa chosen_cpu_isa() {
  const char* env = std::getenv("SLIMOPS_CPU_ISA");
  if (env == nullptr || env[0] == '\0') return best_cpu_isa();
  const std::string v = env;
  if (v == "auto") return best_cpu_isa();
  for (CpuIsa isa : {CpuIsa::kAvx512Vnni, CpuIsa::kAvxVnni, CpuIsa::kAvx2, CpuIsa::kGeneric}) {
    if (v != cpu_isa_name(isa)) continue;
    TORCH_CHECK(cpu_supports(isa), "slimops: SLIMOPS_CPU_ISA=", v, " but this CPU does not support it (best: ",
                cpu_isa_name(best_cpu_isa()), ")");
    return isa;
  }
  TORCH_CHECK(false, "slimops: SLIMOPS_CPU_ISA must be auto, avx512vnni, avxvnni, avx2 or generic, got '", v, "'");
}

// The fp32-FMA kernels that convert weights in registers (int4, block-sparse int8) need only AVX-512
// F/BW/VL (implied by avx512vnni) or AVX2 + FMA (implied by avxvnni and avx2): their path for an ISA.
enum class FmaPath { kGeneric, kAvx2, kAvx512 };

inline FmaPath fma_path_for(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512Vnni: return FmaPath::kAvx512;
    case CpuIsa::kAvxVnni:
    case CpuIsa::kAvx2: return FmaPath::kAvx2;
    default: return FmaPath::kGeneric;
  }
}

}  // namespace slimops
