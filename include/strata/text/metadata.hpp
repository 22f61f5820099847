// strata/text/metadata.hpp: the tokenizer in a checkpoint's metadata (key "strata.tokenizer"), so
// that a checkpoint alone can turn generated ids into text.
//
// The value is JSON: {"kind": "sentencepiece", "vocab_size": 2048, "checksum": "<16 hex digits>",
// "model": "<the serialized SentencePiece model, base64>"}; for the byte tokenizer "model" is
// empty. The model bytes are embedded rather than referenced by path: a checkpoint then works
// wherever it is copied, and the model (tens to hundreds of kB) is small next to the embedding
// table of the same vocabulary (V x C floats). A checkpoint without the key predates tokenizers
// and holds a byte-level model.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "../core/error.hpp"
#include "../io/limits.hpp"
#include "../io/safetensors.hpp"
#include "tokenizer.hpp"

namespace strata {

inline constexpr const char* kTokenizerMetadataKey = "strata.tokenizer";

/// Standard base64 (RFC 4648, with padding).
inline std::string base64_encode(std::string_view bytes) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const unsigned v = unsigned((unsigned char)bytes[i]) << 16
                     | unsigned((unsigned char)bytes[i + 1]) << 8 | (unsigned char)bytes[i + 2];
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += kAlphabet[(v >> 6) & 63];
    out += kAlphabet[v & 63];
  }
  if (i < bytes.size()) {
    unsigned v = unsigned((unsigned char)bytes[i]) << 16;
    if (i + 1 < bytes.size()) v |= unsigned((unsigned char)bytes[i + 1]) << 8;
    out += kAlphabet[v >> 18];
    out += kAlphabet[(v >> 12) & 63];
    out += i + 1 < bytes.size() ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

/// Decodes base64 written by base64_encode; anything else is an error naming `where`.
inline std::string base64_decode(std::string_view text, const std::string& where) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (text.size() % 4 != 0)
    fail(where, ": base64 of ", text.size(), " characters, not a multiple of 4");
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    const int pad = !last || text[i + 3] != '=' ? 0 : text[i + 2] == '=' ? 2 : 1;
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      const int d = k >= 4 - pad ? 0 : value(text[i + size_t(k)]);
      if (d < 0) fail(where, ": invalid base64 character at ", i + size_t(k));
      v = v << 6 | unsigned(d);
    }
    out += char(v >> 16);
    if (pad < 2) out += char((v >> 8) & 255);
    if (pad < 1) out += char(v & 255);
  }
  return out;
}

/// The metadata value recording `spec`.
inline std::string tokenizer_metadata(const TokenizerSpec& spec) {
  return nlohmann::json{{"kind", spec.kind},
                        {"vocab_size", spec.vocab_size},
                        {"checksum", checksum_hex(spec.checksum())},
                        {"model", base64_encode(spec.model)}}
      .dump();
}

/// The tokenizer recorded in a checkpoint (the byte tokenizer when there is no record). The
/// stored checksum must match the model bytes.
inline TokenizerSpec read_tokenizer(const io::SafetensorsFile& file) {
  const std::string where = "checkpoint " + file.path() + ": '" + kTokenizerMetadataKey + "'";
  auto it = file.metadata().find(kTokenizerMetadataKey);
  if (it == file.metadata().end()) return TokenizerSpec::bytes();
  TokenizerSpec spec;
  std::string checksum;
  try {
    const nlohmann::json j = nlohmann::json::parse(it->second);
    spec.kind = j.at("kind").get<std::string>();
    spec.vocab_size = io::read_bounded(j, "vocab_size", 1, io::ModelLimits::max_vocab_size, where,
                                       "tokenizer record");
    checksum = j.at("checksum").get<std::string>();
    spec.model = base64_decode(j.at("model").get<std::string>(), where);
  } catch (const nlohmann::json::exception& e) {
    fail(where, " is malformed: ", e.what());
  }
  if (spec.kind != "bytes" && spec.kind != "sentencepiece")
    fail(where, ": kind '", spec.kind, "', expected 'bytes' or 'sentencepiece'");
  if (checksum != checksum_hex(spec.checksum()))
    fail(where, ": checksum ", checksum, " does not match its model (",
         checksum_hex(spec.checksum()), "); the metadata is damaged");
  return spec;
}

}  // namespace strata
