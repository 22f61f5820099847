// tests/data/make_test_data.cpp: writes the checked-in test data of tests/data/ (see
// tests/plan_cases.hpp for what each file holds).
//
//   make_test_data golden <dir>
//       adds (or replaces) this build's record in <dir>/plan_golden.json
//   make_test_data checkpoints <dir>
//       writes <dir>/v0_1_0_*.safetensors (once, by version 0.1.0; refuses to overwrite them)
//
// Goldens are recorded before a change of the model code and compared bit for bit after it, once
// per build configuration (BLAS on and off).
#include <fstream>
#include <iostream>
#include <string>

#include <nlohmann/json.hpp>

#include <strata/io/checkpoint.hpp>

#include "plan_cases.hpp"

namespace {

nlohmann::json to_json(const strata::testing::GoldenRecord& r) {
  return {{"loss", r.loss},
          {"logits_fnv1a", r.logits_hash},
          {"grads_fnv1a", r.grads_hash},
          {"grads_size", r.grads_size},
          {"logits_head", r.logits_head},
          {"grads_sample", r.grads_head}};
}

int write_golden(const std::string& dir) {
  const std::string path = dir + "/plan_golden.json";
  nlohmann::json j = {{"format", 1}, {"builds", nlohmann::json::object()}};
  if (std::ifstream in(path); in) j = nlohmann::json::parse(in);
  nlohmann::json build;
  for (const auto& c : strata::testing::golden_plans()) {
    build[c.name]["float"] = to_json(strata::testing::golden_record<float>(c.plan));
    build[c.name]["double"] = to_json(strata::testing::golden_record<double>(c.plan));
  }
  j["builds"][strata::testing::build_fingerprint()] = build;
  std::ofstream(path) << j.dump(1) << "\n";
  std::cout << "wrote " << path << " for " << strata::testing::build_fingerprint() << "\n";
  return 0;
}

int write_checkpoints(const std::string& dir) {
  // These files record what version 0.1.0 (before the plan metadata carried the resolved table)
  // wrote; later code must never overwrite them.
  for (const auto& c : strata::testing::checkpoint_plans())
    if (std::ifstream(dir + "/" + c.name + ".safetensors")) {
      std::cerr << dir << "/" << c.name
                << ".safetensors exists; the version checkpoints are history, never regenerated\n";
      return 1;
    }
  for (const auto& c : strata::testing::checkpoint_plans()) {
    strata::GPT<float> model(strata::testing::checkpoint_config(c.plan));
    strata::testing::randomize(model, 3);
    const std::string path = dir + "/" + c.name + ".safetensors";
    strata::save_checkpoint(path, model);
    std::cout << "wrote " << path << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc == 3 ? argv[1] : "";
  if (what == "golden") return write_golden(argv[2]);
  if (what == "checkpoints") return write_checkpoints(argv[2]);
  std::cerr << "usage: make_test_data golden|checkpoints <dir>\n";
  return 2;
}
