// strata/core/error.hpp: the one exception type of the public API and the internal assertion hook.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace strata {

/// The exception the public API throws for bad input: wrong shapes, out-of-range token ids,
/// invalid configurations, unreadable or mismatched checkpoints. what() names the argument, the
/// expected and the actual value, e.g. "attention: k has 96 columns, expected 128".
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

namespace detail {
/// Builds an error message from streamable pieces: error_message("q has ", n, " rows").
template <typename... Parts>
std::string error_message(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}
}  // namespace detail

/// Throws strata::Error with the concatenation of the streamable pieces.
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Error(detail::error_message(parts...));
}

}  // namespace strata

/// Validates a caller-visible condition; on failure throws strata::Error built from the pieces.
#define STRATA_CHECK(cond, ...)               \
  do {                                        \
    if (!(cond)) ::strata::fail(__VA_ARGS__); \
  } while (0)

/// Internal invariant (a bug in strata if it fires). Define STRATA_ASSERT before including any
/// strata header to route it elsewhere; by default it follows eigen_assert (off under NDEBUG).
#ifndef STRATA_ASSERT
#include <cassert>
#define STRATA_ASSERT(cond) assert(cond)
#endif
