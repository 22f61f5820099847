// make_seeds: writes the seed corpora of the fuzz harnesses into <dir>/<harness>/: valid files made
// by strata's own writers and known-bad files (each a case the readers must reject with a clear
// error). The files are checked in under fuzz/corpus/; rerun after a format change:
//   build-fuzz/fuzz/fuzz_make_seeds fuzz/corpus
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/io/checkpoint.hpp"
#include "strata/train/trainer.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

void put(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) strata::fail("cannot write ", path.string());
}

std::string get(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (char& c : s) {
    c = static_cast<char>(n & 0xff);
    n >>= 8;
  }
  return s;
}

/// A safetensors file from header text and data bytes.
std::string st(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

strata::ModelConfig tiny(strata::AttentionPlan plan, int n_layer = 2) {
  strata::ModelConfig c;
  c.vocab_size = 8;
  c.context_length = 4;
  c.n_layer = n_layer;
  c.n_head = 2;
  c.n_embd = 4;
  c.attention = std::move(plan);
  return c;
}

std::vector<std::pair<std::string, strata::ModelConfig>> configs() {
  using strata::AttentionPlan;
  return {{"standard", tiny(AttentionPlan::standard())},
          {"skip_split", tiny(AttentionPlan::skip_layer(1, 1, strata::SkipMode::split), 3)},
          {"skip_concat", tiny(AttentionPlan::skip_layer(2, 2, strata::SkipMode::concat), 3)},
          {"shortcut", tiny(AttentionPlan::shortcut({1, 2}, 6, true), 3)},
          {"custom_cla", tiny(AttentionPlan::cross_layer(2, 2))}};
}

void safetensors_seeds(const fs::path& dir) {
  // Valid: strata checkpoints (model and training), and a file of every dtype and odd shape.
  for (const auto& [name, cfg] : configs()) {
    strata::GPT<float> model(cfg);
    strata::save_checkpoint((dir / ("valid_model_" + name + ".safetensors")).string(), model);
  }
  {
    strata::GPT<float> model(tiny(strata::AttentionPlan::standard()));
    strata::AdamW<float> opt(model, strata::AdamWConfig{});
    strata::TrainState state;
    state.step = 3;
    state.batches_drawn = 3;
    state.options = strata::TrainOptions{}.to_json();
    strata::save_training_checkpoint((dir / "valid_train.safetensors").string(), model, opt, state);
  }
  const std::vector<float> f = {1, 2, 3, 4, 5, 6};
  const std::vector<double> d = {1.5, -2.5};
  const std::vector<std::int32_t> i = {7, -8, 9};
  strata::io::write_safetensors((dir / "valid_dtypes.safetensors").string(),
                                {{"f", strata::io::DType::F32, {2, 3}, f.data()},
                                 {"d", strata::io::DType::F64, {2}, d.data()},
                                 {"i", strata::io::DType::I32, {3}, i.data()},
                                 {"scalar", strata::io::DType::F32, {}, f.data()},
                                 {"empty", strata::io::DType::F32, {0, 4}, nullptr}},
                                {{"note", "dtypes"}});
  // Unaligned offsets and no padding, as other writers may produce.
  put(dir / "valid_unaligned.safetensors",
      st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"I32","shape":[],"data_offsets":[5,9]}})",
         std::string(9, '\x01')));

  // Known-bad files.
  const std::string good = get(dir / "valid_dtypes.safetensors");
  for (std::size_t cut :
       {std::size_t{0}, std::size_t{4}, std::size_t{12}, good.size() / 2, good.size() - 1})
    put(dir / ("bad_truncated_" + std::to_string(cut) + ".safetensors"), good.substr(0, cut));
  put(dir / "bad_huge_header_length.safetensors", le64(std::uint64_t(1) << 63) + "{}");
  put(dir / "bad_header_past_end.safetensors", le64(1000) + "{}");
  put(dir / "bad_array_header.safetensors", st("[1, 2, 3]"));
  put(dir / "bad_not_json.safetensors", st("{\"a\": "));
  put(dir / "bad_dtype.safetensors",
      st(R"({"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}})", "abcd"));
  put(dir / "bad_shape_overflow.safetensors",
      st(R"({"a":{"dtype":"F64","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,8]}})",
         std::string(8, '\0')));
  put(dir / "bad_negative_dim.safetensors",
      st(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd"));
  put(dir / "bad_overlap.safetensors",
      st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
         std::string(12, '\0')));
  put(dir / "bad_offsets_out_of_range.safetensors",
      st(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "abcd"));
  put(dir / "bad_offsets_reversed.safetensors",
      st(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", "abcd"));
  put(dir / "bad_size_mismatch.safetensors",
      st(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, '\0')));
  put(dir / "bad_duplicate_key.safetensors",
      st(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
         "abcd"));
  put(dir / "bad_metadata_not_string.safetensors", st(R"({"__metadata__":{"k":1}})"));
  put(dir / "bad_entry_not_object.safetensors", st(R"({"a":[0,4]})"));
}

void metadata_seeds(const fs::path& dir, const fs::path& plan_dir) {
  for (const auto& [name, cfg] : configs()) {
    const json config = strata::io::config_to_json(cfg);
    put(dir / ("valid_config_" + name + ".json"), config.dump());
    put(plan_dir / ("valid_plan_" + name + ".json"), config.at("attention").dump());
  }
  // A training state, and one object that both parsers accept.
  const json train = {{"step", 3},
                      {"batches_drawn", 3},
                      {"data_rng", strata::Rng(5).state()},
                      {"adam_step", 3},
                      {"options", strata::TrainOptions{}.to_json()}};
  put(dir / "valid_train_state.json", train.dump());
  json both = strata::io::config_to_json(configs()[3].second);
  both.update(train);
  put(dir / "valid_config_and_train_state.json", both.dump());

  json c = strata::io::config_to_json(configs()[0].second);
  auto bad = [&](const std::string& name, const std::string& key, const json& value) {
    json b = c;
    if (value.is_null())
      b.erase(key);
    else
      b[key] = value;
    put(dir / ("bad_config_" + name + ".json"), b.dump());
  };
  bad("missing_n_layer", "n_layer", nullptr);
  bad("string_n_layer", "n_layer", "2");
  bad("negative_n_head", "n_head", -2);
  bad("huge_n_layer", "n_layer", 100000000);
  bad("huge_context", "context_length", std::int64_t(1) << 40);
  bad("indivisible_width", "n_embd", 5);
  bad("unknown_kind", "attention", json{{"kind", "sparse"}});
  bad("plan_not_object", "attention", json::array({1, 2}));
  put(dir / "bad_not_json.json", "{\"n_layer\": ");
  json t = train;
  t["step"] = "three";
  put(dir / "bad_train_state_step_string.json", t.dump());
  t = train;
  t["options"]["lr"] = -1.0;
  put(dir / "bad_train_state_negative_lr.json", t.dump());

  put(plan_dir / "valid_plan_skip_defaults.json",
      json{{"kind", "skip_layer"}, {"distance", 1}, {"heads", 0}, {"mode", "split"}}.dump());
  put(plan_dir / "bad_plan_unknown_kind.json", R"({"kind":"sparse"})");
  put(plan_dir / "bad_plan_skip_zero_distance.json",
      R"({"kind":"skip_layer","distance":0,"heads":1,"mode":"split"})");
  put(plan_dir / "bad_plan_skip_mode.json",
      R"({"kind":"skip_layer","distance":1,"heads":1,"mode":"sideways"})");
  put(plan_dir / "bad_plan_shortcut_depth.json",
      R"({"kind":"shortcut","depths":[7],"feature_width":4,"include_embeddings":false})");
  put(plan_dir / "bad_plan_shortcut_width.json",
      R"({"kind":"shortcut","depths":[1],"feature_width":-4,"include_embeddings":false})");
  put(plan_dir / "bad_plan_custom_future_layer.json",
      R"({"kind":"custom","table":[[[{"layer":1,"head":0}]],[[{"layer":1,"head":0}]]]})");
  put(plan_dir / "bad_plan_custom_not_array.json", R"({"kind":"custom","table":{"a":1}})");
  put(plan_dir / "bad_plan_kind_number.json", R"({"kind":3})");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_seeds <corpus-dir>\n");
    return 2;
  }
  try {
    const fs::path root = argv[1];
    for (const char* d : {"fuzz_safetensors", "fuzz_checkpoint_metadata", "fuzz_plan_json"})
      fs::create_directories(root / d);
    safetensors_seeds(root / "fuzz_safetensors");
    metadata_seeds(root / "fuzz_checkpoint_metadata", root / "fuzz_plan_json");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_make_seeds: %s\n", e.what());
    return 1;
  }
  return 0;
}
