// strata/io/checkpoint.hpp: model checkpoints as safetensors files (SPEC.md §3): the parameter
// tensors under their GPT-2/nanoGPT names, the configuration and plan in the `strata.config`
// metadata. Files written here load in PyTorch with safetensors.torch.load_file.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../model/gpt.hpp"
#include "config_json.hpp"
#include "limits.hpp"
#include "safetensors.hpp"

namespace strata {

/// The library version written into every checkpoint (`strata.version`).
inline constexpr const char* version = "0.1.0";

namespace io {
/// Views of every tensor of a flat arena in the model's layout, named prefix + tensor name.
template <typename Scalar>
void append_arena(std::vector<TensorView>& out, const ParameterLayout& layout, const Scalar* base,
                  const std::string& prefix = "") {
  for (const TensorInfo& t : layout.tensors())
    out.push_back(TensorView{prefix + t.name, dtype_of<Scalar>(), t.shape(), base + t.offset});
}

/// Copies every tensor of the layout (named prefix + name) from the file into a flat arena.
template <typename Scalar>
void read_arena(const SafetensorsFile& file, const ParameterLayout& layout, Scalar* base,
                const std::string& prefix = "") {
  for (const TensorInfo& t : layout.tensors())
    file.copy_converted<Scalar>(prefix + t.name, t.shape(), base + t.offset);
}

/// The configuration a checkpoint was saved with.
inline ModelConfig read_config(const SafetensorsFile& file) {
  const std::string where = "checkpoint " + file.path();
  auto it = file.metadata().find("strata.config");
  if (it == file.metadata().end())
    fail(where, ": no 'strata.config' metadata (not a strata checkpoint?)");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception& e) {
    fail(where, ": 'strata.config' is not valid JSON: ", e.what());
  }
  ModelConfig sizes;
  read_model_sizes(j, sizes, where);
  check_sizes_fit_file(file, sizes, where);
  return config_from_json(j, where);
}

/// The configuration a checkpoint was saved with, after checking that the file holds exactly its
/// tensors with their shapes: a model built from it allocates no more than the file's data.
inline ModelConfig read_checked_config(const SafetensorsFile& file) {
  ModelConfig cfg = read_config(file);
  check_tensors_match(file, cfg);
  return cfg;
}

/// Throws when the model was configured differently from the checkpoint (the seed may differ).
inline void check_same_config(const SafetensorsFile& file, const ModelConfig& model_cfg) {
  const nlohmann::json saved = config_to_json(read_config(file));
  const nlohmann::json mine = config_to_json(model_cfg);
  for (const auto& [key, value] : mine.items()) {
    if (key == "seed" || key == "attention") continue;
    if (saved.at(key) != value)
      fail("checkpoint ", file.path(), ": saved with ", key, " ", saved.at(key).dump(),
           ", but the model has ", key, " ", value.dump());
  }
  // The attention wiring (table and feature maps) must agree; name the recipes when they differ.
  const nlohmann::json& a = saved.at("attention");
  const nlohmann::json& b = mine.at("attention");
  if (a.at("table") != b.at("table") || a.at("features") != b.at("features")) {
    if (a.at("recipe") != b.at("recipe"))
      fail("checkpoint ", file.path(), ": saved with attention ", a.at("recipe").dump(),
           ", but the model has attention ", b.at("recipe").dump());
    fail("checkpoint ", file.path(), ": saved with attention table ", a.at("table").dump(),
         " and feature maps ", a.at("features").dump(), ", but the model has table ",
         b.at("table").dump(), " and feature maps ", b.at("features").dump());
  }
}
}  // namespace io

/// Reads the model configuration stored in a checkpoint (to build a model that fits it).
inline ModelConfig read_checkpoint_config(const std::string& path) {
  return io::read_checked_config(io::SafetensorsFile::read(path));
}

/// Saves the model's parameters and configuration, atomically (a temporary file renamed over
/// `path`). extra_tensors and extra_metadata are written alongside (training checkpoints use them).
template <typename Scalar>
void save_checkpoint(const std::string& path, const GPT<Scalar>& model,
                     const std::vector<io::TensorView>& extra_tensors = {},
                     const std::map<std::string, std::string>& extra_metadata = {}) {
  std::vector<io::TensorView> tensors;
  io::append_arena(tensors, model.layout(), model.parameters().data());
  tensors.insert(tensors.end(), extra_tensors.begin(), extra_tensors.end());
  std::map<std::string, std::string> meta = extra_metadata;
  meta["strata.config"] = io::config_to_json(model.config()).dump();
  meta["strata.version"] = version;
  io::write_safetensors(path, tensors, meta);
}

namespace io {
/// Reads every tensor of the layout (named prefix + name) into a new flat vector; nothing of the
/// caller's changes when a tensor is missing or malformed.
template <typename Scalar>
Vector<Scalar> read_arena(const SafetensorsFile& file, const ParameterLayout& layout,
                          const std::string& prefix = "") {
  Vector<Scalar> arena(layout.total_size());
  read_arena(file, layout, arena.data(), prefix);
  return arena;
}

/// Checks that the file was saved by a model configured like `model` and holds nothing else.
template <typename Scalar>
void check_model_tensors(const SafetensorsFile& file, const GPT<Scalar>& model) {
  check_same_config(file, model.config());
  for (const std::string& name : file.names())
    if (!model.layout().contains(name) && name.rfind("optimizer.", 0) != 0)
      fail("checkpoint ", file.path(), ": unexpected tensor '", name,
           "' (not a parameter of this model)");
}
}  // namespace io

/// Loads parameters into a model configured as the checkpoint was (same sizes and plan; the
/// error names the first difference). Float checkpoints load into double models and vice versa.
/// On any error the model is left as it was.
template <typename Scalar>
void load_checkpoint(const io::SafetensorsFile& file, GPT<Scalar>& model) {
  io::check_model_tensors(file, model);
  Vector<Scalar> params = io::read_arena<Scalar>(file, model.layout());
  io::check_finite(params.data(), model.layout(), "", "checkpoint " + file.path() + ": ");
  model.parameters() = std::move(params);
}

template <typename Scalar>
void load_checkpoint(const std::string& path, GPT<Scalar>& model) {
  load_checkpoint(io::SafetensorsFile::read(path), model);
}

/// Builds a model from the configuration stored in the checkpoint and loads its parameters.
template <typename Scalar>
std::unique_ptr<GPT<Scalar>> load_model(const std::string& path) {
  const io::SafetensorsFile file = io::SafetensorsFile::read(path);
  auto model = std::make_unique<GPT<Scalar>>(io::read_checked_config(file));
  load_checkpoint(file, *model);
  return model;
}

}  // namespace strata
