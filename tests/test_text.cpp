// Tests for strata/text/ that need no SentencePiece: the byte tokenizer behind the Tokenizer
// interface, UTF-8 checks and the streaming decoder, base64 and the checkpoint record of a
// tokenizer, token files (round trip, atomic writes, every bad-input message), memory-mapped
// datasets (loader determinism, exact resume, files larger than the loader's buffers, 64-bit
// offsets) and a 32768-token model that trains, samples and saves.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gradcheck.hpp"
#include "strata/strata.hpp"
#include "temp_dir.hpp"

namespace {

using strata::BatchLoader;
using strata::Index;
using strata::Token;
using strata::TokenDataset;
using strata::TokenFile;
using strata::TokenFileWriter;
using strata::TokenizerSpec;
using strata::TokenMatrix;
using strata::TokenSpan;
using strata::testing::error_of;
using TempDir = strata::testing::TempDirTest;

const std::string kCorpus = STRATA_SOURCE_DIR "/examples/data/moby_dick.txt";

std::string random_bytes(strata::Rng& rng, size_t n) {
  std::string s(n, '\0');
  for (char& c : s) c = char(rng.below(256));
  return s;
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

std::string read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// A token file of `ids` with the given vocabulary and checksum.
void write_tokens(const std::string& path, const std::vector<Token>& ids, std::uint64_t vocab,
                  std::uint64_t checksum = TokenizerSpec::bytes().checksum()) {
  TokenFileWriter w(path, vocab, checksum);
  w.write(ids);
  w.commit();
}

// ---- tokenizers -------------------------------------------------------------------------------

TEST(ByteLevelTokenizer, RoundTripsArbitraryBytes) {
  const strata::ByteLevelTokenizer t;
  EXPECT_EQ(t.vocab_size(), 256);
  EXPECT_EQ(t.spec(), TokenizerSpec::bytes());
  strata::Rng rng(7);
  for (size_t n : {size_t(0), size_t(1), size_t(17), size_t(4096)}) {
    const std::string s = random_bytes(rng, n);
    const std::vector<Token> ids = t.encode(s);
    ASSERT_EQ(ids.size(), n);
    EXPECT_EQ(t.decode(ids), s);
  }
  EXPECT_EQ(error_of([&] {
              t.decode({65, 256});
            }),
            "bytes tokenizer: token 256 at 1 is outside the vocabulary [0, 256)");
}

TEST(Utf8, FindsTheFirstInvalidByte) {
  EXPECT_EQ(strata::find_invalid_utf8("plain ascii\n"), 12u);
  EXPECT_EQ(strata::find_invalid_utf8("caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x90\x8b"), 14u);
  EXPECT_EQ(strata::find_invalid_utf8("ab\xff"), 2u);                // never valid
  EXPECT_EQ(strata::find_invalid_utf8("ab\xc3"), 2u);                // cut short
  EXPECT_EQ(strata::find_invalid_utf8("a\xc0\xaf"), 1u);             // overlong '/'
  EXPECT_EQ(strata::find_invalid_utf8("a\xe0\x80\xaf"), 1u);         // overlong
  EXPECT_EQ(strata::find_invalid_utf8("a\xed\xa0\x80"), 1u);         // surrogate U+D800
  EXPECT_EQ(strata::find_invalid_utf8("a\xf4\x90\x80\x80"), 1u);     // above U+10FFFF
  EXPECT_EQ(strata::find_invalid_utf8("a\xe6\x97x"), 1u);            // bad continuation
  EXPECT_EQ(strata::find_invalid_utf8(std::string("a\0b", 3)), 3u);  // NUL is valid UTF-8
}

TEST(TextStream, HoldsBackSplitCharactersOnly) {
  const strata::ByteLevelTokenizer t;
  strata::TextStream stream(t);
  const std::string text = "a\xe6\x97\xa5 \xf0\x9f\x90\x8b!";
  std::vector<std::string> chunks;
  for (Token id : t.encode(text)) chunks.push_back(stream.push(id));
  EXPECT_EQ(chunks, (std::vector<std::string>{"a", "", "", "\xe6\x97\xa5", " ", "", "", "",
                                              "\xf0\x9f\x90\x8b", "!"}));
  EXPECT_EQ(stream.flush(), "");
  // An incomplete character at the end comes out with flush(); an invalid one is not held back.
  EXPECT_EQ(stream.push(0xe6), "");
  EXPECT_EQ(stream.flush(), "\xe6");
  EXPECT_EQ(stream.push(0xff), "\xff");
  EXPECT_EQ(stream.push(0xe6), "");
  EXPECT_EQ(stream.push('x'), "\xe6x");
}

TEST(Base64, MatchesRfc4648AndRoundTrips) {
  const std::pair<const char*, const char*> vectors[] = {{"", ""},
                                                         {"f", "Zg=="},
                                                         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},
                                                         {"foob", "Zm9vYg=="},
                                                         {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (const auto& [plain, coded] : vectors) {
    EXPECT_EQ(strata::base64_encode(plain), coded);
    EXPECT_EQ(strata::base64_decode(coded, "t"), plain);
  }
  strata::Rng rng(3);
  for (size_t n = 0; n < 40; ++n) {
    const std::string s = random_bytes(rng, n);
    EXPECT_EQ(strata::base64_decode(strata::base64_encode(s), "t"), s);
  }
  EXPECT_EQ(error_of([] { strata::base64_decode("abc", "m"); }),
            "m: base64 of 3 characters, not a multiple of 4");
  EXPECT_EQ(error_of([] { strata::base64_decode("ab!d", "m"); }),
            "m: invalid base64 character at 2");
}

TEST(TokenizerSpec, ChecksumsDifferByKindAndModel) {
  TokenizerSpec a = TokenizerSpec::bytes(), b = a;
  b.kind = "sentencepiece";
  TokenizerSpec c = b;
  c.model = "x";
  EXPECT_NE(a.checksum(), b.checksum());
  EXPECT_NE(b.checksum(), c.checksum());
  EXPECT_EQ(a.describe(), "bytes (vocab 256, checksum " + strata::checksum_hex(a.checksum()) + ")");
}

TEST(MakeTokenizer, BytesAndErrors) {
  EXPECT_EQ(strata::make_tokenizer(TokenizerSpec::bytes())->spec(), TokenizerSpec::bytes());
  TokenizerSpec odd = TokenizerSpec::bytes();
  odd.vocab_size = 300;
  EXPECT_EQ(error_of([&] { strata::make_tokenizer(odd, "ckpt"); }),
            "ckpt: a byte tokenizer has 256 tokens and no model, found vocab 300 and a model of 0 "
            "bytes");
  TokenizerSpec unknown;
  unknown.kind = "wordpiece";
  EXPECT_EQ(error_of([&] { strata::make_tokenizer(unknown, "ckpt"); }),
            "ckpt: unknown tokenizer kind 'wordpiece', expected 'bytes' or 'sentencepiece'");
  if (!strata::kHaveSentencePiece) {
    TokenizerSpec sp;
    sp.kind = "sentencepiece";
    sp.model = "m";
    EXPECT_EQ(error_of([&] { strata::make_tokenizer(sp, "ckpt"); }),
              "ckpt: a SentencePiece tokenizer, but this program was built without SentencePiece "
              "(configure strata with -DSTRATA_USE_SENTENCEPIECE=ON)");
  }
}

// ---- token files ------------------------------------------------------------------------------

using TokenFiles = TempDir;

TEST_F(TokenFiles, RoundTripUint16AndUint32) {
  strata::Rng rng(1);
  for (std::uint64_t vocab : {std::uint64_t(256), std::uint64_t(65536), std::uint64_t(70000)}) {
    std::vector<Token> ids(1000);
    for (Token& id : ids) id = Token(rng.below(vocab));
    ids[0] = Token(vocab - 1);
    const std::string path = file("t" + std::to_string(vocab) + ".tok");
    TokenFileWriter w(path, vocab, 1234);
    w.write(ids.data(), 400);
    w.write(ids.data() + 400, 600);
    EXPECT_EQ(w.count(), 1000u);
    w.finish();  // header written and flushed, still not at the path
    EXPECT_FALSE(std::filesystem::exists(path));  // nothing at the path before commit()
    w.commit();
    const auto f = TokenFile::open(path);
    EXPECT_EQ(f->header().token_bytes, vocab <= 65536 ? 2u : 4u);
    EXPECT_EQ(f->header().vocab_size, vocab);
    EXPECT_EQ(f->header().tokenizer_checksum, 1234u);
    EXPECT_EQ(std::filesystem::file_size(path), 64 + 1000 * f->header().token_bytes);
    EXPECT_EQ(f->tokens().to_vector(), ids);
    EXPECT_EQ(f->tokens().subspan(10, 5).to_vector(),
              std::vector<Token>(ids.begin() + 10, ids.begin() + 15));
  }
  EXPECT_EQ(listing(), (std::vector<std::string>{"t256.tok", "t65536.tok", "t70000.tok"}));
}

TEST_F(TokenFiles, WriterRejectsOutOfVocabularyIdsAndLeavesNothing) {
  write_tokens(file("t.tok"), {1, 2, 3}, 256);  // an old file that a failed write must keep
  const std::string before = read_raw(file("t.tok"));
  EXPECT_EQ(error_of([&] {
              TokenFileWriter w(file("t.tok"), 256, 0);
              w.write({1, 2});
              w.write({3, 256});
            }),
            "token file " + file("t.tok")
                + ": token 256 at position 3 is outside the vocabulary [0, 256)");
  EXPECT_EQ(error_of([&] { TokenFileWriter w(file("u.tok"), 0, 0); }),
            "token file " + file("u.tok") + ": vocab_size 0, expected 1..2147483647");
  EXPECT_EQ(listing(), std::vector<std::string>{"t.tok"});
  EXPECT_EQ(read_raw(file("t.tok")), before);
}

TEST_F(TokenFiles, EveryBadFileIsAClearError) {
  const std::string good = file("good.tok");
  write_tokens(good, {1, 2, 3, 4}, 256);
  const std::string bytes = read_raw(good);
  auto variant = [&](const std::string& name, std::string content) {
    write_raw(file(name), content);
    return error_of([&] { TokenFile::open(file(name)); });
  };
  auto patched = [&](size_t at, const void* value, size_t n) {
    std::string s = bytes;
    std::memcpy(&s[at], value, n);
    return s;
  };
  const std::string p = "token file " + dir_.string() + "/";
  EXPECT_EQ(error_of([&] { TokenFile::open(file("none.tok")); }),
            p + "none.tok: cannot open: No such file or directory");
  EXPECT_EQ(variant("empty.tok", ""),
            p + "empty.tok: 0 bytes, shorter than the 64-byte header (truncated, or not a token "
                "file)");
  EXPECT_EQ(variant("short.tok", bytes.substr(0, 40)),
            p + "short.tok: 40 bytes, shorter than the 64-byte header (truncated, or not a token "
                "file)");
  EXPECT_EQ(variant("foreign.tok", std::string("\x89PNG\r\n\x1a\n", 8) + std::string(80, '\0')),
            p + "foreign.tok: starts with '\\x89PNG\\x0d\\x0a\\x1a\\x0a', expected 'STRATATK' (not a "
                "strata token file; make one with prepare)");
  const std::uint32_t v2 = 2, w3 = 3;
  const std::uint64_t huge_vocab = 70000, bad_vocab = 0;
  EXPECT_EQ(variant("version.tok", patched(8, &v2, 4)),
            p + "version.tok: format version 2, this program reads version 1");
  EXPECT_EQ(variant("width.tok", patched(12, &w3, 4)),
            p + "width.tok: 3 bytes per token, expected 2 (uint16) or 4 (uint32)");
  EXPECT_EQ(variant("vocab.tok", patched(16, &huge_vocab, 8)),
            p + "vocab.tok: vocab_size 70000 does not fit its 2-byte tokens");
  EXPECT_EQ(variant("vocab0.tok", patched(16, &bad_vocab, 8)),
            p + "vocab0.tok: vocab_size 0, expected 1..2147483647");
  EXPECT_EQ(variant("truncated.tok", bytes.substr(0, bytes.size() - 1)),
            p + "truncated.tok: the header promises 4 tokens (72 bytes), the file has 71 bytes "
                "(truncated)");
  EXPECT_EQ(variant("trailing.tok", bytes + "xy"),
            p + "trailing.tok: the header promises 4 tokens (72 bytes), the file has 74 bytes "
                "(trailing data)");
  const std::uint16_t big = 300;
  EXPECT_EQ(
      variant("oov.tok", patched(64 + 2 * 2, &big, 2)),
      p + "oov.tok: token 300 at position 2 is outside the vocabulary [0, 256) of its header");
  // uint32 ids are shown unsigned, even above 2^31
  write_tokens(file("wide.tok"), {1, 2, 3}, 70000);
  std::string wide = read_raw(file("wide.tok"));
  const std::uint32_t very_big = 0xfffffff0u;
  std::memcpy(&wide[64 + 4], &very_big, 4);
  EXPECT_EQ(variant("wide_oov.tok", wide),
            p + "wide_oov.tok: token 4294967280 at position 1 is outside the vocabulary [0, 70000) "
                "of its header");
}

// ---- datasets from token files ----------------------------------------------------------------

using TokenData = TempDir;

TEST_F(TokenData, PreparedCorpusNamesAndTokenizerChecks) {
  const auto c = strata::PreparedCorpus::at("out/notes.train.tok");
  EXPECT_EQ(c.prefix, "out/notes");
  EXPECT_EQ(c.val, "out/notes.val.tok");
  EXPECT_EQ(c.model, "out/notes.model");

  const std::vector<Token> ids(40, 7);
  write_tokens(file("b.train.tok"), ids, 256);
  write_tokens(file("b.val.tok"), ids, 256);
  const TokenDataset d = TokenDataset::from_token_files(file("b"), 8);
  EXPECT_EQ(d.tokenizer, TokenizerSpec::bytes());
  EXPECT_EQ(d.train.size(), 40);
  EXPECT_EQ(d.source, file("b"));

  // A SentencePiece corpus: the model next to the token files must have the header's checksum.
  TokenizerSpec sp;
  sp.kind = "sentencepiece";
  sp.vocab_size = 1000;
  sp.model = "model bytes";
  write_tokens(file("s.train.tok"), ids, 1000, sp.checksum());
  write_tokens(file("s.val.tok"), ids, 1000, sp.checksum());
  const std::string prefix = file("s");
  EXPECT_EQ(error_of([&] { TokenDataset::from_token_files(prefix, 8); }),
            "token file " + prefix + ".train.tok: encoded with tokenizer checksum "
                + strata::checksum_hex(sp.checksum()) + " (vocab 1000), whose model " + prefix
                + ".model is missing");
  write_raw(prefix + ".model", "other bytes");
  TokenizerSpec other = sp;
  other.model = "other bytes";
  EXPECT_EQ(error_of([&] { TokenDataset::from_token_files(prefix, 8); }),
            "token file " + prefix + ".train.tok was encoded with tokenizer checksum "
                + strata::checksum_hex(sp.checksum()) + ", but " + prefix + ".model has checksum "
                + strata::checksum_hex(other.checksum())
                + " (prepared again since? prepare the corpus anew)");
  write_raw(prefix + ".model", "model bytes");
  EXPECT_EQ(TokenDataset::from_token_files(prefix, 8).tokenizer, sp);

  // Train and validation files of different tokenizers; too few tokens for a window.
  write_tokens(file("m.train.tok"), ids, 256);
  write_tokens(file("m.val.tok"), ids, 1000, sp.checksum());
  EXPECT_EQ(error_of([&] { TokenDataset::from_token_files(file("m"), 8); }),
            "tokens " + file("m") + ": " + file("m.val.tok")
                + " was encoded with tokenizer checksum " + strata::checksum_hex(sp.checksum())
                + " (vocab 1000), " + file("m.train.tok") + " with "
                + strata::checksum_hex(TokenizerSpec::bytes().checksum()) + " (vocab 256)");
  EXPECT_EQ(error_of([&] { TokenDataset::from_token_files(file("b"), 40); }),
            "tokens " + file("b.train.tok")
                + ": 40 tokens cannot fill one window of 41 (sequence length 40 + 1)");
}

/// A stand-in model for evaluate(): records the first token of every row it is given.
struct RecordingModel {
  std::vector<TokenMatrix> batches;
  float loss(const TokenMatrix& x, const TokenMatrix&) {
    batches.push_back(x);
    return 0.f;
  }
};

// The loader reads a mapped file much larger than its [B, T] batches and finds the right tokens
// at every offset (token i of the file is a function of i).
TEST_F(TokenData, LoaderReadsAMappedFileLargerThanItsBuffers) {
  const Index n = Index(24) << 20;  // 24M tokens, 48 MB
  auto token_at = [](Index i) {     // a hash of i, so that 4 tokens in a row pin their offset
    std::uint64_t z = std::uint64_t(i) * 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return Token((z ^ (z >> 31)) % 50000);
  };
  {
    TokenFileWriter w(file("big.tok"), 50000, 9);
    std::vector<Token> chunk(1 << 20);
    for (Index first = 0; first < n; first += Index(chunk.size())) {
      for (size_t k = 0; k < chunk.size(); ++k) chunk[k] = token_at(first + Index(k));
      w.write(chunk);
    }
    w.commit();
  }
  const auto f = TokenFile::open(file("big.tok"));
  const TokenSpan span = f->tokens();
  ASSERT_EQ(span.size(), n);
  EXPECT_EQ(span[n - 1], token_at(n - 1));
  const Index B = 4, T = 64;
  BatchLoader loader(span, B, T, 11);
  TokenMatrix x, y;
  Index checked = 0;
  bool far = false;
  for (int batch = 0; batch < 50; ++batch) {
    loader.next(x, y);
    for (Index b = 0; b < B; ++b) {
      // find the offset from the first token's neighbourhood: check the row is a run of the file
      Index off = -1;
      for (Index cand = 0; cand < n - T && off < 0; cand += 1)
        if (token_at(cand) == x(b, 0) && token_at(cand + 1) == x(b, 1)
            && token_at(cand + 2) == x(b, 2) && token_at(cand + 3) == x(b, 3))
          off = cand;
      ASSERT_GE(off, 0) << "row " << b << " of batch " << batch << " is not a run of the file";
      for (Index t = 0; t < T; ++t) {
        ASSERT_EQ(x(b, t), token_at(off + t));
        ASSERT_EQ(y(b, t), token_at(off + t + 1));
      }
      far = far || off > n / 2;
      ++checked;
      if (checked >= 8) break;
    }
    if (checked >= 8) break;
  }
  EXPECT_TRUE(far);  // windows come from the whole file, not only its start
  RecordingModel m;
  strata::evaluate(m, span, B, T, 3);
  const Index windows = (n - 1) / T, use = 12;
  const TokenMatrix& last = m.batches.back();
  EXPECT_EQ(last(B - 1, 0), token_at((use - 1) * windows / use * T));
}

// Token offsets beyond 2^32 (a sparse file of 4.3G uint16 tokens, 8.6 GB on paper, a few kB on
// disk): the span and evaluate() read the tokens written near its end.
TEST_F(TokenData, SixtyFourBitOffsets) {
  const std::uint64_t n = (std::uint64_t(1) << 32) + 4096;
  // Built by hand: the header, then a hole, then a tail of known tokens.
  strata::TokenFileHeader h;
  h.token_bytes = 2;
  h.vocab_size = 65536;
  h.count = n;
  h.tokenizer_checksum = 5;
  unsigned char header[64];
  h.encode(header);
  const std::string path = file("sparse.tok");
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, header, 64), 64);
  if (::ftruncate(fd, off_t(64 + n * 2)) != 0) {
    ::close(fd);
    GTEST_SKIP() << "the file system cannot hold an 8.6 GB sparse file";
  }
  std::vector<std::uint16_t> tail(4096);
  for (size_t k = 0; k < tail.size(); ++k) tail[k] = std::uint16_t(1000 + k);
  ASSERT_EQ(::pwrite(fd, tail.data(), tail.size() * 2, off_t(64 + (n - 4096) * 2)),
            ssize_t(tail.size() * 2));
  ::close(fd);
  const auto f = TokenFile::open(path);
  const TokenSpan span = f->tokens();
  EXPECT_EQ(std::uint64_t(span.size()), n);
  EXPECT_EQ(span[Index(n - 1)], 1000 + 4095);
  EXPECT_EQ(span[Index(n - 4096)], 1000);
  EXPECT_EQ(span[Index(1) << 31], 0);
  // evaluate() and the loader index with 64-bit offsets: windows of the span's last tokens.
  const Index T = 1024;
  RecordingModel tail_eval;
  strata::evaluate(tail_eval, span.subspan(Index(n) - 3 * T - 1, 3 * T + 1), 1, T, 3);
  ASSERT_EQ(tail_eval.batches.size(), 3u);
  EXPECT_EQ(tail_eval.batches[2](0, T - 1), 1000 + 4094);
  BatchLoader loader(span.subspan(Index(n) - T - 1, T + 1), 1, T, 1);
  TokenMatrix x, y;
  loader.next(x, y);
  EXPECT_EQ(y(0, T - 1), 1000 + 4095);
}

strata::ModelConfig tiny_config(Index vocab) {
  strata::ModelConfig cfg;
  cfg.vocab_size = vocab;
  cfg.context_length = 16;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 16;
  cfg.seed = 3;
  return cfg;
}

strata::TrainOptions tiny_options(Index steps) {
  strata::TrainOptions o;
  o.steps = steps;
  o.batch = 4;
  o.seq_len = 16;
  o.warmup = 2;
  o.eval_interval = 100;
  o.eval_batches = 2;
  o.data_seed = 5;
  return o;
}

// Training from token files equals training from the same tokens in memory, and a run resumed
// from its checkpoint continues bit for bit; the checkpoint records the tokenizer.
TEST_F(TokenData, DeterministicAndExactResumeOnTokenFiles) {
  const strata::TextDataset text = strata::TextDataset::from_file(kCorpus, 0.1, 16);
  const std::vector<Token> train(text.train.begin(), text.train.begin() + 20000);
  const std::vector<Token> val(text.val.begin(), text.val.begin() + 4000);
  write_tokens(file("c.train.tok"), train, 256);
  write_tokens(file("c.val.tok"), val, 256);
  const TokenDataset mapped = TokenDataset::from_token_files(file("c"), 16);
  strata::TextDataset memory;
  memory.train = train;
  memory.val = val;

  // Runs an 8-step schedule up to step `stop` (from a checkpoint, if given), then saves.
  auto run = [&](const TokenDataset& data, Index stop, const std::string& resume_from,
                 const std::string& save_to) {
    strata::GPT<float> model(tiny_config(256));
    strata::Trainer<float> trainer(model, data, tiny_options(8));
    if (!resume_from.empty()) trainer.resume(resume_from);
    std::vector<double> losses;
    while (trainer.state().step < stop) losses.push_back(trainer.step().loss);
    losses.push_back(trainer.evaluate_validation());
    if (!save_to.empty()) trainer.save(save_to);
    return std::make_pair(losses, strata::Vector<float>(model.parameters()));
  };
  const auto whole = run(mapped, 8, "", file("whole.safetensors"));
  const auto again = run(mapped, 8, "", "");
  const auto in_memory = run(memory, 8, "", "");
  EXPECT_TRUE(strata::testing::bit_equal(whole.second, again.second));
  EXPECT_EQ(whole.first, again.first);
  EXPECT_TRUE(strata::testing::bit_equal(whole.second, in_memory.second));
  EXPECT_EQ(whole.first, in_memory.first);

  const auto half = run(mapped, 4, "", file("half.safetensors"));
  const auto resumed = run(mapped, 8, file("half.safetensors"), "");
  EXPECT_TRUE(strata::testing::bit_equal(resumed.second, whole.second));
  std::vector<double> joined(half.first.begin(), half.first.end() - 1);  // drop half's evaluation
  joined.insert(joined.end(), resumed.first.begin(), resumed.first.end());
  EXPECT_EQ(joined, whole.first);

  const auto ckpt = strata::io::SafetensorsFile::read(file("whole.safetensors"));
  EXPECT_EQ(strata::read_tokenizer(ckpt), TokenizerSpec::bytes());
}

TEST_F(TokenData, CheckpointRecordsTheTokenizerAndResumeChecksIt) {
  // A SentencePiece record needs no SentencePiece to be stored, read and compared.
  TokenizerSpec sp;
  sp.kind = "sentencepiece";
  sp.vocab_size = 300;
  sp.model = std::string("\x0a\x05\x00piece\xff", 9);
  std::vector<Token> ids(3000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = Token((i * 7919) % 300);
  write_tokens(file("s.train.tok"), ids, 300, sp.checksum());
  write_tokens(file("s.val.tok"), ids, 300, sp.checksum());
  write_raw(file("s.model"), sp.model);
  const TokenDataset data = TokenDataset::from_token_files(file("s"), 16);
  strata::GPT<float> model(tiny_config(300));
  strata::Trainer<float> trainer(model, data, tiny_options(2));
  trainer.step();
  trainer.save(file("s.safetensors"));
  const auto ckpt = strata::io::SafetensorsFile::read(file("s.safetensors"));
  EXPECT_EQ(strata::read_tokenizer(ckpt), sp);

  // Resuming that run on byte data is an error naming both tokenizers.
  const std::vector<Token> bytes(3000, 65);
  write_tokens(file("b.train.tok"), bytes, 256);
  write_tokens(file("b.val.tok"), bytes, 256);
  const TokenDataset byte_data = TokenDataset::from_token_files(file("b"), 16);
  strata::GPT<float> model2(tiny_config(300));
  strata::Trainer<float> other(model2, byte_data, tiny_options(2));
  EXPECT_EQ(error_of([&] { other.resume(file("s.safetensors")); }),
            "resume " + file("s.safetensors") + ": the run was saved with the tokenizer "
                + sp.describe() + ", the data " + file("b") + " uses "
                + TokenizerSpec::bytes().describe());

  // A model smaller than the data's vocabulary.
  strata::GPT<float> small(tiny_config(100));
  EXPECT_EQ(error_of([&] { strata::Trainer<float>(small, data, tiny_options(2)); }),
            "Trainer: the data's tokenizer " + sp.describe()
                + " has more tokens than the model's vocab_size 100");

  // Damaged records.
  const auto weights = strata::Vector<float>(model.parameters());
  auto with_record = [&](const std::string& value) {
    strata::save_checkpoint(file("d.safetensors"), model, {},
                            {{strata::kTokenizerMetadataKey, value}});
    return error_of(
        [&] { strata::read_tokenizer(strata::io::SafetensorsFile::read(file("d.safetensors"))); });
  };
  const std::string where = "checkpoint " + file("d.safetensors") + ": 'strata.tokenizer'";
  EXPECT_EQ(
      with_record(
          R"({"kind":"sentencepiece","vocab_size":300,"checksum":"0000000000000000","model":""})"),
      where + ": checksum 0000000000000000 does not match its model ("
          + strata::checksum_hex(TokenizerSpec{"sentencepiece", 300, ""}.checksum())
          + "); the metadata is damaged");
  EXPECT_EQ(with_record(R"({"kind":"words","vocab_size":300,"checksum":"0","model":""})"),
            where + ": kind 'words', expected 'bytes' or 'sentencepiece'");
  EXPECT_EQ(with_record("[1]").rfind(where + " is malformed: ", 0), 0u);
}

// The largest vocabulary the issue asks for trains, samples and saves (tiny widths keep it quick).
TEST_F(TokenData, VocabularyOf32768TrainsSamplesAndSaves) {
  const Index V = 32768;
  std::vector<Token> ids(5000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = Token((i * 104729) % V);
  TokenizerSpec sp{"sentencepiece", V, "a model"};
  write_tokens(file("v.train.tok"), ids, V, sp.checksum());
  write_tokens(file("v.val.tok"), ids, V, sp.checksum());
  write_raw(file("v.model"), sp.model);
  const TokenDataset data = TokenDataset::from_token_files(file("v"), 16);
  strata::GPT<float> model(tiny_config(V));
  strata::Trainer<float> trainer(model, data, tiny_options(3));
  const double first = trainer.step().loss;
  EXPECT_NEAR(first, std::log(double(V)), 0.5);  // untrained: about uniform over V
  trainer.step();
  trainer.step();
  trainer.save(file("v.safetensors"));
  const std::vector<Token> sample =
      strata::generate(model, {ids[0], ids[1]}, 20, strata::Sampler{0.8, 0, 1});
  ASSERT_EQ(sample.size(), 20u);
  for (Token t : sample) {
    EXPECT_GE(t, 0);
    EXPECT_LT(t, V);
  }
  const auto loaded = strata::load_model<float>(file("v.safetensors"));
  EXPECT_EQ(loaded->config().vocab_size, V);
  EXPECT_TRUE(strata::testing::bit_equal(loaded->parameters(), model.parameters()));
  EXPECT_EQ(strata::read_tokenizer(strata::io::SafetensorsFile::read(file("v.safetensors"))), sp);
}

}  // namespace
