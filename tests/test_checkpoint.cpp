// Tests for strata/io/checkpoint.hpp, strata/io/config_json.hpp and strata/train/checkpoint.hpp:
// round trips of every attention plan, the tensor names and shapes of SPEC.md §3, every load error
// with its exact message, atomic saves, and training checkpoints (optimizer moments and state).
// (PyTorch interop is checked by scripts outside this suite: there is no torch here.)
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <type_traits>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "gradcheck.hpp"
#include "strata/strata.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using strata::AttentionPlan;
using strata::GPT;
using strata::Index;
using strata::ModelConfig;
using strata::SkipMode;
using strata::TokenMatrix;
using strata::Vector;
using strata::io::DType;
using strata::io::SafetensorsFile;
using strata::io::TensorView;

using strata::testing::error_of;

/// What nlohmann says when f throws (to build the exact text of errors that embed its message).
template <typename F>
std::string json_error_of(F&& f) {
  try {
    f();
  } catch (const json::exception& e) {
    return e.what();
  }
  return "<no json error>";
}

/// Parses text and drops the result (to see the error nlohmann raises for it).
void parse_only(const std::string& text) {
  const json j = json::parse(text);
  (void)j;
}

using strata::testing::bit_equal;

std::string read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (char& c : s) {
    c = static_cast<char>(n & 0xff);
    n >>= 8;
  }
  return s;
}

std::uint64_t header_length(const std::string& bytes) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[size_t(i)]);
  return n;
}

/// The JSON header of a safetensors file, parsed independently of the library's reader.
json header_of(const std::string& path) {
  const std::string bytes = read_raw(path);
  return json::parse(bytes.substr(8, size_t(header_length(bytes))));
}

/// The tiny model of these tests: V = 50, T = 16, L = 3, NH = 4, C = 16 (hs = 4).
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

/// Gives every parameter (LayerNorm and biases included) a distinct random value.
template <typename Scalar>
void randomize(GPT<Scalar>& model, std::uint64_t seed) {
  strata::Rng rng(seed);
  for (Index i = 0; i < model.num_parameters(); ++i)
    model.parameters()[i] = Scalar(0.1 * rng.normal());
}

TokenMatrix some_tokens(Index B, Index T, Index V) {
  strata::Rng rng(99);
  TokenMatrix x(B, T);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t) x(b, t) = strata::Token(rng.below(std::uint64_t(V)));
  return x;
}

/// A fresh temporary directory per test (tests/temp_dir.hpp).
class Checkpoint : public strata::testing::TempDirTest {
 protected:
  /// "checkpoint <path>: " as every checkpoint error starts.
  static std::string where(const std::string& path) { return "checkpoint " + path + ": "; }
};

// ---- round trips -------------------------------------------------------------------------------

struct PlanCase {
  const char* name;
  AttentionPlan plan;
  json attention;  ///< what strata.config must say (numbers resolved for L = 3, NH = 4)
};

std::vector<PlanCase> plan_cases() {
  strata::PlanTable custom(3, std::vector<std::vector<strata::SourceRef>>(4));
  for (int l = 0; l < 3; ++l)
    for (int h = 0; h < 4; ++h) custom[size_t(l)][size_t(h)] = {{strata::SourceKind::layer, l, h}};
  custom[1][1] = {{strata::SourceKind::layer, 0, 1}};
  custom[2][0] = {{strata::SourceKind::layer, 2, 0}, {strata::SourceKind::layer, 0, 3}};
  custom[2][3] = {{strata::SourceKind::layer, 1, 2},
                  {strata::SourceKind::layer, 0, 2},
                  {strata::SourceKind::layer, 2, 3}};
  auto src = [](int layer, int head) { return json{{"layer", layer}, {"head", head}}; };
  json custom_json = json::array();
  for (int l = 0; l < 3; ++l) {
    json lj = json::array();
    for (int h = 0; h < 4; ++h) {
      json hj = json::array();
      for (const auto& s : custom[size_t(l)][size_t(h)]) hj.push_back(src(s.index, s.head));
      lj.push_back(hj);
    }
    custom_json.push_back(lj);
  }
  json cla = json::array();
  for (int l = 0; l < 3; ++l) {
    json lj = json::array();
    for (int h = 0; h < 4; ++h) lj.push_back(json::array({src(l % 2 == 1 ? l - 1 : l, h)}));
    cla.push_back(lj);
  }
  return {
      {"standard", AttentionPlan::standard(), {{"kind", "standard"}}},
      {"skip_split_explicit",
       AttentionPlan::skip_layer(1, 2),
       {{"kind", "skip_layer"}, {"distance", 1}, {"heads", 2}, {"mode", "split"}}},
      // defaults: distance round(3L/4) = 2, heads round(3NH/4) = 3
      {"skip_split_default",
       AttentionPlan::skip_layer(),
       {{"kind", "skip_layer"}, {"distance", 2}, {"heads", 3}, {"mode", "split"}}},
      {"skip_concat_explicit",
       AttentionPlan::skip_layer(2, 4, SkipMode::concat),
       {{"kind", "skip_layer"}, {"distance", 2}, {"heads", 4}, {"mode", "concat"}}},
      {"skip_concat_default",
       AttentionPlan::skip_layer(std::nullopt, std::nullopt, SkipMode::concat),
       {{"kind", "skip_layer"}, {"distance", 2}, {"heads", 3}, {"mode", "concat"}}},
      {"shortcut_default",
       AttentionPlan::shortcut(),
       {{"kind", "shortcut"},
        {"depths", {1, 2}},
        {"feature_width", 0},
        {"include_embeddings", false}}},
      {"shortcut_width_embeddings",
       AttentionPlan::shortcut({1, 2}, 8, true),
       {{"kind", "shortcut"},
        {"depths", {1, 2}},
        {"feature_width", 8},
        {"include_embeddings", true}}},
      {"shortcut_some_depths",
       AttentionPlan::shortcut({2}, 24, true),
       {{"kind", "shortcut"},
        {"depths", {2}},
        {"feature_width", 24},
        {"include_embeddings", true}}},
      {"custom_table", AttentionPlan::custom(custom), {{"kind", "custom"}, {"table", custom_json}}},
      {"cross_layer", AttentionPlan::cross_layer(3, 4), {{"kind", "custom"}, {"table", cla}}},
  };
}

TEST_F(Checkpoint, RoundTripEveryPlan) {
  strata::set_num_threads(1);
  const TokenMatrix x = some_tokens(2, 16, 50);
  for (const PlanCase& pc : plan_cases()) {
    SCOPED_TRACE(pc.name);
    const ModelConfig cfg = small_config(pc.plan);
    GPT<float> model(cfg);
    randomize(model, 17);
    const std::string path = file(std::string(pc.name) + ".safetensors");
    strata::save_checkpoint(path, model);

    EXPECT_EQ(strata::io::config_to_json(strata::read_checkpoint_config(path)),
              strata::io::config_to_json(cfg));
    // the recipe with its numbers resolved, next to the resolved table (docs/plan_schema.md)
    const json saved =
        json::parse(SafetensorsFile::read(path).metadata().at("strata.config")).at("attention");
    json recipe = pc.attention;
    recipe.erase("table");
    EXPECT_EQ(saved.at("recipe"), recipe);
    if (pc.attention.contains("table")) {
      EXPECT_EQ(saved.at("table"), pc.attention.at("table"));
    }

    const auto loaded = strata::load_model<float>(path);
    const ModelConfig& lc = loaded->config();
    EXPECT_EQ(lc.vocab_size, 50);
    EXPECT_EQ(lc.context_length, 16);
    EXPECT_EQ(lc.n_layer, 3);
    EXPECT_EQ(lc.n_head, 4);
    EXPECT_EQ(lc.n_embd, 16);
    EXPECT_EQ(lc.mlp_ratio, 4);
    EXPECT_EQ(lc.seed, 3u);
    EXPECT_EQ(lc.attention.kind(), cfg.attention.kind());
    EXPECT_EQ(lc.feature_width(), cfg.feature_width());
    EXPECT_EQ(strata::io::config_to_json(lc), strata::io::config_to_json(cfg));
    EXPECT_TRUE(loaded->plan_table() == model.plan_table());
    EXPECT_EQ(loaded->layout().total_size(), model.layout().total_size());
    EXPECT_TRUE(bit_equal(loaded->parameters(), model.parameters()));
    EXPECT_TRUE(bit_equal(strata::Matrix<float>(loaded->forward(x)),
                          strata::Matrix<float>(model.forward(x))));

    // Loading into an existing model of the same configuration (another seed) gives the same.
    ModelConfig other = cfg;
    other.seed = 12345;
    GPT<float> again(other);
    strata::load_checkpoint(path, again);
    EXPECT_TRUE(bit_equal(again.parameters(), model.parameters()));
  }
}

TEST_F(Checkpoint, DefaultNumbersAreStoredResolved) {
  const std::string path = file("skip.safetensors");
  strata::save_checkpoint(path, GPT<float>(small_config(AttentionPlan::skip_layer())));
  const ModelConfig c = strata::read_checkpoint_config(path);
  ASSERT_EQ(c.attention.kind(), AttentionPlan::Kind::skip_layer);
  EXPECT_EQ(c.attention.distance().value_or(-1), 2);
  EXPECT_EQ(c.attention.skip_heads().value_or(-1), 3);
  EXPECT_EQ(c.attention.mode(), SkipMode::split);

  const std::string sc = file("shortcut.safetensors");
  strata::save_checkpoint(sc, GPT<float>(small_config(AttentionPlan::shortcut())));
  const ModelConfig s = strata::read_checkpoint_config(sc);
  EXPECT_EQ(s.attention.depths(), (std::vector<strata::Index>{1, 2}));
  EXPECT_EQ(s.attention.feature_width(), 0);
  EXPECT_FALSE(s.attention.include_embeddings());
}

TEST_F(Checkpoint, FloatLoadsIntoDoubleAndBack) {
  strata::set_num_threads(1);
  const ModelConfig cfg = small_config(AttentionPlan::skip_layer(1, 2));
  GPT<float> f(cfg);
  randomize(f, 5);
  const std::string path = file("float.safetensors");
  strata::save_checkpoint(path, f);
  const auto d = strata::load_model<double>(path);
  EXPECT_TRUE(bit_equal(d->parameters(), Vector<double>(f.parameters().cast<double>())));
  const TokenMatrix x = some_tokens(2, 16, 50);
  const strata::Matrix<double> ld = d->forward(x);
  const strata::Matrix<float> lf = f.forward(x);
  EXPECT_LT((ld - lf.cast<double>()).cwiseAbs().maxCoeff(), 1e-4);

  // A double checkpoint is stored as F64 and rounds to float when a float model loads it.
  GPT<double> dm(cfg);
  randomize(dm, 6);
  const std::string dpath = file("double.safetensors");
  strata::save_checkpoint(dpath, dm);
  EXPECT_EQ(SafetensorsFile::read(dpath).dtype("transformer.wte.weight"), DType::F64);
  const auto back = strata::load_model<float>(dpath);
  EXPECT_TRUE(bit_equal(back->parameters(), Vector<float>(dm.parameters().cast<float>())));
}

// ---- the file format of SPEC §3
// ------------------------------------------------------------------

TEST_F(Checkpoint, TensorNamesAndShapesFollowTheSpec) {
  // C = 16, V = 50, T = 16, L = 3, Cf = 8; features of the embeddings and of block 0's output.
  const ModelConfig cfg = small_config(AttentionPlan::shortcut({1, 2}, 8, true));
  GPT<float> model(cfg);
  randomize(model, 8);
  const std::string path = file("names.safetensors");
  strata::save_checkpoint(path, model);
  const SafetensorsFile f = SafetensorsFile::read(path);

  using Shape = std::vector<Index>;
  const std::map<std::string, Shape> expected = {
      {"transformer.wte.weight", {50, 16}},
      {"transformer.wpe.weight", {16, 16}},
      {"transformer.h.0.ln_1.weight", {16}},
      {"transformer.h.0.ln_1.bias", {16}},
      {"transformer.h.0.attn.c_attn.weight", {48, 16}},
      {"transformer.h.0.attn.c_attn.bias", {48}},
      {"transformer.h.0.attn.c_proj.weight", {16, 16}},
      {"transformer.h.0.attn.c_proj.bias", {16}},
      {"transformer.h.1.ln_2.weight", {16}},
      {"transformer.h.1.ln_2.bias", {16}},
      {"transformer.h.1.mlp.c_fc.weight", {64, 16}},
      {"transformer.h.1.mlp.c_fc.bias", {64}},
      {"transformer.h.2.mlp.c_proj.weight", {16, 64}},
      {"transformer.h.2.mlp.c_proj.bias", {16}},
      {"transformer.ln_f.weight", {16}},
      {"transformer.ln_f.bias", {16}},
      {"transformer.shortcut.0.ln.weight", {16}},
      {"transformer.shortcut.0.ln.bias", {16}},
      {"transformer.shortcut.0.fc.weight", {8, 16}},
      {"transformer.shortcut.0.fc.bias", {8}},
      {"transformer.shortcut.0.proj.weight", {16, 8}},
      {"transformer.shortcut.0.proj.bias", {16}},
      {"transformer.shortcut.embed.ln.weight", {16}},
      {"transformer.shortcut.embed.ln.bias", {16}},
      {"transformer.shortcut.embed.fc.weight", {8, 16}},
      {"transformer.shortcut.embed.proj.weight", {16, 8}},
  };
  for (const auto& [name, shape] : expected) {
    ASSERT_TRUE(f.contains(name)) << name;
    EXPECT_EQ(f.shape(name), shape) << name;
    EXPECT_EQ(f.dtype(name), DType::F32) << name;
  }
  // Every tensor: 2 embeddings + 12 per block + ln_f + 6 per feature (depths 0 and 1; depth 2,
  // the final block's own input, is the identity and has no parameters). No lm_head (tied).
  std::set<std::string> names;
  for (const auto& n : f.names()) names.insert(n);
  EXPECT_EQ(names.size(), 2u + 12 * 3 + 2 + 6 * 2);
  for (const auto& n : names) {
    EXPECT_EQ(n.rfind("transformer.", 0), 0u) << n;
    EXPECT_TRUE(n.rfind("transformer.h.", 0) == 0 || n.rfind("transformer.wte.", 0) == 0
                || n.rfind("transformer.wpe.", 0) == 0 || n.rfind("transformer.ln_f.", 0) == 0
                || n.rfind("transformer.shortcut.0.", 0) == 0
                || n.rfind("transformer.shortcut.embed.", 0) == 0)
        << n;
  }
  EXPECT_FALSE(f.contains("transformer.shortcut.1.ln.weight"));
  EXPECT_FALSE(f.contains("lm_head.weight"));
  // The data is the parameters, in the arena's order.
  std::vector<std::string> layout_order;
  for (const auto& t : model.layout().tensors()) {
    layout_order.push_back(t.name);
    std::vector<float> data(size_t(t.size()));
    f.copy_to(t.name, t.shape(), data.data());
    EXPECT_EQ(std::memcmp(data.data(), model.parameters().data() + t.offset, data.size() * 4), 0)
        << t.name;
  }
  EXPECT_EQ(f.names(), layout_order);

  // Metadata: the configuration and the version, nothing about training.
  ASSERT_EQ(f.metadata().size(), 2u);
  EXPECT_EQ(json::parse(f.metadata().at("strata.config")), strata::io::config_to_json(cfg));
  EXPECT_EQ(f.metadata().at("strata.version"), std::string(strata::version));
  EXPECT_EQ(f.metadata().at("strata.version"), "0.1.0");
  // The raw header agrees (another reader sees the same).
  const json h = header_of(path);
  EXPECT_EQ(h.at("transformer.h.0.attn.c_attn.weight").at("shape"), json({48, 16}));
  EXPECT_EQ(h.at("transformer.h.0.attn.c_attn.weight").at("dtype"), "F32");
  EXPECT_TRUE(h.at("__metadata__").contains("strata.config"));
  EXPECT_FALSE(h.at("__metadata__").contains("strata.train"));
}

TEST_F(Checkpoint, StandardModelHasNoShortcutTensors) {
  const ModelConfig cfg = small_config();
  const std::string path = file("std.safetensors");
  strata::save_checkpoint(path, GPT<float>(cfg));
  const SafetensorsFile f = SafetensorsFile::read(path);
  EXPECT_EQ(f.names().size(), 2u + 12 * 3 + 2);
  EXPECT_EQ(f.shape("transformer.h.2.attn.c_attn.weight"), (std::vector<Index>{48, 16}));
  for (const auto& n : f.names()) EXPECT_EQ(n.find("shortcut"), std::string::npos) << n;
}

// ---- load errors --------------------------------------------------------------------------------

TEST_F(Checkpoint, MissingFile) {
  const std::string path = file("nope.safetensors");
  const std::string want = where(path) + "cannot open: No such file or directory";
  EXPECT_EQ(error_of([&] { strata::load_model<float>(path); }), want);
  EXPECT_EQ(error_of([&] { strata::read_checkpoint_config(path); }), want);
  GPT<float> model(small_config());
  EXPECT_EQ(error_of([&] { strata::load_checkpoint(path, model); }), want);
  strata::AdamW<float> opt(model);
  EXPECT_EQ(error_of([&] { strata::load_training_checkpoint(path, model, opt); }), want);
}

TEST_F(Checkpoint, TruncatedFile) {
  const std::string path = file("full.safetensors");
  strata::save_checkpoint(path, GPT<float>(small_config()));
  const std::string bytes = read_raw(path);
  const std::uint64_t hlen = header_length(bytes);
  const json header = header_of(path);

  // Cut in half: the header is intact but the data buffer ends early.
  const std::string half = file("half.safetensors");
  write_raw(half, bytes.substr(0, bytes.size() / 2));
  const std::uint64_t buffer = bytes.size() / 2 - 8 - hlen;
  const std::string message = error_of([&] { strata::load_model<float>(half); });
  std::smatch m;
  ASSERT_TRUE(std::regex_match(message, m, std::regex("checkpoint .*: tensor '([^']+)': .*")))
      << message;
  const std::string name = m[1];
  ASSERT_TRUE(header.contains(name)) << message;
  const auto begin = header.at(name).at("data_offsets").at(0).get<std::uint64_t>();
  const auto end = header.at(name).at("data_offsets").at(1).get<std::uint64_t>();
  EXPECT_GT(end, buffer);
  EXPECT_EQ(message, where(half) + "tensor '" + name + "': data_offsets [" + std::to_string(begin)
                         + ", " + std::to_string(end) + "] exceed the data buffer of "
                         + std::to_string(buffer) + " bytes");

  // Cut inside the header.
  const std::string head = file("head.safetensors");
  write_raw(head, bytes.substr(0, 100));
  EXPECT_EQ(error_of([&] { strata::load_model<float>(head); }),
            where(head) + "header length " + std::to_string(hlen) + " exceeds file size 100 (8 + "
                + std::to_string(hlen) + " bytes needed)");

  // Cut before the header length.
  const std::string stub = file("stub.safetensors");
  write_raw(stub, bytes.substr(0, 5));
  EXPECT_EQ(error_of([&] { strata::load_model<float>(stub); }),
            where(stub) + "file has 5 bytes, too short for the 8-byte header length");
}

TEST_F(Checkpoint, MalformedHeader) {
  const std::string path = file("bad.safetensors");
  const std::string text = "{\"transformer.wte.weight\": {\"dtype\": \"F32\", \"shape\": [2";
  write_raw(path, le64(text.size()) + text);
  const std::string nl = json_error_of([&] { parse_only(text); });
  EXPECT_EQ(error_of([&] { strata::load_model<float>(path); }),
            where(path) + "header is not valid JSON: " + nl);
  GPT<float> model(small_config());
  EXPECT_EQ(error_of([&] { strata::load_checkpoint(path, model); }),
            where(path) + "header is not valid JSON: " + nl);
}

/// Writes the model's tensors (minus `drop`, plus `extra`) with the given metadata.
void write_model_file(const std::string& path, const GPT<float>& model,
                      const std::map<std::string, std::string>& meta, const std::string& drop = "",
                      const std::vector<TensorView>& extra = {}) {
  std::vector<TensorView> all;
  strata::io::append_arena(all, model.layout(), model.parameters().data());
  std::vector<TensorView> kept;
  for (const auto& t : all)
    if (t.name != drop) kept.push_back(t);
  kept.insert(kept.end(), extra.begin(), extra.end());
  strata::io::write_safetensors(path, kept, meta);
}

std::map<std::string, std::string> config_meta(const ModelConfig& cfg) {
  return {{"strata.config", strata::io::config_to_json(cfg).dump()},
          {"strata.version", strata::version}};
}

TEST_F(Checkpoint, ConfigurationMismatch) {
  ModelConfig wide = small_config();
  wide.n_embd = 32;
  const std::string path = file("wide.safetensors");
  strata::save_checkpoint(path, GPT<float>(wide));
  GPT<float> narrow(small_config());
  EXPECT_EQ(error_of([&] { strata::load_checkpoint(path, narrow); }),
            where(path) + "saved with n_embd 32, but the model has n_embd 16");

  ModelConfig deeper = wide;
  deeper.n_layer = 4;
  GPT<float> deep(deeper);
  EXPECT_EQ(error_of([&] { strata::load_checkpoint(path, deep); }),
            where(path) + "saved with n_layer 3, but the model has n_layer 4");

  // The plan is part of the configuration: a standard checkpoint does not load into SLA.
  const std::string std_path = file("standard.safetensors");
  strata::save_checkpoint(std_path, GPT<float>(small_config()));
  GPT<float> sla(small_config(AttentionPlan::skip_layer(1, 2)));
  EXPECT_EQ(error_of([&] { strata::load_checkpoint(std_path, sla); }),
            where(std_path)
                + "saved with attention {\"kind\":\"standard\"}, but the model has attention "
                  "{\"distance\":1,\"heads\":2,\"kind\":\"skip_layer\",\"mode\":\"split\"}");
  const std::string split_path = file("split.safetensors");
  strata::save_checkpoint(split_path, GPT<float>(small_config(AttentionPlan::skip_layer(1, 2))));
  GPT<float> concat(small_config(AttentionPlan::skip_layer(1, 2, SkipMode::concat)));
  EXPECT_EQ(error_of([&] { strata::load_checkpoint(split_path, concat); }),
            where(split_path)
                + "saved with attention "
                  "{\"distance\":1,\"heads\":2,\"kind\":\"skip_layer\",\"mode\":\"split\"}, "
                  "but the model has attention "
                  "{\"distance\":1,\"heads\":2,\"kind\":\"skip_layer\",\"mode\":\"concat\"}");
}

TEST_F(Checkpoint, WeightsOnlyCannotResumeTraining) {
  const std::string path = file("weights.safetensors");
  GPT<float> model(small_config());
  strata::save_checkpoint(path, model);
  strata::AdamW<float> opt(model);
  EXPECT_EQ(error_of([&] { strata::load_training_checkpoint(path, model, opt); }),
            where(path)
                + "no 'strata.train' metadata; it holds weights only and cannot resume training "
                  "(use it with generate instead)");
}

TEST_F(Checkpoint, MissingOrBadConfigMetadata) {
  const ModelConfig cfg = small_config();
  GPT<float> model(cfg);
  const std::string path = file("noconfig.safetensors");
  write_model_file(path, model, {{"strata.version", strata::version}});
  const std::string want = where(path) + "no 'strata.config' metadata (not a strata checkpoint?)";
  EXPECT_EQ(error_of([&] { strata::load_model<float>(path); }), want);
  EXPECT_EQ(error_of([&] { strata::read_checkpoint_config(path); }), want);
  EXPECT_EQ(error_of([&] { strata::load_checkpoint(path, model); }), want);
  const std::string bare = file("nometadata.safetensors");
  write_model_file(bare, model, {});
  EXPECT_EQ(error_of([&] { strata::load_model<float>(bare); }),
            where(bare) + "no 'strata.config' metadata (not a strata checkpoint?)");

  auto with_config = [&](const std::string& name, const std::string& config_text) {
    const std::string p = file(name);
    write_model_file(p, model, {{"strata.config", config_text}});
    return p;
  };
  const std::string not_json = with_config("notjson.safetensors", "{\"vocab_size\": 50,");
  EXPECT_EQ(error_of([&] { strata::load_model<float>(not_json); }),
            where(not_json) + "'strata.config' is not valid JSON: "
                + json_error_of([] { parse_only("{\"vocab_size\": 50,"); }));

  json j = strata::io::config_to_json(cfg);
  j.erase("n_layer");
  const std::string no_layers = with_config("nolayers.safetensors", j.dump());
  EXPECT_EQ(
      error_of([&] { strata::load_model<float>(no_layers); }),
      where(no_layers) + "model configuration has no 'n_layer' (expected an integer in [1, 1024])");

  j = strata::io::config_to_json(cfg);
  j.erase("attention");
  const std::string no_plan = with_config("noplan.safetensors", j.dump());
  EXPECT_EQ(error_of([&] { strata::load_model<float>(no_plan); }),
            where(no_plan) + "model configuration has no 'attention' plan");

  j = strata::io::config_to_json(cfg);
  j["attention"] = {{"kind", "magic"}};
  const std::string magic = with_config("magic.safetensors", j.dump());
  EXPECT_EQ(error_of([&] { strata::load_model<float>(magic); }),
            where(magic)
                + "attention kind 'magic' is not one of: standard, skip_layer, shortcut, "
                  "dense_shortcut, custom");

  j = strata::io::config_to_json(cfg);
  j["attention"] = {{"kind", "skip_layer"}, {"distance", 1}, {"heads", 2}};
  const std::string half_plan = with_config("halfplan.safetensors", j.dump());
  EXPECT_EQ(error_of([&] { strata::load_model<float>(half_plan); }),
            where(half_plan) + "attention recipe 'mode' is missing, expected a string");

  j = strata::io::config_to_json(cfg);
  j["n_embd"] = 15;
  const std::string odd = with_config("odd.safetensors", j.dump());
  EXPECT_EQ(error_of([&] { strata::load_model<float>(odd); }),
            where(odd) + "invalid model configuration: ModelConfig: n_embd 15 is not divisible by "
                         "n_head 4");

  j = strata::io::config_to_json(cfg);
  j["attention"] = {{"kind", "skip_layer"}, {"distance", 1}, {"heads", 9}, {"mode", "split"}};
  const std::string many = with_config("many.safetensors", j.dump());
  EXPECT_EQ(error_of([&] { strata::load_model<float>(many); }),
            where(many) + "invalid model configuration: skip_layer: heads 9 exceeds n_head 4");
}

TEST_F(Checkpoint, MissingExtraOrMisshapenTensor) {
  const ModelConfig cfg = small_config();
  GPT<float> model(cfg);
  const std::string missing = file("missing.safetensors");
  write_model_file(missing, model, config_meta(cfg), "transformer.h.1.mlp.c_fc.bias");
  EXPECT_EQ(error_of([&] { strata::load_model<float>(missing); }),
            where(missing) + "has no tensor 'transformer.h.1.mlp.c_fc.bias'");
  GPT<float> target(cfg);
  const strata::Vector<float> before = target.parameters();
  EXPECT_EQ(error_of([&] { strata::load_checkpoint(missing, target); }),
            where(missing) + "has no tensor 'transformer.h.1.mlp.c_fc.bias'");
  EXPECT_TRUE(bit_equal(target.parameters(), before));  // a failed load changes nothing

  // A shortcut checkpoint without one of its feature-map tensors.
  ModelConfig sc = cfg;
  sc.attention = strata::AttentionPlan::shortcut();
  GPT<float> shortcut(sc);
  const std::string no_feature = file("no_feature.safetensors");
  write_model_file(no_feature, shortcut, config_meta(sc), "transformer.shortcut.0.fc.weight");
  EXPECT_EQ(error_of([&] { strata::load_model<float>(no_feature); }),
            where(no_feature) + "has no tensor 'transformer.shortcut.0.fc.weight'");

  const std::vector<float> head(50 * 16, 0.5f);
  const std::string extra = file("extra.safetensors");
  write_model_file(extra, model, config_meta(cfg), "",
                   {TensorView{"lm_head.weight", DType::F32, {50, 16}, head.data()}});
  EXPECT_EQ(error_of([&] { strata::load_model<float>(extra); }),
            where(extra) + "unexpected tensor 'lm_head.weight' (not a parameter of this model)");

  // The right name with the wrong shape (e.g. [in, out] instead of PyTorch's [out, in]).
  const auto& info = model.layout().at("transformer.h.0.attn.c_attn.weight");
  const std::string transposed = file("transposed.safetensors");
  write_model_file(
      transposed, model, config_meta(cfg), info.name,
      {TensorView{info.name, DType::F32, {16, 48}, model.parameters().data() + info.offset}});
  EXPECT_EQ(
      error_of([&] { strata::load_model<float>(transposed); }),
      where(transposed)
          + "tensor 'transformer.h.0.attn.c_attn.weight' has shape [16, 48], expected [48, 16]");

  // A tensor of an integer dtype is not converted.
  const std::vector<std::int32_t> ints(16, 1);
  const std::string integer = file("int.safetensors");
  write_model_file(integer, model, config_meta(cfg), "transformer.ln_f.bias",
                   {TensorView{"transformer.ln_f.bias", DType::I32, {16}, ints.data()}});
  EXPECT_EQ(error_of([&] { strata::load_model<float>(integer); }),
            where(integer) + "tensor 'transformer.ln_f.bias' has dtype I32, cannot convert to F32");
}

// ---- atomic saves
// ---------------------------------------------------------------------------------

TEST_F(Checkpoint, FailedSaveLeavesTheOldFile) {
  const ModelConfig cfg = small_config();
  GPT<float> old_model(cfg), new_model(cfg);
  randomize(new_model, 77);
  const std::string path = file("model.safetensors");
  strata::save_checkpoint(path, old_model);
  const std::string old_bytes = read_raw(path);
  const std::vector<std::string> only_old = {"model.safetensors"};
  const std::string temp = path + ".tmp";

  // The temporary cannot be created (its name is taken by a directory).
  fs::create_directory(temp);
  EXPECT_EQ(error_of([&] { strata::save_checkpoint(path, new_model); }),
            where(path) + "cannot create " + temp + ": Is a directory");
  EXPECT_EQ(read_raw(path), old_bytes);
  fs::remove(temp);
  EXPECT_EQ(listing(), only_old);

  // The disk fills up mid-write (RLIMIT_FSIZE): the temporary is removed, the old file stays.
  ASSERT_GT(old_bytes.size(), 8192u);
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  if (saved.rlim_cur == RLIM_INFINITY || saved.rlim_cur > 8192) {
    const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    rlimit small = saved;
    small.rlim_cur = 8192;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    // Nothing may be written to stdout or stderr while the limit is in force.
    const std::string message = error_of([&] { strata::save_checkpoint(path, new_model); });
    ::setrlimit(RLIMIT_FSIZE, &saved);
    ::signal(SIGXFSZ, old_handler);
    EXPECT_EQ(message, where(path) + "cannot write " + temp + ": File too large");
    EXPECT_EQ(read_raw(path), old_bytes);
    EXPECT_EQ(listing(), only_old);
  }

  // The target is a (non-empty) directory: the rename fails, nothing is lost or left behind.
  const std::string dir_target = file("taken.safetensors");
  fs::create_directory(dir_target);
  write_raw(dir_target + "/keep", "keep");
  const std::string dir_temp = dir_target + ".tmp";
  EXPECT_EQ(
      error_of([&] { strata::save_checkpoint(dir_target, new_model); }),
      where(dir_target) + "cannot rename " + dir_temp + " to " + dir_target + ": Is a directory");
  EXPECT_EQ(read_raw(dir_target + "/keep"), "keep");
  EXPECT_EQ(listing(), (std::vector<std::string>{"model.safetensors", "taken.safetensors"}));

  // A directory that does not exist.
  const std::string nowhere = file("no_such_dir/model.safetensors");
  EXPECT_EQ(error_of([&] { strata::save_checkpoint(nowhere, new_model); }),
            where(nowhere) + "cannot create " + nowhere + ".tmp: No such file or directory");

  // The old checkpoint still loads; a successful save then replaces it.
  EXPECT_TRUE(bit_equal(strata::load_model<float>(path)->parameters(), old_model.parameters()));
  strata::save_checkpoint(path, new_model);
  EXPECT_TRUE(bit_equal(strata::load_model<float>(path)->parameters(), new_model.parameters()));
  EXPECT_EQ(listing(), (std::vector<std::string>{"model.safetensors", "taken.safetensors"}));
}

// ---- training checkpoints
// ---------------------------------------------------------------------------

TEST_F(Checkpoint, TrainingCheckpointRoundTrip) {
  strata::set_num_threads(1);
  const ModelConfig cfg = small_config(AttentionPlan::shortcut({1, 2}, 8, true));
  GPT<float> model(cfg);
  strata::AdamW<float> opt(model);
  const TokenMatrix x = some_tokens(2, 16, 50), y = some_tokens(2, 16, 50).reverse();
  for (int s = 0; s < 3; ++s) {
    model.forward_backward(x, y);
    opt.step(model, 1e-2);
  }
  strata::TrainState state;
  state.step = 3;
  state.batches_drawn = 7;
  state.data_rng = {1, 0x8000000000000001ULL, 0xffffffffffffffffULL, 42};
  strata::TrainOptions options;
  options.lr = 2.5e-3;
  state.options = options.to_json();
  const std::string path = file("train.safetensors");
  strata::save_training_checkpoint(path, model, opt, state);

  // The file: parameters, optimizer.m.<name> and optimizer.v.<name>, and strata.train.
  const SafetensorsFile f = SafetensorsFile::read(path);
  EXPECT_EQ(f.names().size(), 3 * model.layout().tensors().size());
  EXPECT_EQ(f.shape("optimizer.m.transformer.wte.weight"), (std::vector<Index>{50, 16}));
  EXPECT_EQ(f.shape("optimizer.v.transformer.shortcut.embed.fc.weight"),
            (std::vector<Index>{8, 16}));
  ASSERT_TRUE(f.metadata().count("strata.train"));
  EXPECT_TRUE(f.metadata().count("strata.config"));
  EXPECT_TRUE(f.metadata().count("strata.version"));
  const json train = json::parse(f.metadata().at("strata.train"));
  EXPECT_EQ(train.at("step"), 3);
  EXPECT_EQ(train.at("batches_drawn"), 7);
  EXPECT_EQ(train.at("adam_step"), 3);
  EXPECT_EQ(train.at("data_rng").get<strata::Rng::State>(), state.data_rng);

  // Into a fresh model (another seed) and a fresh optimizer: everything restored exactly.
  ModelConfig other = cfg;
  other.seed = 999;
  GPT<float> model2(other);
  strata::AdamW<float> opt2(model2);
  const strata::TrainState got = strata::load_training_checkpoint(path, model2, opt2);
  EXPECT_TRUE(bit_equal(model2.parameters(), model.parameters()));
  EXPECT_TRUE(bit_equal(opt2.m(), opt.m()));
  EXPECT_TRUE(bit_equal(opt2.v(), opt.v()));
  EXPECT_GT(opt2.v().maxCoeff(), 0.0f);
  EXPECT_EQ(opt2.step_count(), 3);
  EXPECT_EQ(got.step, 3);
  EXPECT_EQ(got.batches_drawn, 7);
  EXPECT_EQ(got.data_rng, state.data_rng);
  EXPECT_EQ(got.options, state.options);
  EXPECT_EQ(strata::TrainOptions::from_json(got.options).lr, 2.5e-3);

  // A training checkpoint also serves as a weights checkpoint (the moments are ignored).
  EXPECT_TRUE(bit_equal(strata::load_model<float>(path)->parameters(), model.parameters()));
  GPT<float> weights(cfg);
  strata::load_checkpoint(path, weights);
  EXPECT_TRUE(bit_equal(weights.parameters(), model.parameters()));

  // The next step is the same on both.
  model.forward_backward(x, y);
  opt.step(model, 1e-2);
  model2.forward_backward(x, y);
  opt2.step(model2, 1e-2);
  EXPECT_TRUE(bit_equal(model2.parameters(), model.parameters()));
  EXPECT_TRUE(bit_equal(opt2.m(), opt.m()));
  EXPECT_EQ(opt2.step_count(), 4);
}

TEST_F(Checkpoint, TrainingCheckpointErrors) {
  const ModelConfig cfg = small_config();
  GPT<float> model(cfg);
  strata::AdamW<float> opt(model);
  std::vector<TensorView> moments;
  strata::io::append_arena(moments, model.layout(), opt.m().data(), "optimizer.m.");

  // The v moments are missing.
  const std::string no_v = file("nov.safetensors");
  auto meta = config_meta(cfg);
  meta["strata.train"] = json{{"step", 1},
                              {"batches_drawn", 1},
                              {"data_rng", {1, 2, 3, 4}},
                              {"adam_step", 1},
                              {"options", strata::TrainOptions{}.to_json()}}
                             .dump();
  write_model_file(no_v, model, meta, "", moments);
  EXPECT_EQ(error_of([&] { strata::load_training_checkpoint(no_v, model, opt); }),
            where(no_v) + "has no tensor 'optimizer.v.transformer.wte.weight'");

  // strata.train without the fields it needs.
  strata::io::append_arena(moments, model.layout(), opt.v().data(), "optimizer.v.");
  const std::string bad = file("badtrain.safetensors");
  meta["strata.train"] = "{\"step\": 1}";
  write_model_file(bad, model, meta, "", moments);
  EXPECT_EQ(error_of([&] { strata::load_training_checkpoint(bad, model, opt); }),
            where(bad)
                + "training state has no 'batches_drawn' (expected an integer in "
                  "[0, 1125899906842624])");
  const std::string garbage = file("garbage.safetensors");
  meta["strata.train"] = "step=1";
  write_model_file(garbage, model, meta, "", moments);
  EXPECT_EQ(error_of([&] { strata::load_training_checkpoint(garbage, model, opt); }),
            where(garbage) + "malformed 'strata.train' metadata: "
                + json_error_of([] { parse_only("step=1"); }));
}

}  // namespace
