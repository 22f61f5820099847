// bench_kernels: every kernel's forward and backward on transformer shapes, with FLOP/s counters
// (and bytes/s for the memory-bound ones, whose FLOP/s is far below the FMA ceiling by nature).
// FLOPs of the elementwise kernels count their adds, multiplies and divides per element, as noted
// at each one; exp and tanh count as one.
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
  state.counters["FLOP/s"] = benchmark::Counter(
      flops, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// ---- linear: [N, IC] x [OC, IC]^T
// ----------------------------------------------------------------
void linear_fwd(benchmark::State& state) {
  const Index N = state.range(0), IC = state.range(1), OC = state.range(2);
  Mat x = random_matrix(N, IC, 1), w = random_matrix(OC, IC, 2), out(N, OC);
  Vec b = Vec::Zero(OC);
  for (auto _ : state) strata::linear_forward<float>(out, x, w, b);
  set_flops(state, 2.0 * N * IC * OC);
}
void linear_residual_fwd(benchmark::State& state) {  // the attention and MLP projections
  const Index N = state.range(0), IC = state.range(1), OC = state.range(2);
  Mat x = random_matrix(N, IC, 1), w = random_matrix(OC, IC, 2), res = random_matrix(N, OC, 3),
      out(N, OC);
  Vec b = Vec::Zero(OC);
  for (auto _ : state) strata::linear_forward<float>(out, x, w, b, res);
  set_flops(state, 2.0 * N * IC * OC + 2.0 * N * OC);
}
void linear_residual_unfused(benchmark::State& state) {  // what the fused form replaced
  const Index N = state.range(0), IC = state.range(1), OC = state.range(2);
  Mat x = random_matrix(N, IC, 1), w = random_matrix(OC, IC, 2), res = random_matrix(N, OC, 3),
      out(N, OC);
  Vec b = Vec::Zero(OC);
  for (auto _ : state) {
    strata::linear_forward<float>(out, x, w, b);
    out += res;
  }
  set_flops(state, 2.0 * N * IC * OC + 2.0 * N * OC);
}
void linear_bwd(benchmark::State& state) {
  const Index N = state.range(0), IC = state.range(1), OC = state.range(2);
  Mat x = random_matrix(N, IC, 1), w = random_matrix(OC, IC, 2), dout = random_matrix(N, OC, 3);
  Mat dx = Mat::Zero(N, IC), dw = Mat::Zero(OC, IC);
  Vec db = Vec::Zero(OC);
  for (auto _ : state) strata::linear_backward<float>(dx, dw, db, dout, x, w);
  set_flops(state, 4.0 * N * IC * OC);
}

// ---- elementwise and row kernels
// ------------------------------------------------------------------
void layernorm_fwd(benchmark::State& state) {
  const Index N = state.range(0), C = state.range(1);
  Mat x = random_matrix(N, C, 1), out(N, C);
  Vec w = Vec::Ones(C), b = Vec::Zero(C), mean(N), rstd(N);
  for (auto _ : state) strata::layernorm_forward<float>(out, mean, rstd, x, w, b);
  set_flops(state, 8.0 * N * C);  // mean 1, variance 3, normalise and scale 4
  state.SetBytesProcessed(state.iterations() * 2 * N * C * Index(sizeof(float)));
}
void layernorm_bwd(benchmark::State& state) {
  const Index N = state.range(0), C = state.range(1);
  Mat x = random_matrix(N, C, 1), out(N, C), dout = random_matrix(N, C, 2), dx = Mat::Zero(N, C);
  Vec w = Vec::Ones(C), b = Vec::Zero(C), mean(N), rstd(N), dw = Vec::Zero(C), db = Vec::Zero(C);
  strata::layernorm_forward<float>(out, mean, rstd, x, w, b);
  for (auto _ : state) strata::layernorm_backward<float>(dx, dw, db, dout, x, mean, rstd, w);
  set_flops(state, 13.0 * N * C);  // x-hat 2, dweight 2, dbias 1, two row sums 3, dinp 5
  state.SetBytesProcessed(state.iterations() * 3 * N * C * Index(sizeof(float)));
}
void gelu_fwd(benchmark::State& state) {
  const Index N = state.range(0), D = state.range(1);
  Mat x = random_matrix(N, D, 1), out(N, D);
  for (auto _ : state) strata::gelu_forward<float>(out, x);
  set_flops(state, 9.0 * N * D);  // cube 2, inner 3, tanh 1, outer 3
  state.SetBytesProcessed(state.iterations() * 2 * N * D * Index(sizeof(float)));
}
void gelu_bwd(benchmark::State& state) {
  const Index N = state.range(0), D = state.range(1);
  Mat x = random_matrix(N, D, 1), dout = random_matrix(N, D, 2), dx = Mat::Zero(N, D);
  for (auto _ : state) strata::gelu_backward<float>(dx, dout, x);
  set_flops(state, 18.0 * N * D);  // tanh u 6, derivative 10, times dout and accumulate 2
  state.SetBytesProcessed(state.iterations() * 3 * N * D * Index(sizeof(float)));
}
struct CrossEntropyData {
  Index N, V;
  Mat logits, dlogits;
  Vec losses, lse;
  strata::TokenMatrix y;
  CrossEntropyData(Index N_, Index V_)
      : N(N_),
        V(V_),
        logits(random_matrix(N_, V_, 1)),
        dlogits(Mat::Zero(N_, V_)),
        losses(N_),
        lse(N_),
        y(1, N_) {
    for (Index i = 0; i < N; ++i) y(0, i) = strata::Token(i % V);
  }
};
void cross_entropy_fwd(benchmark::State& state) {
  CrossEntropyData d(state.range(0), state.range(1));
  for (auto _ : state)
    benchmark::DoNotOptimize(strata::cross_entropy_forward<float>(d.losses, d.lse, d.logits, d.y));
  set_flops(state, 4.0 * d.N * d.V);  // max 1, subtract and exp 2, sum 1
  state.SetBytesProcessed(state.iterations() * d.N * d.V * Index(sizeof(float)));
}
void cross_entropy_bwd(benchmark::State& state) {
  CrossEntropyData d(state.range(0), state.range(1));
  strata::cross_entropy_forward<float>(d.losses, d.lse, d.logits, d.y);
  for (auto _ : state)
    strata::cross_entropy_backward<float>(d.dlogits, d.logits, d.lse, d.y, 1.0f / float(d.N));
  set_flops(state, 4.0 * d.N * d.V);  // subtract and exp 2, scale 1, accumulate 1
  state.SetBytesProcessed(state.iterations() * 2 * d.N * d.V * Index(sizeof(float)));
}

// ---- embedding: N tokens of B x T, width C
// --------------------------------------------------------
struct EmbeddingData {
  Index B, T, C, V = 256;
  strata::TokenMatrix tokens;
  Mat wte, wpe, out, dwte, dwpe;
  EmbeddingData(Index B_, Index T_, Index C_)
      : B(B_),
        T(T_),
        C(C_),
        tokens(B_, T_),
        wte(random_matrix(V, C_, 1)),
        wpe(random_matrix(T_, C_, 2)),
        out(B_ * T_, C_),
        dwte(Mat::Zero(V, C_)),
        dwpe(Mat::Zero(T_, C_)) {
    for (Index i = 0; i < tokens.size(); ++i) tokens.data()[i] = strata::Token((i * 7) % V);
  }
};
void embedding_fwd(benchmark::State& state) {
  EmbeddingData d(state.range(0), state.range(1), state.range(2));
  for (auto _ : state) strata::embedding_forward<float>(d.out, d.tokens, d.wte, d.wpe);
  set_flops(state, 1.0 * d.B * d.T * d.C);  // one add per element
  state.SetBytesProcessed(state.iterations() * 3 * d.B * d.T * d.C * Index(sizeof(float)));
}
void embedding_bwd(benchmark::State& state) {
  EmbeddingData d(state.range(0), state.range(1), state.range(2));
  for (auto _ : state) strata::embedding_backward<float>(d.dwte, d.dwpe, d.out, d.tokens);
  set_flops(state, 2.0 * d.B * d.T * d.C);  // into dwte and into dwpe
  state.SetBytesProcessed(state.iterations() * 3 * d.B * d.T * d.C * Index(sizeof(float)));
}

// ---- attention: B, NH, T, hs
// ---------------------------------------------------------------------
struct AttentionData {
  Index B, NH, T, hs, C;
  Mat q, k, v, out, lse, dout, dq, dk, dv;
  AttentionData(Index B_, Index NH_, Index T_, Index hs_)
      : B(B_),
        NH(NH_),
        T(T_),
        hs(hs_),
        C(NH_ * hs_),
        q(random_matrix(B * T, C, 1)),
        k(random_matrix(B * T, C, 2)),
        v(random_matrix(B * T, C, 3)),
        out(B * T, C),
        lse(B * T, NH),
        dout(random_matrix(B * T, C, 4)),
        dq(Mat::Zero(B * T, C)),
        dk(Mat::Zero(B * T, C)),
        dv(Mat::Zero(B * T, C)) {}
  // causal: about half of the T x T scores, two products of hs each
  double forward_flops() const {
    return 2.0 * 2.0 * double(B * NH) * double(T) * double(T + 1) / 2 * double(hs);
  }
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
    strata::attention_backward<float>(d.dq, d.dk, d.dv, d.dout, d.q, d.k, d.v, d.out, d.lse, d.NH,
                                      d.B);
  set_flops(state, 2.5 * d.forward_flops());  // recompute QK^T, plus dV, dP, dQ, dK
}
void attention_fwd_bwd(benchmark::State& state) {
  AttentionData d(state.range(0), state.range(1), state.range(2), state.range(3));
  for (auto _ : state) {
    strata::attention_forward<float>(d.out, d.lse, d.q, d.k, d.v, d.NH, d.B);
    strata::attention_backward<float>(d.dq, d.dk, d.dv, d.dout, d.q, d.k, d.v, d.out, d.lse, d.NH,
                                      d.B);
  }
  set_flops(state, 3.5 * d.forward_flops());
}

}  // namespace

// Shapes of the tiny (N=2048, C=128) and small (N=2048, C=384) models.
BENCHMARK(linear_fwd)
    ->Args({2048, 128, 384})
    ->Args({2048, 128, 512})
    ->Args({2048, 512, 128})
    ->Args({2048, 384, 1152})
    ->Args({2048, 384, 1536})
    ->Args({2048, 1536, 384})
    ->Args({2048, 128, 256})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(linear_residual_fwd)
    ->Args({2048, 128, 128})
    ->Args({2048, 512, 128})
    ->Args({2048, 384, 384})
    ->Args({2048, 1536, 384})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(linear_residual_unfused)
    ->Args({2048, 128, 128})
    ->Args({2048, 512, 128})
    ->Args({2048, 384, 384})
    ->Args({2048, 1536, 384})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(linear_bwd)
    ->Args({2048, 128, 384})
    ->Args({2048, 128, 512})
    ->Args({2048, 512, 128})
    ->Args({2048, 384, 1152})
    ->Args({2048, 384, 1536})
    ->Args({2048, 1536, 384})
    ->Args({2048, 128, 256})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(layernorm_fwd)
    ->Args({2048, 128})
    ->Args({2048, 384})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(layernorm_bwd)
    ->Args({2048, 128})
    ->Args({2048, 384})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(gelu_fwd)
    ->Args({2048, 512})
    ->Args({2048, 1536})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(gelu_bwd)
    ->Args({2048, 512})
    ->Args({2048, 1536})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(cross_entropy_fwd)->Args({2048, 256})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(cross_entropy_bwd)->Args({2048, 256})->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(embedding_fwd)
    ->Args({16, 128, 128})
    ->Args({8, 256, 384})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(embedding_bwd)
    ->Args({16, 128, 128})
    ->Args({8, 256, 384})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(attention_fwd)
    ->Args({16, 4, 128, 32})
    ->Args({8, 6, 256, 64})
    ->Args({1, 4, 1024, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(attention_bwd)
    ->Args({16, 4, 128, 32})
    ->Args({8, 6, 256, 64})
    ->Args({1, 4, 1024, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(attention_fwd_bwd)
    ->Args({16, 4, 128, 32})
    ->Args({8, 6, 256, 64})
    ->Args({1, 4, 1024, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

int main(int argc, char** argv) {
  bench::take_threads_flag(argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  bench::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
