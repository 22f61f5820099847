// fuzz_safetensors: libFuzzer harness of the safetensors reader (io/safetensors.hpp). The input is
// a whole file. A malformed file must end in strata::Error; a file the reader accepts must give
// every tensor's data back without touching memory outside the file (ASan checks that) and with
// sizes that agree with the header. Anything else (another exception, a crash, a sanitizer report)
// is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "strata/io/safetensors.hpp"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

std::size_t elements(const std::vector<strata::Index>& shape) {
  std::size_t n = 1;
  for (strata::Index d : shape) n *= static_cast<std::size_t>(d);
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using strata::io::DType;
  std::vector<unsigned char> bytes(data, data + size);
  try {
    const auto file = strata::io::SafetensorsFile::from_bytes(std::move(bytes), "fuzz");
    std::size_t total = 0;
    for (const std::string& name : file.names()) {
      const std::vector<strata::Index>& shape = file.shape(name);
      const std::size_t n = elements(shape);
      total += n * strata::io::dtype_size(file.dtype(name));
      check(total <= size);  // every tensor's bytes lie inside the file, none shared
      if (file.dtype(name) == DType::I32) {
        std::vector<std::int32_t> out(n);
        file.copy_to(name, shape, out.data());
      } else {
        std::vector<double> out(n);
        file.copy_converted(name, shape, out.data());
      }
    }
    for (const auto& [key, value] : file.metadata()) check(!key.empty() || value.size() <= size);
  } catch (const strata::Error&) {
    // a clear rejection: fine
  }
  return 0;
}
