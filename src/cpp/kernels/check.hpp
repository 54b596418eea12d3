// Argument checks of the kernels: a failed check throws std::invalid_argument (Python: ValueError)
// with a message built from its parts; the message is only formatted on failure.
#pragma once
#include <climits>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace lrpfast {

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw std::invalid_argument(os.str());
}

template <class... Parts>
inline void require(bool ok, const Parts&... parts) {
  if (!ok) fail(parts...);
}

// BLAS takes 32-bit ints: every matrix dimension and leading dimension must fit.
inline int checked_int(std::int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX) fail(what, " = ", v, " is out of range (must be 0..", INT_MAX, ")");
  return static_cast<int>(v);
}

}  // namespace lrpfast
