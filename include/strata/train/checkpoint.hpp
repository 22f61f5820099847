// strata/train/checkpoint.hpp: training checkpoints, i.e. a model checkpoint plus the AdamW
// moments (`optimizer.m.<name>`, `optimizer.v.<name>`) and the `strata.train` metadata (step, data
// position, data RNG state, optimizer step, and the trainer's options), so that a resumed run
// continues exactly as an uninterrupted one would.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../io/checkpoint.hpp"
#include "adamw.hpp"

namespace strata {

/// Where a training run stands.
struct TrainState {
  Index step = 0;           ///< optimizer steps completed
  Index batches_drawn = 0;  ///< training batches drawn from the loader
  Rng::State data_rng{};    ///< the loader's generator state
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
    fail("checkpoint ", file.path(), ": no 'strata.train' metadata; it holds weights only and "
         "cannot resume training (use it with generate instead)");
  TrainState s;
  try {
    const nlohmann::json j = nlohmann::json::parse(it->second);
    s.step = j.at("step").get<Index>();
    s.batches_drawn = j.at("batches_drawn").get<Index>();
    s.data_rng = j.at("data_rng").get<Rng::State>();
    if (adam_step) *adam_step = j.at("adam_step").get<Index>();
    s.options = j.at("options");
  } catch (const nlohmann::json::exception& e) {
    fail("checkpoint ", file.path(), ": malformed 'strata.train' metadata: ", e.what());
  }
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
  model.parameters() = std::move(params);
  opt.m() = std::move(m);
  opt.v() = std::move(v);
  opt.set_step_count(adam_step);
  return s;
}

template <typename Scalar>
TrainState load_training_checkpoint(const std::string& path, GPT<Scalar>& model, AdamW<Scalar>& opt) {
  return load_training_checkpoint(io::SafetensorsFile::read(path), model, opt);
}

}  // namespace strata
