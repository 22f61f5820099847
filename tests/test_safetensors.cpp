// Tests for strata/io/safetensors.hpp: round trips, the byte layout, files as other tools write
// them, every malformed-file error with its exact message, and atomic writes.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <ostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "gradcheck.hpp"
#include "strata/io/safetensors.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using strata::Index;
using strata::io::DType;
using strata::io::SafetensorsFile;
using strata::io::TensorView;
using strata::io::write_safetensors;

/// The 8-byte little-endian header length.
std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (char& c : s) {
    c = static_cast<char>(n & 0xff);
    n >>= 8;
  }
  return s;
}

/// A file as bytes: length prefix, header, data.
std::string make_file(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

using strata::testing::error_of;

std::string read_error(const std::string& path) {
  return error_of([&] { (void)SafetensorsFile::read(path); });
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// A fresh temporary directory per test (tests/temp_dir.hpp).
using TempDir = strata::testing::TempDirTest;

using Safetensors = TempDir;

TEST(SafetensorsText, DTypeAndShapeStrings) {
  EXPECT_EQ(strata::io::to_string(DType::F32), "F32");
  EXPECT_EQ(strata::io::to_string(DType::F64), "F64");
  EXPECT_EQ(strata::io::to_string(DType::I32), "I32");
  EXPECT_EQ(strata::io::shape_string({}), "[]");
  EXPECT_EQ(strata::io::shape_string({7}), "[7]");
  EXPECT_EQ(strata::io::shape_string({256, 128}), "[256, 128]");
  static_assert(strata::io::dtype_of<float>() == DType::F32);
  static_assert(strata::io::dtype_of<double>() == DType::F64);
  static_assert(strata::io::dtype_of<std::int32_t>() == DType::I32);
}

TEST_F(Safetensors, RoundTripAllDTypesWithMetadata) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> f32 = {1.0f, -0.0f, std::nanf(""),
                                  inf,  -inf,  1e-40f};  // incl. a denormal
  const std::vector<double> f64 = {0.1, -1e300, 5e-324, std::numeric_limits<double>::max()};
  const std::vector<std::int32_t> i32 = {std::numeric_limits<std::int32_t>::min(), -1, 0, 7,
                                         std::numeric_limits<std::int32_t>::max()};
  const float scalar = 3.25f;
  const std::map<std::string, std::string> metadata = {
      {"strata.config", R"({"n_layer": 2, "n_head": 4})"},
      {"unicode", "h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c\u8a9e \U0001F680"},
      {"empty", ""},
  };
  const std::string path = file("round.safetensors");
  write_safetensors(path,
                    {{"transformer.h.0.ln_1.weight", DType::F32, {2, 3}, f32.data()},
                     {"f64", DType::F64, {4}, f64.data()},
                     {"ids", DType::I32, {5, 1}, i32.data()},
                     {"scalar", DType::F32, {}, &scalar},
                     {"empty", DType::F64, {0, 5}, nullptr}},
                    metadata);
  EXPECT_EQ(listing(), std::vector<std::string>{"round.safetensors"});

  const auto f = SafetensorsFile::read(path);
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.metadata(), metadata);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"transformer.h.0.ln_1.weight", "f64", "ids",
                                                 "scalar", "empty"}));
  EXPECT_TRUE(f.contains("ids"));
  EXPECT_FALSE(f.contains("nope"));
  EXPECT_EQ(f.dtype("transformer.h.0.ln_1.weight"), DType::F32);
  EXPECT_EQ(f.dtype("f64"), DType::F64);
  EXPECT_EQ(f.dtype("ids"), DType::I32);
  EXPECT_EQ(f.shape("transformer.h.0.ln_1.weight"), (std::vector<Index>{2, 3}));
  EXPECT_EQ(f.shape("scalar"), std::vector<Index>{});
  EXPECT_EQ(f.shape("empty"), (std::vector<Index>{0, 5}));

  std::vector<float> f32_back(6);
  f.copy_to("transformer.h.0.ln_1.weight", {2, 3}, f32_back.data());
  EXPECT_TRUE(same_bits(f32, f32_back));  // bit-exact, NaN and -0 included
  std::vector<double> f64_back(4);
  f.copy_to("f64", {4}, f64_back.data());
  EXPECT_TRUE(same_bits(f64, f64_back));
  std::vector<std::int32_t> i32_back(5);
  f.copy_to("ids", {5, 1}, i32_back.data());
  EXPECT_EQ(i32, i32_back);
  float scalar_back = 0;
  f.copy_to("scalar", {}, &scalar_back);
  EXPECT_EQ(scalar_back, scalar);
  f.copy_to<double>("empty", {0, 5}, nullptr);  // nothing to copy
}

TEST_F(Safetensors, ExactBytesOfASmallFile) {
  const std::vector<float> a = {1.0f, -2.5f};
  const std::string path = file("small.safetensors");
  write_safetensors(path, {{"a", DType::F32, {2}, a.data()}}, {{"k", "v"}});
  // 79 bytes of JSON, padded with one space to 80.
  const std::string header =
      R"({"__metadata__":{"k":"v"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}} )";
  ASSERT_EQ(header.size(), 80u);
  const std::string data("\x00\x00\x80\x3f\x00\x00\x20\xc0", 8);
  EXPECT_EQ(read_raw(path), make_file(header, data));
}

TEST_F(Safetensors, EmptyFileWithoutTensorsOrMetadata) {
  const std::string path = file("empty.safetensors");
  write_safetensors(path, {}, {});
  EXPECT_EQ(read_raw(path), make_file("{}      "));
  const auto f = SafetensorsFile::read(path);
  EXPECT_TRUE(f.names().empty());
  EXPECT_TRUE(f.metadata().empty());
}

TEST_F(Safetensors, DataBufferAlignedAndTensorsContiguous) {
  // Odd sizes, so that neither the header nor the tensors happen to be aligned by luck.
  const std::vector<float> a(3, 1.0f);
  const std::vector<double> b(5, 2.0);
  const std::vector<std::int32_t> c(7, 3);
  for (const std::string& meta : {std::string(""), std::string("x"), std::string("xyz12")}) {
    const std::string path = file("aligned.safetensors");
    std::map<std::string, std::string> metadata;
    if (!meta.empty()) metadata["m"] = meta;
    write_safetensors(path,
                      {{"a", DType::F32, {3}, a.data()},
                       {"bb", DType::F64, {5}, b.data()},
                       {"ccc", DType::I32, {7}, c.data()}},
                      metadata);
    const std::string bytes = read_raw(path);
    ASSERT_GE(bytes.size(), 8u);
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i)
      n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
    EXPECT_EQ((8 + n) % 8, 0u) << "data buffer must start at a multiple of 8";
    const std::string header = bytes.substr(8, n);
    EXPECT_EQ(header.find_last_not_of(' '), header.find_last_of('}'))
        << "padding is trailing spaces";
    // The reference implementation's rule: offsets start at 0, follow each other with no gap, and
    // the last one ends at the end of the file.
    const auto json = nlohmann::json::parse(header);
    std::uint64_t expected_begin = 0;
    for (const std::string name : {"a", "bb", "ccc"}) {
      const auto& off = json.at(name).at("data_offsets");
      EXPECT_EQ(off[0].get<std::uint64_t>(), expected_begin) << name;
      expected_begin = off[1].get<std::uint64_t>();
    }
    EXPECT_EQ(8 + n + expected_begin, bytes.size());
    EXPECT_EQ(SafetensorsFile::read(path).names(), (std::vector<std::string>{"a", "bb", "ccc"}));
  }
}

TEST_F(Safetensors, ReadsAFileBuiltByAnotherTool) {
  // As PyTorch's safetensors (or any other writer) might produce: header not padded (198 bytes),
  // keys not in offset order, an F64 tensor at an offset that is not a multiple of 8, "format"
  // metadata.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"y":{"dtype":"F64","shape":[1,2],"data_offsets":[12,28]},)"
      R"("x":{"shape":[3],"dtype":"F32","data_offsets":[0,12]},)"
      R"("z":{"dtype":"I32","shape":[2],"data_offsets":[28,36]}})";
  ASSERT_EQ(header.size(), 198u);  // not a multiple of 8
  std::string data;
  data += std::string("\x00\x00\x80\x3f", 4);                  // 1.0f
  data += std::string("\x00\x00\x20\xc0", 4);                  // -2.5f
  data += std::string("\x00\x00\x00\x00", 4);                  // 0.0f
  data += std::string("\x9a\x99\x99\x99\x99\x99\xb9\x3f", 8);  // 0.1
  data += std::string("\x00\x00\x00\x00\x00\x00\x00\xc0", 8);  // -2.0
  data += std::string("\xff\xff\xff\xff", 4);                  // -1
  data += std::string("\x07\x00\x00\x00", 4);                  // 7
  const std::string path = file("python.safetensors");
  write_raw(path, make_file(header, data));

  const auto f = SafetensorsFile::read(path);
  EXPECT_EQ(f.metadata(), (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(f.names(), (std::vector<std::string>{"x", "y", "z"}));
  std::vector<float> x(3);
  f.copy_to("x", {3}, x.data());
  EXPECT_EQ(x, (std::vector<float>{1.0f, -2.5f, 0.0f}));
  std::vector<double> y(2);
  f.copy_to("y", {1, 2}, y.data());
  EXPECT_EQ(y, (std::vector<double>{0.1, -2.0}));
  std::vector<std::int32_t> z(2);
  f.copy_to("z", {2}, z.data());
  EXPECT_EQ(z, (std::vector<std::int32_t>{-1, 7}));
}

TEST_F(Safetensors, ReadsAFileWithoutMetadata) {
  const std::string header = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::string path = file("plain.safetensors");
  write_raw(path, make_file(header, std::string("\x00\x00\x80\x3f", 4)));
  const auto f = SafetensorsFile::read(path);
  EXPECT_TRUE(f.metadata().empty());
  float w = 0;
  f.copy_to("w", {1}, &w);
  EXPECT_EQ(w, 1.0f);
}

TEST_F(Safetensors, MissingFile) {
  const std::string path = file("missing.safetensors");
  EXPECT_EQ(read_error(path), "checkpoint " + path + ": cannot open: No such file or directory");
}

TEST_F(Safetensors, DirectoryInsteadOfFile) {
  const std::string path = dir_.string();
  EXPECT_EQ(read_error(path), "checkpoint " + path + ": cannot read: Is a directory");
}

// ---- malformed files: one case each, with the exact message after "checkpoint <path>: "
// ------------

struct Malformed {
  const char* name;
  std::string bytes;
  std::string message;
};
void PrintTo(const Malformed& c, std::ostream* os) { *os << c.name; }

/// A file with a 16-byte data buffer and one entry "w" given as JSON text.
std::string with_entry(const std::string& entry_json) {
  return make_file(R"({"w":)" + entry_json + "}", std::string(16, '\0'));
}

const std::string kJsonError =
    "header is not valid JSON: [json.exception.parse_error.101] parse error at line 1, ";

const Malformed kMalformed[] = {
    {"Empty", "", "file has 0 bytes, too short for the 8-byte header length"},
    {"ShorterThan8Bytes", "\x01\x02\x03\x04\x05",
     "file has 5 bytes, too short for the 8-byte header length"},
    {"HeaderLengthExceedsFile", le64(1234) + std::string(92, ' '),
     "header length 1234 exceeds file size 100 (8 + 1234 bytes needed)"},
    {"HeaderLengthJustOverFile", le64(3) + "{}",
     "header length 3 exceeds file size 10 (8 + 3 bytes needed)"},
    {"HeaderLengthUnreasonable", le64(200'000'000) + "{}",
     "header length 200000000 exceeds the limit of 100000000 bytes"},
    {"HeaderLengthMaximum", le64(std::numeric_limits<std::uint64_t>::max()) + "{}",
     "header length 18446744073709551615 exceeds the limit of 100000000 bytes"},
    {"HeaderEmpty", le64(0),
     kJsonError
         + "column 1: syntax error while parsing value - unexpected end of input; expected '[', "
           "'{', or a "
           "literal"},
    {"HeaderNotJson", make_file("{abc"),
     kJsonError
         + "column 2: syntax error while parsing object key - invalid literal; last read: '{a'; "
           "expected "
           "string literal"},
    {"HeaderTrailingGarbage", make_file("{} x"),
     kJsonError
         + "column 4: syntax error while parsing value - invalid literal; last read: '{} x'; "
           "expected end "
           "of input"},
    {"HeaderInvalidUtf8", make_file("{\"\xff\":1}"),
     kJsonError
         + "column 3: syntax error while parsing object key - invalid string: ill-formed UTF-8 "
           "byte; last "
           "read: '\"\xff'; expected string literal"},
    {"HeaderArray", make_file("[1, 2]"), "header is an array, expected a JSON object"},
    {"HeaderString", make_file("\"w\""), "header is a string, expected a JSON object"},
    {"EntryNotObject", make_file(R"({"w":3})"),
     R"(tensor 'w' is a number, expected an object with "dtype", "shape" and "data_offsets")"},
    {"EntryMissingDtype", with_entry(R"({"shape":[4],"data_offsets":[0,16]})"),
     R"(tensor 'w' has no "dtype")"},
    {"EntryMissingShape", with_entry(R"({"dtype":"F32","data_offsets":[0,16]})"),
     R"(tensor 'w' has no "shape")"},
    {"EntryMissingOffsets", with_entry(R"({"dtype":"F32","shape":[4]})"),
     R"(tensor 'w' has no "data_offsets")"},
    {"DtypeNotString", with_entry(R"({"dtype":5,"shape":[4],"data_offsets":[0,16]})"),
     "tensor 'w': dtype is a number, expected a string"},
    {"DtypeUnknown", with_entry(R"({"dtype":"BF16","shape":[8],"data_offsets":[0,16]})"),
     "tensor 'w' has unsupported dtype 'BF16' (supported: F32, F64, I32)"},
    {"ShapeNotArray", with_entry(R"({"dtype":"F32","shape":4,"data_offsets":[0,16]})"),
     "tensor 'w': shape is a number, expected an array"},
    {"ShapeNegative", with_entry(R"({"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]})"),
     "tensor 'w': shape [2,-2] has element 1 = -2, expected a non-negative integer"},
    {"ShapeFractional", with_entry(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,16]})"),
     "tensor 'w': shape [2.5] has element 0 = 2.5, expected a non-negative integer"},
    {"ShapeString", with_entry(R"({"dtype":"F32","shape":["4"],"data_offsets":[0,16]})"),
     R"(tensor 'w': shape ["4"] has element 0 = "4", expected a non-negative integer)"},
    {"ShapeTooLarge",
     with_entry(R"({"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,16]})"),
     "tensor 'w': shape [18446744073709551615] has element 0 = 18446744073709551615, which is too "
     "large"},
    {"ShapeProductOverflows",
     with_entry(R"({"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]})"),
     "tensor 'w': shape [4294967296, 4294967296] overflows"},
    {"ShapeBytesOverflow",
     with_entry(R"({"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]})"),
     "tensor 'w': shape [4611686018427387904] overflows"},
    {"OffsetsNotArray", with_entry(R"({"dtype":"F32","shape":[4],"data_offsets":0})"),
     "tensor 'w': data_offsets is 0, expected [begin, end] with non-negative integers"},
    {"OffsetsWrongLength", with_entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16,32]})"),
     "tensor 'w': data_offsets is [0,16,32], expected [begin, end] with non-negative integers"},
    {"OffsetsNegative", with_entry(R"({"dtype":"F32","shape":[4],"data_offsets":[-4,12]})"),
     "tensor 'w': data_offsets is [-4,12], expected [begin, end] with non-negative integers"},
    {"OffsetsNotInteger", with_entry(R"({"dtype":"F32","shape":[4],"data_offsets":[0,"16"]})"),
     R"(tensor 'w': data_offsets is [0,"16"], expected [begin, end] with non-negative integers)"},
    {"OffsetsReversed", with_entry(R"({"dtype":"F32","shape":[4],"data_offsets":[16,0]})"),
     "tensor 'w': data_offsets [16, 0] are reversed"},
    {"OffsetsBeyondBuffer", with_entry(R"({"dtype":"F32","shape":[100],"data_offsets":[0,400]})"),
     "tensor 'w': data_offsets [0, 400] exceed the data buffer of 16 bytes"},
    {"TruncatedData",
     make_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", std::string(15, '\0')),
     "tensor 'w': data_offsets [0, 16] exceed the data buffer of 15 bytes"},
    {"SizeMismatch", with_entry(R"({"dtype":"F32","shape":[2,2],"data_offsets":[0,12]})"),
     "tensor 'w': data_offsets [0, 12] span 12 bytes, expected 16 for shape [2, 2] of F32"},
    {"SizeMismatchDtype", with_entry(R"({"dtype":"F64","shape":[4],"data_offsets":[0,16]})"),
     "tensor 'w': data_offsets [0, 16] span 16 bytes, expected 32 for shape [4] of F64"},
    {"Overlap",
     make_file(R"({"b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]},)"
               R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
               std::string(24, '\0')),
     "tensors 'a' [0, 16] and 'b' [8, 24] overlap"},
    {"OverlapInside",
     make_file(R"({"outer":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
               R"("inner":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
               std::string(16, '\0')),
     "tensors 'outer' [0, 16] and 'inner' [4, 8] overlap"},
    {"DuplicateName",
     make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
               R"("w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
               std::string(16, '\0')),
     "header has a duplicate entry 'w'"},
    {"MetadataNotObject", make_file(R"({"__metadata__":"x"})"),
     R"("__metadata__" is a string, expected an object of strings)"},
    {"MetadataValueNotString", make_file(R"({"__metadata__":{"format":"pt","step":5}})"),
     R"("__metadata__" value 'step' is a number, expected a string)"},
};

class SafetensorsMalformed : public TempDir, public ::testing::WithParamInterface<Malformed> {};

TEST_P(SafetensorsMalformed, RaisesErrorNamingTheProblem) {
  const std::string path = file("bad.safetensors");
  write_raw(path, GetParam().bytes);
  EXPECT_EQ(read_error(path), "checkpoint " + path + ": " + GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(Cases, SafetensorsMalformed, ::testing::ValuesIn(kMalformed),
                         [](const ::testing::TestParamInfo<Malformed>& info) {
                           return std::string(info.param.name);
                         });

TEST_F(Safetensors, ZeroSizeTensorsDoNotOverlap) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                             R"("f":{"dtype":"F64","shape":[3,0],"data_offsets":[8,8]}})";
  const std::string path = file("zero.safetensors");
  write_raw(path, make_file(header, std::string(8, '\0')));
  EXPECT_EQ(SafetensorsFile::read(path).names(), (std::vector<std::string>{"a", "e", "f"}));
}

TEST_F(Safetensors, CorruptedFilesRaiseOnlyStrataError) {
  // Every truncation and a few thousand random byte edits of a valid file: each read either
  // succeeds or throws strata::Error with the checkpoint prefix (never another exception, never a
  // crash).
  const std::string path = file("fuzz.safetensors");
  const std::vector<float> a = {1, 2, 3};
  const std::vector<double> b = {4, 5};
  write_safetensors(path, {{"a", DType::F32, {3}, a.data()}, {"b", DType::F64, {1, 2}, b.data()}},
                    {{"k", "v"}});
  const std::string good = read_raw(path);
  const std::string prefix = "checkpoint " + path + ": ";
  const auto check = [&](const std::string& bytes) {
    write_raw(path, bytes);
    try {
      (void)SafetensorsFile::read(path);
    } catch (const strata::Error& e) {
      ASSERT_EQ(std::string(e.what()).rfind(prefix, 0), 0u) << e.what();
    }
  };
  for (std::size_t n = 0; n < good.size(); ++n) check(good.substr(0, n));
  std::mt19937 rng(12345);
  const std::string alphabet = std::string("{}[]\",:0123456789-.eE \xff") + '\0' + "abcdefFIU_";
  for (int trial = 0; trial < 2000; ++trial) {
    std::string bytes = good;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) {
      const std::size_t at = rng() % bytes.size();
      bytes[at] =
          (rng() % 2 == 0) ? alphabet[rng() % alphabet.size()] : static_cast<char>(rng() & 0xff);
    }
    check(bytes);
    if (HasFatalFailure()) return;
  }
}

// ---- requesting tensors
// ---------------------------------------------------------------------------

class SafetensorsCopy : public TempDir {
 protected:
  void SetUp() override {
    TempDir::SetUp();
    path_ = file("model.safetensors");
    wte_.resize(256 * 64);
    for (std::size_t i = 0; i < wte_.size(); ++i) wte_[i] = 0.001f * static_cast<float>(i) - 3.0f;
    write_safetensors(path_,
                      {{"transformer.wte.weight", DType::F32, {256, 64}, wte_.data()},
                       {"d", DType::F64, {3}, d_.data()},
                       {"i", DType::I32, {2}, i_.data()}},
                      {});
  }
  std::string path_;
  std::vector<float> wte_;
  std::vector<double> d_ = {0.1, 1e300, -2.0};
  std::vector<std::int32_t> i_ = {4, -5};
};

TEST_F(SafetensorsCopy, AbsentTensor) {
  const auto f = SafetensorsFile::read(path_);
  const std::string expected = "checkpoint " + path_ + ": has no tensor 'x'";
  float x = 0;
  EXPECT_EQ(error_of([&] { f.copy_to("x", {1}, &x); }), expected);
  EXPECT_EQ(error_of([&] { f.copy_converted("x", {1}, &x); }), expected);
  EXPECT_EQ(error_of([&] { (void)f.dtype("x"); }), expected);
  EXPECT_EQ(error_of([&] { (void)f.shape("x"); }), expected);
}

TEST_F(SafetensorsCopy, ShapeMismatch) {
  const auto f = SafetensorsFile::read(path_);
  std::vector<float> dst(256 * 128);
  const std::string expected =
      "checkpoint " + path_
      + ": tensor 'transformer.wte.weight' has shape [256, 64], expected [256, 128]";
  EXPECT_EQ(error_of([&] {
              f.copy_to("transformer.wte.weight", {256, 128}, dst.data());
            }),
            expected);
  EXPECT_EQ(error_of([&] {
              f.copy_converted("transformer.wte.weight", {256, 128}, dst.data());
            }),
            expected);
  EXPECT_EQ(error_of([&] { f.copy_to("transformer.wte.weight", {256 * 64}, dst.data()); }),
            "checkpoint " + path_
                + ": tensor 'transformer.wte.weight' has shape [256, 64], expected [16384]");
}

TEST_F(SafetensorsCopy, DtypeMismatch) {
  const auto f = SafetensorsFile::read(path_);
  std::vector<float> as_float(3);
  EXPECT_EQ(error_of([&] { f.copy_to("d", {3}, as_float.data()); }),
            "checkpoint " + path_ + ": tensor 'd' has dtype F64, expected F32");
  std::vector<double> as_double(256 * 64);
  EXPECT_EQ(
      error_of([&] {
        f.copy_to("transformer.wte.weight", {256, 64}, as_double.data());
      }),
      "checkpoint " + path_ + ": tensor 'transformer.wte.weight' has dtype F32, expected F64");
}

TEST_F(SafetensorsCopy, CopyConvertedF32ToF64AndBack) {
  const auto f = SafetensorsFile::read(path_);
  std::vector<double> wte(256 * 64);
  f.copy_converted("transformer.wte.weight", {256, 64}, wte.data());
  for (std::size_t i = 0; i < wte.size(); ++i) ASSERT_EQ(wte[i], static_cast<double>(wte_[i])) << i;
  std::vector<float> d(3);
  f.copy_converted("d", {3}, d.data());
  EXPECT_EQ(d, (std::vector<float>{0.1f, std::numeric_limits<float>::infinity(), -2.0f}));
  std::vector<double> same(3);
  f.copy_converted("d", {3}, same.data());  // no conversion needed
  EXPECT_EQ(same, d_);
  std::vector<std::int32_t> ids(2);
  f.copy_converted("i", {2}, ids.data());
  EXPECT_EQ(ids, i_);
}

TEST_F(SafetensorsCopy, CopyConvertedNeverConvertsIntegers) {
  const auto f = SafetensorsFile::read(path_);
  std::vector<float> as_float(2);
  EXPECT_EQ(error_of([&] { f.copy_converted("i", {2}, as_float.data()); }),
            "checkpoint " + path_ + ": tensor 'i' has dtype I32, cannot convert to F32");
  std::vector<std::int32_t> as_int(3);
  EXPECT_EQ(error_of([&] { f.copy_converted("d", {3}, as_int.data()); }),
            "checkpoint " + path_ + ": tensor 'd' has dtype F64, cannot convert to I32");
}

// ---- writing
// ----------------------------------------------------------------------------------------

TEST_F(Safetensors, WriteRejectsBadInputBeforeTouchingTheDisk) {
  const std::string path = file("w.safetensors");
  const std::vector<float> a = {1, 2};
  const std::string where = "checkpoint " + path + ": ";
  EXPECT_EQ(error_of([&] {
              write_safetensors(
                  path, {{"a", DType::F32, {2}, a.data()}, {"a", DType::F32, {1}, a.data()}}, {});
            }),
            where + "duplicate tensor name 'a'");
  EXPECT_EQ(error_of([&] {
              write_safetensors(path, {{"__metadata__", DType::F32, {2}, a.data()}}, {});
            }),
            where + "tensor name '__metadata__' is reserved for the metadata");
  EXPECT_EQ(error_of([&] {
              write_safetensors(path, {{"a", DType::F32, {2}, nullptr}}, {});
            }),
            where + "tensor 'a' has shape [2] but a null data pointer");
  EXPECT_EQ(error_of([&] {
              write_safetensors(path, {{"a", DType::F32, {2, -1}, a.data()}}, {});
            }),
            where + "tensor 'a' has shape [2, -1] with a negative dimension");
  EXPECT_EQ(error_of([&] {
              write_safetensors(
                  path, {{"a", DType::F64, {Index{1} << 31, Index{1} << 31, 4}, a.data()}}, {});
            }),
            where + "tensor 'a' has shape [2147483648, 2147483648, 4]: size overflows");
  EXPECT_EQ(error_of([&] {
              write_safetensors(path, {}, {{"k", "bad \xff utf-8"}});
            }),
            where + "cannot encode the header: [json.exception.type_error.316] "
                + "invalid UTF-8 byte at index 4: 0xFF");
  EXPECT_TRUE(listing().empty());
}

TEST_F(Safetensors, FailedWritesLeaveTheOldFileIntact) {
  const std::string path = file("ckpt.safetensors");
  const std::string temp = path + ".tmp";
  const std::string where = "checkpoint " + path + ": ";
  const std::vector<float> old_data = {1, 2, 3, 4};
  write_safetensors(path, {{"w", DType::F32, {4}, old_data.data()}}, {{"step", "1"}});
  const std::string old_bytes = read_raw(path);
  const std::vector<std::string> only_old = {"ckpt.safetensors"};

  // Bad input: rejected before the temporary exists.
  EXPECT_EQ(error_of([&] {
              write_safetensors(path, {{"w", DType::F32, {4}, nullptr}}, {});
            }),
            where + "tensor 'w' has shape [4] but a null data pointer");
  EXPECT_EQ(read_raw(path), old_bytes);
  EXPECT_EQ(listing(), only_old);

  // The disk fills up mid-write (simulated with RLIMIT_FSIZE): the temporary is removed.
  const std::vector<float> big(1 << 18, 5.0f);  // 1 MiB
  rlimit saved{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  if (saved.rlim_cur == RLIM_INFINITY || saved.rlim_cur > 65536) {
    const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    rlimit small = saved;
    small.rlim_cur = 65536;
    ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
    // Nothing may be printed while the limit is in force.
    const std::string message = error_of([&] {
      write_safetensors(path, {{"w", DType::F32, {1 << 18}, big.data()}}, {});
    });
    ::setrlimit(RLIMIT_FSIZE, &saved);
    ::signal(SIGXFSZ, old_handler);
    EXPECT_EQ(message, where + "cannot write " + temp + ": File too large");
    EXPECT_EQ(read_raw(path), old_bytes);
    EXPECT_EQ(listing(), only_old);
  }

  // The rename fails (the target is a non-empty directory): the temporary is removed.
  const std::string dir_target = file("taken");
  fs::create_directory(dir_target);
  write_raw(dir_target + "/inside", "x");
  EXPECT_EQ(error_of([&] {
              write_safetensors(dir_target, {{"w", DType::F32, {4}, old_data.data()}}, {});
            }),
            "checkpoint " + dir_target + ": cannot rename " + dir_target + ".tmp to " + dir_target
                + ": Is a directory");
  EXPECT_EQ(listing(), (std::vector<std::string>{"ckpt.safetensors", "taken"}));
  fs::remove_all(dir_target);

  // A directory that does not exist: nothing is created.
  const std::string nowhere = file("no_such_dir/ckpt.safetensors");
  EXPECT_EQ(
      error_of([&] {
        write_safetensors(nowhere, {{"w", DType::F32, {4}, old_data.data()}}, {});
      }),
      "checkpoint " + nowhere + ": cannot create " + nowhere + ".tmp: No such file or directory");
  EXPECT_EQ(listing(), only_old);
  EXPECT_EQ(read_raw(path), old_bytes);

  // A successful write replaces the file and leaves no temporary.
  const std::vector<float> new_data = {9, 8};
  write_safetensors(path, {{"v", DType::F32, {2}, new_data.data()}}, {{"step", "2"}});
  EXPECT_EQ(listing(), only_old);
  const auto f = SafetensorsFile::read(path);
  EXPECT_EQ(f.names(), std::vector<std::string>{"v"});
  EXPECT_EQ(f.metadata().at("step"), "2");
  std::vector<float> back(2);
  f.copy_to("v", {2}, back.data());
  EXPECT_EQ(back, new_data);
}

TEST_F(Safetensors, FromBytesReadsAsTheFileDoes) {
  const std::string path = file("ckpt.safetensors");
  const std::vector<float> a = {1, 2, 3};
  write_safetensors(path, {{"a", DType::F32, {3}, a.data()}}, {{"k", "v"}});
  const std::string raw = read_raw(path);
  const auto f = SafetensorsFile::from_bytes({raw.begin(), raw.end()}, "in memory");
  EXPECT_EQ(f.path(), "in memory");
  EXPECT_EQ(f.metadata().at("k"), "v");
  std::vector<float> back(3);
  f.copy_to("a", {3}, back.data());
  EXPECT_EQ(back, a);
  // The same validation, the name in place of the path.
  const std::string cut = raw.substr(0, raw.size() - 1);
  EXPECT_EQ(error_of([&] {
              (void)SafetensorsFile::from_bytes({cut.begin(), cut.end()}, "mem");
            }),
            "checkpoint mem: tensor 'a': data_offsets [0, 12] exceed the data buffer of 11 bytes");
}

TEST_F(Safetensors, StaleTemporaryIsOverwritten) {
  // A temporary left behind by a crashed writer with the same pid does not get in the way.
  const std::string path = file("ckpt.safetensors");
  write_raw(path + ".tmp", std::string(1000, 'x'));
  const std::vector<float> a = {1, 2};
  write_safetensors(path, {{"a", DType::F32, {2}, a.data()}}, {});
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
  EXPECT_EQ(SafetensorsFile::read(path).shape("a"), std::vector<Index>{2});
}

// ---- crash leftovers (io/atomic_file.hpp)
// -----------------------------------------------------------------

namespace crash {

/// Runs body in a child process and returns the signal that ended it (0 if it exited).
template <typename Body>
int killed_by(Body body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    body();
    std::_Exit(0);
  }
  int status = 0;
  if (pid < 0 || ::waitpid(pid, &status, 0) != pid) return -1;
  return WIFSIGNALED(status) ? WTERMSIG(status) : 0;
}

/// The id of a process that has exited (and been reaped), so certainly not running.
long long dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) std::_Exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

}  // namespace crash

TEST_F(Safetensors, KilledWritesLeaveOneTemporaryThatTheNextWriteReuses) {
  const std::string path = file("ckpt.safetensors");
  const std::vector<float> old_data = {1, 2, 3, 4};
  write_safetensors(path, {{"w", DType::F32, {4}, old_data.data()}}, {{"step", "1"}});
  const std::string old_bytes = read_raw(path);
  const std::vector<float> big(1 << 18, 5.0f);  // 1 MiB

  for (int round = 0; round < 10; ++round) {
    int sig = 0;
    if (round % 2 == 0) {
      // Killed by the kernel inside write_safetensors, mid-way through the data (SIGXFSZ at the
      // file-size limit, whose default action ends the process like kill -9: no cleanup runs).
      sig = crash::killed_by([&] {
        rlimit no_core{0, 0}, fsize{};
        ::setrlimit(RLIMIT_CORE, &no_core);
        ::getrlimit(RLIMIT_FSIZE, &fsize);
        fsize.rlim_cur = 65536;
        ::setrlimit(RLIMIT_FSIZE, &fsize);
        ::signal(SIGXFSZ, SIG_DFL);
        write_safetensors(path, {{"w", DType::F32, {1 << 18}, big.data()}}, {});
      });
      EXPECT_EQ(sig, SIGXFSZ) << "round " << round;
    } else {
      // kill -9 with a half-written temporary.
      sig = crash::killed_by([&] {
        strata::io::AtomicFile out(path);
        out.write(big.data(), 100000);
        ::kill(::getpid(), SIGKILL);
      });
      EXPECT_EQ(sig, SIGKILL) << "round " << round;
    }
    // The checkpoint is untouched and loads; one temporary at most is left beside it.
    EXPECT_EQ(read_raw(path), old_bytes) << "round " << round;
    EXPECT_EQ(SafetensorsFile::read(path).metadata().at("step"), "1");
    EXPECT_EQ(listing(), (std::vector<std::string>{"ckpt.safetensors", "ckpt.safetensors.tmp"}))
        << "round " << round;
    EXPECT_GT(fs::file_size(path + ".tmp"), 1000u) << "round " << round;
  }
  // The next write reuses the leftover: nothing but the checkpoint remains.
  const std::vector<float> new_data = {9, 8};
  write_safetensors(path, {{"v", DType::F32, {2}, new_data.data()}}, {{"step", "2"}});
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
  EXPECT_EQ(SafetensorsFile::read(path).metadata().at("step"), "2");
}

TEST_F(Safetensors, SecondWriterOfTheSameFileIsRefused) {
  const std::string path = file("ckpt.safetensors");
  const std::vector<float> a = {1, 2};
  write_safetensors(path, {{"a", DType::F32, {2}, a.data()}}, {});
  const std::string old_bytes = read_raw(path);
  {
    strata::io::AtomicFile first(path);  // a save in progress holds the temporary's lock
    first.write("partial", 7);
    EXPECT_EQ(error_of([&] {
                write_safetensors(path, {{"a", DType::F32, {2}, a.data()}}, {});
              }),
              "checkpoint " + path + ": " + path + ".tmp is locked by another process writing "
                  + path + " (two runs saving to the same file?)");
    EXPECT_EQ(read_raw(path), old_bytes);
    EXPECT_EQ(read_raw(path + ".tmp"), "partial");  // the first writer's bytes are untouched
  }
  // The first writer gave up (no commit): its temporary is gone, the file is as before.
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
  EXPECT_EQ(read_raw(path), old_bytes);

  // Once a writer has committed, the name is free again: the next write goes through.
  {
    strata::io::AtomicFile first(path);
    first.write(old_bytes.data(), old_bytes.size());
    first.commit();
    write_safetensors(path, {{"b", DType::F32, {2}, a.data()}}, {});
  }
  EXPECT_EQ(SafetensorsFile::read(path).names(), std::vector<std::string>{"b"});
  EXPECT_EQ(listing(), std::vector<std::string>{"ckpt.safetensors"});
}

TEST_F(Safetensors, WriteRemovesOnlyItsOwnDeadTemporariesOfEarlierVersions) {
  // Earlier versions wrote through "<path>.tmp.<pid>"; files of processes that are gone are
  // removed, everything else stays.
  const std::string path = file("ckpt.safetensors");
  const std::string dead = std::to_string(crash::dead_pid());
  const std::vector<std::string> kept = {
      "ckpt.safetensors.tmp." + std::to_string(::getpid()),   // this process
      "ckpt.safetensors.tmp." + std::to_string(::getppid()),  // a running process
      "ckpt.safetensors.tmp.12a",                             // not a pid
      "ckpt.safetensors.tmp.",                                // no pid
      "ckpt.safetensors.tmpx" + dead,                         // another pattern
      "other.safetensors.tmp." + dead,                        // another file's temporary
  };
  for (const std::string& name : kept) write_raw(file(name), "x");
  write_raw(file("ckpt.safetensors.tmp." + dead), std::string(100, 'x'));
  fs::create_directory(file("ckpt.safetensors.tmp.1"));  // a directory, even if pid 1 were gone

  const std::vector<float> a = {1, 2};
  write_safetensors(path, {{"a", DType::F32, {2}, a.data()}}, {});
  std::vector<std::string> expected = kept;
  expected.push_back("ckpt.safetensors");
  expected.push_back("ckpt.safetensors.tmp.1");
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(listing(), expected);
  EXPECT_EQ(strata::io::remove_stale_temporaries(path), 0);
}

}  // namespace
