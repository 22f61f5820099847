// generate: samples text from a checkpoint written by train; the checkpoint carries its tokenizer
// (bytes, or the SentencePiece model of `prepare`), so it is all generate needs.
//
//   build/examples/generate --checkpoint out/model.safetensors --prompt "Call me " --tokens 400
//
// The sampled bytes are printed as they come; bytes that do not form valid UTF-8 become U+FFFD and
// control characters '?', so the terminal is never garbled (--raw prints the exact bytes).
#include <unistd.h>

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
  bool raw = false;
  app.add_option("--checkpoint", checkpoint, "Checkpoint written by train")->capture_default_str();
  app.add_option("--prompt", prompt, "Text to continue")->capture_default_str();
  app.add_option("--tokens", tokens, "Tokens to generate")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--temperature", sampler.temperature, "Sampling temperature; 0 = greedy")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--top-k", sampler.top_k, "Sample among the k most likely tokens; 0 = all")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_option("--seed", sampler.seed, "Sampling seed")
      ->capture_default_str()
      ->check(examples::UnsignedInteger());
  app.add_option("--threads", threads, "Threads; 0 = all cores")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  app.add_flag("--raw", raw,
               "Print the sampled bytes exactly (default: invalid UTF-8 and control characters are "
               "replaced)");
  CLI11_PARSE(app, argc, argv);
  try {
    strata::set_num_threads(threads);
    examples::check_input_file(checkpoint, "--checkpoint");
    const auto file =
        strata::io::SafetensorsFile::read(checkpoint);  // read once: model + tokenizer
    // read_checked_config: the sizes are checked against the tensors before anything is allocated
    auto model = std::make_unique<strata::GPT<float>>(strata::io::read_checked_config(file));
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
    // The KV cache holds context_length positions of every layer and feature map, which
    // the checkpoint's size bounds only loosely: say so instead of running out of memory.
    const double cached_layers =
        double(cfg.n_layer
               + strata::Index(
                   cfg.attention.resolve(cfg.n_layer, cfg.n_head, cfg.n_embd).features.size()));
    const double cache_bytes =
        cached_layers * double(cfg.context_length) * 2.0 * double(cfg.n_embd) * sizeof(float);
    const double memory = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGE_SIZE));
    if (memory > 0 && cache_bytes > memory)
      strata::fail("the KV cache of this model needs up to ", cache_bytes / 1e9, " GB (",
                   cached_layers, " cached layers x context_length ", cfg.context_length,
                   " x 2 n_embd ", 2 * cfg.n_embd, " floats), more than this machine's ",
                   memory / 1e9, " GB of memory");
    std::fputs(prompt.c_str(), stdout);
    const auto start = std::chrono::steady_clock::now();
    strata::TextStream stream(*tokenizer);  // whole characters as they complete
    strata::generate(*model, tokenizer->encode(prompt), tokens, sampler, [&](strata::Token t) {
      const std::string out = examples::printable(stream.push(t), raw);
      std::fwrite(out.data(), 1, out.size(), stdout);  // --raw may hold NUL bytes
      std::fflush(stdout);
    });
    const std::string rest = examples::printable(stream.flush(), raw);
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    const double sec =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::fprintf(stderr, "\n%lld tokens in %.2f s (%.0f tokens/s)\n", (long long)tokens, sec,
                 double(tokens) / sec);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr,
                 "generate: error: out of memory (the model is too large for this machine)\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "generate: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
