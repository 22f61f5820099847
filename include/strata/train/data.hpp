// strata/train/data.hpp: a text corpus split into training and validation tokens (bytes in memory,
// or token files mapped from disk), and a seeded batch loader whose position can be saved and
// restored. The tokenizers are in strata/text/.
#pragma once

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../core/error.hpp"
#include "../core/rng.hpp"
#include "../core/types.hpp"
#include "../text/token_file.hpp"
#include "../text/tokenizer.hpp"

namespace strata {

/// A tokenized corpus: the first (1 - val_fraction) of the tokens train, the rest validate.
struct TextDataset {
  std::string source;  ///< file name (or "<memory>")
  std::vector<Token> train;
  std::vector<Token> val;

  /// Splits `text`; both parts must hold at least seq_len + 1 tokens (one window and its targets).
  static TextDataset from_text(const std::string& text, double val_fraction, Index seq_len,
                               const std::string& source = "<memory>") {
    if (!(val_fraction > 0 && val_fraction < 1))
      fail("data: validation fraction ", val_fraction, ", expected in (0, 1)");
    TextDataset d;
    d.source = source;
    std::vector<Token> all = ByteTokenizer::encode(text);
    const Index n = Index(all.size());
    const Index n_val = Index(double(n) * val_fraction);
    const Index need = seq_len + 1;
    if (n - n_val < need || n_val < need)
      fail("data: '", source, "' has ", n, " bytes; with a validation fraction of ", val_fraction,
           " each split needs at least ", need, " tokens (sequence length ", seq_len,
           " + 1), found ", n - n_val, " for training and ", n_val, " for validation");
    d.train.assign(all.begin(), all.end() - n_val);
    d.val.assign(all.end() - n_val, all.end());
    return d;
  }

  /// Reads a whole UTF-8 (or any byte) file.
  static TextDataset from_file(const std::string& path, double val_fraction, Index seq_len) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("data: cannot open '", path, "': ", std::strerror(errno));
    std::ostringstream ss;
    ss << in.rdbuf();
    return from_text(ss.str(), val_fraction, seq_len, path);
  }
};

/// The tokens a Trainer reads: training and validation spans, the tokenizer that made them, and
/// what keeps the spans' memory alive (mapped token files). A TextDataset converts to a view of
/// its vectors (which must then outlive this object); from_token_files maps a prepared corpus.
struct TokenDataset {
  std::string source;
  TokenSpan train, val;
  TokenizerSpec tokenizer;
  std::shared_ptr<const void> storage;  ///< owner of the spans' memory, if not the caller

  TokenDataset() = default;
  TokenDataset(const TextDataset& text)  // NOLINT: implicit, as Trainer took a TextDataset
      : source(text.source), train(text.train), val(text.val) {}

  /// Maps "<prefix>.train.tok" and "<prefix>.val.tok" (see PreparedCorpus) and reads their
  /// tokenizer; both must come from the same tokenizer and hold a window of seq_len + 1 tokens.
  static TokenDataset from_token_files(const std::string& prefix, Index seq_len) {
    const PreparedCorpus files = PreparedCorpus::at(prefix);
    auto train = TokenFile::open(files.train);
    auto val = TokenFile::open(files.val);
    const TokenFileHeader &ht = train->header(), &hv = val->header();
    if (ht.tokenizer_checksum != hv.tokenizer_checksum || ht.vocab_size != hv.vocab_size)
      fail("tokens ", files.prefix, ": ", files.val, " was encoded with tokenizer checksum ",
           checksum_hex(hv.tokenizer_checksum), " (vocab ", hv.vocab_size, "), ", files.train,
           " with ", checksum_hex(ht.tokenizer_checksum), " (vocab ", ht.vocab_size, ")");
    for (const auto* f : {train.get(), val.get()})
      if (f->size() < seq_len + 1)
        fail("tokens ", f->path(), ": ", f->size(), " tokens cannot fill one window of ",
             seq_len + 1, " (sequence length ", seq_len, " + 1)");
    TokenDataset d;
    d.source = files.prefix;
    d.tokenizer = tokenizer_of(*train, files.model);
    d.train = train->tokens();
    d.val = val->tokens();
    d.storage = std::make_shared<
        std::pair<std::shared_ptr<const TokenFile>, std::shared_ptr<const TokenFile>>>(train, val);
    return d;
  }
};

/// Draws training batches: each row is a window of T + 1 consecutive tokens at a uniformly random
/// offset (inputs = first T, targets = last T). The generator's state and the number of batches
/// drawn are the loader's whole position, so a resumed run draws exactly the batches an
/// uninterrupted one would.
class BatchLoader {
 public:
  BatchLoader(TokenSpan tokens, Index B, Index T, std::uint64_t seed)
      : tokens_(tokens), B_(B), T_(T), rng_(seed) {
    STRATA_CHECK(B >= 1 && T >= 1, "BatchLoader: batch ", B, " and sequence length ", T,
                 " must both be >= 1");
    STRATA_CHECK(Index(tokens.size()) >= T + 1, "BatchLoader: ", tokens.size(),
                 " tokens cannot fill one window of ", T + 1);
  }

  /// Data parallelism: this loader yields only rows [rank * B / world, (rank + 1) * B / world) of
  /// every batch. Every shard still draws all B offsets, so the loaders of all ranks keep one
  /// position (the one a single loader would have) and the ranks never read the same row.
  void set_shard(Index rank, Index world) {
    STRATA_CHECK(world >= 1 && rank >= 0 && rank < world, "BatchLoader: rank ", rank, " of ", world,
                 " ranks, expected 0 <= rank < ranks");
    STRATA_CHECK(B_ % world == 0, "BatchLoader: batch ", B_, " is not divisible by ", world,
                 " ranks (every rank takes batch / ranks sequences)");
    first_row_ = rank * (B_ / world);
    rows_ = B_ / world;
  }
  /// Sequences this loader yields per batch (B, or B / world when sharded).
  Index rows() const { return rows_; }

  /// Fills x, y [rows(), T] with the next batch (its shard, see set_shard).
  void next(TokenMatrix& x, TokenMatrix& y) {
    x.resize(rows_, T_);
    y.resize(rows_, T_);
    const auto span = std::uint64_t(tokens_.size() - T_);  // valid offsets: 0..size-T-1
    for (Index b = 0; b < B_; ++b) {
      const Index off = Index(rng_.below(span));
      if (b < first_row_ || b >= first_row_ + rows_) continue;
      for (Index t = 0; t < T_; ++t) {
        x(b - first_row_, t) = tokens_[off + t];
        y(b - first_row_, t) = tokens_[off + t + 1];
      }
    }
    ++batches_;
  }

  Index batches_drawn() const { return batches_; }
  const Rng::State& rng_state() const { return rng_.state(); }
  /// Restores a saved position.
  void restore(const Rng::State& state, Index batches_drawn) {
    rng_.set_state(state);
    batches_ = batches_drawn;
  }

 private:
  TokenSpan tokens_;
  Index B_, T_;
  Index first_row_ = 0, rows_ = B_;
  Rng rng_;
  Index batches_ = 0;
};

/// Mean loss over up to max_batches batches of B non-overlapping windows spread evenly over
/// `tokens` (the same windows every call, so evaluations are comparable across steps and runs).
template <typename Model>
double evaluate(Model& model, TokenSpan tokens, Index B, Index T, Index max_batches) {
  const Index windows = (Index(tokens.size()) - 1) / T;
  STRATA_CHECK(windows >= 1, "evaluate: ", tokens.size(), " tokens cannot fill one window of ",
               T + 1);
  Index use = std::min(windows, B * max_batches);
  if (use >= B) use -= use % B;  // whole batches only: the workspace keeps one shape
  TokenMatrix x, y;
  double total = 0;
  Index count = 0;
  for (Index first = 0; first < use; first += B) {
    const Index rows = std::min(B, use - first);
    x.resize(rows, T);
    y.resize(rows, T);
    for (Index r = 0; r < rows; ++r) {
      // window i of `use` starts at i * windows / use * T: evenly spread, non-overlapping
      const Index off = ((first + r) * windows / use) * T;
      for (Index t = 0; t < T; ++t) {
        x(r, t) = tokens[off + t];
        y(r, t) = tokens[off + t + 1];
      }
    }
    total += double(model.loss(x, y)) * double(rows);
    count += rows;
  }
  return total / double(count);
}

}  // namespace strata
