// Saturating int64 arithmetic for estimates and budgets built from client input: a sum or a
// product that would overflow sticks at the limit instead of wrapping (a wrapped estimate turns
// negative and passes every limit).
#pragma once

#include <cstdint>
#include <limits>

namespace tollgate {

inline constexpr int64_t kInt64Max = std::numeric_limits<int64_t>::max();
inline constexpr int64_t kInt64Min = std::numeric_limits<int64_t>::min();

constexpr int64_t SatAdd(int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_add_overflow(a, b, &out)) return b > 0 ? kInt64Max : kInt64Min;
  return out;
}

constexpr int64_t SatMul(int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) return (a < 0) == (b < 0) ? kInt64Max : kInt64Min;
  return out;
}

}  // namespace tollgate
