// Tests for the command-line helpers of the examples (examples/cli_common.hpp): UTF-8 checks and
// terminal-safe text, the unsigned-integer flag check, and the early checks of input and output
// paths, each with its exact message. (The example programs themselves are run end to end by the
// examples.* tests of examples/CMakeLists.txt.)
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "../examples/cli_common.hpp"
#include "gradcheck.hpp"
#include "temp_dir.hpp"

namespace {

using examples::first_invalid_utf8;
using examples::printable;
using strata::testing::error_of;

const std::string kReplacement = "\xEF\xBF\xBD";

TEST(Utf8, FirstInvalidByte) {
  const auto npos = std::string::npos;
  EXPECT_EQ(first_invalid_utf8(""), npos);
  EXPECT_EQ(first_invalid_utf8("Call me Ishmael."), npos);
  EXPECT_EQ(first_invalid_utf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x90\x8B"), npos);  // é € whale
  EXPECT_EQ(first_invalid_utf8("abc\xFF"), 3u);                                      // never valid
  EXPECT_EQ(first_invalid_utf8("ab\x80"), 2u);                  // stray continuation byte
  EXPECT_EQ(first_invalid_utf8("a\xC3"), 1u);                   // cut off by the end
  EXPECT_EQ(first_invalid_utf8("a\xE2\x82z"), 1u);              // cut off by an ASCII byte
  EXPECT_EQ(first_invalid_utf8("\xC0\xAF"), 0u);                // overlong '/'
  EXPECT_EQ(first_invalid_utf8("x\xE0\x80\xAF"), 1u);           // overlong three-byte form
  EXPECT_EQ(first_invalid_utf8("xy\xED\xA0\x80"), 2u);          // UTF-16 surrogate D800
  EXPECT_EQ(first_invalid_utf8("\xF4\x90\x80\x80"), 0u);        // above U+10FFFF
  EXPECT_EQ(first_invalid_utf8(std::string("a\0b", 3)), npos);  // NUL is valid UTF-8
}

TEST(Utf8, PrintableReplacesInvalidBytesAndControls) {
  EXPECT_EQ(printable("Call me\tIshmael.\n"), "Call me\tIshmael.\n");
  EXPECT_EQ(printable("caf\xC3\xA9"), "caf\xC3\xA9");
  EXPECT_EQ(printable("a\xFF"
                      "b"),
            "a" + kReplacement + "b");
  EXPECT_EQ(printable("a\xE2\x82z"), "a" + kReplacement + kReplacement + "z");
  EXPECT_EQ(printable("end\xF0\x9F"), "end" + kReplacement + kReplacement);
  EXPECT_EQ(printable("\x1b[2Jx\x7f"), "?[2Jx?");  // no escape sequences reach the terminal
  EXPECT_EQ(printable(std::string("a\0b", 3)), "a?b");
  // --raw: every byte unchanged.
  const std::string bytes("\x1b[2J\xFF\xC3\0z", 7);
  EXPECT_EQ(printable(bytes, /*raw=*/true), bytes);
}

TEST(Utf8, TerminalTextWaitsForTheEndOfACharacter) {
  examples::TerminalText t;
  EXPECT_EQ(t.put(0xE2), "");
  EXPECT_EQ(t.put(0x82), "");
  EXPECT_EQ(t.put(0xAC), "\xE2\x82\xAC");  // the euro sign, printed whole
  EXPECT_EQ(t.put(0xC3), "");
  EXPECT_EQ(t.put('A'), kReplacement + "A");  // the sequence broke off
  EXPECT_EQ(t.put(0xC3), "");
  EXPECT_EQ(t.flush(), kReplacement);
  EXPECT_EQ(t.flush(), "");
}

std::string validate(const CLI::Validator& v, std::string text) { return v(text); }

TEST(Flags, UnsignedInteger) {
  const CLI::Validator v = examples::UnsignedInteger();
  EXPECT_EQ(validate(v, "0"), "");
  EXPECT_EQ(validate(v, "1337"), "");
  EXPECT_EQ(validate(v, "18446744073709551615"), "");
  EXPECT_EQ(validate(v, "-5"), "-5 is not an unsigned integer (0 to 18446744073709551615)");
  EXPECT_EQ(validate(v, "18446744073709551616"),
            "18446744073709551616 is not an unsigned integer (0 to 18446744073709551615)");
  EXPECT_EQ(validate(v, "1e3"), "1e3 is not an unsigned integer (0 to 18446744073709551615)");
  EXPECT_EQ(validate(v, "+7"), "+7 is not an unsigned integer (0 to 18446744073709551615)");
  EXPECT_EQ(validate(v, ""), " is not an unsigned integer (0 to 18446744073709551615)");

  // Through CLI11, as the examples use it.
  CLI::App app;
  std::uint64_t seed = 1;
  app.add_option("--seed", seed)->check(examples::UnsignedInteger());
  EXPECT_THROW(app.parse("--seed -5", false), CLI::ValidationError);
  EXPECT_EQ(seed, 1u);
  app.parse("--seed 42", false);
  EXPECT_EQ(seed, 42u);
}

TEST(Flags, AtLeastRejectsNumbersBeyondTheIntegerRange) {
  const CLI::Validator v = examples::AtLeast(1);
  EXPECT_EQ(validate(v, "2000"), "");
  EXPECT_EQ(validate(v, "0"), "0 is below the minimum 1");
  EXPECT_EQ(validate(v, "-5"), "-5 is below the minimum 1");
  EXPECT_EQ(validate(v, "99999999999999999999"),
            "99999999999999999999 is out of range (at most 9223372036854775807)");
  EXPECT_EQ(validate(v, "abc"), "'abc' is not a number");
}

class Paths : public strata::testing::TempDirTest {};

TEST_F(Paths, OutputPathChecks) {
  // A directory, a file in the way, a missing parent (created, with a note).
  const std::string dir = file("runs");
  std::filesystem::create_directory(dir);
  EXPECT_EQ(error_of([&] { examples::check_output_path(dir, "--checkpoint"); }),
            "--checkpoint " + dir + ": is a directory; expected a file path such as " + dir
                + "/model.safetensors");
  EXPECT_EQ(error_of([&] { examples::check_output_path(dir, "--log", "train_log.jsonl"); }),
            "--log " + dir + ": is a directory; expected a file path such as " + dir
                + "/train_log.jsonl");
  const std::string plain = file("plain");
  std::ofstream(plain) << "x";
  EXPECT_EQ(error_of([&] { examples::check_output_path(plain + "/a/b.safetensors", "--log"); }),
            "--log " + plain + "/a/b.safetensors: '" + plain + "' is a file, not a directory");
  EXPECT_EQ(error_of([&] { examples::check_output_path(plain + "/b.safetensors", "--log"); }),
            "--log " + plain + "/b.safetensors: '" + plain + "' is a file, not a directory");
  EXPECT_EQ(error_of([&] { examples::check_output_path("", "--log"); }),
            "--log: the path is empty");
  const std::string deep = file("new/sub/model.safetensors");
  examples::check_output_path(deep, "--checkpoint");
  EXPECT_TRUE(std::filesystem::is_directory(file("new/sub")));
  EXPECT_EQ(listing(), (std::vector<std::string>{"new", "plain", "runs"}));  // no probe left
  EXPECT_TRUE(std::filesystem::is_empty(file("new/sub")));

  // A place that accepts no new files: a read-only directory (root may write anyway, so as root
  // the test uses /sys, which refuses new files even to root).
  std::string ro = file("ro");
  if (::geteuid() == 0) {
    ro = "/sys";
  } else {
    std::filesystem::create_directory(ro);
    ::chmod(ro.c_str(), 0555);
  }
  const std::string message =
      error_of([&] { examples::check_output_path(ro + "/model.safetensors", "--checkpoint"); });
  EXPECT_EQ(
      message.rfind(
          "--checkpoint " + ro + "/model.safetensors: cannot create files in '" + ro + "': ", 0),
      0u)
      << message;
  if (ro != "/sys") ::chmod(ro.c_str(), 0755);
}

TEST_F(Paths, InputFileChecks) {
  EXPECT_EQ(error_of([&] { examples::check_input_file(dir_.string(), "--data"); }),
            "--data " + dir_.string() + ": is a directory; expected a file");
  EXPECT_EQ(error_of([&] { examples::check_input_file(file("none.txt"), "--data"); }),
            "--data " + file("none.txt") + ": cannot open: No such file or directory");
  const std::string text = file("ok.txt");
  std::ofstream(text) << "hello";
  EXPECT_EQ(error_of([&] { examples::check_input_file(text, "--data"); }), "<no error>");
}

}  // namespace
