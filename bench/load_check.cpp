// load_check: what the finite check of a checkpoint load costs next to the load itself.
//
//   build/bench/load_check [--layers 4 --width 128 --repeat 9]
//
// Saves a training checkpoint (parameters and both AdamW moments) of a model of the given size to
// a temporary file, then times, medians over --repeat runs: reading and validating the file
// (SafetensorsFile::read), the whole load_training_checkpoint (which includes the finite checks),
// and the finite checks alone (io::check_finite over parameters, m and v). Prints one JSON line.
// The file is in the page cache after the first read, so "read" is a memory copy, the case where
// the check weighs most.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <strata/strata.hpp>

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
double seconds(F&& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  strata::ModelConfig cfg;
  int repeat = 9;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const long value = std::atol(argv[i + 1]);
    if (flag == "--layers")
      cfg.n_layer = value;
    else if (flag == "--width")
      cfg.n_embd = value;
    else if (flag == "--heads")
      cfg.n_head = value;
    else if (flag == "--repeat")
      repeat = int(value);
    else {
      std::fprintf(stderr, "load_check: unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  strata::set_num_threads(1);
  strata::GPT<float> model(cfg);
  strata::AdamW<float> opt(model);
  const std::string path =
      (std::filesystem::temp_directory_path() / "strata_load_check.safetensors").string();
  strata::TrainState state;
  state.options = strata::TrainOptions{}.to_json();
  strata::save_training_checkpoint(path, model, opt, state);

  std::vector<double> read, load, check;
  for (int r = 0; r < repeat; ++r) {
    read.push_back(seconds([&] { (void)strata::io::SafetensorsFile::read(path); }));
    strata::GPT<float> target(cfg);
    strata::AdamW<float> target_opt(target);
    load.push_back(seconds([&] { strata::load_training_checkpoint(path, target, target_opt); }));
    check.push_back(seconds([&] {
      strata::io::check_finite(target.parameters().data(), target.layout(), "", "");
      strata::io::check_finite(target_opt.m().data(), target.layout(), "optimizer.m.", "");
      strata::io::check_finite(target_opt.v().data(), target.layout(), "optimizer.v.", "", true);
    }));
  }
  const double bytes = double(std::filesystem::file_size(path));
  std::filesystem::remove(path);
  std::printf(
      "{\"parameters\": %lld, \"file_mb\": %.1f, \"read_ms\": %.3f, \"load_ms\": %.3f, "
      "\"finite_check_ms\": %.3f, \"check_share_of_load\": %.4f, \"repeat\": %d}\n",
      (long long)model.num_parameters(), bytes / 1e6, median(read) * 1e3, median(load) * 1e3,
      median(check) * 1e3, median(check) / median(load), repeat);
  return 0;
}
