// strata/io/safetensors.hpp: reading and writing safetensors files (checkpoints, PyTorch interop).
//
// Format (https://github.com/huggingface/safetensors):
//   bytes [0, 8)        N, the header length, an unsigned 64-bit little-endian integer
//   bytes [8, 8 + N)    the header: UTF-8 JSON object (may be padded at the end with spaces)
//   bytes [8 + N, end)  the data buffer: raw little-endian tensor data, row-major
// The header maps each tensor name to {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin,
// end]}, with offsets in bytes relative to the start of the data buffer, and may hold one
// "__metadata__" object of string -> string.
//
// The writer pads the header with spaces so that the data buffer starts at a multiple of 8 and
// writes the tensors back to back in the order given (the reference implementation, and with it
// PyTorch's safetensors.torch.load_file, rejects gaps between tensors). The reader validates
// everything before any data is used; tensor data is copied out with memcpy, so unaligned offsets
// (as other writers may produce) are fine. Only F32, F64 and I32 are supported.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "strata/core/error.hpp"
#include "strata/core/types.hpp"
#include "strata/io/atomic_file.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_BIG_ENDIAN__) \
    && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "strata/io/safetensors.hpp assumes a little-endian host (safetensors data is little-endian)"
#endif

namespace strata::io {

/// Element types of a tensor in a safetensors file (the names are the file's dtype strings).
enum class DType { F32, F64, I32 };

/// The file's dtype string: "F32", "F64" or "I32".
inline std::string to_string(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::I32: return "I32";
  }
  return "unknown";
}

/// Bytes per element of dtype.
inline std::size_t dtype_size(DType dtype) { return dtype == DType::F64 ? 8 : 4; }

/// The DType of a C++ element type: float, double or std::int32_t.
template <typename T>
constexpr DType dtype_of() {
  static_assert(
      std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int32_t>,
      "safetensors: element type must be float, double or std::int32_t");
  if constexpr (std::is_same_v<T, float>)
    return DType::F32;
  else if constexpr (std::is_same_v<T, double>)
    return DType::F64;
  else
    return DType::I32;
}

/// A shape as text: "[256, 128]" ("[]" for a scalar).
inline std::string shape_string(const std::vector<Index>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

/// A tensor to write: name, shape, and a pointer to contiguous row-major data of dtype.
struct TensorView {
  std::string name;
  DType dtype;
  std::vector<Index> shape;
  const void* data;
};

namespace detail {

/// Largest header accepted (the reference implementation's limit).
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

inline void check_little_endian() {
  const std::uint32_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  STRATA_CHECK(first == 1, "safetensors: big-endian hosts are not supported");
}

/// a * b, or false on overflow (both non-negative, bounded by INT64_MAX so Index can hold it).
inline bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  constexpr auto kMax = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  if (a != 0 && b > kMax / a) return false;
  out = a * b;
  return true;
}

/// Element count of shape, or false on overflow.
inline bool element_count(const std::vector<Index>& shape, std::uint64_t& out) {
  std::uint64_t n = 1;
  for (Index d : shape) {
    if (d < 0 || !checked_mul(n, static_cast<std::uint64_t>(d), n)) return false;
  }
  out = n;
  return true;
}

/// A JSON value as text for an error message, cut short if long.
inline std::string brief(const nlohmann::json& j) {
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

/// "a string", "an array", ...: the JSON type of j with its article.
inline std::string json_type(const nlohmann::json& j) {
  const std::string t = j.type_name();
  const bool vowel = !t.empty() && std::strchr("aeiou", t[0]) != nullptr;
  return (vowel ? "an " : "a ") + t;
}

}  // namespace detail

/// Writes a safetensors file atomically (AtomicFile, io/atomic_file.hpp): to "<path>.tmp" in the
/// same directory, fsync, then rename over path, so a crash or error mid-write never destroys an
/// existing file at path. On any failure the temporary is removed and strata::Error names the path
/// and the reason (errno text). A process killed mid-write leaves at most that one temporary,
/// which the next write of path reuses.
/// Tensors are stored back to back in the order given; the header is padded with spaces so that
/// the data buffer starts at a multiple of 8. Duplicate names, the reserved name "__metadata__",
/// negative dimensions and a null data pointer for a non-empty tensor are errors (raised before
/// any file is touched). An empty metadata map writes no "__metadata__" entry.
inline void write_safetensors(const std::string& path, const std::vector<TensorView>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  detail::check_little_endian();
  const std::string where = "checkpoint " + path + ": ";

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  std::vector<std::size_t> bytes(tensors.size());
  std::set<std::string> seen;
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorView& t = tensors[i];
    STRATA_CHECK(t.name != "__metadata__", where,
                 "tensor name '__metadata__' is reserved for the metadata");
    STRATA_CHECK(seen.insert(t.name).second, where, "duplicate tensor name '", t.name, "'");
    for (Index d : t.shape) {
      STRATA_CHECK(d >= 0, where, "tensor '", t.name, "' has shape ", shape_string(t.shape),
                   " with a negative dimension");
    }
    std::uint64_t count = 0, nbytes = 0;
    STRATA_CHECK(detail::element_count(t.shape, count)
                     && detail::checked_mul(count, dtype_size(t.dtype), nbytes),
                 where, "tensor '", t.name, "' has shape ", shape_string(t.shape),
                 ": size overflows");
    STRATA_CHECK(t.data != nullptr || nbytes == 0, where, "tensor '", t.name, "' has shape ",
                 shape_string(t.shape), " but a null data pointer");
    STRATA_CHECK(nbytes <= std::numeric_limits<std::size_t>::max() - offset, where,
                 "data buffer too large");
    bytes[i] = static_cast<std::size_t>(nbytes);
    header[t.name] = {{"dtype", to_string(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // invalid UTF-8 in a name or metadata string
    fail(where, "cannot encode the header: ", e.what());
  }
  text.append((8 - text.size() % 8) % 8, ' ');
  STRATA_CHECK(text.size() <= detail::kMaxHeaderBytes, where, "header of ", text.size(),
               " bytes exceeds the limit of ", detail::kMaxHeaderBytes, " bytes");

  unsigned char length[8];
  std::uint64_t n = text.size();
  for (unsigned char& b : length) {
    b = static_cast<unsigned char>(n & 0xff);
    n >>= 8;
  }

  AtomicFile file(path);
  file.write(length, sizeof length);
  file.write(text.data(), text.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) file.write(tensors[i].data, bytes[i]);
  file.commit();
}

/// A whole safetensors file read into memory and validated.
class SafetensorsFile {
 public:
  /// Reads and validates path. Throws strata::Error, with a message starting "checkpoint <path>: ",
  /// for a file that cannot be read, is truncated, or has a malformed or inconsistent header.
  static SafetensorsFile read(const std::string& path) {
    detail::check_little_endian();
    SafetensorsFile f;
    f.path_ = path;
    f.load();
    f.parse();
    return f;
  }

  /// Validates the bytes of a whole file already in memory, as read() does; `name` stands for the
  /// path in error messages ("checkpoint <name>: ...") and in path().
  static SafetensorsFile from_bytes(std::vector<unsigned char> bytes, const std::string& name) {
    detail::check_little_endian();
    SafetensorsFile f;
    f.path_ = name;
    f.bytes_ = std::move(bytes);
    f.parse();
    return f;
  }

  /// The "__metadata__" entries (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// The tensor names in the order of their data in the file.
  std::vector<std::string> names() const { return order_; }

  bool contains(const std::string& name) const { return entries_.count(name) != 0; }

  DType dtype(const std::string& name) const { return entry(name).dtype; }

  const std::vector<Index>& shape(const std::string& name) const { return entry(name).shape; }

  /// Copies tensor `name` into dst (product(expected_shape) elements of T) after checking that its
  /// dtype is T's and its shape is expected_shape; errors name the tensor, the expected and found
  /// value.
  template <typename T>
  void copy_to(const std::string& name, const std::vector<Index>& expected_shape, T* dst) const {
    const Entry& e = checked_entry(name, expected_shape, dst);
    STRATA_CHECK(e.dtype == dtype_of<T>(), prefix(), "tensor '", name, "' has dtype ",
                 to_string(e.dtype), ", expected ", to_string(dtype_of<T>()));
    if (e.end > e.begin) std::memcpy(dst, bytes_.data() + e.begin, e.end - e.begin);
  }

  /// Like copy_to, but converts F32 <-> F64 as needed (e.g. a float checkpoint into a double
  /// model). I32 is never converted.
  template <typename T>
  void copy_converted(const std::string& name, const std::vector<Index>& expected_shape,
                      T* dst) const {
    const Entry& e = checked_entry(name, expected_shape, dst);
    if (e.dtype == dtype_of<T>()) return copy_to(name, expected_shape, dst);
    if constexpr (std::is_floating_point_v<T>) {
      if (e.dtype == DType::F32) return convert<float>(e, dst);
      if (e.dtype == DType::F64) return convert<double>(e, dst);
    }
    fail(prefix(), "tensor '", name, "' has dtype ", to_string(e.dtype), ", cannot convert to ",
         to_string(dtype_of<T>()));
  }

  /// The path the file was read from.
  const std::string& path() const { return path_; }

 private:
  struct Entry {
    DType dtype = DType::F32;
    std::vector<Index> shape;
    std::size_t begin = 0, end = 0;  // absolute offsets into bytes_
  };

  SafetensorsFile() = default;

  std::string prefix() const { return "checkpoint " + path_ + ": "; }

  const Entry& entry(const std::string& name) const {
    const auto it = entries_.find(name);
    STRATA_CHECK(it != entries_.end(), prefix(), "has no tensor '", name, "'");
    return it->second;
  }

  template <typename T>
  const Entry& checked_entry(const std::string& name, const std::vector<Index>& expected_shape,
                             T* dst) const {
    const Entry& e = entry(name);
    STRATA_CHECK(e.shape == expected_shape, prefix(), "tensor '", name, "' has shape ",
                 shape_string(e.shape), ", expected ", shape_string(expected_shape));
    STRATA_CHECK(dst != nullptr || e.end == e.begin, prefix(), "tensor '", name,
                 "': null destination");
    return e;
  }

  template <typename Stored, typename T>
  void convert(const Entry& e, T* dst) const {
    const unsigned char* src = bytes_.data() + e.begin;
    const std::size_t n = (e.end - e.begin) / sizeof(Stored);
    for (std::size_t i = 0; i < n; ++i) {
      Stored v;
      std::memcpy(&v, src + i * sizeof(Stored), sizeof(Stored));
      dst[i] = static_cast<T>(v);
    }
  }

  /// Reads the whole file into bytes_.
  void load() {
    const int fd = detail::sys_open_read(path_.c_str());
    if (fd < 0) {
      const int err = errno;
      fail(prefix(), "cannot open: ", detail::errno_text(err));
    }
    // Sized from fstat (+1 to see EOF without growing); grows if the file is not a regular one.
    std::vector<unsigned char> bytes(detail::sys_size_hint(fd) + 1);
    std::size_t used = 0;
    for (;;) {
      if (used == bytes.size()) bytes.resize(std::max<std::size_t>(bytes.size() * 2, 1 << 16));
      const long long r = detail::sys_read(fd, bytes.data() + used, bytes.size() - used);
      if (r < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        (void)detail::sys_close(fd);
        fail(prefix(), "cannot read: ", detail::errno_text(err));
      }
      if (r == 0) break;
      used += static_cast<std::size_t>(r);
    }
    (void)detail::sys_close(fd);
    bytes.resize(used);
    bytes.shrink_to_fit();
    bytes_ = std::move(bytes);
  }

  /// Validates the header and fills metadata_, entries_ and order_.
  void parse() {
    using nlohmann::json;
    const std::string where = prefix();
    const std::size_t size = bytes_.size();
    STRATA_CHECK(size >= 8, where, "file has ", size,
                 " bytes, too short for the 8-byte header length");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | bytes_[static_cast<std::size_t>(i)];
    STRATA_CHECK(n <= detail::kMaxHeaderBytes, where, "header length ", n, " exceeds the limit of ",
                 detail::kMaxHeaderBytes, " bytes");
    STRATA_CHECK(n <= size - 8, where, "header length ", n, " exceeds file size ", size, " (8 + ",
                 n, " bytes needed)");
    const std::size_t data_start = 8 + static_cast<std::size_t>(n);
    const std::size_t buffer_size = size - data_start;

    // Parse, noting repeated top-level keys (nlohmann would silently keep the last).
    std::vector<std::string> keys;
    const json::parser_callback_t note_keys = [&keys](int depth, json::parse_event_t event,
                                                      json& parsed) {
      if (depth == 1 && event == json::parse_event_t::key)
        keys.push_back(parsed.get<std::string>());
      return true;
    };
    json header;
    try {
      header = json::parse(bytes_.begin() + 8,
                           bytes_.begin() + static_cast<std::ptrdiff_t>(data_start), note_keys);
    } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e999
      fail(where, "header is not valid JSON: ", e.what());
    }
    STRATA_CHECK(header.is_object(), where, "header is ", detail::json_type(header),
                 ", expected a JSON object");
    std::sort(keys.begin(), keys.end());
    const auto dup = std::adjacent_find(keys.begin(), keys.end());
    STRATA_CHECK(dup == keys.end(), where, "header has a duplicate entry '", *dup, "'");

    for (const auto& [name, value] : header.items()) {
      if (name == "__metadata__") {
        STRATA_CHECK(value.is_object(), where, "\"__metadata__\" is ", detail::json_type(value),
                     ", expected an object of strings");
        for (const auto& [key, v] : value.items()) {
          STRATA_CHECK(v.is_string(), where, "\"__metadata__\" value '", key, "' is ",
                       detail::json_type(v), ", expected a string");
          metadata_[key] = v.get<std::string>();
        }
        continue;
      }
      entries_[name] = parse_entry(name, value, data_start, buffer_size);
    }

    // Order by data position; no two tensors may share bytes.
    std::vector<std::pair<const std::string*, const Entry*>> sorted;
    for (const auto& [name, e] : entries_) sorted.emplace_back(&name, &e);
    std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) {
      return std::tie(a.second->begin, a.second->end, *a.first)
           < std::tie(b.second->begin, b.second->end, *b.first);
    });
    const std::pair<const std::string*, const Entry*>* last =
        nullptr;  // the non-empty tensor ending latest
    for (const auto& s : sorted) {
      if (last != nullptr && s.second->begin < last->second->end
          && s.second->end > s.second->begin) {
        fail(where, "tensors '", *last->first, "' ", offsets_string(*last->second, data_start),
             " and '", *s.first, "' ", offsets_string(*s.second, data_start), " overlap");
      }
      if (s.second->end > s.second->begin && (last == nullptr || s.second->end > last->second->end))
        last = &s;
      order_.push_back(*s.first);
    }
  }

  static std::string offsets_string(const Entry& e, std::size_t data_start) {
    return "[" + std::to_string(e.begin - data_start) + ", " + std::to_string(e.end - data_start)
         + "]";
  }

  Entry parse_entry(const std::string& name, const nlohmann::json& value, std::size_t data_start,
                    std::size_t buffer_size) const {
    const std::string where = prefix() + "tensor '" + name + "'";
    STRATA_CHECK(value.is_object(), where, " is ", detail::json_type(value),
                 ", expected an object with ", "\"dtype\", \"shape\" and \"data_offsets\"");
    for (const char* key : {"dtype", "shape", "data_offsets"}) {
      STRATA_CHECK(value.contains(key), where, " has no \"", key, "\"");
    }
    Entry e;

    const auto& dtype = value["dtype"];
    STRATA_CHECK(dtype.is_string(), where, ": dtype is ", detail::json_type(dtype),
                 ", expected a string");
    const std::string d = dtype.get<std::string>();
    if (d == "F32")
      e.dtype = DType::F32;
    else if (d == "F64")
      e.dtype = DType::F64;
    else if (d == "I32")
      e.dtype = DType::I32;
    else
      fail(where, " has unsupported dtype '", d, "' (supported: F32, F64, I32)");

    const auto& shape = value["shape"];
    STRATA_CHECK(shape.is_array(), where, ": shape is ", detail::json_type(shape),
                 ", expected an array");
    for (std::size_t i = 0; i < shape.size(); ++i) {
      const auto& dim = shape[i];
      STRATA_CHECK(dim.is_number_unsigned(), where, ": shape ", detail::brief(shape),
                   " has element ", i, " = ", detail::brief(dim),
                   ", expected a non-negative integer");
      STRATA_CHECK(
          dim.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<Index>::max()),
          where, ": shape ", detail::brief(shape), " has element ", i, " = ", detail::brief(dim),
          ", which is too large");
      e.shape.push_back(static_cast<Index>(dim.get<std::uint64_t>()));
    }

    const auto& offsets = value["data_offsets"];
    STRATA_CHECK(offsets.is_array() && offsets.size() == 2 && offsets[0].is_number_unsigned()
                     && offsets[1].is_number_unsigned(),
                 where, ": data_offsets is ", detail::brief(offsets),
                 ", expected [begin, end] with non-negative integers");
    const auto begin = offsets[0].get<std::uint64_t>(), end = offsets[1].get<std::uint64_t>();
    STRATA_CHECK(begin <= end, where, ": data_offsets [", begin, ", ", end, "] are reversed");
    STRATA_CHECK(end <= buffer_size, where, ": data_offsets [", begin, ", ", end,
                 "] exceed the data buffer of ", buffer_size, " bytes");

    std::uint64_t count = 0, nbytes = 0;
    STRATA_CHECK(detail::element_count(e.shape, count)
                     && detail::checked_mul(count, dtype_size(e.dtype), nbytes),
                 where, ": shape ", shape_string(e.shape), " overflows");
    STRATA_CHECK(end - begin == nbytes, where, ": data_offsets [", begin, ", ", end, "] span ",
                 end - begin, " bytes, expected ", nbytes, " for shape ", shape_string(e.shape),
                 " of ", to_string(e.dtype));
    e.begin = data_start + static_cast<std::size_t>(begin);
    e.end = data_start + static_cast<std::size_t>(end);
    return e;
  }

  std::string path_;
  std::vector<unsigned char> bytes_;  // the whole file
  std::map<std::string, std::string> metadata_;
  std::map<std::string, Entry> entries_;
  std::vector<std::string> order_;
};

}  // namespace strata::io
