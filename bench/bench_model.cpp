// bench_model: whole-model costs for each attention plan at the tiny and small configurations:
// a training step (forward, backward, clipping, AdamW), a forward pass, and KV-cache generation.
//
//   build/bench/bench_model --threads=2 --benchmark_format=json --benchmark_out=model.json
#include <functional>
#include <memory>
#include <vector>

#include "bench_common.hpp"

namespace {

using strata::Index;

struct Plan {
  const char* name;
  std::function<strata::AttentionPlan()> make;
};

const std::vector<Plan>& plans() {
  static const std::vector<Plan> p{
      {"standard", [] { return strata::AttentionPlan::standard(); }},
      {"skip_split", [] { return strata::AttentionPlan::skip_layer(); }},
      {"skip_concat",
       [] {
         return strata::AttentionPlan::skip_layer(std::nullopt, std::nullopt,
                                                  strata::SkipMode::concat);
       }},
      {"shortcut", [] { return strata::AttentionPlan::shortcut(); }},
      {"dense_shortcut", [] { return strata::AttentionPlan::dense_shortcut(); }},
  };
  return p;
}

void random_tokens(strata::TokenMatrix& x, strata::Rng& rng, Index V) {
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = strata::Token(rng.below(V));
}

void train_step(benchmark::State& state, bench::BenchConfig bc, const Plan& plan) {
  const strata::ModelConfig cfg = bench::model_config(bc, plan.make());
  strata::GPT<float> model(cfg);
  strata::AdamW<float> opt(model);
  strata::Rng rng(1);
  std::vector<strata::TokenMatrix> xs(4, strata::TokenMatrix(bc.B, bc.T)), ys = xs;
  for (int i = 0; i < 4; ++i)
    random_tokens(xs[i], rng, cfg.vocab_size), random_tokens(ys[i], rng, cfg.vocab_size);
  auto step = [&](int i) {
    const float loss = model.forward_backward(xs[size_t(i % 4)], ys[size_t(i % 4)]);
    const double norm = strata::grad_norm(model.gradients());  // clipped as the Trainer does
    opt.step(model, 1e-4, strata::clip_coefficient(norm, 1.0));
    return loss;
  };
  // One untimed step first, as the PyTorch side warms up: the first step sizes the workspace and
  // touches every page of it, the optimizer state and the products' buffers for the first time,
  // which with small's 1.4 s steps and Google Benchmark's 2 iterations would be half the figure.
  benchmark::DoNotOptimize(step(0));
  int i = 1;
  for (auto _ : state) benchmark::DoNotOptimize(step(i++));
  const double tokens = double(bc.B * bc.T);
  state.counters["tokens/s"] =
      benchmark::Counter(tokens, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(
      bench::train_flops(cfg, bc.B, bc.T, model.num_parameters()),
      benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["params"] = double(model.num_parameters());
}

void forward(benchmark::State& state, bench::BenchConfig bc, const Plan& plan) {
  const strata::ModelConfig cfg = bench::model_config(bc, plan.make());
  strata::GPT<float> model(cfg);
  strata::Rng rng(1);
  strata::TokenMatrix x(bc.B, bc.T);
  random_tokens(x, rng, cfg.vocab_size);
  benchmark::DoNotOptimize(model.forward(x).data());  // untimed: sizes the workspace
  for (auto _ : state) benchmark::DoNotOptimize(model.forward(x).data());
  state.counters["tokens/s"] =
      benchmark::Counter(double(bc.B * bc.T), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(  // a forward pass is a third of a training step
      bench::train_flops(cfg, bc.B, bc.T, model.num_parameters()) / 3,
      benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// Greedy decoding of context - 1 tokens after a one-token prompt, batch 1, with the KV cache
// (the same work as ../shared/perf's genW_kvcache).
void generate(benchmark::State& state, bench::BenchConfig bc, const Plan& plan) {
  const strata::ModelConfig cfg = bench::model_config(bc, plan.make());
  strata::GPT<float> model(cfg);
  const Index n = bc.T - 1;
  // untimed: sizes the decoding workspace (every timed call still makes its own cache)
  benchmark::DoNotOptimize(strata::generate(model, {strata::Token(1)}, n, {0.0, 0, 0}).data());
  for (auto _ : state) {
    auto out = strata::generate(model, {strata::Token(1)}, n, strata::Sampler{0.0, 0, 0});
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["tokens/s"] =
      benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  // a generated token costs the forward FLOPs of one token at full context (an upper bound: the
  // attention part grows with the position)
  state.counters["FLOP/s"] = benchmark::Counter(
      double(n) * bench::train_flops(cfg, 1, bc.T, model.num_parameters()) / 3 / double(bc.T),
      benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["cache_bytes"] = double(model.make_cache(1).bytes());
}

}  // namespace

int main(int argc, char** argv) {
  bench::take_threads_flag(argc, argv);
  for (const bench::BenchConfig& bc : {bench::kTiny, bench::kSmall})
    for (const Plan& p : plans()) {
      const std::string suffix = std::string(bc.name) + "/" + p.name;
      benchmark::RegisterBenchmark(("train/" + suffix).c_str(), train_step, bc, p)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->MinTime(2.0);
      benchmark::RegisterBenchmark(("forward/" + suffix).c_str(), forward, bc, p)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("generate/" + suffix).c_str(), generate, bc, p)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  bench::add_context();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
