// 2:4 metadata on the CPU, shared by sparse24_linear and sparse24_int8_linear: reading a
// group's 2 positions, checking them, and decoding a compressed row to dense fp32.
//
// Layout (csrc/sparse24.h): group c of a row (inputs 4c..4c+3) is nibble c % 2 of meta
// byte c / 2, first kept position in its low 2 bits; values 2c and 2c+1 are its entries.
// Valid metadata has the 2 positions of every group strictly increasing (sparse24_compress
// makes it so); the kernels read any metadata safely (positions are 0..3 by construction)
// and report the first invalid group as an error.
#pragma once

#include <algorithm>
#include <cstdint>

#include "checks.h"

namespace slimops {
namespace sparse24 {

// Group c of a row is valid when its positions p0 < p1.
inline bool group_ok(const uint8_t* meta_row, int64_t c, int& p0, int& p1) {
  const int nib = (meta_row[c >> 1] >> (4 * (c & 1))) & 0xF;
  p0 = nib & 3;
  p1 = nib >> 2;
  return p0 < p1;
}

// Whether all 8 groups of a 32-bit meta word (4 bytes: 32 inputs) are valid, without a loop:
// per nibble, 4 + p1 - p0 - 1 lies in 0..6 (no borrow between nibbles) and has bit 2 set iff p1 > p0.
inline bool word_ok(uint32_t word) {
  const uint32_t p0 = word & 0x33333333u, p1 = (word >> 2) & 0x33333333u;
  return (((p1 | 0x44444444u) - p0 - 0x11111111u) & 0x44444444u) == 0x44444444u;
}

// The first group whose positions are not increasing: an error that names it (call after a
// kernel found one; rows [0, n) of meta [n, k / 8]).
inline void report_bad_meta(const char* op, const uint8_t* meta, int64_t n, int64_t k) {
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k / 4; ++c) {
      int p0, p1;
      SLIMOPS_CHECK(group_ok(meta + r * (k / 8), c, p0, p1), op, "meta is not 2:4 metadata: row ", r, ", inputs ",
                    4 * c, "..", 4 * c + 3, " have positions (", p0, ", ", p1,
                    "); the 2 positions of a group must be increasing (make meta with sparse24_compress)");
    }
  }
}

// One row to dense fp32: d[k] = the value kept at input k times `scale`, 0 elsewhere.
// Returns false if any group of the row is invalid (its entries are still written in bounds).
template <typename scalar_t>
inline bool decode_row(const scalar_t* values, const uint8_t* meta_row, float* d, int64_t k, float scale = 1.0f) {
  std::fill(d, d + k, 0.0f);
  bool ok = true;
  for (int64_t c = 0; c < k / 4; ++c) {
    int p0, p1;
    ok &= group_ok(meta_row, c, p0, p1);
    d[4 * c + p0] = static_cast<float>(values[2 * c]) * scale;
    d[4 * c + p1] = static_cast<float>(values[2 * c + 1]) * scale;
  }
  return ok;
}

}  // namespace sparse24
}  // namespace slimops
