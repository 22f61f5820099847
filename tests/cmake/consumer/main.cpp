// strata consumer smoke test: compiles against strata::strata (or strata.pc) through the umbrella
// header, builds a small GPT, takes one training step and checks the numbers make sense.
#include <cmath>
#include <cstdio>

#include <strata/strata.hpp>
#if defined(STRATA_HAVE_MPI)
// A strata installed with STRATA_USE_MPI hands its consumers MPI too: the MPI header must compile.
#include <strata/train/distributed.hpp>
#endif

#ifndef STRATA_CONSUMER_MODE
#define STRATA_CONSUMER_MODE "unknown"
#endif

static_assert(strata::Matrix<float>::IsRowMajor, "strata::Matrix is row-major");
static_assert(sizeof(strata::Index) == 8, "strata::Index is 64-bit");

int main() {
  strata::ModelConfig cfg;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 16;
  cfg.context_length = 8;
  cfg.attention = strata::AttentionPlan::skip_layer(1, 1);
  strata::GPT<float> model(cfg);
  strata::AdamW<float> opt(model);

  strata::TokenMatrix x(2, 8), y(2, 8);
  for (strata::Index i = 0; i < x.size(); ++i) {
    x.data()[i] = strata::Token(i % 256);
    y.data()[i] = strata::Token((i + 1) % 256);
  }
  const float before = model.forward_backward(x, y);
  opt.step(model, 1e-2);
  const float after = model.loss(x, y);

  std::printf("strata consumer (%s): Eigen %d.%d.%d, %ld parameters, loss %.4f -> %.4f\n",
              STRATA_CONSUMER_MODE, EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION,
              static_cast<long>(model.num_parameters()), before, after);
  // An untrained byte model starts near ln(256) = 5.545; one step on the same batch lowers it.
  if (!(std::abs(before - std::log(256.0f)) < 0.1f) || !(after < before)) {
    std::fprintf(stderr, "strata consumer: FAILED\n");
    return 1;
  }
  return 0;
}
