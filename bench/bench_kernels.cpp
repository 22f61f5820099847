// bench_kernels: every kernel's forward and backward on transformer shapes, with FLOP/s (or
// bytes/s for the memory-bound ones).
//
//   build/bench/bench_kernels --threads=2 --benchmark_filter=attention
#include <vector>

#include "bench_common.hpp"

namespace {

using strata::Index;
using Mat = strata::Matrix<float>;
using Vec = strata::Vector<float>;

Mat random_matrix(Index r, Index c, std::uint64_t seed) {
  strata::Rng rng(seed);
  Mat m(r, c);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = float(rng.normal());
  return m;
}

void set_flops(benchmark::State& state, double flops) {
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

// ---- linear: [N, IC] x [OC, IC]^T ----------------------------------------------------------------
void linear_fwd(benchmark::State& state) {
  const Index N = state.range(0), IC = state.range(1), OC = state.range(2);
  Mat x = random_matrix(N, IC, 1), w = random_matrix(OC, IC, 2), out(N, OC);
  Vec b = Vec::Zero(OC);
  for (auto _ : state) strata::linear_forward<float>(out, x, w, b);
  set_flops(state, 2.0 * N * IC * OC);
}
void linear_bwd(benchmark::State& state) {
  const Index N = state.range(0), IC = state.range(1), OC = state.range(2);
  Mat x = random_matrix(N, IC, 1), w = random_matrix(OC, IC, 2), dout = random_matrix(N, OC, 3);
  Mat dx = Mat::Zero(N, IC), dw = Mat::Zero(OC, IC);
  Vec db = Vec::Zero(OC);
  for (auto _ : state) strata::linear_backward<float>(dx, dw, db, dout, x, w);
  set_flops(state, 4.0 * N * IC * OC);
}

// ---- elementwise and row kernels ------------------------------------------------------------------
void layernorm_fwd(benchmark::State& state) {
  const Index N = state.range(0), C = state.range(1);
  Mat x = random_matrix(N, C, 1), out(N, C);
  Vec w = Vec::Ones(C), b = Vec::Zero(C), mean(N), rstd(N);
  for (auto _ : state) strata::layernorm_forward<float>(out, mean, rstd, x, w, b);
  state.SetBytesProcessed(state.iterations() * 2 * N * C * Index(sizeof(float)));
}
void layernorm_bwd(benchmark::State& state) {
  const Index N = state.range(0), C = state.range(1);
  Mat x = random_matrix(N, C, 1), out(N, C), dout = random_matrix(N, C, 2), dx = Mat::Zero(N, C);
  Vec w = Vec::Ones(C), b = Vec::Zero(C), mean(N), rstd(N), dw = Vec::Zero(C), db = Vec::Zero(C);
  strata::layernorm_forward<float>(out, mean, rstd, x, w, b);
  for (auto _ : state) strata::layernorm_backward<float>(dx, dw, db, dout, x, mean, rstd, w);
  state.SetBytesProcessed(state.iterations() * 3 * N * C * Index(sizeof(float)));
}
void gelu_fwd(benchmark::State& state) {
  const Index N = state.range(0), D = state.range(1);
  Mat x = random_matrix(N, D, 1), out(N, D);
  for (auto _ : state) strata::gelu_forward<float>(out, x);
  state.SetBytesProcessed(state.iterations() * 2 * N * D * Index(sizeof(float)));
}
void gelu_bwd(benchmark::State& state) {
  const Index N = state.range(0), D = state.range(1);
  Mat x = random_matrix(N, D, 1), dout = random_matrix(N, D, 2), dx = Mat::Zero(N, D);
  for (auto _ : state) strata::gelu_backward<float>(dx, dout, x);
  state.SetBytesProcessed(state.iterations() * 3 * N * D * Index(sizeof(float)));
}
void cross_entropy_fwd_bwd(benchmark::State& state) {
  const Index N = state.range(0), V = state.range(1);
  Mat logits = random_matrix(N, V, 1), dlogits = Mat::Zero(N, V);
  Vec losses(N), lse(N);
  strata::TokenMatrix y(1, N);
  for (Index i = 0; i < N; ++i) y(0, i) = strata::Token(i % V);
  for (auto _ : state) {
    benchmark::DoNotOptimize(strata::cross_entropy_forward<float>(losses, lse, logits, y));
    strata::cross_entropy_backward<float>(dlogits, logits, lse, y, 1.0f / float(N));
  }
  state.SetBytesProcessed(state.iterations() * 2 * N * V * Index(sizeof(float)));
}

// ---- attention: B, NH, T, hs ---------------------------------------------------------------------
struct AttentionData {
  Index B, NH, T, hs, C;
  Mat q, k, v, out, lse, dout, dq, dk, dv;
  AttentionData(Index B_, Index NH_, Index T_, Index hs_)
      : B(B_), NH(NH_), T(T_), hs(hs_), C(NH_ * hs_),
        q(random_matrix(B * T, C, 1)), k(random_matrix(B * T, C, 2)), v(random_matrix(B * T, C, 3)),
        out(B * T, C), lse(B * T, NH), dout(random_matrix(B * T, C, 4)),
        dq(Mat::Zero(B * T, C)), dk(Mat::Zero(B * T, C)), dv(Mat::Zero(B * T, C)) {}
  // causal: about half of the T x T scores, two products of hs each
  double forward_flops() const { return 2.0 * 2.0 * double(B * NH) * double(T) * double(T + 1) / 2 * double(hs); }
};

void attention_fwd(benchmark::State& state) {
  AttentionData d(state.range(0), state.range(1), state.range(2), state.range(3));
  for (auto _ : state) strata::attention_forward<float>(d.out, d.lse, d.q, d.k, d.v, d.NH, d.B);
  set_flops(state, d.forward_flops());
}
void attention_bwd(benchmark::State& state) {
  AttentionData d(state.range(0), state.range(1), state.range(2), state.range(3));
  strata::attention_forward<float>(d.out, d.lse, d.q, d.k, d.v, d.NH, d.B);
  for (auto _ : state)
    strata::attention_backward<float>(d.dq, d.dk, d.dv, d.dout, d.q, d.k, d.v, d.out, d.lse, d.NH, d.B);
  set_flops(state, 2.5 * d.forward_flops());  // recompute QK^T, plus dV, dP, dQ, dK
}
void attention_fwd_bwd(benchmark::State& state) {
  AttentionData d(state.range(0), state.range(1), state.range(2), state.range(3));
  for (auto _ : state) {
    strata::attention_forward<float>(d.out, d.lse, d.q, d.k, d.v, d.NH, d.B);
    strata::attention_backward<float>(d.dq, d.dk, d.dv, d.dout, d.q, d.k, d.v, d.out, d.lse, d.NH, d.B);
  }
  set_flops(state, 3.5 * d.forward_flops());
}

}  // namespace

// Shapes of the tiny (N=2048, C=128) and small (N=2048, C=384) models.
BENCHMARK(linear_fwd)->Args({2048, 128, 384})->Args({2048, 128, 512})->Args({2048, 512, 128})
    ->Args({2048, 384, 1152})->Args({2048, 384, 1536})->Args({2048, 1536, 384})->Args({2048, 128, 256})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(linear_bwd)->Args({2048, 128, 384})->Args({2048, 128, 512})->Args({2048, 512, 128})
    ->Args({2048, 384, 1152})->Args({2048, 384, 1536})->Args({2048, 1536, 384})->Args({2048, 128, 256})
    ->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(layernorm_fwd)->Args({2048, 128})->Args({2048, 384})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(layernorm_bwd)->Args({2048, 128})->Args({2048, 384})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(gelu_fwd)->Args({2048, 512})->Args({2048, 1536})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(gelu_bwd)->Args({2048, 512})->Args({2048, 1536})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(cross_entropy_fwd_bwd)->Args({2048, 256})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(attention_fwd)->Args({16, 4, 128, 32})->Args({8, 6, 256, 64})->Args({1, 4, 1024, 64})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(attention_bwd)->Args({16, 4, 128, 32})->Args({8, 6, 256, 64})->Args({1, 4, 1024, 64})
    ->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(attention_fwd_bwd)->Args({16, 4, 128, 32})->Args({8, 6, 256, 64})->Args({1, 4, 1024, 64})
    ->Unit(benchmark::kMillisecond)->UseRealTime();

int main(int argc, char** argv) {
  bench::take_threads_flag(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  bench::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
