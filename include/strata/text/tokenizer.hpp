// strata/text/tokenizer.hpp: tokenizers. The byte tokenizer (ids 0..255, the default, needs
// nothing) and the interface every tokenizer implements, with the record of a tokenizer that
// checkpoints and token files carry (TokenizerSpec) and a streaming decoder for generated text.
// SentencePiece BPE tokenizers are in sentencepiece.hpp (builds with STRATA_USE_SENTENCEPIECE).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"

namespace strata {

/// Bytes are tokens: every UTF-8 text maps to ids 0..255 and back without loss.
struct ByteTokenizer {
  static constexpr Index vocab_size = 256;
  static std::vector<Token> encode(const std::string& text) {
    std::vector<Token> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  /// Ids outside 0..255 are an error (a model with a larger vocabulary needs its own tokenizer).
  static std::string decode(const std::vector<Token>& ids) {
    std::string s(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] > 255)
        fail("ByteTokenizer::decode: token ", ids[i], " at ", i, " is not a byte (0..255)");
      s[i] = static_cast<char>(static_cast<unsigned char>(ids[i]));
    }
    return s;
  }
};

/// 64-bit FNV-1a hash (identifies a tokenizer model; not a cryptographic hash).
inline std::uint64_t fnv1a64(std::string_view bytes, std::uint64_t h = 0xcbf29ce484222325ULL) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

/// 16 lowercase hex digits.
inline std::string checksum_hex(std::uint64_t x) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(x));
  return buf;
}

/// What identifies a tokenizer: its kind ("bytes" or "sentencepiece"), its vocabulary size and its
/// serialized model (empty for bytes). Checkpoints store it whole; token files store the checksum.
struct TokenizerSpec {
  std::string kind = "bytes";
  Index vocab_size = 256;
  std::string model;  ///< the serialized SentencePiece model (ModelProto bytes); empty for bytes

  static TokenizerSpec bytes() { return {}; }

  /// FNV-1a of kind, a zero byte and the model bytes.
  std::uint64_t checksum() const {
    return fnv1a64(model, fnv1a64(std::string_view(kind.c_str(), kind.size() + 1)));
  }
  /// "sentencepiece (vocab 2048, checksum 0123456789abcdef)".
  std::string describe() const {
    return detail::error_message(kind, " (vocab ", vocab_size, ", checksum ",
                                 checksum_hex(checksum()), ")");
  }
  bool operator==(const TokenizerSpec& o) const {
    return kind == o.kind && vocab_size == o.vocab_size && model == o.model;
  }
  bool operator!=(const TokenizerSpec& o) const { return !(*this == o); }
};

/// A tokenizer: text to ids and back. Decoding is a concatenation of each id's bytes (piece()),
/// so text can be printed token by token as it is generated (see TextStream).
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual const TokenizerSpec& spec() const = 0;
  Index vocab_size() const { return spec().vocab_size; }

  /// Ids of `text`; any bytes (valid UTF-8 or not) encode, and decode(encode(text)) == text.
  virtual std::vector<Token> encode(std::string_view text) const = 0;

  /// The bytes id contributes to decoded text; ids outside [0, vocab_size) are an error.
  virtual std::string piece(Token id) const = 0;

  /// The text of ids (the concatenation of their pieces).
  std::string decode(const std::vector<Token>& ids) const {
    std::string out;
    for (size_t i = 0; i < ids.size(); ++i) {
      check_id(ids[i], i);
      out += piece(ids[i]);
    }
    return out;
  }

 protected:
  void check_id(Token id, size_t at) const {
    if (id < 0 || id >= vocab_size())
      fail(spec().kind, " tokenizer: token ", id, " at ", at, " is outside the vocabulary [0, ",
           vocab_size(), ")");
  }
};

/// The byte tokenizer behind the Tokenizer interface.
class ByteLevelTokenizer final : public Tokenizer {
 public:
  const TokenizerSpec& spec() const override { return spec_; }
  std::vector<Token> encode(std::string_view text) const override {
    return ByteTokenizer::encode(std::string(text));
  }
  std::string piece(Token id) const override {
    check_id(id, 0);
    return std::string(1, static_cast<char>(static_cast<unsigned char>(id)));
  }

 private:
  TokenizerSpec spec_ = TokenizerSpec::bytes();
};

namespace detail {
/// Length of the UTF-8 sequence that starts with byte c (1 for a byte that cannot start one).
inline int utf8_sequence_length(unsigned char c) {
  if (c < 0xc2) return 1;  // ASCII, continuation bytes, overlong leads: stand alone
  if (c < 0xe0) return 2;
  if (c < 0xf0) return 3;
  if (c < 0xf5) return 4;
  return 1;
}
}  // namespace detail

/// Offset of the first byte of `text` that is not valid UTF-8 (overlong forms, surrogates and
/// code points above U+10FFFF are invalid), or text.size() when all of it is valid.
inline size_t find_invalid_utf8(std::string_view text) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    const int len = detail::utf8_sequence_length(c);
    if (len == 1 || i + size_t(len) > n) return i;
    const auto c1 = static_cast<unsigned char>(text[i + 1]);
    if ((c1 & 0xc0) != 0x80) return i;
    if (c == 0xe0 && c1 < 0xa0) return i;  // overlong
    if (c == 0xed && c1 > 0x9f) return i;  // surrogates
    if (c == 0xf0 && c1 < 0x90) return i;  // overlong
    if (c == 0xf4 && c1 > 0x8f) return i;  // above U+10FFFF
    for (int k = 2; k < len; ++k)
      if ((static_cast<unsigned char>(text[i + size_t(k)]) & 0xc0) != 0x80) return i;
    i += size_t(len);
  }
  return n;
}

/// Turns generated ids into printable chunks of text as they arrive: a multi-byte UTF-8 character
/// split over several tokens (byte pieces) is held back until it is complete, so a terminal never
/// sees half a character. Bytes that cannot complete a character are passed on as they are.
class TextStream {
 public:
  explicit TextStream(const Tokenizer& tokenizer) : tokenizer_(&tokenizer) {}

  /// The text that `id` completes (possibly empty).
  std::string push(Token id) {
    pending_ += tokenizer_->piece(id);
    // Emit everything up to the start of a trailing, still incomplete UTF-8 sequence.
    size_t cut = pending_.size();
    for (size_t back = 1; back <= 3 && back <= pending_.size(); ++back) {
      const auto c = static_cast<unsigned char>(pending_[pending_.size() - back]);
      if ((c & 0xc0) == 0x80) continue;  // continuation byte: look further back
      const int len = detail::utf8_sequence_length(c);
      if (len > 1 && size_t(len) > back) cut = pending_.size() - back;
      break;
    }
    std::string out = pending_.substr(0, cut);
    pending_.erase(0, cut);
    return out;
  }
  /// Whatever is still held back (at the end of generation).
  std::string flush() {
    std::string out;
    out.swap(pending_);
    return out;
  }

 private:
  const Tokenizer* tokenizer_;
  std::string pending_;
};

}  // namespace strata
