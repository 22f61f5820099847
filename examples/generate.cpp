// generate: samples text from a checkpoint written by train; the checkpoint carries its tokenizer
// (bytes, or the SentencePiece model of `prepare`), so it is all generate needs.
//
//   build/examples/generate --checkpoint out/model.safetensors --prompt "Call me " --tokens 400
#include <cstdio>
#include <iostream>
#include <memory>

#include "cli_common.hpp"

int main(int argc, char** argv) {
  CLI::App app{"Sample text from a strata checkpoint."};
  std::string checkpoint = "out/model.safetensors", prompt = "Call me ";
  strata::Index tokens = 400;
  strata::Sampler sampler{0.8, 40, 1};
  int threads = 1;
  app.add_option("--checkpoint", checkpoint, "Checkpoint written by train")->capture_default_str();
  app.add_option("--prompt", prompt, "Text to continue")->capture_default_str();
  app.add_option("--tokens", tokens, "Tokens to generate")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--temperature", sampler.temperature, "Sampling temperature; 0 = greedy")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--top-k", sampler.top_k, "Sample among the k most likely tokens; 0 = all")->capture_default_str()->check(examples::AtLeast(0));
  app.add_option("--seed", sampler.seed, "Sampling seed")->capture_default_str();
  app.add_option("--threads", threads, "Threads; 0 = all cores")->capture_default_str()->check(examples::AtLeast(0));
  CLI11_PARSE(app, argc, argv);
  try {
    strata::set_num_threads(threads);
    const auto file = strata::io::SafetensorsFile::read(checkpoint);  // read once: model + tokenizer
    auto model = std::make_unique<strata::GPT<float>>(strata::io::read_config(file));
    strata::load_checkpoint(file, *model);
    const auto& cfg = model->config();
    const strata::TokenizerSpec spec = strata::read_tokenizer(file);
    std::fprintf(stderr, "%s: L%lld H%lld C%lld V%lld context %lld, attention %s, tokenizer %s\n",
                 checkpoint.c_str(), (long long)cfg.n_layer, (long long)cfg.n_head,
                 (long long)cfg.n_embd, (long long)cfg.vocab_size, (long long)cfg.context_length,
                 examples::plan_text(cfg).c_str(), spec.describe().c_str());
    const auto tokenizer = strata::make_tokenizer(spec, "checkpoint " + checkpoint);
    if (tokenizer->vocab_size() > cfg.vocab_size)
      strata::fail("checkpoint ", checkpoint, ": its tokenizer ", spec.describe(),
                   " has more tokens than the model's vocab_size ", cfg.vocab_size);
    std::fputs(prompt.c_str(), stdout);
    const auto start = std::chrono::steady_clock::now();
    strata::TextStream stream(*tokenizer);  // prints whole characters as they complete
    strata::generate(*model, tokenizer->encode(prompt), tokens, sampler, [&](strata::Token t) {
      std::fputs(examples::printable(stream.push(t)).c_str(), stdout);
      std::fflush(stdout);
    });
    std::fputs(examples::printable(stream.flush()).c_str(), stdout);
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "\n%lld tokens in %.2f s (%.0f tokens/s)\n", (long long)tokens, sec,
                 double(tokens) / sec);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
