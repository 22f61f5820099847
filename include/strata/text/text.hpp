// strata/text/text.hpp: the text folder in one header: the byte tokenizer, SentencePiece (in
// builds that have it), token files, and a tokenizer built from its record (make_tokenizer).
#pragma once

#include <memory>

#include "../core/error.hpp"
#include "token_file.hpp"
#include "tokenizer.hpp"
#if defined(STRATA_HAVE_SENTENCEPIECE)
#include "sentencepiece.hpp"
#endif

namespace strata {

/// True when this build can encode and decode with SentencePiece models.
inline constexpr bool kHaveSentencePiece =
#if defined(STRATA_HAVE_SENTENCEPIECE)
    true;
#else
    false;
#endif

/// The tokenizer a record describes (from a checkpoint or a prepared corpus). `where` names the
/// record's origin in errors: a SentencePiece record in a build without SentencePiece, a model
/// that does not load, or one whose vocabulary differs from the record's.
inline std::unique_ptr<Tokenizer> make_tokenizer(const TokenizerSpec& spec,
                                                 const std::string& where = "tokenizer") {
  if (spec.kind == "bytes") {
    if (spec.vocab_size != 256 || !spec.model.empty())
      fail(where, ": a byte tokenizer has 256 tokens and no model, found vocab ", spec.vocab_size,
           " and a model of ", spec.model.size(), " bytes");
    return std::make_unique<ByteLevelTokenizer>();
  }
  if (spec.kind == "sentencepiece") {
#if defined(STRATA_HAVE_SENTENCEPIECE)
    auto t = std::make_unique<SentencePieceTokenizer>(spec.model, where);
    if (t->vocab_size() != spec.vocab_size)
      fail(where, ": the SentencePiece model has ", t->vocab_size(), " pieces, the record says ",
           spec.vocab_size);
    return t;
#else
    fail(where,
         ": a SentencePiece tokenizer, but this program was built without SentencePiece "
         "(configure strata with -DSTRATA_USE_SENTENCEPIECE=ON)");
#endif
  }
  fail(where, ": unknown tokenizer kind '", spec.kind, "', expected 'bytes' or 'sentencepiece'");
}

}  // namespace strata
