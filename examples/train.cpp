// train: trains a GPT on a text file (by default the bundled Moby Dick) with a live progress bar,
// periodic validation, a JSON-lines log of every loss, checkpoints that resume exactly, and a text
// sample at the end.
//
//   build/examples/train                                  # the tiny default model, 2000 steps
//   build/examples/train --attention skip --skip-heads 2   # skip-layer attention
//   build/examples/train --resume out/model.safetensors    # continue a saved run
//   build/examples/train --plan-file plan.json             # any plan (docs/plan_schema.md)
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>

#include "cli_common.hpp"

namespace {

using strata::Index;

std::atomic<bool> g_stop{false};
void on_signal(int) { g_stop = true; }

struct Flags {
  strata::ModelConfig model;
  examples::PlanFlags plan;
  std::string plan_file;  // a plan as JSON (docs/plan_schema.md); replaces the plan flags
  strata::TrainOptions train;
  std::string data = STRATA_DEFAULT_DATA;
  double val_fraction = 0.1;
  std::string checkpoint = "out/model.safetensors";
  Index checkpoint_interval = 500;
  std::string resume;
  std::string log = "out/train_log.jsonl";
  int threads = 0;
  Index sample_tokens = 300;
  std::string prompt = "Call me ";
  double temperature = 0.8;
  Index top_k = 40;
  bool quiet = false;
};

// Prints a one-line progress bar on a terminal, or a plain line every ~5% when the output is a
// file or a pipe (CI logs).
class Progress {
 public:
  Progress(Index total, bool quiet) : total_(total), quiet_(quiet), tty_(isatty(fileno(stderr))) {}

  void update(const strata::StepReport& r, double elapsed_from_start, Index steps_this_run,
              Index first_step) {
    if (quiet_) return;
    smoothed_tps_ = smoothed_tps_ == 0 ? r.tokens_per_second
                                       : 0.9 * smoothed_tps_ + 0.1 * r.tokens_per_second;
    const double per_step = elapsed_from_start / double(std::max<Index>(1, steps_this_run));
    const double eta = per_step * double(total_ - r.step);
    char line[256];
    std::snprintf(line, sizeof line, "step %5lld/%lld | loss %.4f | lr %.2e | %6.0f tok/s | ETA %s",
                  (long long)r.step, (long long)total_, r.loss, r.lr, smoothed_tps_,
                  examples::format_duration(eta).c_str());
    if (tty_) {
      const int width = 24;
      const int filled = int(double(width) * double(r.step) / double(total_));
      std::fprintf(stderr, "\r[%s%s] %s\033[K", std::string(filled, '#').c_str(),
                   std::string(width - filled, ' ').c_str(), line);
      std::fflush(stderr);
    } else {
      const Index every = std::max<Index>(1, (total_ - first_step) / 20);
      if ((r.step - first_step) % every == 0 || r.step == total_) std::fprintf(stderr, "%s\n", line);
    }
  }
  /// Prints a line of its own (validation) without garbling the bar.
  void message(const std::string& text) {
    if (tty_ && !quiet_) std::fprintf(stderr, "\r\033[K");
    std::fprintf(stderr, "%s\n", text.c_str());
  }
  void finish() {
    if (tty_ && !quiet_) std::fprintf(stderr, "\n");
  }

 private:
  Index total_;
  bool quiet_, tty_;
  double smoothed_tps_ = 0;
};

void ensure_parent_dir(const std::string& path) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
}

int run(Flags& f, CLI::App& app) {
  strata::set_num_threads(f.threads);
  std::unique_ptr<strata::GPT<float>> model;
  strata::TrainOptions opts = f.train;
  std::optional<strata::io::SafetensorsFile> saved_run;  // the checkpoint of --resume, read once
  if (!f.resume.empty()) {
    // The checkpoint decides the model and the run's settings; only --steps may change.
    for (const char* flag : {"--layers", "--heads", "--width", "--context", "--mlp-ratio",
                             "--attention", "--plan-file", "--batch", "--lr", "--min-lr", "--warmup",
                             "--weight-decay", "--clip", "--seed", "--seq-len"})
      if (app.count(flag) > 0)
        strata::fail("--resume continues the saved run with its own settings; drop ", flag);
    saved_run = strata::io::SafetensorsFile::read(f.resume);
    const strata::TrainState state = strata::read_train_state(*saved_run);  // weights only: error
    model = std::make_unique<strata::GPT<float>>(strata::io::read_config(*saved_run));
    const auto saved = strata::TrainOptions::from_json(state.options);
    const Index steps = app.count("--steps") ? opts.steps : saved.steps;
    opts = saved;
    opts.steps = steps;
  } else {
    f.model.attention = f.plan.plan();
    if (!f.plan_file.empty()) {
      for (const char* flag : {"--attention", "--skip-distance", "--skip-heads", "--skip-mode",
                               "--shortcut-depths", "--feature-width", "--shortcut-embeddings"})
        if (app.count(flag) > 0) strata::fail("--plan-file gives the whole plan; drop ", flag);
      f.model.attention = strata::io::read_plan_file(f.plan_file);
      try {
        f.model.validate();
      } catch (const strata::Error& e) {
        strata::fail(f.plan_file, ": ", e.what(), " (the model has --layers ", f.model.n_layer,
                     " and --heads ", f.model.n_head, ")");
      }
    }
    f.model.seed = opts.data_seed;
    model = std::make_unique<strata::GPT<float>>(f.model);
  }
  const strata::ModelConfig& cfg = model->config();
  const Index T = opts.seq_len > 0 ? opts.seq_len : cfg.context_length;
  const strata::TextDataset data = strata::TextDataset::from_file(f.data, f.val_fraction, T);
  strata::Trainer<float> trainer(*model, data, opts);
  if (saved_run) trainer.resume(*saved_run);  // weights, optimizer moments, data position

  std::fprintf(stderr,
               "strata train: %lld parameters | L%lld H%lld C%lld T%lld | batch %lld | attention %s\n"
               "  data %s: %zu training / %zu validation bytes | %d threads | seed %llu\n"
               "  products: %s\n",
               (long long)model->num_parameters(), (long long)cfg.n_layer, (long long)cfg.n_head,
               (long long)cfg.n_embd, (long long)T, (long long)opts.batch,
               examples::plan_text(cfg).c_str(), f.data.c_str(), data.train.size(), data.val.size(),
               strata::num_threads(), (unsigned long long)opts.data_seed,
               strata::product_backend().c_str());
  if (trainer.state().step > 0)
    std::fprintf(stderr, "  resumed from %s at step %lld\n", f.resume.c_str(),
                 (long long)trainer.state().step);

  ensure_parent_dir(f.log);
  std::ofstream log(f.log, f.resume.empty() ? std::ios::trunc : std::ios::app);
  if (!log) strata::fail("cannot write the log file '", f.log, "'");
  ensure_parent_dir(f.checkpoint);

  Progress progress(opts.steps, f.quiet);
  const Index first = trainer.state().step;
  const auto start = std::chrono::steady_clock::now();
  strata::Trainer<float>::Callbacks cb;
  cb.on_step = [&](const strata::StepReport& r) {
    log << nlohmann::json{{"step", r.step}, {"train_loss", r.loss}, {"lr", r.lr},
                          {"grad_norm", r.grad_norm}, {"ms", r.seconds * 1e3},
                          {"tokens_per_s", r.tokens_per_second}}.dump() << "\n";
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.update(r, elapsed, r.step - first, first);
    if (f.checkpoint_interval > 0 && r.step % f.checkpoint_interval == 0 && r.step < opts.steps)
      trainer.save(f.checkpoint);
  };
  cb.on_eval = [&](Index step, double val) {
    log << nlohmann::json{{"step", step}, {"val_loss", val}}.dump() << std::endl;
    char line[96];
    std::snprintf(line, sizeof line, "step %5lld | validation loss %.4f", (long long)step, val);
    progress.message(line);
  };
  cb.should_stop = [] { return g_stop.load(); };
  trainer.run(cb);
  progress.finish();
  trainer.save(f.checkpoint);
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (g_stop) {
    std::fprintf(stderr, "interrupted at step %lld; saved %s (continue with --resume %s)\n",
                 (long long)trainer.state().step, f.checkpoint.c_str(), f.checkpoint.c_str());
    return 130;
  }
  std::fprintf(stderr, "done: %lld steps in %s; checkpoint %s, log %s\n",
               (long long)(trainer.state().step - first), examples::format_duration(total).c_str(),
               f.checkpoint.c_str(), f.log.c_str());

  if (f.sample_tokens > 0) {
    strata::Sampler sampler{f.temperature, f.top_k, opts.data_seed};
    const auto ids = strata::generate(*model, strata::ByteTokenizer::encode(f.prompt),
                                      f.sample_tokens, sampler);
    std::printf("---- sample (temperature %.2f, top-k %lld) ----\n%s%s\n", f.temperature,
                (long long)f.top_k, f.prompt.c_str(),
                examples::printable(strata::ByteTokenizer::decode(ids)).c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train a strata GPT on a text file (byte-level tokens)."};
  Flags f;
  app.add_option("--layers", f.model.n_layer, "Transformer blocks L")->capture_default_str()->check(examples::AtLeast(1));
  app.add_option("--heads", f.model.n_head, "Attention heads per block")->capture_default_str()->check(examples::AtLeast(1));
  app.add_option("--width", f.model.n_embd, "Model width C")->capture_default_str()->check(examples::AtLeast(1));
  app.add_option("--context", f.model.context_length, "Context length (maximum T)")->capture_default_str()->check(examples::AtLeast(1));
  app.add_option("--mlp-ratio", f.model.mlp_ratio, "MLP hidden width / C")->capture_default_str()->check(examples::AtLeast(1));
  f.plan.add(app);
  app.add_option("--plan-file", f.plan_file, "Attention plan as JSON (docs/plan_schema.md); replaces --attention and its flags")->check(CLI::ExistingFile);
  app.add_option("--steps", f.train.steps, "Optimizer steps")->capture_default_str()->check(examples::AtLeast(1));
  app.add_option("--batch", f.train.batch, "Sequences per batch")->capture_default_str()->check(examples::AtLeast(1));
  app.add_option("--seq-len", f.train.seq_len, "Training sequence length; 0 = context")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--lr", f.train.lr, "Peak learning rate")->capture_default_str()->check(examples::Positive());
  app.add_option("--min-lr", f.train.min_lr, "Final learning rate of the cosine decay")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--warmup", f.train.warmup, "Linear warm-up steps")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--weight-decay", f.train.weight_decay, "AdamW weight decay (matrices only)")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--clip", f.train.grad_clip, "Global gradient-norm clip; 0 = off")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--eval-interval", f.train.eval_interval, "Steps between validation runs")->capture_default_str()->check(examples::AtLeast(1));
  app.add_option("--eval-batches", f.train.eval_batches, "Batches per validation run")->capture_default_str()->check(examples::AtLeast(1));
  app.add_option("--seed", f.train.data_seed, "Seed of the initialisation, the batches and the sample")->capture_default_str();
  app.add_option("--threads", f.threads, "Threads; 0 = all cores")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--data", f.data, "UTF-8 text file to train on")->capture_default_str();
  app.add_option("--val-fraction", f.val_fraction, "Fraction of the file (its end) kept for validation")->capture_default_str()->check(CLI::Range(0.001, 0.5));
  app.add_option("--checkpoint", f.checkpoint, "Training checkpoint written during and after the run")->capture_default_str();
  app.add_option("--checkpoint-interval", f.checkpoint_interval, "Steps between checkpoints; 0 = only at the end")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--resume", f.resume, "Continue the run saved in this training checkpoint")->check(CLI::ExistingFile);
  app.add_option("--log", f.log, "JSON-lines log of every loss")->capture_default_str();
  app.add_option("--sample-tokens", f.sample_tokens, "Bytes to sample at the end; 0 = none")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--prompt", f.prompt, "Prompt of the final sample")->capture_default_str();
  app.add_option("--temperature", f.temperature, "Sampling temperature; 0 = greedy")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--top-k", f.top_k, "Sample among the k most likely bytes; 0 = all")->capture_default_str()->check(examples::AtLeast(0));
  app.add_flag("--quiet", f.quiet, "No progress bar");
  CLI11_PARSE(app, argc, argv);
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  try {
    return run(f, app);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "\ntrain: error: %s\n", e.what());
    return 1;
  }
}
