// Tests for strata/io/limits.hpp and its use by the checkpoint loaders: a checkpoint's metadata is
// checked for types and fixed limits and against the tensors really in the file before anything
// is allocated; parameters and optimizer moments must be finite; the training state must be sane.
// Every message is checked in full.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "gradcheck.hpp"
#include "strata/strata.hpp"
#include "temp_dir.hpp"

namespace {

using nlohmann::json;
using strata::AttentionPlan;
using strata::GPT;
using strata::Index;
using strata::ModelConfig;
using strata::io::TensorView;
using strata::testing::bit_equal;
using strata::testing::error_of;

/// V = 50, T = 16, L = 3, NH = 4, C = 16.
ModelConfig small_config(AttentionPlan plan = AttentionPlan::standard()) {
  ModelConfig c;
  c.vocab_size = 50;
  c.context_length = 16;
  c.n_layer = 3;
  c.n_head = 4;
  c.n_embd = 16;
  c.seed = 3;
  c.attention = std::move(plan);
  return c;
}

class CheckpointLimits : public strata::testing::TempDirTest {
 protected:
  static std::string where(const std::string& path) { return "checkpoint " + path + ": "; }

  /// Writes the model's tensors (and the optimizer's, when given) with `config` as the
  /// strata.config text and `train` (when not empty) as strata.train.
  std::string write(const std::string& name, const GPT<float>& model, const json& config,
                    const json& train = nullptr, const strata::AdamW<float>* opt = nullptr) {
    std::vector<TensorView> tensors;
    strata::io::append_arena(tensors, model.layout(), model.parameters().data());
    if (opt) {
      strata::io::append_arena(tensors, model.layout(), opt->m().data(), "optimizer.m.");
      strata::io::append_arena(tensors, model.layout(), opt->v().data(), "optimizer.v.");
    }
    std::map<std::string, std::string> meta{{"strata.config", config.dump()}};
    if (!train.is_null()) meta["strata.train"] = train.dump();
    const std::string path = file(name);
    strata::io::write_safetensors(path, tensors, meta);
    return path;
  }

  static json train_state(Index step = 5, Index adam_step = 5) {
    return json{{"step", step},
                {"batches_drawn", step},
                {"data_rng", {1, 2, 3, 4}},
                {"adam_step", adam_step},
                {"options", strata::TrainOptions{}.to_json()}};
  }
};

// ---- model configuration: types and fixed limits, before any allocation -----------------------

TEST_F(CheckpointLimits, HugeSizesAreRefusedByName) {
  GPT<float> model(small_config());
  struct Case {
    const char* key;
    json value;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"n_layer", 100000000, "'n_layer' is 100000000, expected an integer in [1, 1024]"},
      {"context_length", Index(1) << 40,
       "'context_length' is 1099511627776, expected an integer in [1, 1048576]"},
      {"n_embd", 1 << 20, "'n_embd' is 1048576, expected an integer in [1, 65536]"},
      {"n_head", 0, "'n_head' is 0, expected an integer in [1, 1024]"},
      {"vocab_size", -50, "'vocab_size' is -50, expected an integer in [1, 16777216]"},
      {"mlp_ratio", std::numeric_limits<std::uint64_t>::max(),
       "'mlp_ratio' is 18446744073709551615, expected an integer in [1, 64]"},
  };
  for (const Case& c : cases) {
    json cfg = strata::io::config_to_json(model.config());
    cfg[c.key] = c.value;
    const std::string path = write(std::string(c.key) + ".safetensors", model, cfg);
    const std::string want = where(path) + "model configuration " + c.expected;
    EXPECT_EQ(error_of([&] { strata::load_model<float>(path); }), want);
    EXPECT_EQ(error_of([&] { strata::read_checkpoint_config(path); }), want);
  }
}

TEST_F(CheckpointLimits, WrongJsonTypesAreRefusedByName) {
  GPT<float> model(small_config());
  auto with = [&](const std::string& key, const json& value) {
    json cfg = strata::io::config_to_json(model.config());
    if (value.is_null() && key != "null")
      cfg.erase(key);
    else
      cfg[key] = value;
    const std::string path = write(key + ".safetensors", model, cfg);
    return error_of([&] { strata::load_model<float>(path); }).substr(where(path).size());
  };
  EXPECT_EQ(with("n_layer", "3"),
            "model configuration 'n_layer' is \"3\" (a string), expected an integer in [1, 1024]");
  EXPECT_EQ(with("n_head", 4.5),
            "model configuration 'n_head' is 4.5, expected an integer in "
            "[1, 1024]");
  EXPECT_EQ(with("n_embd", json::array({16})),
            "model configuration 'n_embd' is [16] (an array), expected an integer in [1, 65536]");
  EXPECT_EQ(with("vocab_size", true),
            "model configuration 'vocab_size' is true (a boolean), expected an integer in "
            "[1, 16777216]");
  EXPECT_EQ(with("context_length", nullptr),
            "model configuration has no 'context_length' (expected an integer in [1, 1048576])");
  EXPECT_EQ(with("seed", -5),
            "model configuration 'seed' is -5, expected an unsigned 64-bit integer");

  const std::string not_object = write("array.safetensors", model, json::array({1, 2}));
  EXPECT_EQ(error_of([&] { strata::load_model<float>(not_object); }),
            where(not_object) + "model configuration is [1,2] (an array), expected an object");
}

// Sizes within the limits that the file cannot hold are refused before the plan is resolved or
// anything is sized by them: a model of those sizes has more parameters than the file has tensor
// elements. The n_embd case would need 2^49 parameters, so reaching the allocation would end in
// std::bad_alloc instead of this message.
TEST_F(CheckpointLimits, SizesAreCheckedAgainstTheTensorsBeforeAllocation) {
  GPT<float> model(small_config());
  auto with = [&](const std::string& key, Index value) {
    json cfg = strata::io::config_to_json(model.config());
    cfg[key] = value;
    const std::string path = write(key + ".safetensors", model, cfg);
    return error_of([&] { strata::load_model<float>(path); }).substr(where(path).size());
  };
  EXPECT_EQ(with("n_layer", 1024),
            "model configuration (vocab_size 50, context_length 16, n_layer 1024, n_embd 16, "
            "mlp_ratio 4) needs at least 3146784 parameters, but the file holds 10928 tensor "
            "elements in all");
  EXPECT_EQ(with("context_length", 1 << 20),
            "model configuration (vocab_size 50, context_length 1048576, n_layer 3, n_embd 16, "
            "mlp_ratio 4) needs at least 16787232 parameters, but the file holds 10928 tensor "
            "elements in all");
  EXPECT_EQ(with("vocab_size", 1 << 24),
            "model configuration (vocab_size 16777216, context_length 16, n_layer 3, n_embd 16, "
            "mlp_ratio 4) needs at least 268444928 parameters, but the file holds 10928 tensor "
            "elements in all");
  json cfg = strata::io::config_to_json(model.config());
  cfg["n_embd"] = 65536;
  cfg["n_head"] = 1024;
  cfg["n_layer"] = 1024;
  cfg["mlp_ratio"] = 64;
  const std::string big = write("big.safetensors", model, cfg);
  EXPECT_EQ(error_of([&] { strata::load_model<float>(big); }),
            where(big) + "model configuration (vocab_size 50, context_length 16, n_layer 1024, "
                         "n_embd 65536, mlp_ratio 64) needs at least 580542143791104 parameters, "
                         "but the file holds 10928 tensor elements in all");

  // Sizes the file could hold but its tensors do not match: named by the first tensor that
  // differs, still before a model is built.
  EXPECT_EQ(with("context_length", 20),
            "tensor 'transformer.wpe.weight' has shape [16, 16], expected [20, 16]");
  // Fewer layers than the file holds: the extra tensors are not parameters of that model.
  EXPECT_EQ(with("n_layer", 2),
            "unexpected tensor 'transformer.h.2.ln_1.weight' (not a parameter of this model)");
}

TEST_F(CheckpointLimits, ShortcutFeatureWidthIsBounded) {
  GPT<float> model(small_config(AttentionPlan::shortcut()));
  const json saved = strata::io::config_to_json(model.config());
  // every feature map of the table
  json cfg = saved;
  for (json& f : cfg["attention"]["features"]) f["width"] = Index(1) << 40;
  const std::string path = write("wide.safetensors", model, cfg);
  EXPECT_EQ(error_of([&] { strata::load_model<float>(path); }),
            where(path) + "model configuration: shortcut feature width 1099511627776, expected an "
                          "integer in [1, 65536]");
  // the recipe's setting
  cfg = saved;
  cfg["attention"]["recipe"]["feature_width"] = Index(1) << 40;
  const std::string recipe = write("wide_recipe.safetensors", model, cfg);
  EXPECT_EQ(error_of([&] { strata::load_model<float>(recipe); }),
            where(recipe) + "attention recipe 'feature_width' is 1099511627776, expected an "
                            "integer in [0, 65536]");
}

// The same huge n_layer under an address-space limit of 4 GB (as `ulimit -v 4000000`) (in a child
// process): refused with the message, never std::bad_alloc or the kernel's OOM killer.
TEST_F(CheckpointLimits, HugeLayerCountUnderAMemoryLimit) {
#if defined(__SANITIZE_ADDRESS__)  // g++
#define STRATA_TEST_ASAN 1
#elif defined(__has_feature)  // clang
#if __has_feature(address_sanitizer)
#define STRATA_TEST_ASAN 1
#endif
#endif
#if defined(STRATA_TEST_ASAN)
  // AddressSanitizer maps terabytes of shadow memory up front: an address-space limit cannot
  // apply to a sanitized process. The unsanitized builds run this test.
  GTEST_SKIP() << "an address-space limit (RLIMIT_AS) and AddressSanitizer exclude each other";
#endif
  GPT<float> model(small_config());
  json cfg = strata::io::config_to_json(model.config());
  cfg["n_layer"] = 1000;  // within the limits: only the tensor check stops it
  cfg["n_embd"] = 65536;
  cfg["n_head"] = 1;
  const std::string path = write("huge.safetensors", model, cfg);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    rlimit limit{Index(4) << 30, Index(4) << 30};
    ::setrlimit(RLIMIT_AS, &limit);
    const std::string e = error_of([&] { strata::load_model<float>(path); });
    ::_exit(e.find("needs at least 51539611877376 parameters, but the file holds 10928 tensor "
                   "elements in all")
                    != std::string::npos
                ? 0
                : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// ---- finite on load
// ------------------------------------------------------------------------------

TEST_F(CheckpointLimits, NonFiniteParametersAreRefusedByTensorAndIndex) {
  const ModelConfig cfg = small_config();
  GPT<float> model(cfg);
  const auto& info = model.layout().at("transformer.h.1.attn.c_proj.weight");
  model.parameters()[info.offset + 2 * 16 + 5] = std::numeric_limits<float>::quiet_NaN();
  const std::string nan = write("nan.safetensors", model, strata::io::config_to_json(cfg));
  const std::string
      want = where(nan)
           + "tensor 'transformer.h.1.attn.c_proj.weight' holds nan at index 37 (element "
             "[2, 5] of [16, 16]); expected finite values";
  EXPECT_EQ(error_of([&] { strata::load_model<float>(nan); }), want);
  GPT<float> target(cfg);
  const strata::Vector<float> before = target.parameters();
  EXPECT_EQ(error_of([&] { strata::load_checkpoint(nan, target); }), want);
  EXPECT_TRUE(bit_equal(target.parameters(), before));  // a refused load changes nothing
  EXPECT_EQ(error_of([&] { strata::load_model<double>(nan); }), want);

  GPT<float> inf_model(cfg);
  const auto& bias = inf_model.layout().at("transformer.ln_f.bias");
  inf_model.parameters()[bias.offset + 15] = -std::numeric_limits<float>::infinity();
  const std::string inf = write("inf.safetensors", inf_model, strata::io::config_to_json(cfg));
  EXPECT_EQ(error_of([&] { strata::load_model<float>(inf); }),
            where(inf) + "tensor 'transformer.ln_f.bias' holds -inf at index 15; expected finite "
                         "values");
}

TEST_F(CheckpointLimits, NonFiniteOptimizerMomentsAreRefused) {
  const ModelConfig cfg = small_config();
  GPT<float> model(cfg);
  strata::AdamW<float> opt(model);
  const auto& wpe = model.layout().at("transformer.wpe.weight");
  opt.m()[wpe.offset + 3] = std::numeric_limits<float>::infinity();
  const std::string m_inf =
      write("m.safetensors", model, strata::io::config_to_json(cfg), train_state(), &opt);
  GPT<float> target(cfg);
  strata::AdamW<float> target_opt(target);
  EXPECT_EQ(error_of([&] { strata::load_training_checkpoint(m_inf, target, target_opt); }),
            where(m_inf) + "tensor 'optimizer.m.transformer.wpe.weight' holds inf at index 3 "
                           "(element [0, 3] of [16, 16]); expected finite values");

  opt.m()[wpe.offset + 3] = 0;
  opt.v()[7] = -1e-3f;  // a negative second moment makes sqrt(v) NaN at the next step
  const std::string v_neg =
      write("v.safetensors", model, strata::io::config_to_json(cfg), train_state(), &opt);
  EXPECT_EQ(error_of([&] { strata::load_training_checkpoint(v_neg, target, target_opt); }),
            where(v_neg) + "tensor 'optimizer.v.transformer.wte.weight' holds -0.001 at index 7 "
                           "(element [0, 7] of [50, 16]); expected finite values >= 0");
  EXPECT_EQ(target_opt.step_count(), 0);  // nothing changed
}

// ---- training state
// ------------------------------------------------------------------------------

TEST_F(CheckpointLimits, TrainingStateIsSane) {
  const ModelConfig cfg = small_config();
  GPT<float> model(cfg);
  strata::AdamW<float> opt(model);
  const json config = strata::io::config_to_json(cfg);
  auto refused = [&](const std::string& name, const json& state) {
    const std::string path = write(name, model, config, state, &opt);
    GPT<float> target(cfg);
    strata::AdamW<float> target_opt(target);
    return error_of([&] { strata::load_training_checkpoint(path, target, target_opt); })
        .substr(where(path).size());
  };
  EXPECT_EQ(refused("neg.safetensors", train_state(-1, 0)),
            "training state 'step' is -1, expected an integer in [0, 1125899906842624]");
  EXPECT_EQ(refused("ahead.safetensors", train_state(5, 6)),
            "training state 'adam_step' is 6, expected at most 'step' 5");
  json s = train_state();
  s["batches_drawn"] = "5";
  EXPECT_EQ(refused("type.safetensors", s),
            "training state 'batches_drawn' is \"5\" (a string), expected an integer in "
            "[0, 1125899906842624]");
  s = train_state();
  s["data_rng"] = {1, 2, -3, 4};
  EXPECT_EQ(refused("rng.safetensors", s),
            "training state 'data_rng' is [1,2,-3,4] (an array), expected 4 unsigned 64-bit "
            "integers");
  s = train_state();
  s["options"]["batch"] = Index(1) << 60;
  EXPECT_EQ(refused("batch.safetensors", s),
            "training options 'batch' is 1152921504606846976, expected an integer in "
            "[1, 1125899906842624]");
  s = train_state();
  s["options"]["lr"] = "fast";
  EXPECT_EQ(refused("lr.safetensors", s),
            "training options 'lr' is \"fast\" (a string), expected a finite number");
  s = train_state();
  s["options"].erase("data_seed");
  EXPECT_EQ(refused("seed.safetensors", s),
            "training options has no 'data_seed' (expected an unsigned 64-bit integer)");
  s = train_state();
  s["step"] = 3.5;
  EXPECT_EQ(refused("float.safetensors", s),
            "training state 'step' is 3.5, expected an integer in [0, 1125899906842624]");

  // A sane state loads.
  const std::string good = write("good.safetensors", model, config, train_state(), &opt);
  GPT<float> target(cfg);
  strata::AdamW<float> target_opt(target);
  EXPECT_EQ(strata::load_training_checkpoint(good, target, target_opt).step, 5);
  EXPECT_EQ(target_opt.step_count(), 5);

  // A state saved through the API without trainer options (an empty object) loads too.
  s = train_state();
  s["options"] = json::object();
  const std::string no_options = write("nooptions.safetensors", model, config, s, &opt);
  EXPECT_TRUE(strata::load_training_checkpoint(no_options, target, target_opt).options.empty());
  s["options"] = json::array();
  EXPECT_EQ(refused("array.safetensors", s),
            "training state 'options' is [] (an array), expected an object");
}

}  // namespace
