// prepare: turns a UTF-8 text file into token files for train. It learns a SentencePiece BPE
// vocabulary (byte fallback, so every text round-trips) on the training part of the text, encodes
// the whole file with it, and writes, all or nothing:
//   <out>.model       the SentencePiece model (not for --tokenizer bytes)
//   <out>.train.tok   the first (1 - val-fraction) of the text, cut at a line start
//   <out>.val.tok     the rest
// Then: train --tokens <out>. The last line on stdout is a JSON summary (tokens per byte, MB/s).
//
//   build/examples/prepare --data notes.txt --out out/notes                  # 2048-piece BPE
//   build/examples/prepare --data notes.txt --out out/notes --vocab-size 8192
//   build/examples/prepare --data notes.txt --out out/notes-bytes --tokenizer bytes
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "cli_common.hpp"

namespace {

using strata::Index;
using strata::Token;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// A text file mapped read-only (the corpus may be larger than RAM).
class MappedText {
 public:
  explicit MappedText(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) strata::fail("corpus ", path, ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      strata::fail("corpus ", path, ": not a regular file");
    }
    size_ = size_t(st.st_size);
    if (size_ == 0) {
      ::close(fd);
      strata::fail("corpus ", path, " is empty: there is no text to tokenize");
    }
    data_ = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
    const int err = errno;
    ::close(fd);
    if (data_ == MAP_FAILED) strata::fail("corpus ", path, ": cannot map: ", std::strerror(err));
    ::madvise(data_, size_, MADV_SEQUENTIAL);
  }
  ~MappedText() { ::munmap(data_, size_); }
  MappedText(const MappedText&) = delete;
  MappedText& operator=(const MappedText&) = delete;
  std::string_view text() const { return {static_cast<const char*>(data_), size_}; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

/// Fails unless `text` is UTF-8, naming the first bad byte with its line and column.
void check_utf8(std::string_view text, const std::string& path) {
  const size_t bad = strata::find_invalid_utf8(text);
  if (bad == text.size()) return;
  const size_t line = size_t(std::count(text.begin(), text.begin() + long(bad), '\n')) + 1;
  const size_t line_start = text.rfind('\n', bad == 0 ? 0 : bad - 1);
  const size_t column =
      bad - (line_start == std::string_view::npos || bad == 0 ? 0 : line_start + 1) + 1;
  char byte[8];
  std::snprintf(byte, sizeof byte, "0x%02x", static_cast<unsigned char>(text[bad]));
  strata::fail("corpus ", path, " is not UTF-8: byte ", byte, " at offset ", bad, " (line ", line,
               ", column ", column,
               ") does not start or continue a valid character; convert "
               "the file to UTF-8 first (e.g. iconv -f LATIN1 -t UTF-8)");
}

/// Where a block of about `target` bytes from `begin` should end: after a newline (so that
/// blocks encode as the whole text would), or at `limit`.
size_t block_end(std::string_view text, size_t begin, size_t target, size_t limit) {
  if (limit - begin <= target) return limit;
  const size_t nl = text.substr(0, limit).find('\n', begin + target);
  return nl == std::string_view::npos ? limit : nl + 1;
}

/// Progress on stderr: a rewritten line on a terminal, a line per ~10% otherwise.
class Progress {
 public:
  Progress(size_t total) : total_(total), tty_(isatty(fileno(stderr))), start_(Clock::now()) {}
  void update(size_t done) {
    const double t = seconds_since(start_);
    const int tenth = int(10.0 * double(done) / double(total_));
    if (tty_ ? t - last_ < 0.25 && done < total_ : tenth == last_tenth_) return;
    last_ = t;
    last_tenth_ = tenth;
    const double mbps = double(done) / 1e6 / std::max(t, 1e-9);
    const double eta = mbps > 0 ? double(total_ - done) / 1e6 / mbps : 0;
    std::fprintf(stderr, "%sencoding %7.1f / %.1f MB (%3.0f%%) | %6.2f MB/s | ETA %s%s",
                 tty_ ? "\r" : "", double(done) / 1e6, double(total_) / 1e6,
                 100.0 * double(done) / double(total_), mbps,
                 examples::format_duration(eta).c_str(), tty_ ? "\033[K" : "\n");
    if (tty_ && done == total_) std::fprintf(stderr, "\n");
  }

 private:
  size_t total_;
  bool tty_;
  Clock::time_point start_;
  double last_ = -1;
  int last_tenth_ = -1;
};

struct Flags {
  std::string data = STRATA_DEFAULT_DATA;
  std::string out = "out/corpus";
  std::string tokenizer = "bpe";
  Index vocab_size = 2048;
  double val_fraction = 0.1;
  double character_coverage = 0.9995;
  Index max_train_lines = 2'000'000;
  int threads = 0;
};

int run(const Flags& f, const CLI::App& app) {
  const auto t_start = Clock::now();
  const unsigned threads =
      f.threads > 0 ? unsigned(f.threads) : std::max(1u, std::thread::hardware_concurrency());
  const MappedText corpus(f.data);
  const std::string_view text = corpus.text();
  check_utf8(text, f.data);

  // The split: the validation part starts at the first line start after (1 - val) of the bytes.
  size_t split = size_t(double(text.size()) * (1.0 - f.val_fraction));
  const size_t nl = text.find('\n', split == 0 ? 0 : split - 1);
  if (nl != std::string_view::npos) split = nl + 1;
  while (split < text.size() && (static_cast<unsigned char>(text[split]) & 0xc0) == 0x80) ++split;
  if (split == 0 || split >= text.size())
    strata::fail("corpus ", f.data, ": ", text.size(), " bytes cannot be split into training and ",
                 "validation text with a validation fraction of ", f.val_fraction);

  // The tokenizer.
  strata::TokenizerSpec spec = strata::TokenizerSpec::bytes();
  if (f.tokenizer == "bpe") {
#if defined(STRATA_HAVE_SENTENCEPIECE)
    // Learn on the training text only (lines without their newline), at most max_train_lines of
    // them, evenly spread.
    std::vector<std::string_view> all;
    for (size_t at = 0; at < split;) {
      size_t end = text.substr(0, split).find('\n', at);
      if (end == std::string_view::npos) end = split;
      if (end > at) all.push_back(text.substr(at, end - at));
      at = end + 1;
    }
    std::vector<std::string> lines;
    const size_t keep = std::min(all.size(), size_t(f.max_train_lines));
    lines.reserve(keep);
    for (size_t i = 0; i < keep; ++i) lines.emplace_back(all[i * all.size() / keep]);
    std::fprintf(stderr,
                 "prepare: learning a %lld-piece BPE vocabulary from %zu of %zu lines of "
                 "%s ...\n",
                 (long long)f.vocab_size, lines.size(), all.size(), f.data.c_str());
    const auto t0 = Clock::now();
    strata::SentencePieceOptions opts;
    opts.vocab_size = f.vocab_size;
    opts.character_coverage = f.character_coverage;
    opts.threads = int(threads);
    opts.fit_vocab = app.count("--vocab-size") == 0;  // the default shrinks for tiny corpora
    spec.kind = "sentencepiece";
    spec.model = strata::train_sentencepiece_bpe(lines, opts, "corpus " + f.data);
    spec.vocab_size = strata::SentencePieceTokenizer(spec.model).vocab_size();
    if (spec.vocab_size != f.vocab_size)
      std::fprintf(stderr,
                   "prepare: the corpus supports only %lld pieces; using that many "
                   "(give --vocab-size to insist)\n",
                   (long long)spec.vocab_size);
    std::fprintf(stderr, "prepare: vocabulary learned in %.1f s\n", seconds_since(t0));
#else
    (void)app;
    strata::fail(
        "--tokenizer bpe needs SentencePiece, and this program was built without it "
        "(configure with -DSTRATA_USE_SENTENCEPIECE=ON), or use --tokenizer bytes");
#endif
  }
  const auto tokenizer = strata::make_tokenizer(spec, "the new tokenizer");

  // Encode block by block, blocks of a round in parallel; check that every block round-trips.
  const strata::PreparedCorpus out = strata::PreparedCorpus::at(f.out);
  const auto parent = std::filesystem::path(out.prefix).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  strata::TokenFileWriter train(out.train, std::uint64_t(spec.vocab_size), spec.checksum());
  strata::TokenFileWriter val(out.val, std::uint64_t(spec.vocab_size), spec.checksum());
  constexpr size_t kBlock = 1 << 20;
  Progress progress(text.size());
  const auto t_encode = Clock::now();
  size_t done = 0;
  std::vector<std::pair<size_t, size_t>> blocks;
  std::vector<std::vector<Token>> ids(threads);
  std::vector<std::string> errors(threads);
  while (done < text.size()) {
    blocks.clear();
    for (size_t at = done; blocks.size() < threads && at < text.size();) {
      const size_t limit = at < split ? split : text.size();
      const size_t end = block_end(text, at, kBlock, limit);
      blocks.emplace_back(at, end);
      at = end;
    }
    auto work = [&](size_t k) {
      try {
        const std::string_view block =
            text.substr(blocks[k].first, blocks[k].second - blocks[k].first);
        ids[k] = tokenizer->encode(block);
        if (tokenizer->decode(ids[k]) != block)
          strata::fail("bytes ", blocks[k].first, "..", blocks[k].second,
                       " do not decode back to themselves (a tokenizer bug; please report)");
      } catch (const std::exception& e) {
        errors[k] = e.what();
      }
    };
    std::vector<std::thread> pool;
    for (size_t k = 1; k < blocks.size(); ++k) pool.emplace_back(work, k);
    work(0);
    for (auto& t : pool) t.join();
    for (size_t k = 0; k < blocks.size(); ++k) {
      if (!errors[k].empty()) strata::fail("encoding ", f.data, ": ", errors[k]);
      (blocks[k].first < split ? train : val).write(ids[k]);
    }
    done = blocks.back().second;
    progress.update(done);
  }
  const double encode_seconds = seconds_since(t_encode);

  // All or nothing: every file is complete before any is renamed into place.
  std::unique_ptr<strata::detail::AtomicFile> model_file;
  if (!spec.model.empty()) {
    model_file = std::make_unique<strata::detail::AtomicFile>(out.model);
    model_file->write(spec.model.data(), spec.model.size());
    model_file->finish();
  }
  train.finish();
  val.finish();
  if (model_file) model_file->commit();
  train.commit();
  val.commit();
  if (spec.model.empty()) std::filesystem::remove(out.model);  // a stale model of an earlier run

  const double tokens_per_byte = double(train.count() + val.count()) / double(text.size());
  const double mbps = double(text.size()) / 1e6 / std::max(encode_seconds, 1e-9);
  std::fprintf(stderr,
               "prepare: %s: %llu training tokens (%zu bytes), %llu validation tokens (%zu bytes), "
               "%s ids, vocabulary %lld\n"
               "prepare: %.4f tokens per byte; encoded %.1f MB in %.2f s (%.2f MB/s, %u threads); "
               "total %.1f s\n"
               "prepare: train with: train --tokens %s\n",
               out.prefix.c_str(), (unsigned long long)train.count(), split,
               (unsigned long long)val.count(), text.size() - split,
               spec.vocab_size <= 65536 ? "uint16" : "uint32", (long long)spec.vocab_size,
               tokens_per_byte, double(text.size()) / 1e6, encode_seconds, mbps, threads,
               seconds_since(t_start), out.prefix.c_str());
  std::printf("%s\n", nlohmann::json{{"prefix", out.prefix},
                                     {"tokenizer", spec.kind},
                                     {"vocab_size", spec.vocab_size},
                                     {"train_tokens", train.count()},
                                     {"val_tokens", val.count()},
                                     {"train_bytes", split},
                                     {"val_bytes", text.size() - split},
                                     {"tokens_per_byte", tokens_per_byte},
                                     {"encode_seconds", encode_seconds},
                                     {"encode_mb_per_s", mbps},
                                     {"threads", threads}}
                          .dump()
                          .c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenize a UTF-8 text file into token files for train (BPE or bytes)."};
  Flags f;
  app.add_option("--data", f.data, "UTF-8 text file")->capture_default_str();
  app.add_option("--out", f.out, "Output prefix: <out>.model, <out>.train.tok, <out>.val.tok")
      ->capture_default_str();
  app.add_option("--tokenizer", f.tokenizer, "bpe (SentencePiece, byte fallback) or bytes")
      ->check(CLI::IsMember({"bpe", "bytes"}))
      ->capture_default_str();
  app.add_option("--vocab-size", f.vocab_size,
                 "BPE pieces, <unk> and 256 byte pieces included (by default fewer if the corpus "
                 "has fewer)")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--val-fraction", f.val_fraction,
                 "Fraction of the text (its end) kept for validation")
      ->capture_default_str()
      ->check(CLI::Range(0.001, 0.5));
  app.add_option(
         "--character-coverage", f.character_coverage,
         "Share of characters that get pieces of their own; rarer ones are spelled in bytes")
      ->capture_default_str()
      ->check(CLI::Range(0.5, 1.0));
  app.add_option("--max-train-lines", f.max_train_lines,
                 "Lines (evenly spread) the vocabulary is learned from")
      ->capture_default_str()
      ->check(examples::AtLeast(1));
  app.add_option("--threads", f.threads, "Threads; 0 = all cores")
      ->capture_default_str()
      ->check(examples::AtLeast(0));
  CLI11_PARSE(app, argc, argv);
  try {
    return run(f, app);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "prepare: error: %s\n", e.what());
    return 1;
  }
}
