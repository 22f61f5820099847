// mpi_train_check: data-parallel training checks, run under mpirun (tests/mpi/CMakeLists.txt).
//
//   mpirun -np 2 mpi_train_check equivalence <standard|skip|shortcut>
//   mpirun -np 2 mpi_train_check resume <directory>
//   mpirun -np 2 mpi_train_check fail <exception|nan|data>
//
// equivalence: N ranks with per-rank batch B/N against one process with batch B, on the bundled
//   corpus, 60 steps, every rank computing the single-process references itself:
//   (a) the deterministic reduction must be bit-identical, every loss and every parameter, to one
//       process that runs the N shards of each batch one after another and sums their gradients in
//       shard order (the same arithmetic, in the same order);
//   (b) the overlapped reduction too when N = 2 (every MPI algorithm computes g0 + g1, one
//       rounding; with more ranks the library's order may differ and only (c) is promised);
//   (c) against one process with batch B (which sums over all B*T rows inside its matrix products,
//       in another order), the losses must agree within kLossTolerance at every step.
// resume: 12 uninterrupted steps against 6 steps, a checkpoint written by rank 0, a resume on every
//   rank and 6 more steps: bit-identical losses and parameters.
// fail: one rank fails (throws, gets a NaN loss, or reads other data); the job must end with a
//   message that names it, not hang (CTest's timeout would catch a hang).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include <strata/strata.hpp>
#include <strata/train/distributed.hpp>

namespace {

using strata::GPT;
using strata::Index;
using strata::TokenMatrix;
namespace mpi = strata::mpi;

// The tolerance of (c). The two runs differ only in the order in which float gradients are summed
// over the batch (one GEMM over B*T rows against N GEMMs over B*T/N rows, then a sum), a relative
// difference of order 1e-7 per gradient; AdamW then normalises every coordinate, and 60 steps of
// training carry that difference into the losses. Measured on 2 ranks: at most 2.5e-6 (see the
// output of this program); kLossTolerance leaves a margin for other CPUs and BLAS builds while
// staying far below what a wrong reduction produces. The gradient norms (before clipping) are
// compared too, relative, within kNormTolerance: clipping and AdamW's per-coordinate normalisation
// would hide a wrong overall scale (a missing 1/N, off by a factor N) from the losses, not from the
// norm. Norms are the most sensitive figure at a gradient spike (in the standard run, step 58 jumps
// from 0.6 to 35): measured at most 1.5e-4 there, 2e-7 elsewhere; 1e-2 leaves a margin and is still
// 50 times smaller than a factor of 2.
constexpr double kLossTolerance = 1e-4;
constexpr double kNormTolerance = 1e-2;
constexpr Index kSteps = 60;

int g_rank = 0, g_size = 1;

strata::ModelConfig config(const std::string& plan) {
  strata::ModelConfig cfg;
  cfg.context_length = 16;
  cfg.n_layer = 3;
  cfg.n_head = 2;
  cfg.n_embd = 32;
  cfg.seed = 7;
  if (plan == "standard")
    cfg.attention = strata::AttentionPlan::standard();
  else if (plan == "skip")
    cfg.attention = strata::AttentionPlan::skip_layer(2, 1);
  else if (plan == "shortcut")
    cfg.attention = strata::AttentionPlan::shortcut({}, 0, true);
  else
    strata::fail("plan '", plan, "', expected standard, skip or shortcut");
  return cfg;
}

strata::TrainOptions options(Index steps) {
  strata::TrainOptions o;
  o.steps = steps;
  o.batch = 8;
  o.warmup = 10;
  o.lr = 3e-3;
  o.min_lr = 3e-4;
  o.data_seed = 3;
  return o;
}

struct Run {
  std::vector<double> losses;
  std::vector<double> norms;
  strata::Vector<float> params;
};

Run single_process(const strata::ModelConfig& cfg, const strata::TextDataset& data) {
  GPT<float> model(cfg);
  strata::Trainer<float> trainer(model, data, options(kSteps));
  Run run;
  for (Index s = 0; s < kSteps; ++s) {
    const strata::StepReport r = trainer.step();
    run.losses.push_back(r.loss);
    run.norms.push_back(r.grad_norm);
  }
  run.params = model.parameters();
  return run;
}

// One process, the N shards of every batch one after another, gradients summed in shard order and
// divided by N, then Trainer::step's clipping, schedule and AdamW.
Run accumulated_shards(const strata::ModelConfig& cfg, const strata::TextDataset& data, Index N) {
  const strata::TrainOptions o = options(kSteps);
  GPT<float> model(cfg);
  strata::AdamW<float> adam(model, {o.lr, o.beta1, o.beta2, o.eps, o.weight_decay});
  const Index T = cfg.context_length;
  strata::BatchLoader loader(data.train, o.batch, T, o.data_seed);
  const strata::LRSchedule schedule{o.lr, o.min_lr, o.warmup, o.steps};
  strata::Vector<float> sum(model.num_parameters());
  TokenMatrix x, y;
  Run run;
  const Index rows = o.batch / N;
  for (Index s = 0; s < kSteps; ++s) {
    loader.next(x, y);
    double loss = 0;
    for (Index r = 0; r < N; ++r) {
      const TokenMatrix xs = x.middleRows(r * rows, rows), ys = y.middleRows(r * rows, rows);
      loss += double(model.forward_backward(xs, ys));
      if (r == 0)
        sum = model.gradients();
      else
        sum += model.gradients();
    }
    loss /= double(N);
    sum /= float(N);
    model.gradients() = sum;
    run.norms.push_back(strata::clip_grad_norm(model.gradients(), o.grad_clip));
    adam.step(model, schedule.at(s));
    run.losses.push_back(loss);
  }
  run.params = model.parameters();
  return run;
}

Run data_parallel(const strata::ModelConfig& cfg, const strata::TextDataset& data,
                  mpi::Reduction reduction, Index* buckets = nullptr) {
  GPT<float> model(cfg);
  strata::Trainer<float> trainer(model, data, options(kSteps));
  mpi::DataParallel<float>::Options dp_options;
  dp_options.reduction = reduction;
  dp_options.min_bucket_elements = 1;  // one bucket per layer: exercise the overlap path fully
  mpi::DataParallel<float> dp(model, dp_options);
  dp.check_same_data(data);
  dp.attach(trainer);
  dp.broadcast_from_root(trainer);
  Run run;
  for (Index s = 0; s < kSteps; ++s) {
    const strata::StepReport r = trainer.step();
    run.losses.push_back(r.loss);
    run.norms.push_back(r.grad_norm);
  }
  dp.check_replicas();
  if (buckets) *buckets = dp.buckets_last_step();
  run.params = model.parameters();
  return run;
}

bool bit_equal(const Run& a, const Run& b) {
  return a.losses == b.losses && a.norms == b.norms && a.params.size() == b.params.size()
      && std::memcmp(a.params.data(), b.params.data(), sizeof(float) * size_t(a.params.size()))
             == 0;
}

double max_loss_difference(const Run& a, const Run& b) {
  double worst = 0;
  for (size_t i = 0; i < a.losses.size(); ++i)
    worst = std::max(worst, std::abs(a.losses[i] - b.losses[i]));
  return worst;
}

// Largest relative difference of the gradient norms before clipping (AdamW and clipping hide a
// wrong gradient scale from the losses; the norm shows it).
double max_norm_difference(const Run& a, const Run& b) {
  double worst = 0;
  for (size_t i = 0; i < a.norms.size(); ++i)
    worst = std::max(worst, std::abs(a.norms[i] - b.norms[i]) / b.norms[i]);
  return worst;
}

// Every rank's verdict, combined: true when all ranks passed.
bool all_ranks(bool ok) {
  int local = ok ? 1 : 0, global = 0;
  MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
  return global != 0;
}

int check(bool ok, const std::string& what) {
  const bool all = all_ranks(ok);
  if (!ok) std::fprintf(stderr, "rank %d: FAILED: %s\n", g_rank, what.c_str());
  if (g_rank == 0 && all) std::printf("ok: %s\n", what.c_str());
  return all ? 0 : 1;
}

strata::TextDataset corpus(Index T) {
  return strata::TextDataset::from_file(STRATA_DEFAULT_DATA, 0.1, T);
}

int equivalence(const std::string& plan) {
  const strata::ModelConfig cfg = config(plan);
  const strata::TextDataset data = corpus(cfg.context_length);
  const Run single = single_process(cfg, data);
  const Run accumulated = accumulated_shards(cfg, data, g_size);
  Index buckets = 0;
  const Run overlapped = data_parallel(cfg, data, mpi::Reduction::overlapped, &buckets);
  const Run deterministic = data_parallel(cfg, data, mpi::Reduction::deterministic);
  int failures = 0;
  const std::string tag =
      plan + ", " + std::to_string(g_size) + " ranks, " + std::to_string(kSteps) + " steps";
  failures += check(bit_equal(deterministic, accumulated),
                    tag + ": deterministic reduction bit-identical to one process summing the "
                        + std::to_string(g_size) + " shards in order");
  if (g_size == 2)
    failures += check(bit_equal(overlapped, accumulated),
                      tag + ": overlapped reduction (" + std::to_string(buckets)
                          + " buckets) bit-identical to it as well (2 ranks)");
  const double d_over = max_loss_difference(overlapped, single);
  const double d_det = max_loss_difference(deterministic, single);
  const double n_over = max_norm_difference(overlapped, single);
  const double n_det = max_norm_difference(deterministic, single);
  char line[384];
  std::snprintf(line, sizeof line,
                "%s: against one process with batch %lld: max |loss difference| %.3g "
                "(overlapped), %.3g (deterministic), tolerance %.0e; max relative gradient-norm "
                "difference %.3g, %.3g, tolerance %.0e; first loss %.4f, last %.4f",
                tag.c_str(), (long long)options(kSteps).batch, d_over, d_det, kLossTolerance,
                n_over, n_det, kNormTolerance, single.losses.front(), single.losses.back());
  if (g_rank == 0 && std::getenv("STRATA_MPI_CHECK_VERBOSE"))
    for (size_t i = 0; i < single.losses.size(); ++i)
      std::printf("step %zu: loss %.7f %.7f norm %.7g %.7g\n", i + 1, single.losses[i],
                  overlapped.losses[i], single.norms[i], overlapped.norms[i]);
  failures += check(d_over <= kLossTolerance && d_det <= kLossTolerance && n_over <= kNormTolerance
                        && n_det <= kNormTolerance,
                    line);
  // The run must have trained (a reduction that zeroed the gradients would pass the comparisons
  // of a model that does not move only if the references did not move either).
  failures += check(single.losses.back() < single.losses.front() - 0.5,
                    tag + ": the loss falls by more than 0.5 nats");
  return failures == 0 ? 0 : 1;
}

int resume(const std::string& dir) {
  const strata::ModelConfig cfg = config("skip");
  const strata::TextDataset data = corpus(cfg.context_length);
  const std::string path = dir + "/resume_check.safetensors";
  auto make = [&](GPT<float>& model, strata::Trainer<float>& trainer) {
    auto dp = std::make_unique<mpi::DataParallel<float>>(model);
    dp->attach(trainer);
    dp->broadcast_from_root(trainer);
    return dp;
  };
  Run straight;
  {
    GPT<float> model(cfg);
    strata::Trainer<float> trainer(model, data, options(12));
    auto dp = make(model, trainer);
    for (int s = 0; s < 12; ++s) straight.losses.push_back(trainer.step().loss);
    straight.params = model.parameters();
  }
  Run resumed;
  {
    GPT<float> model(cfg);
    strata::Trainer<float> trainer(model, data, options(12));
    auto dp = make(model, trainer);
    for (int s = 0; s < 6; ++s) resumed.losses.push_back(trainer.step().loss);
    if (g_rank == 0) {
      std::filesystem::create_directories(dir);
      trainer.save(path);
    }
    MPI_Barrier(MPI_COMM_WORLD);
  }
  {
    GPT<float> model(cfg);
    model.parameters().setZero();  // anything the resume does not restore would show
    strata::Trainer<float> trainer(model, data, options(12));
    trainer.resume(path);
    auto dp = make(model, trainer);
    if (trainer.state().step != 6) strata::fail("resumed at step ", trainer.state().step);
    for (int s = 6; s < 12; ++s) resumed.losses.push_back(trainer.step().loss);
    resumed.params = model.parameters();
  }
  return check(bit_equal(straight, resumed),
               std::to_string(g_size) + " ranks: 6 steps + checkpoint + resume + 6 steps "
               "bit-identical to 12 steps") == 0 ? 0 : 1;
}

int fail(const std::string& how) {
  const strata::ModelConfig cfg = config("standard");
  strata::TextDataset data = corpus(cfg.context_length);
  if (how == "data" && g_rank == 1) data.train[100] ^= 1;  // one byte differs on one host
  GPT<float> model(cfg);
  strata::Trainer<float> trainer(model, data, options(kSteps));
  mpi::DataParallel<float> dp(model);
  dp.check_same_data(data);
  dp.attach(trainer);
  dp.broadcast_from_root(trainer);
  for (Index s = 0; s < kSteps; ++s) {
    if (s == 3 && g_rank == 1) {
      if (how == "exception") strata::fail("batch 4 holds a token outside the vocabulary");
      if (how == "nan") model.params().lnf_w(0) = std::numeric_limits<float>::quiet_NaN();
    }
    trainer.step();
  }
  std::printf("rank %d: all %lld steps done, no failure\n", g_rank, (long long)kSteps);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  mpi::Environment env(&argc, &argv);
  g_rank = env.rank();
  g_size = env.size();
  strata::set_num_threads(1);
  const std::string mode = argc > 1 ? argv[1] : "", arg = argc > 2 ? argv[2] : "";
  try {
    if (mode == "equivalence") return equivalence(arg);
    if (mode == "resume") return resume(arg);
    if (mode == "fail") return fail(arg);
    strata::fail("usage: mpi_train_check equivalence <plan> | resume <dir> | fail <how>");
  } catch (const std::exception& e) {
    mpi::abort_all("mpi_train_check", e.what());
  }
}
