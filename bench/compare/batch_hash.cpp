// batch_hash: prints the sha256 of the first N training batches strata's BatchLoader draws and of
// the validation batches strata::evaluate() builds, for a seed, data file, batch B and length T —
// the same lines `torch_train.py --check-batches N` prints, so the two can be diffed.
// Bytes hashed: for each batch, x then y as little-endian int32 [B, T], row-major.
//
//   g++ -std=c++17 -O2 -I/work/main/include -I/usr/include/eigen3 bench/compare/batch_hash.cpp -o
//   /tmp/batch_hash /tmp/batch_hash --batches 50 [--data examples/data/moby_dick.txt] [--batch 16]
//   [--context 128] [--seed 1]
//                   [--eval-batches 20] [--val-fraction 0.1] [--out FILE]
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <strata/train/data.hpp>

namespace {

// SHA-256 (FIPS 180-4), streaming.
class Sha256 {
 public:
  void update(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) {
      buf_[len_++] = p[i];
      if (len_ == 64) block(), len_ = 0;
    }
    bits_ += 8 * std::uint64_t(n);
  }
  std::string hex() {
    const std::uint64_t bits = bits_;
    unsigned char pad = 0x80;
    update(&pad, 1);
    pad = 0;
    while (len_ != 56) update(&pad, 1);
    for (int i = 7; i >= 0; --i) {
      unsigned char b = (unsigned char)(bits >> (8 * i));
      update(&b, 1);
    }
    char out[65];
    for (int i = 0; i < 8; ++i) std::snprintf(out + 8 * i, 9, "%08x", h_[i]);
    return out;
  }

 private:
  static std::uint32_t rotr(std::uint32_t x, int k) { return (x >> k) | (x << (32 - k)); }
  void block() {
    static const std::uint32_t K[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    std::uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = std::uint32_t(buf_[4 * i]) << 24 | std::uint32_t(buf_[4 * i + 1]) << 16
           | std::uint32_t(buf_[4 * i + 2]) << 8 | std::uint32_t(buf_[4 * i + 3]);
    for (int i = 16; i < 64; ++i) {
      const std::uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const std::uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    std::uint32_t a = h_[0], b = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6],
                  h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const std::uint32_t t1 =
          h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
      const std::uint32_t t2 =
          (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h_[0] += a, h_[1] += b, h_[2] += c, h_[3] += d, h_[4] += e, h_[5] += f, h_[6] += g, h_[7] += h;
  }
  std::uint32_t h_[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                         0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  unsigned char buf_[64] = {};
  size_t len_ = 0;
  std::uint64_t bits_ = 0;
};

// Appends x then y (little-endian int32, row-major) to a hash and, if open, a dump file.
void feed(Sha256& h, std::ofstream* dump, const strata::TokenMatrix& m) {
  static_assert(sizeof(strata::Token) == 4, "int32 tokens");
  std::vector<unsigned char> bytes(size_t(m.size()) * 4);
  for (strata::Index i = 0; i < m.size(); ++i) {
    const auto v = std::uint32_t(m.data()[i]);  // TokenMatrix is row-major
    for (int k = 0; k < 4; ++k) bytes[4 * size_t(i) + k] = (unsigned char)(v >> (8 * k));
  }
  h.update(bytes.data(), bytes.size());
  if (dump) dump->write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
}

// A stand-in "model" for strata::evaluate(): records the batches evaluate() builds.
struct Recorder {
  Sha256* h;
  std::ofstream* dump;
  strata::Index batches = 0;
  float loss(const strata::TokenMatrix& x, const strata::TokenMatrix& y) {
    feed(*h, dump, x);
    feed(*h, dump, y);
    ++batches;
    return 0.f;
  }
};

}  // namespace

int main(int argc, char** argv) {
  std::string data = "examples/data/moby_dick.txt", out;  // run from the repository root
  long long batches = 10, B = 16, T = 128, eval_batches = 20;
  unsigned long long seed = 1;
  double val_fraction = 0.1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "batch_hash: %s needs a value (see the comment at the top)\n",
                   a.c_str());
      return 2;
    }
    const char* v = argv[++i];
    if (a == "--data")
      data = v;
    else if (a == "--out")
      out = v;
    else if (a == "--batches")
      batches = std::atoll(v);
    else if (a == "--batch")
      B = std::atoll(v);
    else if (a == "--context" || a == "--seq-len")
      T = std::atoll(v);
    else if (a == "--eval-batches")
      eval_batches = std::atoll(v);
    else if (a == "--seed")
      seed = std::strtoull(v, nullptr, 10);
    else if (a == "--val-fraction")
      val_fraction = std::atof(v);
    else {
      std::fprintf(stderr, "batch_hash: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  try {
    const auto ds = strata::TextDataset::from_file(data, val_fraction, T);
    std::ofstream dump_file;
    std::ofstream* dump = nullptr;
    if (!out.empty()) {
      dump_file.open(out, std::ios::binary | std::ios::trunc);
      if (!dump_file) strata::fail("cannot write ", out);
      dump = &dump_file;
    }
    strata::BatchLoader loader(ds.train, B, T, seed);
    Sha256 h_train, h_eval;
    strata::TokenMatrix x, y;
    for (long long i = 0; i < batches; ++i) {
      loader.next(x, y);
      feed(h_train, dump, x);
      feed(h_train, dump, y);
    }
    Recorder rec{&h_eval, dump};
    strata::evaluate(rec, ds.val, B, T, eval_batches);
    std::printf("data %zu train / %zu val tokens, B %lld T %lld seed %llu\n", ds.train.size(),
                ds.val.size(), B, T, seed);
    std::printf("train batches %lld sha256 %s\n", batches, h_train.hex().c_str());
    std::printf("eval batches %lld sha256 %s\n", (long long)rec.batches, h_eval.hex().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "batch_hash: %s\n", e.what());
    return 1;
  }
  return 0;
}
