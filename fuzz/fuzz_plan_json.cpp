// fuzz_plan_json: libFuzzer harness of the reader of attention plans from JSON (the "attention"
// object of a checkpoint's configuration). The input is JSON text; text that is not JSON is
// skipped (the JSON parser is not what is tested here). A malformed plan must end in
// strata::Error. A plan that parses and validates for a model shape must write back to JSON that
// reads as the same plan (a round trip); anything else (another exception, a crash, a sanitizer
// report, a round trip that changes the plan) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "strata/io/config_json.hpp"

namespace {

/// The reader under test. One place to change when the reader moves or is renamed.
strata::AttentionPlan read_plan(const nlohmann::json& j) {
  return strata::io::plan_from_json(j, "fuzz");
}

nlohmann::json write_plan(const strata::AttentionPlan& plan, int n_layer, int n_head, int n_embd) {
  return strata::io::plan_to_json(plan, n_layer, n_head, n_embd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  strata::AttentionPlan plan = strata::AttentionPlan::standard();
  try {
    plan = read_plan(j);
  } catch (const strata::Error&) {
    return 0;
  }
  // Model shapes small enough to build; the plan must validate against each or be rejected.
  for (const auto& [n_layer, n_head] : {std::pair{1, 1}, std::pair{3, 2}, std::pair{6, 4}}) {
    strata::ModelConfig c;
    c.vocab_size = 8;
    c.context_length = 4;
    c.n_layer = n_layer;
    c.n_head = n_head;
    c.n_embd = 4 * n_head;
    c.attention = plan;
    try {
      c.validate();
    } catch (const strata::Error&) {
      continue;
    }
    const nlohmann::json once = write_plan(plan, n_layer, n_head, int(c.n_embd));
    const nlohmann::json twice = write_plan(read_plan(once), n_layer, n_head, int(c.n_embd));
    if (once != twice) std::abort();
  }
  return 0;
}
