// examples/cli_common.hpp: command-line pieces shared by the example programs.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include <strata/strata.hpp>

namespace examples {

/// A number >= minimum, with an error that says so ("--layers: 0 is below the minimum 1").
/// (CLI11's PositiveNumber prints its internal range, 0 to 1.8e308, which helps nobody.)
inline CLI::Validator AtLeast(double minimum) {
  std::ostringstream name;
  name << "NUMBER >= " << minimum;
  return CLI::Validator(
      [minimum](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return "'" + text + "' is not a number";
        if (value < minimum) {
          std::ostringstream os;
          os << text << " is below the minimum " << minimum;
          return os.str();
        }
        // (CLI11 would saturate a count beyond the 64-bit range to its maximum)
        if (!(value < 9.2233720368547758e18))
          return text + " is out of range (at most 9223372036854775807)";
        return "";
      },
      name.str());
}

/// A number > 0 ("--lr: 0 is not positive").
inline CLI::Validator Positive() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        double value = 0;
        if (!CLI::detail::lexical_cast(text, value)) return "'" + text + "' is not a number";
        return value > 0 ? "" : text + " is not positive";
      },
      "NUMBER > 0");
}

/// Flags that choose the attention plan; apply() turns them into a strata::AttentionPlan.
struct PlanFlags {
  std::string kind = "standard";
  strata::Index skip_distance = 0;  // 0 = default round(3L/4)
  strata::Index skip_heads = -1;    // -1 = default round(3NH/4)
  std::string skip_mode = "split";
  std::vector<strata::Index> depths;  // empty = all intermediate layers
  strata::Index feature_width = 0;    // 0 = C
  bool embeddings = false;

  void add(CLI::App& app) {
    app.add_option("--attention", kind, "Attention plan")
        ->check(CLI::IsMember({"standard", "skip", "shortcut"}))
        ->capture_default_str();
    app.add_option("--skip-distance", skip_distance,
                   "Skip-layer distance d (layers back); default round(3L/4)")
        ->check(AtLeast(1));
    app.add_option("--skip-heads", skip_heads, "Skip heads n per skip layer; default round(3NH/4)")
        ->check(AtLeast(0));
    app.add_option("--skip-mode", skip_mode,
                   "split: skip heads read only the earlier layer; "
                   "concat: they attend over both")
        ->check(CLI::IsMember({"split", "concat"}))
        ->capture_default_str();
    app.add_option("--shortcut-depths", depths,
                   "Depths the final layer attends over, 1..L-1, comma separated; default all")
        ->delimiter(',');
    app.add_option("--feature-width", feature_width, "Shortcut feature width Cf; default C")
        ->check(AtLeast(0));
    app.add_flag("--shortcut-embeddings", embeddings, "Shortcuts also attend over the embeddings");
  }

  strata::AttentionPlan plan() const {
    if (kind == "skip")
      return strata::AttentionPlan::skip_layer(
          skip_distance > 0 ? std::optional<strata::Index>(skip_distance) : std::nullopt,
          skip_heads >= 0 ? std::optional<strata::Index>(skip_heads) : std::nullopt,
          strata::parse_skip_mode(skip_mode));
    if (kind == "shortcut")
      return strata::AttentionPlan::shortcut(depths, feature_width, embeddings);
    return strata::AttentionPlan::standard();
  }
};

/// "1h02m", "3m05s", "42s".
inline std::string format_duration(double seconds) {
  if (!(seconds >= 0) || seconds > 1e7) return "?";
  const long s = long(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  else if (s >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", s);
  return buf;
}

/// The model's attention plan for logs, with its defaults resolved ("skip_layer(distance=3,
/// heads=3, mode=split)").
inline std::string plan_text(const strata::ModelConfig& c) {
  return c.attention.describe(int(c.n_layer), int(c.n_head), c.n_embd);
}

/// Length of the UTF-8 sequence that lead byte c starts (2..4), or 0 if c cannot start one.
inline int utf8_length(unsigned char c) {
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

/// Whether b may follow lead byte `lead` as the second byte of a sequence (excludes overlong
/// forms, UTF-16 surrogates and code points above U+10FFFF), or any later byte when lead is 0.
inline bool utf8_continues(unsigned char lead, unsigned char b) {
  if (b < 0x80 || b > 0xBF) return false;
  if (lead == 0xE0) return b >= 0xA0;
  if (lead == 0xED) return b <= 0x9F;
  if (lead == 0xF0) return b >= 0x90;
  if (lead == 0xF4) return b <= 0x8F;
  return true;
}

/// Byte offset of the first byte that is not part of valid UTF-8 (a sequence cut off by the end
/// counts as invalid), or std::string::npos when all of text is valid UTF-8.
inline std::size_t first_invalid_utf8(const std::string& text) {
  const std::size_t n = text.size();
  for (std::size_t i = 0; i < n;) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    const int len = utf8_length(c);
    if (len == 0 || i + std::size_t(len) > n) return i;
    for (int k = 1; k < len; ++k)
      if (!utf8_continues(k == 1 ? c : 0, static_cast<unsigned char>(text[i + std::size_t(k)])))
        return i;
    i += std::size_t(len);
  }
  return std::string::npos;
}

/// Turns bytes (sampled one at a time) into text that cannot garble a terminal: valid UTF-8 passes
/// through, each byte that is not part of a valid sequence becomes U+FFFD (the replacement
/// character), and control characters other than newline and tab become '?'. With raw = true
/// every byte passes unchanged.
class TerminalText {
 public:
  explicit TerminalText(bool raw = false) : raw_(raw) {}

  /// Feeds one byte; returns what can be printed now (a multi-byte character waits for its end).
  std::string put(unsigned char c) {
    if (raw_) return std::string(1, char(c));
    std::string out;
    if (!pending_.empty()) {
      const auto lead = static_cast<unsigned char>(pending_[0]);
      if (utf8_continues(pending_.size() == 1 ? lead : 0, c)) {
        pending_ += char(c);
        if (int(pending_.size()) == utf8_length(lead)) out.swap(pending_);
        return out;
      }
      out = flush();  // the sequence broke off: its bytes are invalid; c starts afresh
    }
    if (c < 0x80) {
      out += (c == '\n' || c == '\t' || (c >= 0x20 && c != 0x7F)) ? char(c) : '?';
    } else if (utf8_length(c) > 0) {
      pending_ = std::string(1, char(c));
    } else {
      out += kReplacement;
    }
    return out;
  }

  /// Ends the text: an unfinished sequence becomes replacement characters.
  std::string flush() {
    std::string out;
    for (std::size_t i = 0; i < pending_.size(); ++i) out += kReplacement;
    pending_.clear();
    return out;
  }

 private:
  static constexpr const char* kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  bool raw_;
  std::string pending_;
};

/// Sampled text made safe for a terminal (see TerminalText), or unchanged when raw.
inline std::string printable(const std::string& text, bool raw = false) {
  TerminalText t(raw);
  std::string out;
  for (unsigned char c : text) out += t.put(c);
  return out + t.flush();
}

/// A non-negative integer that fits std::uint64_t, such as a seed ("--seed: -5 is not an unsigned
/// integer (0 to 18446744073709551615)"). CLI11 alone would wrap -5 around to 2^64 - 5.
inline CLI::Validator UnsignedInteger() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        const std::string why = text + " is not an unsigned integer (0 to "
                              + std::to_string(std::numeric_limits<std::uint64_t>::max()) + ")";
        if (text.empty() || text.size() > 20) return why;
        for (char c : text)
          if (c < '0' || c > '9') return why;
        errno = 0;
        (void)std::strtoull(text.c_str(), nullptr, 10);
        return errno == ERANGE ? why : "";
      },
      "UINT64");
}

/// Checks before any work is done that `path` (given with `flag`) can be written as a file: not a
/// directory, in a directory that exists (missing parents are created, with a note, as the
/// default out/ is) and that accepts new files (tested by creating and removing a probe file, which
/// also catches read-only file systems). Throws strata::Error naming the flag, the path and why.
inline void check_output_path(const std::string& path, const std::string& flag,
                              const std::string& example_name = "model.safetensors") {
  namespace fs = std::filesystem;
  if (path.empty()) strata::fail(flag, ": the path is empty");
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec))
    strata::fail(flag, " ", path, ": is a directory; expected a file path such as ",
                 (p / example_name).string());
  fs::path parent = p.parent_path();
  if (parent.empty()) parent = ".";
  if (!fs::exists(parent, ec)) {
    fs::path existing = parent;  // the deepest part that exists, to say what is in the way
    while (!existing.empty() && !fs::exists(existing, ec)) existing = existing.parent_path();
    if (!existing.empty() && !fs::is_directory(existing, ec))
      strata::fail(flag, " ", path, ": '", existing.string(), "' is a file, not a directory");
    fs::create_directories(parent, ec);
    if (ec)
      strata::fail(flag, " ", path, ": cannot create the directory '", parent.string(),
                   "': ", ec.message());
    std::fprintf(stderr, "note: created the directory '%s' for %s\n", parent.string().c_str(),
                 flag.c_str());
  } else if (!fs::is_directory(parent, ec)) {
    strata::fail(flag, " ", path, ": '", parent.string(), "' is a file, not a directory");
  }
  const std::string probe =
      (parent / (".strata-write-test." + std::to_string(::getpid()))).string();
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    const int err = errno;
    strata::fail(flag, " ", path, ": cannot create files in '", parent.string(),
                 "': ", std::strerror(err));
  }
  ::close(fd);
  ::unlink(probe.c_str());
  if (fs::exists(p, ec) && ::access(path.c_str(), W_OK) != 0 && flag == "--log") {
    const int err = errno;
    strata::fail(flag, " ", path, ": cannot write the existing file: ", std::strerror(err));
  }
}

/// Checks that `path` (given with `flag`) is a readable regular file: a directory, a missing file
/// and an unreadable one each get their own message.
inline void check_input_file(const std::string& path, const std::string& flag) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec))
    strata::fail(flag, " ", path, ": is a directory; expected a file");
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) {
    const int err = errno;
    strata::fail(flag, " ", path, ": cannot open: ", std::strerror(err));
  }
  std::fclose(f);
}

}  // namespace examples
