// strata/train/trainer.hpp: the training loop: batches, forward/backward, clipping, AdamW with the
// warm-up + cosine schedule, periodic validation, and checkpoints that resume exactly.
#pragma once

#include <chrono>
#include <cmath>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../model/gpt.hpp"
#include "../text/metadata.hpp"
#include "adamw.hpp"
#include "checkpoint.hpp"
#include "data.hpp"

namespace strata {

/// Everything that decides the numbers of a training run (stored in training checkpoints).
struct TrainOptions {
  Index steps = 2000;
  Index batch = 16;
  Index seq_len = 0;  ///< 0 = the model's context length
  Index warmup = 100;
  double lr = 1e-3;
  double min_lr = 1e-4;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  ///< global-norm clip; 0 = off
  Index eval_interval = 200;
  Index eval_batches = 20;
  std::uint64_t data_seed = 1;

  void validate() const {
    auto positive = [](const char* name, Index v) {
      if (v < 1) fail("TrainOptions: ", name, " = ", v, ", expected >= 1");
    };
    positive("steps", steps);
    positive("batch", batch);
    positive("eval_interval", eval_interval);
    positive("eval_batches", eval_batches);
    if (seq_len < 0) fail("TrainOptions: seq_len = ", seq_len, ", expected >= 0 (0 = context)");
    if (warmup < 0) fail("TrainOptions: warmup = ", warmup, ", expected >= 0");
    if (!(min_lr >= 0 && min_lr <= lr))
      fail("TrainOptions: min_lr = ", min_lr, ", expected in [0, lr = ", lr, "]");
    if (!(grad_clip >= 0)) fail("TrainOptions: grad_clip = ", grad_clip, ", expected >= 0");
    AdamWConfig{lr, beta1, beta2, eps, weight_decay}.validate();
  }

  nlohmann::json to_json() const {
    return {{"steps", steps},
            {"batch", batch},
            {"seq_len", seq_len},
            {"warmup", warmup},
            {"lr", lr},
            {"min_lr", min_lr},
            {"weight_decay", weight_decay},
            {"beta1", beta1},
            {"beta2", beta2},
            {"eps", eps},
            {"grad_clip", grad_clip},
            {"eval_interval", eval_interval},
            {"eval_batches", eval_batches},
            {"data_seed", data_seed}};
  }
  /// Reads what to_json wrote. A missing key, a value of the wrong type, or a float for an integer
  /// setting (say 1e300, which would be cast out of range) is a strata::Error.
  static TrainOptions from_json(const nlohmann::json& j) {
    try {
      return from_json_unchecked(j);
    } catch (const nlohmann::json::exception& e) {
      fail("TrainOptions: malformed options: ", e.what());
    }
  }

 private:
  static TrainOptions from_json_unchecked(const nlohmann::json& j) {
    TrainOptions o;
    o.steps = integer<Index>(j, "steps");
    o.batch = integer<Index>(j, "batch");
    o.seq_len = integer<Index>(j, "seq_len");
    o.warmup = integer<Index>(j, "warmup");
    o.lr = j.at("lr");
    o.min_lr = j.at("min_lr");
    o.weight_decay = j.at("weight_decay");
    o.beta1 = j.at("beta1");
    o.beta2 = j.at("beta2");
    o.eps = j.at("eps");
    o.grad_clip = j.at("grad_clip");
    o.eval_interval = integer<Index>(j, "eval_interval");
    o.eval_batches = integer<Index>(j, "eval_batches");
    o.data_seed = integer<std::uint64_t>(j, "data_seed");
    return o;
  }

  template <typename T>
  static T integer(const nlohmann::json& j, const char* key) {
    const nlohmann::json& v = j.at(key);
    if (v.is_number_float()) fail("TrainOptions: ", key, " = ", v.dump(), ", expected an integer");
    return v.get<T>();
  }
};

/// What one optimizer step did.
struct StepReport {
  Index step;   ///< steps completed, 1-based
  double loss;  ///< training loss of the batch (before the update)
  double lr;
  double grad_norm;  ///< before clipping
  double seconds;    ///< wall time of the step
  double tokens_per_second;
};

/// Thrown by Trainer::step() (and so run()) when a step's training loss or gradient norm is not
/// finite: training diverged. It is raised before the update, so the model, the optimizer and the
/// data position stay exactly as they were after the last good step (step() - 1 steps done); a
/// checkpoint saved before is still the last good one. There is no skipping of non-finite steps:
/// one such step stops training (a skipped batch changes the run and usually only delays the
/// next failure; the remedy is a lower learning rate or a look at the data).
class DivergenceError : public Error {
 public:
  DivergenceError(Index step, double loss, double grad_norm, const std::string& message)
      : Error(message), step_(step), loss_(loss), grad_norm_(grad_norm) {}
  /// The step (1-based) that produced the non-finite value; step() - 1 steps are done.
  Index step() const { return step_; }
  double loss() const { return loss_; }
  double grad_norm() const { return grad_norm_; }

 private:
  Index step_;
  double loss_, grad_norm_;
};

/// Trains a model on a dataset. The loop is deterministic for a given thread count: the same
/// options give the same losses, and resuming from a checkpoint continues bit for bit.
template <typename Scalar>
class Trainer {
 public:
  struct Callbacks {
    std::function<void(const StepReport&)> on_step;
    std::function<void(Index step, double val_loss)> on_eval;
    std::function<bool()> should_stop;  ///< checked before every step (e.g. after Ctrl-C)
  };

  /// `data` may be a TextDataset (which must then outlive the trainer) or a TokenDataset; its
  /// tokenizer is recorded in every checkpoint (strata/text/metadata.hpp).
  Trainer(GPT<Scalar>& model, const TokenDataset& data, TrainOptions options)
      : model_(model),
        data_(data),
        opt_((options.validate(), options)),
        T_(opt_.seq_len > 0 ? opt_.seq_len : model.config().context_length),
        adam_(model, AdamWConfig{opt_.lr, opt_.beta1, opt_.beta2, opt_.eps, opt_.weight_decay}),
        loader_(data.train, opt_.batch, T_, opt_.data_seed) {
    if (T_ > model.config().context_length)
      fail("Trainer: seq_len ", T_, " exceeds the model's context length ",
           model.config().context_length);
    schedule_ = LRSchedule{opt_.lr, opt_.min_lr, opt_.warmup, opt_.steps};
    if (data.tokenizer.vocab_size > model.config().vocab_size)
      fail("Trainer: the data's tokenizer ", data.tokenizer.describe(),
           " has more tokens than the "
           "model's vocab_size ",
           model.config().vocab_size);
  }

  const TrainOptions& options() const { return opt_; }
  const TrainState& state() const { return state_; }
  AdamW<Scalar>& optimizer() { return adam_; }
  Index seq_len() const { return T_; }

  /// Continues from a training checkpoint written by save() for the same model configuration and
  /// options (steps may differ: a longer run extends the schedule). Differences are errors.
  /// On an error nothing changes.
  void resume(const std::string& path) { resume(io::SafetensorsFile::read(path)); }

  /// The same, for a checkpoint already read (to look at its configuration first, say).
  void resume(const io::SafetensorsFile& file) {
    const TokenizerSpec saved_tokenizer = read_tokenizer(file);
    if (saved_tokenizer != data_.tokenizer)
      fail("resume ", file.path(), ": the run was saved with the tokenizer ",
           saved_tokenizer.describe(), ", the data ", data_.source, " uses ",
           data_.tokenizer.describe());
    const nlohmann::json saved = read_train_state(file).options, mine = opt_.to_json();
    for (const auto& [key, value] : mine.items())
      if (key != "steps" && saved.contains(key) && saved.at(key) != value)
        fail("resume ", file.path(), ": the run was saved with ", key, " ", saved.at(key).dump(),
             ", this run has ", value.dump());
    TrainState s = load_training_checkpoint(file, model_, adam_);
    loader_.restore(s.data_rng, s.batches_drawn);
    state_ = s;
  }

  /// Data parallelism (strata/train/distributed.hpp sets it up): this process trains on shard
  /// `rank` of `world` of every batch of options().batch sequences (BatchLoader::set_shard), and
  /// after its backward pass `reduce` turns the shard's mean loss and gradients into the global
  /// ones (it returns the global loss), so that clipping and AdamW see what one process would.
  void set_data_parallel(Index rank, Index world, std::function<double(double)> reduce) {
    loader_.set_shard(rank, world);
    reduce_ = std::move(reduce);
  }

  /// Writes a training checkpoint of the current state (atomic).
  void save(const std::string& path) {
    sync_state();
    save_training_checkpoint(path, model_, adam_, state_,
                             {{kTokenizerMetadataKey, tokenizer_metadata(data_.tokenizer)}});
  }

  /// One optimizer step on the next batch. A non-finite loss or gradient norm throws
  /// DivergenceError before anything changes (see there).
  StepReport step() {
    const auto t0 = std::chrono::steady_clock::now();
    const Rng::State rng_before = loader_.rng_state();
    const Index drawn_before = loader_.batches_drawn();
    loader_.next(x_, y_);
    double loss = double(model_.forward_backward(x_, y_));
    if (reduce_) loss = reduce_(loss);
    const double norm = grad_norm(model_.gradients());
    const double lr = schedule_.at(state_.step);
    if (!std::isfinite(loss) || !std::isfinite(norm)) {
      loader_.restore(rng_before, drawn_before);  // the batch is drawn again by a retry
      diverged(loss, norm, lr);
    }
    adam_.step(model_, lr, clip_coefficient(norm, opt_.grad_clip));  // clips on the fly
    ++state_.step;
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return StepReport{state_.step, loss, lr, norm, sec, double(opt_.batch * T_) / sec};
  }

  /// Mean validation loss over the fixed evaluation windows.
  double evaluate_validation() {
    return evaluate(model_, data_.val, opt_.batch, T_, opt_.eval_batches);
  }

  /// Runs until options().steps steps are done, evaluating at step 0 (when starting fresh), every
  /// eval_interval steps and at the end.
  void run(const Callbacks& cb = {}) {
    if (state_.step == 0 && cb.on_eval) cb.on_eval(0, evaluate_validation());
    while (state_.step < opt_.steps) {
      if (cb.should_stop && cb.should_stop()) return;
      const StepReport r = step();
      if (cb.on_step) cb.on_step(r);
      if (cb.on_eval && (r.step % opt_.eval_interval == 0 || r.step == opt_.steps))
        cb.on_eval(r.step, evaluate_validation());
    }
  }

 private:
  [[noreturn]] void diverged(double loss, double norm, double lr) const {
    const Index step = state_.step + 1;
    const bool bad_loss = !std::isfinite(loss);
    throw DivergenceError(
        step, loss, norm,
        detail::error_message(
            "training diverged at step ", step, ": the ",
            bad_loss ? "training loss" : "gradient norm", " is ", bad_loss ? loss : norm,
            bad_loss ? " (gradient norm " : " (training loss ", bad_loss ? norm : loss,
            "); stopped before updating the parameters, which stay as after step ", step - 1,
            ". Likely cause: a learning rate too high (lr ", opt_.lr, ", ", lr,
            " at this step), or unusual data; lower the learning rate or check the data, then "
            "start again or continue from the last good checkpoint"));
  }

  void sync_state() {
    state_.batches_drawn = loader_.batches_drawn();
    state_.data_rng = loader_.rng_state();
    state_.options = opt_.to_json();
  }

  GPT<Scalar>& model_;
  TokenDataset data_;
  TrainOptions opt_;
  Index T_;
  AdamW<Scalar> adam_;
  BatchLoader loader_;
  LRSchedule schedule_;
  TrainState state_;
  TokenMatrix x_, y_;
  std::function<double(double)> reduce_;
};

}  // namespace strata
