// tests/alloc_counter.hpp: counts heap allocations, for the "a training step allocates nothing"
// tests. Include it FIRST in a test file (before any Eigen header: it defines
// EIGEN_RUNTIME_NO_MALLOC and eigen_assert), and in one translation unit per test program only
// (it replaces the global operator new and delete).
//
// Two witnesses: Eigen's own allocations (aligned_malloc) are reported through eigen_assert while
// Eigen::internal::set_is_malloc_allowed(false) is in force, which in Release builds would be
// compiled out, so eigen_assert is routed to a counter here; every operator new (plain or
// over-aligned: std::vector, strings, strata's product buffers) is counted while
// alloc_counter::counting is on.
#pragma once

#define EIGEN_RUNTIME_NO_MALLOC

#include <atomic>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <new>

namespace alloc_counter {
inline std::atomic<int> eigen_assert_failures{0};
inline void eigen_assert_failed(const char* what) {
  ++eigen_assert_failures;
  std::fprintf(stderr, "eigen_assert failed: %s\n", what);
}
inline std::atomic<bool> counting{false};
inline std::atomic<long> allocations{0};
// free() sits behind a call GCC does not inline: -Wmismatched-new-delete would pair it with new.
[[gnu::noinline]] inline void release(void* p) noexcept { std::free(p); }
inline void* allocate(std::size_t n, std::size_t alignment) {
  if (counting.load(std::memory_order_relaxed)) ++allocations;
  if (n == 0) n = 1;
  void* p = alignment <= alignof(std::max_align_t)
              ? std::malloc(n)
              : std::aligned_alloc(alignment, (n + alignment - 1) / alignment * alignment);
  if (!p) throw std::bad_alloc();
  return p;
}

}  // namespace alloc_counter

#define eigen_assert(x)                                 \
  do {                                                  \
    if (!(x)) ::alloc_counter::eigen_assert_failed(#x); \
  } while (false)

void* operator new(std::size_t n) { return alloc_counter::allocate(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) {
  return alloc_counter::allocate(n, std::size_t(a));
}
void operator delete(void* p) noexcept { alloc_counter::release(p); }
void operator delete(void* p, std::size_t) noexcept { alloc_counter::release(p); }
void operator delete(void* p, std::align_val_t) noexcept { alloc_counter::release(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { alloc_counter::release(p); }

#include <utility>

#include <Eigen/Core>
#include <gtest/gtest.h>

namespace alloc_counter {
/// Counts what `f` allocates: Eigen's reports and operator new calls, returned as a pair.
template <typename F>
std::pair<int, long> count(F&& f) {
  eigen_assert_failures = 0;
  allocations = 0;
  counting = true;
  Eigen::internal::set_is_malloc_allowed(false);
  f();
  Eigen::internal::set_is_malloc_allowed(true);
  counting = false;
  return {eigen_assert_failures.load(), allocations.load()};
}

/// A second training step on the same batch (the first sized the workspace and the product
/// buffers) allocates nothing and gives the same loss and gradients. The token matrices are bound
/// to Refs before counting: a Ref of a plain matrix is a view, made without allocating.
template <typename Model, typename Tokens>
void expect_step_allocates_nothing(Model& model, const Tokens& tokens, const Tokens& targets) {
  const auto first = model.forward_backward(tokens, targets);
  const auto grad = model.gradients().eval();
  const Eigen::Ref<const Tokens> tok = tokens, tgt = targets;
  decltype(model.forward_backward(tok, tgt)) second{};
  const auto [eigen_reports, news] = count([&] { second = model.forward_backward(tok, tgt); });
  EXPECT_EQ(eigen_reports, 0) << "Eigen allocated in the step";
  EXPECT_EQ(news, 0) << "operator new was called in the step";
  EXPECT_EQ(first, second);
  EXPECT_TRUE(grad == model.gradients());
}
}  // namespace alloc_counter
