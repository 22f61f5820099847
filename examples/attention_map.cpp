// attention_map: where the final block of a shortcut model looks, by depth. For every position of a
// text it reports the attention mass the final block puts on each depth it attends over (summed
// over keys, averaged over heads), prints a heat map in the terminal and writes it as JSON for
// examples/tools/plot_attention_map.py, which draws a PNG.
//
//   build/examples/attention_map --checkpoint out/shortcut.safetensors --text "Call me Ishmael."
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "cli_common.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Attention mass per depth of a shortcut model's final block, for a text."};
  std::string checkpoint = "out/model.safetensors";
  std::string text =
      "Call me Ishmael. Some years ago, never mind how long precisely, I went to sea.";
  std::string out = "out/attention_map.json";
  int threads = 1;
  app.add_option("--checkpoint", checkpoint,
                 "Checkpoint of a model trained with --attention shortcut")
      ->capture_default_str();
  app.add_option("--text", text, "Text to analyse (at most the context length in bytes)")
      ->capture_default_str();
  app.add_option("--out", out, "JSON file for plot_attention_map.py")->capture_default_str();
  app.add_option("--threads", threads, "Threads; 0 = all cores")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  CLI11_PARSE(app, argc, argv);
  try {
    strata::set_num_threads(threads);
    examples::check_input_file(checkpoint, "--checkpoint");
    examples::check_output_path(out, "--out", "attention_map.json");  // before the work is done
    auto model = strata::load_model<float>(checkpoint);
    const strata::ModelConfig& cfg = model->config();
    if (cfg.attention.kind() != strata::AttentionPlan::Kind::shortcut)
      strata::fail("the checkpoint's attention plan is ", examples::plan_text(cfg),
                   "; maps by depth need a shortcut plan (train with --attention shortcut)");
    const std::vector<strata::Token> ids = strata::ByteTokenizer::encode(text);
    if (ids.empty()) strata::fail("--text is empty");
    if (strata::Index(ids.size()) > cfg.context_length)
      strata::fail("--text has ", ids.size(), " bytes, more than the context length ",
                   cfg.context_length);
    strata::TokenMatrix x(1, strata::Index(ids.size()));
    for (size_t i = 0; i < ids.size(); ++i) x(0, strata::Index(i)) = ids[i];
    const strata::Matrix<float> mass = model->attention_mass(x, cfg.n_layer - 1);
    const std::vector<strata::Index> depths = model->shortcut_depths();

    // Terminal heat map: one row per depth, one column per byte of the text.
    const char* shades = " .:-=+*#%@";
    std::printf("attention of the final block by depth (rows) and position (columns), %s\n",
                examples::plan_text(cfg).c_str());
    std::printf("%10s  %s\n", "", examples::printable(text).c_str());
    for (size_t j = 0; j < depths.size(); ++j) {
      std::string row;
      for (strata::Index t = 0; t < mass.rows(); ++t)
        row += shades[std::min(9, int(mass(t, strata::Index(j)) * 9.999f))];
      const std::string label = depths[j] == 0 ? "embed" : "depth " + std::to_string(depths[j]);
      std::printf("%10s  %s  mean %.3f\n", label.c_str(), row.c_str(),
                  double(mass.col(strata::Index(j)).mean()));
    }

    nlohmann::json j;
    j["checkpoint"] = checkpoint;
    j["plan"] = examples::plan_text(cfg);
    j["depths"] = depths;
    j["tokens"] = nlohmann::json::array();
    for (strata::Token t : ids) j["tokens"].push_back(int(t));
    j["text"] = text;
    j["mass"] = nlohmann::json::array();
    for (strata::Index t = 0; t < mass.rows(); ++t) {
      std::vector<double> row(mass.cols());
      for (strata::Index s = 0; s < mass.cols(); ++s) row[size_t(s)] = mass(t, s);
      j["mass"].push_back(row);
    }
    const auto parent = std::filesystem::path(out).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    std::ofstream f(out);
    // invalid UTF-8 in --text becomes U+FFFD rather than an exception
    if (!(f << j.dump(1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n"))
      strata::fail("cannot write '", out, "'");
    std::printf("wrote %s; draw it with: python3 examples/tools/plot_attention_map.py %s\n",
                out.c_str(), out.c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attention_map: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
