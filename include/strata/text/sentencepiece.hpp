// strata/text/sentencepiece.hpp: SentencePiece BPE tokenizers with byte fallback (every input
// round-trips), and training one on a corpus. Needs a build with STRATA_USE_SENTENCEPIECE=ON
// (strata::strata then links SentencePiece and defines STRATA_HAVE_SENTENCEPIECE).
//
// Models are trained so that decoding is a plain concatenation of pieces: identity normalization
// (no NFKC), no whitespace clean-up and no dummy-prefix space. Text is encoded in segments that
// end after each newline (SentencePiece's BPE encoder slows down on long inputs; the trained
// pieces never contain a newline, so the result is the same as encoding the whole text); a very
// long line is cut before a space, or failing that at a character boundary.
#pragma once

#if !defined(STRATA_HAVE_SENTENCEPIECE)
#error \
    "strata/text/sentencepiece.hpp needs SentencePiece: configure strata with -DSTRATA_USE_SENTENCEPIECE=ON (or link strata::strata from such a build)"
#endif

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "../core/error.hpp"
#include "tokenizer.hpp"

namespace strata {

namespace detail {
/// Where the segment of `text` that starts at `begin` ends (see the header comment).
inline size_t sentencepiece_segment_end(std::string_view text, size_t begin) {
  constexpr size_t kSoft = 4096, kHard = 16384;
  const size_t n = text.size();
  const size_t nl = text.find('\n', begin);
  const size_t line_end = nl == std::string_view::npos ? n : nl + 1;
  if (line_end - begin <= kSoft) return line_end;
  // Before a space that follows a non-space, at least kSoft bytes in.
  for (size_t i = begin + kSoft; i < line_end && i < begin + kHard; ++i)
    if (text[i] == ' ' && text[i - 1] != ' ') return i;
  if (line_end - begin <= kHard) return line_end;
  size_t cut = begin + kHard;  // at a character boundary
  while (cut > begin + 1 && (static_cast<unsigned char>(text[cut]) & 0xc0) == 0x80) --cut;
  return cut;
}

inline std::string sentencepiece_byte_piece(int byte) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "<0x%02X>", byte);
  return buf;
}
}  // namespace detail

/// A SentencePiece model behind the Tokenizer interface. Bytes that are not valid UTF-8, and the
/// character U+2581 that SentencePiece uses for spaces, encode as byte pieces, so any byte string
/// round-trips.
class SentencePieceTokenizer final : public Tokenizer {
 public:
  /// From a serialized model (the bytes of a .model file, or TokenizerSpec::model). `where` names
  /// the model's origin in error messages.
  explicit SentencePieceTokenizer(std::string model,
                                  const std::string& where = "SentencePiece model")
      : processor_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
    const auto status = processor_->LoadFromSerializedProto(model);
    if (!status.ok()) fail(where, ": not a SentencePiece model: ", status.ToString());
    spec_.kind = "sentencepiece";
    spec_.vocab_size = processor_->GetPieceSize();
    spec_.model = std::move(model);
    pieces_.resize(size_t(spec_.vocab_size));
    for (int id = 0; id < int(spec_.vocab_size); ++id) {
      if (processor_->IsControl(id)) continue;  // <s>, </s>, <pad> decode to nothing
      if (processor_->IsUnknown(id)) {
        pieces_[size_t(id)] = "\xe2\x81\x87";  // U+2047 "⁇", SentencePiece's surface of <unk>
        continue;
      }
      std::string p = processor_->IdToPiece(id);
      if (processor_->IsByte(id)) {
        pieces_[size_t(id)] = std::string(1, char(std::stoi(p.substr(3, 2), nullptr, 16)));
        continue;
      }
      for (size_t at = p.find("\xe2\x96\x81"); at != std::string::npos; at = p.find("\xe2\x96\x81"))
        p.replace(at, 3, " ");  // U+2581 "▁" stands for a space
      pieces_[size_t(id)] = p;
    }
    for (int b = 0; b < 256; ++b) {
      const int id = processor_->PieceToId(detail::sentencepiece_byte_piece(b));
      if (id < 0 || id >= int(spec_.vocab_size) || !processor_->IsByte(id))
        fail(where, ": has no byte piece ", detail::sentencepiece_byte_piece(b),
             " (it was trained without byte_fallback, so not every text can be encoded)");
      byte_ids_[size_t(b)] = Token(id);
    }
    // Decoding must be the concatenation of pieces (the options prepare trains with).
    const std::string probe = "The whale, 1851.\n  Call me Ishmael\xe2\x80\x94 caf\xc3\xa9!\n";
    std::vector<int> ids;
    processor_->Encode(probe, &ids);
    std::string joined;
    for (int id : ids) joined += pieces_[size_t(id)];
    if (joined != probe)
      fail(
          where,
          ": decoding is not the concatenation of its pieces (a model normalizing text or "
          "adding a dummy-prefix space); strata needs models trained as by train_sentencepiece_bpe "
          "(identity normalization, add_dummy_prefix=false)");
  }

  const TokenizerSpec& spec() const override { return spec_; }

  std::vector<Token> encode(std::string_view text) const override {
    std::vector<Token> out;
    std::vector<int> ids;
    size_t i = 0;
    constexpr std::string_view kSpaceMark = "\xe2\x96\x81";  // U+2581, SentencePiece's space
    while (i < text.size()) {
      // The run up to the next invalid byte or literal U+2581 (which SentencePiece would read as a
      // space) is encoded by SentencePiece, segment by segment; those bytes go to byte pieces.
      const size_t bad = i + find_invalid_utf8(text.substr(i));
      const size_t mark = text.substr(0, bad).find(kSpaceMark, i);
      const size_t stop = mark == std::string_view::npos ? bad : mark;
      while (i < stop) {
        const size_t end = detail::sentencepiece_segment_end(text.substr(0, stop), i);
        const auto status = processor_->Encode(text.substr(i, end - i), &ids);
        if (!status.ok()) fail("SentencePiece encode: ", status.ToString());
        out.insert(out.end(), ids.begin(), ids.end());
        i = end;
      }
      const size_t raw = stop == mark ? kSpaceMark.size() : (stop < text.size() ? 1 : 0);
      for (size_t k = 0; k < raw; ++k)
        out.push_back(byte_ids_[static_cast<unsigned char>(text[i++])]);
    }
    return out;
  }

  std::string piece(Token id) const override {
    check_id(id, 0);
    return pieces_[size_t(id)];
  }

  /// Id of the byte piece <0xXX>.
  Token byte_id(unsigned char byte) const { return byte_ids_[byte]; }
  const sentencepiece::SentencePieceProcessor& processor() const { return *processor_; }

 private:
  TokenizerSpec spec_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> processor_;
  std::vector<std::string> pieces_;
  std::array<Token, 256> byte_ids_{};
};

/// How train_sentencepiece_bpe builds a vocabulary.
struct SentencePieceOptions {
  Index vocab_size = 2048;             ///< pieces, including <unk> and the 256 byte pieces
  double character_coverage = 0.9995;  ///< characters rarer than this share are left to bytes
  int threads = 1;                     ///< SentencePiece's training threads
  /// When the corpus supports fewer pieces than vocab_size: use as many as it supports (true) or
  /// fail (false).
  bool fit_vocab = false;
};

/// Trains a BPE model with byte fallback on `sentences` (lines of the corpus, without their
/// newlines) and returns the serialized model. `where` names the corpus in error messages. A
/// vocabulary size the corpus cannot support is an error naming the size it can.
inline std::string train_sentencepiece_bpe(const std::vector<std::string>& sentences,
                                           const SentencePieceOptions& options,
                                           const std::string& where) {
  constexpr Index kMin = 258;  // <unk>, 256 byte pieces and at least one piece of text
  if (options.vocab_size < kMin)
    fail(where, ": vocabulary size ", options.vocab_size,
         " is too small for BPE with byte "
         "fallback (at least ",
         kMin,
         ": <unk>, 256 byte pieces and one piece of text); a "
         "256-token vocabulary is the byte tokenizer");
  if (options.vocab_size > (Index(1) << 31) - 1)
    fail(where, ": vocabulary size ", options.vocab_size, " does not fit a 32-bit token id");
  if (!(options.character_coverage > 0 && options.character_coverage <= 1))
    fail(where, ": character coverage ", options.character_coverage, ", expected in (0, 1]");
  bool any = false;
  for (const std::string& s : sentences) any = any || !s.empty();
  if (!any) fail(where, ": no text to learn a vocabulary from (empty corpus)");

  struct Lines : sentencepiece::SentenceIterator {
    const std::vector<std::string>* lines;
    size_t i = 0;
    bool done() const override { return i >= lines->size(); }
    void Next() override { ++i; }
    const std::string& value() const override { return (*lines)[i]; }
    sentencepiece::util::Status status() const override { return {}; }
  } lines;
  lines.lines = &sentences;
  const std::string args = detail::error_message(
      "--model_type=bpe --vocab_size=", options.vocab_size,
      " --byte_fallback=true --character_coverage=", options.character_coverage,
      " --normalization_rule_name=identity --remove_extra_whitespaces=false"
      " --add_dummy_prefix=false --allow_whitespace_only_pieces=true --split_digits=true"
      " --bos_id=-1 --eos_id=-1 --unk_id=0 --input_sentence_size=0 --max_sentence_length=16384"
      " --num_threads=",
      std::max(1, options.threads), " --minloglevel=2");
  std::string model;
  const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
  if (!status.ok()) {
    const std::string msg = status.ToString();
    std::smatch m;
    if (std::regex_search(msg, m, std::regex(R"(smaller than required_chars\. \d+ vs (\d+))")))
      fail(where, ": vocabulary size ", options.vocab_size,
           " is too small for this corpus: it "
           "needs at least ",
           m[1].str(), " (<unk>, 256 byte pieces and its common characters)");
    if (std::regex_search(
            msg, m,
            std::regex(
                R"(Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+))"))) {
      const Index most = std::stol(m[1].str());
      if (options.fit_vocab && most < options.vocab_size && most >= kMin) {
        SentencePieceOptions fitted = options;
        fitted.vocab_size = most;
        fitted.fit_vocab = false;
        return train_sentencepiece_bpe(sentences, fitted, where);
      }
      fail(where, ": vocabulary size ", options.vocab_size,
           " is more than this corpus supports: "
           "BPE finds at most ",
           m[1].str(), " pieces in it");
    }
    fail(where, ": SentencePiece training failed: ", msg);
  }
  return model;
}

}  // namespace strata
