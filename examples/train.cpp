// train: trains a GPT on a text file (by default the bundled Moby Dick, as bytes) or on the token
// files of `prepare` (--tokens; BPE vocabularies, corpora larger than memory) with a live progress
// bar, periodic validation, a JSON-lines log of every loss, checkpoints that resume exactly, and a
// text sample at the end.
//
//   build/examples/train                                  # the tiny default model, 2000 steps
//   build/examples/train --attention skip --skip-heads 2   # skip-layer attention
//   build/examples/train --resume out/model.safetensors    # continue a saved run
//   mpirun -np 2 build/examples/train                      # data parallel (STRATA_USE_MPI=ON)
//   build/examples/train --tokens out/notes                # token files from prepare
//   build/examples/train --plan-file plan.json             # any plan (docs/plan_schema.md)
//
// A trained checkpoint is never replaced by accident: a fresh run refuses to start when
// --checkpoint names an existing file (--resume continues it, --overwrite replaces it at the first
// new save), every output path is checked before the first step, the log is locked against a
// second run, and SIGINT/SIGTERM stop after the current step, save, and exit with 130/143 (a
// second signal exits at once, leaving the last written checkpoint as it was).
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>

#include "cli_common.hpp"

#if defined(STRATA_HAVE_MPI)
#include <strata/train/distributed.hpp>
#endif

namespace {

using strata::Index;

// The first SIGINT/SIGTERM asks the loop to stop after its step and save; a second one exits at
// once (the checkpoint on disk is only ever replaced by an atomic rename, so it stays whole).
std::atomic<int> g_signal{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal flag must be lock-free");

extern "C" void on_signal(int sig) {
  int none = 0;
  if (!g_signal.compare_exchange_strong(none, sig)) {
    static const char msg[] =
        "\ntrain: second signal: exiting at once without saving; the last checkpoint written is "
        "unchanged\n";
    (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
    ::_exit(128 + sig);
  }
  static const char msg[] =
      "\ntrain: stopping after this step to save a checkpoint (a second signal exits at once)\n";
  (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
}

void install_signal_handlers() {
  struct sigaction sa = {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);
}

struct Flags {
  strata::ModelConfig model;
  examples::PlanFlags plan;
  std::string plan_file;  // a plan as JSON (docs/plan_schema.md); replaces the plan flags
  strata::TrainOptions train;
  std::string data = STRATA_DEFAULT_DATA;
  std::string tokens;  // prefix of token files written by prepare; replaces --data
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
  bool deterministic_reduce = false;  // MPI builds: --deterministic-reduce
  bool overwrite = false;
  bool raw = false;
};

// Under mpirun (MPI builds): this process's rank, the rank count and the ranks on this host. Rank 0
// alone prints, logs, writes checkpoints and samples.
struct Ranks {
  int rank = 0, size = 1, local = 1;
  bool root() const { return rank == 0; }
};

// The JSON-lines log, held under an advisory lock (flock) for the whole run so that a second
// train given the same --log is refused instead of interleaving lines with this one. The lock
// goes away with the process, however it ends. A fresh run empties the file, a resumed run
// appends to it.
class RunLog {
 public:
  explicit RunLog(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
      const int err = errno;
      strata::fail("--log ", path, ": cannot open: ", std::strerror(err));
    }
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      ::close(fd);
      if (err == EWOULDBLOCK)
        strata::fail("--log ", path,
                     ": in use by another running train (it holds the file's lock); give this run "
                     "another --log");
      strata::fail("--log ", path, ": cannot lock: ", std::strerror(err));
    }
    file_ = ::fdopen(fd, "a");
    if (!file_) {
      ::close(fd);
      strata::fail("--log ", path, ": cannot open: ", std::strerror(errno));
    }
  }
  RunLog(const RunLog&) = delete;
  RunLog& operator=(const RunLog&) = delete;
  ~RunLog() {
    if (file_) std::fclose(file_);
  }
  /// Empties the file (a fresh run's log starts empty).
  void truncate() {
    if (::ftruncate(::fileno(file_), 0) != 0)
      strata::fail("--log ", path_, ": cannot truncate: ", std::strerror(errno));
  }
  void line(const nlohmann::json& j, bool flush = false) {
    const std::string text = j.dump() + "\n";
    std::fputs(text.c_str(), file_);
    if (flush) std::fflush(file_);
  }

 private:
  std::string path_;
  std::FILE* file_ = nullptr;
};

// Prints a one-line progress bar on a terminal, or a plain line every ~5% when the output is a
// file or a pipe (CI logs).
class Progress {
 public:
  Progress(Index total, bool quiet) : total_(total), quiet_(quiet), tty_(isatty(fileno(stderr))) {}

  void update(const strata::StepReport& r, double elapsed_from_start, Index steps_this_run,
              Index first_step) {
    if (quiet_) return;
    smoothed_tps_ =
        smoothed_tps_ == 0 ? r.tokens_per_second : 0.9 * smoothed_tps_ + 0.1 * r.tokens_per_second;
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
      if ((r.step - first_step) % every == 0 || r.step == total_)
        std::fprintf(stderr, "%s\n", line);
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

// Reads the training text. Bytes that are not valid UTF-8 get a warning naming the first one:
// training works on bytes either way, but such a file is often not the text that was meant.
strata::TextDataset read_data(const std::string& path, double val_fraction, Index T) {
  std::ifstream in(path, std::ios::binary);
  if (!in) strata::fail("--data ", path, ": cannot open: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) strata::fail("--data ", path, ": cannot read: ", std::strerror(errno));
  const std::string text = ss.str();
  const std::size_t bad = examples::first_invalid_utf8(text);
  if (bad != std::string::npos)
    std::fprintf(
        stderr,
        "warning: --data %s is not valid UTF-8: the first invalid byte is 0x%02X at offset "
        "%zu. Training proceeds on its bytes (the model is byte-level), but a binary file "
        "is rarely the text meant; samples show U+FFFD for invalid sequences.\n",
        path.c_str(), static_cast<unsigned>(static_cast<unsigned char>(text[bad])), bad);
  return strata::TextDataset::from_text(text, val_fraction, T, path);
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::equivalent(a, b, ec) && !ec;
}

// Refuses, before anything else is done, a run that would replace an existing checkpoint it was
// not asked to replace.
void check_no_clobber(const Flags& f) {
  std::error_code ec;
  if (f.overwrite || !std::filesystem::exists(f.checkpoint, ec)) return;
  if (std::filesystem::is_directory(f.checkpoint, ec)) return;  // check_output_path says so
  if (f.resume.empty())
    strata::fail("--checkpoint ", f.checkpoint,
                 " already exists, and this fresh run would replace it at its first save. "
                 "Continue that run with --resume ",
                 f.checkpoint,
                 ", give this run another --checkpoint, or replace it with --overwrite (the old "
                 "file stays until the first new save succeeds)");
  if (!same_file(f.checkpoint, f.resume))
    strata::fail("--checkpoint ", f.checkpoint,
                 " already exists and is not the checkpoint being resumed (", f.resume,
                 "); give another --checkpoint, leave it out to write back to ", f.resume,
                 ", or replace it with --overwrite");
}

int run(Flags& f, CLI::App& app, const Ranks& ranks) {
  // Ranks on one host share its cores: by default each takes its share.
  const int hardware = int(std::max(1u, std::thread::hardware_concurrency()));
  strata::set_num_threads(f.threads > 0 || ranks.local <= 1 ? f.threads
                                                            : std::max(1, hardware / ranks.local));
  // --resume X writes back to X unless --checkpoint names another file.
  if (!f.resume.empty() && app.count("--checkpoint") == 0) f.checkpoint = f.resume;
  if (f.tokens.empty()) examples::check_input_file(f.data, "--data");
  if (f.resume.empty()) {  // a bad setting is reported before any file is touched
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
    f.model.validate();
  }
  // Rank 0 alone writes the checkpoint and the log: it alone checks and locks them.
  std::optional<RunLog> log;
  if (ranks.root()) {
    check_no_clobber(f);
    examples::check_output_path(f.checkpoint, "--checkpoint");
    examples::check_output_path(f.log, "--log", "train_log.jsonl");
    if (same_file(f.log, f.checkpoint) || f.log == f.checkpoint)
      strata::fail("--log and --checkpoint name the same file ", f.log);
    log.emplace(f.log);  // locked from here on
  }
  std::unique_ptr<strata::GPT<float>> model;
  strata::TrainOptions opts = f.train;
  // The tokens: a text file's bytes (--data) or token files mapped from disk (--tokens).
  strata::TextDataset text;
  strata::TokenDataset data;
  auto load_data = [&](Index T) {
    if (f.tokens.empty()) {
      text = read_data(f.data, f.val_fraction, T);
      data = text;
    } else {
      data = strata::TokenDataset::from_token_files(f.tokens, T);
    }
  };
  std::optional<strata::io::SafetensorsFile> saved_run;  // the checkpoint of --resume, read once
  if (!f.resume.empty()) {
    // The checkpoint decides the model and the run's settings; only --steps may change.
    for (const char* flag : {"--layers", "--heads", "--width", "--context", "--mlp-ratio",
                             "--attention", "--plan-file", "--batch", "--lr", "--min-lr",
                             "--warmup", "--weight-decay", "--clip", "--seed", "--seq-len"})
      if (app.count(flag) > 0)
        strata::fail("--resume continues the saved run with its own settings; drop ", flag);
    saved_run = strata::io::SafetensorsFile::read(f.resume);
    const strata::TrainState state = strata::read_train_state(*saved_run);  // weights only: error
    model = std::make_unique<strata::GPT<float>>(strata::io::read_checked_config(*saved_run));
    if (state.options.empty())
      strata::fail("--resume ", f.resume,
                   ": the checkpoint holds no trainer options (it was not "
                   "saved by train); start a fresh run from it with the library instead");
    const auto saved = strata::TrainOptions::from_json(state.options);
    const Index steps = app.count("--steps") ? opts.steps : saved.steps;
    opts = saved;
    opts.steps = steps;
    load_data(opts.seq_len > 0 ? opts.seq_len : model->config().context_length);
  } else {
    f.model.seed = opts.data_seed;
    load_data(opts.seq_len > 0 ? opts.seq_len : f.model.context_length);
    f.model.vocab_size = data.tokenizer.vocab_size;  // 256 for bytes
    model = std::make_unique<strata::GPT<float>>(f.model);
  }
  const strata::ModelConfig& cfg = model->config();
  const Index T = opts.seq_len > 0 ? opts.seq_len : cfg.context_length;
  // Built now, so that a tokenizer this program cannot use fails before training.
  const auto tokenizer = strata::make_tokenizer(data.tokenizer, "tokens " + data.source);
  strata::Trainer<float> trainer(*model, data, opts);
  if (saved_run) trainer.resume(*saved_run);  // weights, optimizer moments, data position
#if defined(STRATA_HAVE_MPI)
  std::unique_ptr<strata::mpi::DataParallel<float>> dp;
  if (ranks.size > 1) {
    strata::mpi::DataParallel<float>::Options dp_options;
    if (f.deterministic_reduce) dp_options.reduction = strata::mpi::Reduction::deterministic;
    dp = std::make_unique<strata::mpi::DataParallel<float>>(*model, dp_options);
    dp->check_same_data(data);
    dp->attach(trainer);               // this rank's shard of every batch; gradients reduced
    dp->broadcast_from_root(trainer);  // rank 0's parameters (and moments after a resume)
  }
#endif
  if (!ranks.root()) f.quiet = true;

  if (ranks.root())
    std::fprintf(stderr,
                 "strata train: %lld parameters | L%lld H%lld C%lld T%lld V%lld | batch %lld | "
                 "attention %s\n"
                 "  data %s: %lld training / %lld validation tokens, tokenizer %s | %d threads | "
                 "seed %llu\n"
                 "  products: %s\n",
                 (long long)model->num_parameters(), (long long)cfg.n_layer, (long long)cfg.n_head,
                 (long long)cfg.n_embd, (long long)T, (long long)cfg.vocab_size,
                 (long long)opts.batch, examples::plan_text(cfg).c_str(), data.source.c_str(),
                 (long long)data.train.size(), (long long)data.val.size(),
                 data.tokenizer.describe().c_str(), strata::num_threads(),
                 (unsigned long long)opts.data_seed, strata::product_backend().c_str());
  if (ranks.root()) std::fputs(strata::kernel_width_warnings().c_str(), stderr);
  if (ranks.size > 1 && ranks.root())
    std::fprintf(stderr,
                 "  data parallel: %d ranks (MPI) x %d threads | per-rank batch %lld | %s "
                 "reduction | tok/s counts all ranks\n",
                 ranks.size, strata::num_threads(), (long long)(opts.batch / ranks.size),
                 f.deterministic_reduce ? "deterministic" : "overlapped");
  if (trainer.state().step > 0 && ranks.root())
    std::fprintf(stderr, "  resumed from %s at step %lld\n", f.resume.c_str(),
                 (long long)trainer.state().step);

  if (log && f.resume.empty()) log->truncate();  // an existing log is appended to only on --resume

  Progress progress(opts.steps, f.quiet);
  const Index first = trainer.state().step;
  const auto start = std::chrono::steady_clock::now();
  strata::Trainer<float>::Callbacks cb;
  double step_seconds = 0;  // the steps' wall time, without validation and checkpoints
  cb.on_step = [&](const strata::StepReport& r) {
    step_seconds += r.seconds;
    if (log)
      log->line({{"step", r.step},
                 {"train_loss", r.loss},
                 {"lr", r.lr},
                 {"grad_norm", r.grad_norm},
                 {"ms", r.seconds * 1e3},
                 {"tokens_per_s", r.tokens_per_second}});
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    progress.update(r, elapsed, r.step - first, first);
    if (f.checkpoint_interval > 0 && r.step % f.checkpoint_interval == 0 && r.step < opts.steps
        && ranks.root())
      trainer.save(f.checkpoint);
  };
  cb.on_eval = [&](Index step, double val) {
    if (log) log->line({{"step", step}, {"val_loss", val}}, /*flush=*/true);
    char line[96];
    std::snprintf(line, sizeof line, "step %5lld | validation loss %.4f", (long long)step, val);
    if (ranks.root()) progress.message(line);
#if defined(STRATA_HAVE_MPI)
    if (dp) dp->check_replicas();  // all ranks still hold the same parameters
#endif
  };
  cb.should_stop = [] { return g_signal.load() != 0; };
#if defined(STRATA_HAVE_MPI)
  if (dp)
    cb.should_stop = [&] { return dp->any(g_signal.load() != 0); };  // all ranks stop together
#endif
  trainer.run(cb);
  progress.finish();
  const int sig = g_signal.load();
  if (!ranks.root()) return sig != 0 ? 128 + sig : 0;
  if (sig != 0 && trainer.state().step == first) {
    std::fprintf(stderr, "interrupted before the first step of this run; nothing saved%s\n",
                 f.resume.empty() ? "" : (" (" + f.resume + " is unchanged)").c_str());
    return 128 + sig;
  }
  trainer.save(f.checkpoint);
  const double total =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (sig != 0) {
    std::fprintf(stderr, "interrupted at step %lld; saved %s (continue with --resume %s)\n",
                 (long long)trainer.state().step, f.checkpoint.c_str(), f.checkpoint.c_str());
    return 128 + sig;  // 130 after SIGINT, 143 after SIGTERM
  }
  std::fprintf(stderr, "done: %lld steps in %s; checkpoint %s, log %s\n",
               (long long)(trainer.state().step - first), examples::format_duration(total).c_str(),
               f.checkpoint.c_str(), f.log.c_str());
#if defined(STRATA_HAVE_MPI)
  if (dp && dp->steps() > 0)
    std::fprintf(stderr,
                 "  communication: %.2f s of %.2f s step time waiting for the gradient "
                 "reduction (%.1f%%)\n",
                 dp->communication_seconds(), step_seconds,
                 100.0 * dp->communication_seconds() / std::max(1e-9, step_seconds));
#endif

  if (f.sample_tokens > 0) {
    strata::Sampler sampler{f.temperature, f.top_k, opts.data_seed};
    const auto ids =
        strata::generate(*model, tokenizer->encode(f.prompt), f.sample_tokens, sampler);
    const std::string sample = examples::printable(tokenizer->decode(ids), f.raw);
    std::printf("---- sample (temperature %.2f, top-k %lld) ----\n%s", f.temperature,
                (long long)f.top_k, f.prompt.c_str());
    std::fwrite(sample.data(), 1, sample.size(), stdout);  // --raw may hold NUL bytes
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Train a strata GPT on a text file (bytes) or on token files written by prepare."};
  Flags f;
  app.add_option("--layers", f.model.n_layer, "Transformer blocks L")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--heads", f.model.n_head, "Attention heads per block")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--width", f.model.n_embd, "Model width C")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--context", f.model.context_length, "Context length (maximum T)")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--mlp-ratio", f.model.mlp_ratio, "MLP hidden width / C")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  f.plan.add(app);
  app.add_option("--plan-file", f.plan_file,
                 "Attention plan as JSON (docs/plan_schema.md); replaces --attention and its flags")
      ->check(CLI::ExistingFile);
  app.add_option("--steps", f.train.steps, "Optimizer steps")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--batch", f.train.batch, "Sequences per batch")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--seq-len", f.train.seq_len, "Training sequence length; 0 = context")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--lr", f.train.lr, "Peak learning rate")
      ->capture_default_str()
      ->check(examples::Positive());
  app.add_option("--min-lr", f.train.min_lr, "Final learning rate of the cosine decay")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--warmup", f.train.warmup, "Linear warm-up steps")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--weight-decay", f.train.weight_decay, "AdamW weight decay (matrices only)")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--clip", f.train.grad_clip, "Global gradient-norm clip; 0 = off")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--eval-interval", f.train.eval_interval, "Steps between validation runs")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--eval-batches", f.train.eval_batches, "Batches per validation run")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--seed", f.train.data_seed,
                 "Seed of the initialisation, the batches and the sample")
      ->capture_default_str()
      ->check(examples::UnsignedInteger());
  app.add_option("--threads", f.threads, "Threads; 0 = all cores")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  auto* data_flag = app.add_option("--data", f.data, "UTF-8 text file to train on (as bytes)")
                        ->capture_default_str();
  app.add_option("--tokens", f.tokens,
                 "Token files written by prepare: their prefix (<prefix>.train.tok, .val.tok, "
                 ".model); instead of --data")
      ->excludes(data_flag);
  app.add_option("--val-fraction", f.val_fraction,
                 "Fraction of the file (its end) kept for validation")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 0.5));
  app.add_option("--checkpoint", f.checkpoint,
                 "Training checkpoint written during and after the run (default with --resume: the "
                 "resumed file)")
      ->capture_default_str();
  app.add_flag("--overwrite", f.overwrite,
               "Let a fresh run replace an existing --checkpoint (the old file stays until the "
               "first new save)");
  app.add_option("--checkpoint-interval", f.checkpoint_interval,
                 "Steps between checkpoints; 0 = only at the end")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--resume", f.resume, "Continue the run saved in this training checkpoint")
      ->check(CLI::ExistingFile);
  app.add_option("--log", f.log, "JSON-lines log of every loss")->capture_default_str();
  app.add_option("--sample-tokens", f.sample_tokens, "Tokens to sample at the end; 0 = none")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--prompt", f.prompt, "Prompt of the final sample")->capture_default_str();
  app.add_option("--temperature", f.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--top-k", f.top_k, "Sample among the k most likely tokens; 0 = all")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_flag("--quiet", f.quiet, "No progress bar");
  app.add_flag("--raw", f.raw,
               "Print the sample's bytes exactly (default: invalid UTF-8 and control characters "
               "are replaced)");
  Ranks ranks;
#if defined(STRATA_HAVE_MPI)
  app.add_flag("--deterministic-reduce", f.deterministic_reduce,
               "Under mpirun: sum the ranks' gradients in rank order (reproducible, no overlap)");
  strata::mpi::Environment mpi(&argc, &argv);
  ranks = Ranks{mpi.rank(), mpi.size(), mpi.local_size()};
#else
  // Without MPI, N copies started by mpirun would each train alone and write the same files.
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* n = std::getenv(var); n && std::atoi(n) > 1) {
      std::fprintf(stderr,
                   "train: error: started as one of %s processes (%s), but this build has no "
                   "MPI; configure with -DSTRATA_USE_MPI=ON for data-parallel training\n",
                   n, var);
      return 1;
    }
#endif
  CLI11_PARSE(app, argc, argv);
  install_signal_handlers();
  try {
    return run(f, app, ranks);
  } catch (const strata::DivergenceError& e) {
    // Nothing is saved after a non-finite step: the checkpoint stays the last good one.
    const std::string message = std::string(e.what()) + "\ntrain: stopped without saving; "
                              + f.checkpoint + " is left as it was";
#if defined(STRATA_HAVE_MPI)
    if (ranks.size > 1) strata::mpi::abort_all("train", message, 3);  // ends every rank
#endif
    std::fprintf(stderr, "\ntrain: error: %s\n", message.c_str());
    return 3;
  } catch (const std::bad_alloc&) {
#if defined(STRATA_HAVE_MPI)
    if (ranks.size > 1) strata::mpi::abort_all("train", "out of memory");  // ends every rank
#endif
    std::fprintf(stderr,
                 "\ntrain: error: out of memory (the model, batch or sequence length is too "
                 "large for this machine)\n");
    return 1;
  } catch (const std::exception& e) {
#if defined(STRATA_HAVE_MPI)
    if (ranks.size > 1) strata::mpi::abort_all("train", e.what());  // ends every rank
#endif
    std::fprintf(stderr, "\ntrain: error: %s\n", e.what());
    return 1;
  }
}
