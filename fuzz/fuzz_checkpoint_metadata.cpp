// fuzz_checkpoint_metadata: libFuzzer harness of the checkpoint metadata parsers: the model
// configuration with its attention plan (`strata.config`, io::read_config) and the training state
// with the trainer's options (`strata.train`, read_train_state and TrainOptions::from_json). The
// input is the metadata text; it is stored as both entries of an in-memory checkpoint, so one JSON
// object can reach both parsers. A malformed value must end in strata::Error; anything else
// (another exception, a crash, a sanitizer report) is a finding. Only the parsers run: no model is
// built.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/io/checkpoint.hpp"
#include "strata/train/trainer.hpp"

namespace {

/// An in-memory safetensors file with no tensors and the given metadata.
std::vector<unsigned char> file_with_metadata(const std::string& text) {
  nlohmann::json header;
  header["__metadata__"]["strata.config"] = text;
  header["__metadata__"]["strata.train"] = text;
  // Invalid UTF-8 in the input becomes U+FFFD (a safetensors header is UTF-8 JSON).
  const std::string h = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::vector<unsigned char> bytes(8 + h.size());
  std::uint64_t n = h.size();
  for (int i = 0; i < 8; ++i, n >>= 8) bytes[std::size_t(i)] = static_cast<unsigned char>(n & 0xff);
  std::copy(h.begin(), h.end(), bytes.begin() + 8);
  return bytes;
}

/// The metadata text as stored (invalid UTF-8 replaced), as the parsers read it.
const std::string& stored_text(const strata::io::SafetensorsFile& file) {
  return file.metadata().at("strata.config");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto file = strata::io::SafetensorsFile::from_bytes(file_with_metadata(text), "fuzz");
  try {
    const strata::ModelConfig config = strata::io::read_config(file);
    // A configuration that parsed is valid: it serialises again and checks against itself.
    (void)strata::io::config_to_json(config).dump();
    strata::io::check_same_config(file, config);
  } catch (const strata::Error&) {
  }
  // The configuration parser alone (what read_config runs once the file is known to be large
  // enough for the sizes; the file above holds no tensors, so read_config stops before it).
  try {
    const nlohmann::json j = nlohmann::json::parse(stored_text(file), nullptr, false);
    if (!j.is_discarded()) {
      const strata::ModelConfig config = strata::io::config_from_json(j, "fuzz");
      (void)strata::io::config_to_json(config).dump();
    }
  } catch (const strata::Error&) {
  }
  try {
    const strata::TrainState state = strata::read_train_state(file);
    strata::TrainOptions::from_json(state.options).validate();
  } catch (const strata::Error&) {
  }
  return 0;
}
