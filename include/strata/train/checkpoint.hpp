// strata/train/checkpoint.hpp: training checkpoints, i.e. a model checkpoint plus the AdamW
// moments (`optimizer.m.<name>`, `optimizer.v.<name>`) and the `strata.train` metadata (step, data
// position, data RNG state, optimizer step, and the trainer's options), so that a resumed run
// continues exactly as an uninterrupted one would.
#pragma once

#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../io/checkpoint.hpp"
#include "../io/limits.hpp"
#include "adamw.hpp"

namespace strata {

/// Where a training run stands.
struct TrainState {
  Index step = 0;                                     ///< optimizer steps completed
  Index batches_drawn = 0;                            ///< training batches drawn from the loader
  Rng::State data_rng{};                              ///< the loader's generator state
  nlohmann::json options = nlohmann::json::object();  ///< the trainer's settings, for resume
};

/// Saves weights, optimizer moments and training state atomically; extra_metadata is written
/// alongside (the Trainer records its data's tokenizer there).
template <typename Scalar>
void save_training_checkpoint(const std::string& path, const GPT<Scalar>& model,
                              const AdamW<Scalar>& opt, const TrainState& state,
                              std::map<std::string, std::string> extra_metadata = {}) {
  std::vector<io::TensorView> extra;
  io::append_arena(extra, model.layout(), opt.m().data(), "optimizer.m.");
  io::append_arena(extra, model.layout(), opt.v().data(), "optimizer.v.");
  nlohmann::json j = {{"step", state.step},
                      {"batches_drawn", state.batches_drawn},
                      {"data_rng", state.data_rng},
                      {"adam_step", opt.step_count()},
                      {"options", state.options}};
  extra_metadata["strata.train"] = j.dump();
  save_checkpoint(path, model, extra, extra_metadata);
}

/// Reads the `strata.train` metadata of a training checkpoint (the run's options and position).
/// A weights-only checkpoint is an error naming what is missing.
inline TrainState read_train_state(const io::SafetensorsFile& file, Index* adam_step = nullptr) {
  auto it = file.metadata().find("strata.train");
  if (it == file.metadata().end())
    fail("checkpoint ", file.path(),
         ": no 'strata.train' metadata; it holds weights only and "
         "cannot resume training (use it with generate instead)");
  const std::string where = "checkpoint " + file.path();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": malformed 'strata.train' metadata: ", e.what());
  }
  // Every number is read with its type and range checked (io/limits.hpp): a step count or batch
  // size from a file is untrusted until then.
  const std::string what = "training state";
  const Index max = io::ModelLimits::max_count;
  TrainState s;
  s.step = io::read_bounded(j, "step", 0, max, where, what);
  s.batches_drawn = io::read_bounded(j, "batches_drawn", 0, max, where, what);
  const Index saved_adam_step = io::read_bounded(j, "adam_step", 0, max, where, what);
  if (saved_adam_step > s.step)
    fail(where, ": training state 'adam_step' is ", saved_adam_step, ", expected at most 'step' ",
         s.step);
  if (adam_step) *adam_step = saved_adam_step;
  const auto rng = j.find("data_rng");
  bool rng_ok = rng != j.end() && rng->is_array() && rng->size() == s.data_rng.size();
  for (std::size_t i = 0; rng_ok && i < s.data_rng.size(); ++i) {
    rng_ok = (*rng)[i].is_number_unsigned() || ((*rng)[i].is_number_integer() && (*rng)[i] >= 0);
    if (rng_ok) s.data_rng[i] = (*rng)[i].get<std::uint64_t>();
  }
  if (!rng_ok)
    fail(where, ": training state 'data_rng' is ",
         rng == j.end() ? std::string("missing") : io::detail::value_text(*rng), ", expected ",
         s.data_rng.size(), " unsigned 64-bit integers");
  const auto options = j.find("options");
  if (options == j.end() || !options->is_object())
    fail(where, ": training state 'options' is ",
         options == j.end() ? std::string("missing") : io::detail::value_text(*options),
         ", expected an object");
  // The Trainer's settings (TrainOptions::to_json) when there are any; a checkpoint saved through
  // the API with no options (an empty object) has nothing to check.
  const std::string in_options = "training options";
  if (!options->empty()) {
    for (const char* key : {"steps", "batch", "eval_interval", "eval_batches"})
      (void)io::read_bounded(*options, key, 1, max, where, in_options);
    (void)io::read_bounded(*options, "seq_len", 0, io::ModelLimits::max_context_length, where,
                           in_options);
    (void)io::read_bounded(*options, "warmup", 0, max, where, in_options);
    for (const char* key : {"lr", "min_lr", "weight_decay", "beta1", "beta2", "eps", "grad_clip"})
      (void)io::read_finite(*options, key, where, in_options);
    (void)io::read_unsigned(*options, "data_seed", where, in_options);
  }
  s.options = *options;
  return s;
}

/// Loads a training checkpoint into a model (configured as saved) and its optimizer; returns the
/// training state. Everything is read and checked before anything is changed, so on an error the
/// model and optimizer are left as they were.
template <typename Scalar>
TrainState load_training_checkpoint(const io::SafetensorsFile& file, GPT<Scalar>& model,
                                    AdamW<Scalar>& opt) {
  Index adam_step = 0;
  TrainState s = read_train_state(file, &adam_step);
  io::check_model_tensors(file, model);
  Vector<Scalar> params = io::read_arena<Scalar>(file, model.layout());
  Vector<Scalar> m = io::read_arena<Scalar>(file, model.layout(), "optimizer.m.");
  Vector<Scalar> v = io::read_arena<Scalar>(file, model.layout(), "optimizer.v.");
  const std::string where = "checkpoint " + file.path() + ": ";
  io::check_finite(params.data(), model.layout(), "", where);
  io::check_finite(m.data(), model.layout(), "optimizer.m.", where);
  io::check_finite(v.data(), model.layout(), "optimizer.v.", where, /*non_negative=*/true);
  model.parameters() = std::move(params);
  opt.m() = std::move(m);
  opt.v() = std::move(v);
  opt.set_step_count(adam_step);
  return s;
}

template <typename Scalar>
TrainState load_training_checkpoint(const std::string& path, GPT<Scalar>& model,
                                    AdamW<Scalar>& opt) {
  return load_training_checkpoint(io::SafetensorsFile::read(path), model, opt);
}

}  // namespace strata
