// generate: samples text from a checkpoint written by train.
//
//   build/examples/generate --checkpoint out/model.safetensors --prompt "Call me " --tokens 400
#include <cstdio>
#include <iostream>

#include "cli_common.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Sample text from a strata checkpoint."};
  std::string checkpoint = "out/model.safetensors", prompt = "Call me ";
  strata::Index tokens = 400;
  strata::Sampler sampler{0.8, 40, 1};
  int threads = 1;
  app.add_option("--checkpoint", checkpoint, "Checkpoint written by train")->capture_default_str();
  app.add_option("--prompt", prompt, "Text to continue")->capture_default_str();
  app.add_option("--tokens", tokens, "Bytes to generate")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--temperature", sampler.temperature, "Sampling temperature; 0 = greedy")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--top-k", sampler.top_k, "Sample among the k most likely bytes; 0 = all")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--seed", sampler.seed, "Sampling seed")->capture_default_str();
  app.add_option("--threads", threads, "Threads; 0 = all cores")->capture_default_str()->check(examples::AtLeast(0));
  CLI11_PARSE(app, argc, argv);
  try {
    strata::set_num_threads(threads);
    auto model = strata::load_model<float>(checkpoint);
    const auto& cfg = model->config();
    std::fprintf(stderr, "%s: L%lld H%lld C%lld context %lld, attention %s\n", checkpoint.c_str(),
                 (long long)cfg.n_layer, (long long)cfg.n_head, (long long)cfg.n_embd,
                 (long long)cfg.context_length, examples::plan_text(cfg).c_str());
    if (cfg.vocab_size != strata::ByteTokenizer::vocab_size)
      strata::fail("the checkpoint's vocabulary has ", cfg.vocab_size,
                   " tokens; this example speaks bytes (256)");
    std::fputs(prompt.c_str(), stdout);
    const auto start = std::chrono::steady_clock::now();
    strata::generate(*model, strata::ByteTokenizer::encode(prompt), tokens, sampler,
                     [](strata::Token t) {
                       const unsigned char c = static_cast<unsigned char>(t);
                       std::fputc((c == '\n' || c == '\t' || c >= 0x20) ? c : '?', stdout);
                       std::fflush(stdout);
                     });
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "\n%lld tokens in %.2f s (%.0f tokens/s)\n", (long long)tokens, sec,
                 double(tokens) / sec);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
