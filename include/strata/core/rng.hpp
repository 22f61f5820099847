// strata/core/rng.hpp: a small, portable, serialisable random number generator.
//
// std::normal_distribution is implementation-defined, so results would differ between standard
// libraries; strata owns its generator (xoshiro256**, seeded through splitmix64) and its normal
// sampler (Box-Muller), so a seed means the same numbers everywhere and the state fits in a
// checkpoint as four integers.
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace strata {

class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0) { reseed(seed); }

  void reseed(std::uint64_t seed) {
    std::uint64_t x = seed;
    for (auto& s : state_) s = splitmix64(x);
  }

  /// Uniform 64-bit integer.
  std::uint64_t next_u64() {
    const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
    const std::uint64_t t = state_[1] << 17;
    state_[2] ^= state_[0];
    state_[3] ^= state_[1];
    state_[1] ^= state_[2];
    state_[0] ^= state_[3];
    state_[2] ^= t;
    state_[3] = rotl(state_[3], 45);
    return result;
  }

  /// Uniform double in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

  /// Uniform integer in [0, n), n > 0 (Lemire's nearly-divisionless method is overkill here;
  /// the modulo bias for n << 2^64 is below 2^-40).
  std::uint64_t below(std::uint64_t n) { return next_u64() % n; }

  /// Standard normal sample (Box-Muller, one value per call; no cached second value so that the
  /// state is exactly the four words).
  double normal() {
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  using State = std::array<std::uint64_t, 4>;
  const State& state() const { return state_; }
  void set_state(const State& s) { state_ = s; }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static std::uint64_t splitmix64(std::uint64_t& x) {
    std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  State state_{};
};

}  // namespace strata
