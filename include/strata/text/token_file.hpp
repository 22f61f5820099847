// strata/text/token_file.hpp: binary token files (a tokenized corpus, written by the `prepare`
// example) and a read-only memory map of them, so that a corpus larger than RAM trains.
//
// Format, little-endian, version 1:
//   bytes [0, 8)    magic "STRATATK"
//   bytes [8, 12)   u32 format version (1)
//   bytes [12, 16)  u32 bytes per token: 2 (uint16, when vocab_size <= 65536) or 4 (uint32)
//   bytes [16, 24)  u64 vocab_size of the tokenizer
//   bytes [24, 32)  u64 token count N
//   bytes [32, 40)  u64 tokenizer checksum (TokenizerSpec::checksum)
//   bytes [40, 64)  zero
//   bytes [64, 64 + N * bytes per token)  the token ids
// Opening a file checks all of it, every id included, before any token is used.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "../core/error.hpp"
#include "../core/types.hpp"
#include "tokenizer.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) \
    && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "strata/text/token_file.hpp assumes a little-endian host (token files are little-endian)"
#endif

namespace strata {

/// A read-only view of token ids stored as int32 (in memory) or uint16 / uint32 (token files).
/// Cheap to copy; it does not own the tokens.
class TokenSpan {
 public:
  TokenSpan() = default;
  /// A view of a vector (which must outlive the span).
  TokenSpan(const std::vector<Token>& tokens)  // NOLINT: implicit, so vectors pass as spans
      : data_(tokens.data()), size_(Index(tokens.size())), width_(4) {}
  TokenSpan(const std::uint16_t* data, Index size) : data_(data), size_(size), width_(2) {}
  TokenSpan(const std::int32_t* data, Index size) : data_(data), size_(size), width_(4) {}

  Index size() const { return size_; }
  bool empty() const { return size_ == 0; }
  Token operator[](Index i) const {
    return width_ == 2 ? Token(static_cast<const std::uint16_t*>(data_)[i])
                       : static_cast<const std::int32_t*>(data_)[i];
  }
  /// Tokens [first, first + count).
  TokenSpan subspan(Index first, Index count) const {
    STRATA_CHECK(first >= 0 && count >= 0 && first + count <= size_, "TokenSpan: [", first, ", ",
                 first + count, ") is outside [0, ", size_, ")");
    TokenSpan s = *this;
    s.data_ = static_cast<const char*>(data_) + first * width_;
    s.size_ = count;
    return s;
  }
  std::vector<Token> to_vector() const {
    std::vector<Token> v(static_cast<size_t>(size_));
    for (Index i = 0; i < size_; ++i) v[size_t(i)] = (*this)[i];
    return v;
  }

 private:
  const void* data_ = nullptr;
  Index size_ = 0;
  int width_ = 4;
};

/// The fixed 64-byte header of a token file.
struct TokenFileHeader {
  static constexpr char kMagic[8] = {'S', 'T', 'R', 'A', 'T', 'A', 'T', 'K'};
  static constexpr std::uint32_t kVersion = 1;
  static constexpr std::size_t kBytes = 64;

  std::uint32_t token_bytes = 2;  ///< 2 (uint16) or 4 (uint32)
  std::uint64_t vocab_size = 0;
  std::uint64_t count = 0;
  std::uint64_t tokenizer_checksum = 0;

  /// The narrowest width that holds every id of a vocabulary.
  static std::uint32_t width_for(std::uint64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

  void encode(unsigned char* out) const {
    std::memset(out, 0, kBytes);
    std::memcpy(out, kMagic, 8);
    std::memcpy(out + 8, &kVersion, 4);
    std::memcpy(out + 12, &token_bytes, 4);
    std::memcpy(out + 16, &vocab_size, 8);
    std::memcpy(out + 24, &count, 8);
    std::memcpy(out + 32, &tokenizer_checksum, 8);
  }
};

namespace detail {
inline std::string errno_message(int err) { return std::generic_category().message(err); }

/// Shows the first bytes of a foreign file: printable ASCII as is, the rest as \xNN.
inline std::string show_bytes(const unsigned char* p, std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\') {
      s += char(p[i]);
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", p[i]);
      s += buf;
    }
  }
  return s;
}

/// A file written to "<path>.tmp.<pid>" and renamed over path by commit(): readers see the old
/// file or the complete new one, never a part. Removed unless committed.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path)
      : path_(std::move(path)), temp_(path_ + ".tmp." + std::to_string(::getpid())) {
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) fail_errno("cannot create");
  }
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) std::remove(temp_.c_str());
  }
  const std::string& path() const { return path_; }

  void write(const void* data, std::size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      const ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) fail_errno("cannot write");
      p += w;
      n -= std::size_t(w);
    }
  }
  void pwrite(const void* data, std::size_t n, off_t offset) {
    if (::pwrite(fd_, data, n, offset) != ssize_t(n)) fail_errno("cannot write");
  }
  /// Flushes to disk and closes (the temporary stays until commit()).
  void finish() {
    if (fd_ < 0) return;
    if (::fsync(fd_) != 0) fail_errno("cannot sync");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) fail_errno("cannot close");
  }
  /// finish(), then renames the temporary over the target.
  void commit() {
    finish();
    std::error_code ec;
    std::filesystem::rename(temp_, path_, ec);
    if (ec) fail(path_, ": cannot rename ", temp_, " to it: ", ec.message());
    committed_ = true;
  }

 private:
  [[noreturn]] void fail_errno(const char* what) const {
    const int err = errno;
    fail(path_, ": ", what, " ", temp_, ": ", errno_message(err));
  }
  std::string path_, temp_;
  int fd_ = -1;
  bool committed_ = false;
};
}  // namespace detail

/// Writes a token file atomically: append ids with write(), then commit(). Ids outside the
/// vocabulary are an error naming their position; nothing appears at `path` unless committed.
class TokenFileWriter {
 public:
  TokenFileWriter(const std::string& path, std::uint64_t vocab_size,
                  std::uint64_t tokenizer_checksum)
      : file_(path) {
    if (vocab_size < 1 || vocab_size > (std::uint64_t(1) << 31) - 1)
      fail("token file ", path, ": vocab_size ", vocab_size, ", expected 1..2147483647");
    header_.token_bytes = TokenFileHeader::width_for(vocab_size);
    header_.vocab_size = vocab_size;
    header_.tokenizer_checksum = tokenizer_checksum;
    unsigned char bytes[TokenFileHeader::kBytes];
    header_.encode(bytes);  // count 0 until commit()
    file_.write(bytes, sizeof bytes);
  }

  void write(const Token* ids, std::size_t n) {
    if (finished_) fail("token file ", file_.path(), ": written after finish()");
    buffer_.resize(n * header_.token_bytes);
    for (std::size_t i = 0; i < n; ++i) {
      if (ids[i] < 0 || std::uint64_t(ids[i]) >= header_.vocab_size)
        fail("token file ", file_.path(), ": token ", ids[i], " at position ", header_.count + i,
             " is outside the vocabulary [0, ", header_.vocab_size, ")");
      if (header_.token_bytes == 2) {
        const auto v = std::uint16_t(ids[i]);
        std::memcpy(&buffer_[i * 2], &v, 2);
      } else {
        const auto v = std::uint32_t(ids[i]);
        std::memcpy(&buffer_[i * 4], &v, 4);
      }
    }
    file_.write(buffer_.data(), buffer_.size());
    header_.count += n;
  }
  void write(const std::vector<Token>& ids) { write(ids.data(), ids.size()); }

  std::uint64_t count() const { return header_.count; }
  /// Writes the final header and flushes; commit() renames the file into place.
  void finish() {
    if (finished_) return;
    unsigned char bytes[TokenFileHeader::kBytes];
    header_.encode(bytes);
    file_.pwrite(bytes, sizeof bytes, 0);
    file_.finish();
    finished_ = true;
  }
  void commit() {
    finish();
    file_.commit();
  }

 private:
  detail::AtomicFile file_;
  TokenFileHeader header_;
  std::vector<unsigned char> buffer_;
  bool finished_ = false;
};

/// A token file mapped read-only into memory: pages are read from disk as they are used and can
/// be dropped again by the kernel, so the file may be larger than RAM.
class TokenFile {
 public:
  /// Maps and checks `path`: header, size, and that every id is below the header's vocab_size.
  static std::shared_ptr<const TokenFile> open(const std::string& path) {
    return std::shared_ptr<const TokenFile>(new TokenFile(path));
  }
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;
  ~TokenFile() {
    if (map_ != nullptr && map_ != MAP_FAILED) ::munmap(map_, map_bytes_);
  }

  const std::string& path() const { return path_; }
  const TokenFileHeader& header() const { return header_; }
  Index size() const { return Index(header_.count); }
  TokenSpan tokens() const {
    const auto* data = static_cast<const unsigned char*>(map_) + TokenFileHeader::kBytes;
    if (header_.token_bytes == 2)
      return TokenSpan(reinterpret_cast<const std::uint16_t*>(data), size());
    return TokenSpan(reinterpret_cast<const std::int32_t*>(data), size());
  }

 private:
  explicit TokenFile(const std::string& path) : path_(path) {
    const std::string where = "token file " + path;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(where, ": cannot open: ", detail::errno_message(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      fail(where, ": cannot stat: ", detail::errno_message(err));
    }
    const auto bytes = std::uint64_t(st.st_size);
    if (bytes < TokenFileHeader::kBytes) {
      ::close(fd);
      fail(where, ": ", bytes, " bytes, shorter than the ", TokenFileHeader::kBytes,
           "-byte header (truncated, or not a token file)");
    }
    map_bytes_ = std::size_t(bytes);
    map_ = ::mmap(nullptr, map_bytes_, PROT_READ, MAP_SHARED, fd, 0);
    const int map_err = errno;
    ::close(fd);
    if (map_ == MAP_FAILED) fail(where, ": cannot map: ", detail::errno_message(map_err));
    const auto* p = static_cast<const unsigned char*>(map_);
    if (std::memcmp(p, TokenFileHeader::kMagic, 8) != 0)
      fail(where, ": starts with '", detail::show_bytes(p, 8),
           "', expected 'STRATATK' (not a "
           "strata token file; make one with prepare)");
    std::uint32_t version = 0;
    std::memcpy(&version, p + 8, 4);
    if (version != TokenFileHeader::kVersion)
      fail(where, ": format version ", version, ", this program reads version ",
           TokenFileHeader::kVersion);
    std::memcpy(&header_.token_bytes, p + 12, 4);
    std::memcpy(&header_.vocab_size, p + 16, 8);
    std::memcpy(&header_.count, p + 24, 8);
    std::memcpy(&header_.tokenizer_checksum, p + 32, 8);
    if (header_.token_bytes != 2 && header_.token_bytes != 4)
      fail(where, ": ", header_.token_bytes, " bytes per token, expected 2 (uint16) or 4 (uint32)");
    if (header_.vocab_size < 1 || header_.vocab_size > (std::uint64_t(1) << 31) - 1)
      fail(where, ": vocab_size ", header_.vocab_size, ", expected 1..2147483647");
    if (header_.token_bytes == 2 && header_.vocab_size > 65536)
      fail(where, ": vocab_size ", header_.vocab_size, " does not fit its 2-byte tokens");
    const std::uint64_t room = (bytes - TokenFileHeader::kBytes) / header_.token_bytes;
    if (header_.count > room
        || TokenFileHeader::kBytes + header_.count * header_.token_bytes != bytes)
      fail(where, ": the header promises ", header_.count, " tokens (",
           TokenFileHeader::kBytes + header_.count * header_.token_bytes, " bytes), the file has ",
           bytes, " bytes", header_.count > room ? " (truncated)" : " (trailing data)");
    ::madvise(map_, map_bytes_, MADV_SEQUENTIAL);
    check_ids(where);
    ::madvise(map_, map_bytes_, MADV_RANDOM);  // the loader reads windows at random offsets
  }

  void check_ids(const std::string& where) const {
    const TokenSpan t = tokens();
    const Index n = t.size();
    const auto V = Index(header_.vocab_size);
    if (header_.token_bytes == 2 && V >= 65536) return;  // every uint16 fits
    for (Index i = 0; i < n; ++i) {
      const Token id = t[i];
      if (id < 0 || id >= V)
        fail(where, ": token ",
             header_.token_bytes == 4 ? std::uint64_t(std::uint32_t(id)) : std::uint64_t(id),
             " at position ", i, " is outside the vocabulary [0, ", V, ") of its header");
    }
  }

  std::string path_;
  TokenFileHeader header_;
  void* map_ = nullptr;
  std::size_t map_bytes_ = 0;
};

/// The files of a corpus prepared under a prefix: "<prefix>.train.tok", "<prefix>.val.tok" and,
/// for a SentencePiece tokenizer, its model "<prefix>.model". A prefix given as one of the token
/// files' names ("out/notes.train.tok") means the same prefix.
struct PreparedCorpus {
  std::string prefix, train, val, model;
  static PreparedCorpus at(std::string prefix) {
    for (const char* ext : {".train.tok", ".val.tok"}) {
      const std::string e = ext;
      if (prefix.size() > e.size() && prefix.compare(prefix.size() - e.size(), e.size(), e) == 0)
        prefix.resize(prefix.size() - e.size());
    }
    return {prefix, prefix + ".train.tok", prefix + ".val.tok", prefix + ".model"};
  }
};

/// Reads a whole file into a string.
inline std::string read_file_bytes(const std::string& path, const std::string& what) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(what, " ", path, ": cannot open: ", detail::errno_message(errno));
  std::string s;
  char buf[1 << 16];
  std::size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
  const bool bad = std::ferror(f) != 0;
  std::fclose(f);
  if (bad) fail(what, " ", path, ": read error");
  return s;
}

/// The tokenizer a token file was encoded with: the byte tokenizer when its header says so,
/// otherwise the SentencePiece model at model_path, whose checksum must match the header's.
inline TokenizerSpec tokenizer_of(const TokenFile& file, const std::string& model_path) {
  const TokenizerSpec bytes = TokenizerSpec::bytes();
  const TokenFileHeader& h = file.header();
  if (h.tokenizer_checksum == bytes.checksum()) {
    if (h.vocab_size != std::uint64_t(bytes.vocab_size))
      fail("token file ", file.path(), ": byte tokenizer checksum with vocab_size ", h.vocab_size,
           ", expected 256");
    return bytes;
  }
  std::error_code ec;
  if (!std::filesystem::exists(model_path, ec))
    fail("token file ", file.path(), ": encoded with tokenizer checksum ",
         checksum_hex(h.tokenizer_checksum), " (vocab ", h.vocab_size, "), whose model ",
         model_path, " is missing");
  TokenizerSpec spec;
  spec.kind = "sentencepiece";
  spec.vocab_size = Index(h.vocab_size);
  spec.model = read_file_bytes(model_path, "tokenizer model");
  if (spec.checksum() != h.tokenizer_checksum)
    fail("token file ", file.path(), " was encoded with tokenizer checksum ",
         checksum_hex(h.tokenizer_checksum), ", but ", model_path, " has checksum ",
         checksum_hex(spec.checksum()), " (prepared again since? prepare the corpus anew)");
  return spec;
}

}  // namespace strata
