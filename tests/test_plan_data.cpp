// tests/test_plan_data.cpp: the checked-in data of tests/data/ (tests/plan_cases.hpp) — every plan's
// logits and gradients on a fixed batch equal, bit for bit, what the model computed when they were
// recorded; and checkpoints written by version 0.1.0 still load, into the same plan and values.
#include <cstdlib>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>
#include <string>

#include <gtest/gtest.h>

#include <strata/io/checkpoint.hpp>

#include "plan_cases.hpp"
#include "reference/model_reference.hpp"

namespace {

const std::string kData = std::string(STRATA_SOURCE_DIR) + "/tests/data/";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) ADD_FAILURE() << "cannot open " << path;
  return nlohmann::json::parse(in);
}

double from_hex(const std::string& s) { return std::strtod(s.c_str(), nullptr); }

template <typename S>
void check_golden(const nlohmann::json& build) {
  const char* precision = std::is_same<S, float>::value ? "float" : "double";
  for (const auto& c : strata::testing::golden_plans()) {
    SCOPED_TRACE(c.name + " " + precision);
    ASSERT_TRUE(build.contains(c.name)) << "no golden for plan " << c.name;
    const nlohmann::json& g = build.at(c.name).at(precision);
    const strata::testing::GoldenRecord r = strata::testing::golden_record<S>(c.plan);
    EXPECT_EQ(r.loss, g.at("loss").get<std::string>());
    EXPECT_EQ(r.grads_size, g.at("grads_size").get<strata::Index>());
    EXPECT_EQ(r.logits_head, g.at("logits_head").get<std::vector<std::string>>());
    EXPECT_EQ(r.grads_head, g.at("grads_sample").get<std::vector<std::string>>());
    EXPECT_EQ(r.logits_hash, g.at("logits_fnv1a").get<std::string>());
    EXPECT_EQ(r.grads_hash, g.at("grads_fnv1a").get<std::string>());
  }
}

// Without a record for this build (another SIMD set or BLAS), the recorded values still bound what
// the model computes: loss and sampled entries within rounding of the other build's.
template <typename S>
void check_golden_close(const nlohmann::json& build) {
  const char* precision = std::is_same<S, float>::value ? "float" : "double";
  const double tol = std::is_same<S, float>::value ? 1e-4 : 1e-10;
  for (const auto& c : strata::testing::golden_plans()) {
    SCOPED_TRACE(c.name + " " + precision);
    const nlohmann::json& g = build.at(c.name).at(precision);
    const strata::testing::GoldenRecord r = strata::testing::golden_record<S>(c.plan);
    EXPECT_NEAR(from_hex(r.loss), from_hex(g.at("loss").get<std::string>()), tol);
    const auto gs = g.at("grads_sample").get<std::vector<std::string>>();
    ASSERT_EQ(r.grads_head.size(), gs.size());
    for (std::size_t i = 0; i < gs.size(); ++i)
      EXPECT_NEAR(from_hex(r.grads_head[i]), from_hex(gs[i]), tol);
  }
}

TEST(PlanGolden, EveryPlanIsBitIdenticalToTheRecord) {
  const nlohmann::json j = read_json(kData + "plan_golden.json");
  const std::string fp = strata::testing::build_fingerprint();
  const nlohmann::json& builds = j.at("builds");
  if (builds.contains(fp)) {
    check_golden<float>(builds.at(fp));
    check_golden<double>(builds.at(fp));
  } else {
    std::cout << "[ note ] no golden record for build '" << fp
              << "'; comparing with the first record within rounding instead\n";
    check_golden_close<float>(builds.begin().value());
    check_golden_close<double>(builds.begin().value());
  }
}

TEST(PlanGolden, TheRecordDistinguishesThePlans) {
  // A golden that every plan matched would prove nothing: the recorded hashes must all differ.
  const nlohmann::json j = read_json(kData + "plan_golden.json");
  for (const auto& [fp, build] : j.at("builds").items()) {
    std::set<std::string> hashes;
    for (const auto& [plan, rec] : build.items())
      hashes.insert(rec.at("float").at("logits_fnv1a").get<std::string>());
    EXPECT_EQ(hashes.size(), build.size()) << fp;
  }
}

TEST(OldCheckpoints, EveryKindOfVersion010Loads) {
  for (const auto& c : strata::testing::checkpoint_plans()) {
    SCOPED_TRACE(c.name);
    const std::string path = kData + c.name + ".safetensors";
    const auto file = strata::io::SafetensorsFile::read(path);
    EXPECT_EQ(file.metadata().at("strata.version"), "0.1.0");
    auto loaded = strata::load_model<float>(path);
    strata::GPT<float> expected(strata::testing::checkpoint_config(c.plan));
    strata::testing::randomize(expected, 3);
    EXPECT_TRUE(loaded->plan_table() == expected.plan_table());
    EXPECT_EQ(loaded->layout().total_size(), expected.layout().total_size());
    EXPECT_TRUE(strata::testing::bit_equal(loaded->parameters(), expected.parameters()));
    // and it computes what the reference computes on those parameters
    strata::Rng rng(4);
    const strata::TokenMatrix tokens = strata::testing::random_tokens(2, 6, 16, rng);
    const auto ref = strata::reference::model_forward(*loaded, tokens);
    EXPECT_LT(strata::testing::rel_max_diff(loaded->forward(tokens), ref.logits), 1e-5);
  }
}

}  // namespace
