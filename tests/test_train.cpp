// Tests for strata/train/: AdamW against a hand-written loop of PyTorch's formula, gradient
// clipping, the learning-rate schedule, the byte tokenizer, the dataset split, the batch loader and
// evaluation, a short training run whose loss falls, and exact resume from a training checkpoint.
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "gradcheck.hpp"
#include "strata/strata.hpp"
#include "temp_dir.hpp"

namespace {

namespace fs = std::filesystem;
using strata::AdamW;
using strata::AdamWConfig;
using strata::BatchLoader;
using strata::ByteTokenizer;
using strata::GPT;
using strata::Index;
using strata::LRSchedule;
using strata::ModelConfig;
using strata::TextDataset;
using strata::Token;
using strata::TokenMatrix;
using strata::Trainer;
using strata::TrainOptions;
using strata::Vector;

const std::string kCorpus = STRATA_SOURCE_DIR "/examples/data/moby_dick.txt";

using strata::testing::error_of;

using strata::testing::bit_equal;

bool bit_equal(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

TokenMatrix random_tokens(Index B, Index T, Index V, std::uint64_t seed) {
  strata::Rng rng(seed);
  TokenMatrix x(B, T);
  for (Index b = 0; b < B; ++b)
    for (Index t = 0; t < T; ++t) x(b, t) = Token(rng.below(std::uint64_t(V)));
  return x;
}

/// The Moby Dick corpus (read once), 10% validation, windows of up to 32 tokens.
const TextDataset& corpus() {
  static const TextDataset data = TextDataset::from_file(kCorpus, 0.1, 32);
  return data;
}

/// A fresh temporary directory per test (tests/temp_dir.hpp).
using TempDir = strata::testing::TempDirTest;

// ---- AdamW
// ---------------------------------------------------------------------------------------

/// A tiny double model with every kind of tensor, shortcut features included (L = 3, C = 8, Cf =
/// 12).
ModelConfig adamw_config() {
  ModelConfig c;
  c.vocab_size = 32;
  c.context_length = 8;
  c.n_layer = 3;
  c.n_head = 2;
  c.n_embd = 8;
  c.seed = 7;
  c.attention = strata::AttentionPlan::shortcut({}, 12, true);
  return c;
}

/// Which tensors SPEC §1 decays: every matrix (wte, attention and MLP weights, shortcut feature
/// weights) except the position table; never biases or LayerNorm parameters.
bool spec_decays(const strata::TensorInfo& t) {
  const std::string& n = t.name;
  const bool is_weight = n.size() > 7 && n.compare(n.size() - 7, 7, ".weight") == 0;
  const bool layernorm = n.find("ln_") != std::string::npos || n.find(".ln.") != std::string::npos;
  return is_weight && !layernorm && n != "transformer.wpe.weight";
}

TEST(AdamW, DecaysExactlyTheMatrices) {
  GPT<double> model(adamw_config());
  std::set<std::string> decayed;
  for (const auto& t : model.layout().tensors()) {
    EXPECT_EQ(t.decay, spec_decays(t)) << t.name;
    EXPECT_EQ(t.decay, t.ndim == 2 && t.name != "transformer.wpe.weight") << t.name;
    if (t.decay) decayed.insert(t.name);
  }
  // wte + 4 matrices per block (3 blocks) + fc/proj of the two shortcut features (embed, 0)
  EXPECT_EQ(decayed.size(), 1u + 4 * 3 + 2 * 2);
  EXPECT_TRUE(decayed.count("transformer.wte.weight"));
  EXPECT_TRUE(decayed.count("transformer.h.2.mlp.c_proj.weight"));
  EXPECT_TRUE(decayed.count("transformer.shortcut.embed.fc.weight"));
  EXPECT_TRUE(decayed.count("transformer.shortcut.0.proj.weight"));

  // With zero gradients the moments stay zero and the Adam step is 0 / (0 + eps) = 0: only the
  // decay moves parameters, by exactly p * (1 - lr * wd), and only the decayed ones.
  model.init_parameters();
  const Vector<double> before = model.parameters();
  AdamW<double> opt(model, AdamWConfig{0.01, 0.9, 0.95, 1e-8, 0.1});
  model.gradients().setZero();
  opt.step(model, 0.01);
  for (const auto& t : model.layout().tensors())
    for (Index i = 0; i < t.size(); ++i) {
      const double p0 = before[t.offset + i], p1 = model.parameters()[t.offset + i];
      if (t.decay)
        ASSERT_EQ(p1, p0 * (1 - 0.01 * 0.1)) << t.name << "[" << i << "]";
      else
        ASSERT_EQ(p1, p0) << t.name << "[" << i << "]";
    }
}

/// PyTorch's torch.optim.AdamW (single tensor, no amsgrad), written out per element.
struct ReferenceAdamW {
  double beta1, beta2, eps, wd;
  std::vector<double> m, v;
  int t = 0;

  void step(std::vector<double>& p, const Vector<double>& g, const strata::ParameterLayout& layout,
            double lr) {
    ++t;
    const double bias_correction1 = 1 - std::pow(beta1, t);
    const double bias_correction2 = 1 - std::pow(beta2, t);
    const double step_size = lr / bias_correction1;
    const double bias_correction2_sqrt = std::sqrt(bias_correction2);
    for (const auto& info : layout.tensors()) {
      const bool decay = spec_decays(info);
      for (Index k = 0; k < info.size(); ++k) {
        const size_t i = size_t(info.offset + k);
        if (decay) p[i] *= 1 - lr * wd;                   // param.mul_(1 - lr * weight_decay)
        m[i] = beta1 * m[i] + (1 - beta1) * g[Index(i)];  // exp_avg.lerp_(grad, 1 - beta1)
        v[i] = beta2 * v[i] + (1 - beta2) * g[Index(i)] * g[Index(i)];
        const double denom = std::sqrt(v[i]) / bias_correction2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;  // param.addcdiv_(exp_avg, denom, -step_size)
      }
    }
  }
};

void expect_close(const Vector<double>& got, const std::vector<double>& want, double floor,
                  const char* what, int step) {
  ASSERT_EQ(size_t(got.size()), want.size());
  double worst = 0;
  size_t at = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double err = std::abs(got[Index(i)] - want[i]) / std::max(floor, std::abs(want[i]));
    if (err > worst) worst = err, at = i;
  }
  EXPECT_LE(worst, 1e-12) << what << " after step " << step << ", element " << at << ": got "
                          << got[Index(at)] << ", want " << want[at];
}

TEST(AdamW, MatchesPyTorchFormulaOverSeveralSteps) {
  const ModelConfig cfg = adamw_config();
  GPT<double> model(cfg);
  const AdamWConfig ac{3e-3, 0.9, 0.95, 1e-8, 0.1};
  AdamW<double> opt(model, ac);
  ReferenceAdamW ref{ac.beta1,
                     ac.beta2,
                     ac.eps,
                     ac.weight_decay,
                     std::vector<double>(size_t(model.num_parameters()), 0.0),
                     std::vector<double>(size_t(model.num_parameters()), 0.0)};
  std::vector<double> p(model.parameters().data(),
                        model.parameters().data() + model.parameters().size());
  const double lrs[] = {1e-3, 3e-3, 2e-3, 5e-4, 3e-3, 1e-4};
  for (int s = 0; s < 6; ++s) {
    const TokenMatrix x = random_tokens(2, 8, cfg.vocab_size, 100 + s);
    const TokenMatrix y = random_tokens(2, 8, cfg.vocab_size, 200 + s);
    model.forward_backward(x, y);
    const Vector<double> g = model.gradients();
    ASSERT_GT(g.norm(), 0);
    if (s == 0) {
      // First step in closed form: m_hat = g, v_hat = g^2, so the update is lr * g / (|g| + eps).
      const Vector<double> p0 = model.parameters();
      AdamW<double> first(model, ac);
      first.step(model, lrs[0]);
      for (const auto& t : model.layout().tensors())
        for (Index k = 0; k < t.size(); ++k) {
          const Index i = t.offset + k;
          const double want = p0[i] * (t.decay ? 1 - lrs[0] * ac.weight_decay : 1.0)
                            - lrs[0] * g[i] / (std::abs(g[i]) + ac.eps);
          ASSERT_NEAR(model.parameters()[i], want, 1e-15) << t.name << "[" << k << "]";
        }
      model.parameters() = p0;  // undo; the optimizer under test starts here
    }
    opt.step(model, lrs[s]);
    ref.step(p, g, model.layout(), lrs[s]);
    EXPECT_EQ(opt.step_count(), s + 1);
    // m sums gradients of both signs, so an element can cancel to almost nothing: measure its
    // error against the size of the moment vector (1e-3 of its largest element), not the element.
    double m_scale = 0;
    for (double x : ref.m) m_scale = std::max(m_scale, std::abs(x));
    expect_close(opt.m(), ref.m, 1e-3 * m_scale, "m", s + 1);
    expect_close(opt.v(), ref.v, 1e-300, "v", s + 1);
    expect_close(model.parameters(), p, 1e-3, "parameters", s + 1);
  }
}

TEST(AdamW, ValidatesItsInputs) {
  EXPECT_EQ(error_of([] {
              AdamWConfig{1e-3, 1.0}.validate();
            }),
            "AdamW: beta1 1, expected in [0, 1)");
  EXPECT_EQ(error_of([] { AdamWConfig{-1.0}.validate(); }), "AdamW: lr -1, expected >= 0");
  EXPECT_EQ(error_of([] {
              AdamWConfig{1e-3, 0.9, 0.95, 0.0}.validate();
            }),
            "AdamW: eps 0, expected > 0");
  ModelConfig small = adamw_config(), big = adamw_config();
  big.n_embd = 16;
  GPT<double> a(small), b(big);
  AdamW<double> opt(a);
  EXPECT_EQ(error_of([&] { opt.step(b, 1e-3); }),
            "AdamW::step: the model has " + std::to_string(b.num_parameters())
                + " parameters, the optimizer was made for " + std::to_string(a.num_parameters()));
}

TEST(ClipGradNorm, ReturnsPreClipNormAndScalesToMaxNorm) {
  Vector<double> g(4);
  g << 3, 0, -4, 0;  // norm 5
  Vector<double> big = g;
  EXPECT_EQ(strata::clip_grad_norm(big, 1.0), 5.0);
  EXPECT_NEAR(big.norm(), 1.0, 1e-6);
  EXPECT_NEAR(big[0], 3.0 / (5.0 + 1e-6), 1e-15);  // torch: max_norm / (norm + 1e-6)
  EXPECT_NEAR(big[2], -4.0 / (5.0 + 1e-6), 1e-15);
  // the norm measured before the call (argument evaluation order is unspecified: g++ and clang
  // differ, and the call may rescale by the 1e-6 margin)
  const double before = big.norm();
  EXPECT_DOUBLE_EQ(strata::clip_grad_norm(big, 1.0), before);  // returns the pre-clip norm

  Vector<double> small = g;
  EXPECT_EQ(strata::clip_grad_norm(small, 10.0), 5.0);  // below the limit: untouched
  EXPECT_TRUE(bit_equal(small, g));
  Vector<double> off = g;
  EXPECT_EQ(strata::clip_grad_norm(off, 0.0), 5.0);  // 0 only measures
  EXPECT_TRUE(bit_equal(off, g));

  Vector<float> f = g.cast<float>();
  EXPECT_NEAR(strata::clip_grad_norm(f, 0.5), 5.0, 1e-6);
  EXPECT_NEAR(f.cast<double>().norm(), 0.5, 1e-6);
}

// grad_norm sums chunk sums in a fixed order whatever the thread count: the norm equals the
// serial sum of the same chunks bit for bit, at 1 and 2 threads, for a size that is not a whole
// number of chunks or of tasks.
TEST(ClipGradNorm, NormIsTheSameSumOnAnyThreadCount) {
  const int saved = strata::num_threads();
  strata::Rng rng(17);
  Vector<float> g(4096 * 16 * 5 + 4096 * 3 + 123);
  for (Index i = 0; i < g.size(); ++i) g[i] = float(rng.normal());
  // the chunks of 4096 summed in order on one thread (whether a multiply-add is fused is the
  // compiler's choice per call site, so the chunk sums come from the library's own function)
  double serial = 0;
  for (Index begin = 0; begin < g.size(); begin += 4096) {
    const Index n = std::min<Index>(4096, g.size() - begin);
    const double chunk = strata::detail::sum_squares(g, begin, n);
    EXPECT_NEAR(chunk, g.segment(begin, n).cast<double>().squaredNorm(), 1e-12 * chunk);
    serial += chunk;
  }
  for (const int threads : {1, 2}) {
    strata::set_num_threads(threads);
    EXPECT_EQ(strata::grad_norm(g), std::sqrt(serial)) << threads << " thread(s)";
    Vector<float> clipped = g;
    EXPECT_EQ(strata::clip_grad_norm(clipped, 1.0), std::sqrt(serial));
    const float c = float(strata::clip_coefficient(std::sqrt(serial), 1.0));
    EXPECT_TRUE(bit_equal(clipped, (g * c).eval())) << threads << " thread(s)";
  }
  strata::set_num_threads(saved);
  EXPECT_NEAR(std::sqrt(serial), g.cast<double>().norm(), 1e-9 * std::sqrt(serial));
}

TEST(ClipGradNorm, CoefficientIsTorchs) {
  EXPECT_EQ(strata::clip_coefficient(5.0, 1.0), 1.0 / (5.0 + 1e-6));
  EXPECT_EQ(strata::clip_coefficient(5.0, 10.0), 1.0);  // below the limit: no scaling
  EXPECT_EQ(strata::clip_coefficient(5.0, 0.0), 1.0);   // 0: clipping off
}

// The trainer clips by passing the coefficient to AdamW::step instead of scaling the arena: the
// step must be bit for bit the one after clip_grad_norm, in float and double.
template <typename S>
void expect_scaled_step_is_clip_then_step() {
  GPT<S> a(adamw_config()), b(adamw_config());
  strata::Rng rng(23);
  for (Index i = 0; i < a.gradients().size(); ++i) a.gradients()[i] = S(rng.normal());
  b.gradients() = a.gradients();
  const Vector<S> grads = a.gradients();
  AdamW<S> opt_a(a), opt_b(b);
  for (int s = 0; s < 3; ++s) {
    a.gradients() = grads;
    const double norm = strata::clip_grad_norm(a.gradients(), 0.5);
    opt_a.step(a, 1e-2);
    const double coef = strata::clip_coefficient(strata::grad_norm(b.gradients()), 0.5);
    ASSERT_LT(coef, 1.0);  // the clip is active
    EXPECT_EQ(strata::grad_norm(b.gradients()), norm);
    opt_b.step(b, 1e-2, coef);
    EXPECT_TRUE(bit_equal(b.gradients(), grads)) << "the arena is left unscaled";
  }
  EXPECT_TRUE(bit_equal(a.parameters(), b.parameters()));
  EXPECT_TRUE(bit_equal(opt_a.m(), opt_b.m()));
  EXPECT_TRUE(bit_equal(opt_a.v(), opt_b.v()));
  EXPECT_THROW(opt_b.step(b, 1e-2, 0.0), strata::Error);
  EXPECT_THROW(opt_b.step(b, 1e-2, std::nan("")), strata::Error);
}
TEST(AdamW, GradScaleIsClippingFirst) {
  expect_scaled_step_is_clip_then_step<float>();
  expect_scaled_step_is_clip_then_step<double>();
}

TEST(LRSchedule, WarmupPeakCosineAndFloor) {
  const LRSchedule s{1e-3, 1e-4, 10, 110};
  EXPECT_DOUBLE_EQ(s.at(0), 1e-4);  // linear warm-up: max_lr * (step + 1) / warmup
  EXPECT_DOUBLE_EQ(s.at(4), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(9), 1e-3);   // the peak is reached at the end of the warm-up ...
  EXPECT_DOUBLE_EQ(s.at(10), 1e-3);  // ... and the cosine starts there
  EXPECT_NEAR(s.at(60), 0.5 * (1e-3 + 1e-4), 1e-15);  // cosine midpoint
  EXPECT_NEAR(s.at(35), 1e-4 + 0.5 * (1 + std::cos(std::acos(-1.0) / 4)) * 9e-4, 1e-15);
  for (Index i = 10; i < 110; ++i) {
    EXPECT_GT(s.at(i), s.at(i + 1)) << i;
    EXPECT_GT(s.at(i), 1e-4) << i;
  }
  EXPECT_EQ(s.at(110), 1e-4);  // floor at and after total
  EXPECT_EQ(s.at(111), 1e-4);
  EXPECT_EQ(s.at(100000), 1e-4);

  const LRSchedule no_warmup{2e-3, 0.0, 0, 100};
  EXPECT_DOUBLE_EQ(no_warmup.at(0), 2e-3);
  EXPECT_NEAR(no_warmup.at(50), 1e-3, 1e-15);
  EXPECT_EQ(no_warmup.at(100), 0.0);
}

// ---- data
// ------------------------------------------------------------------------------------------

TEST(ByteTokenizer, RoundTripsUtf8) {
  const std::string text =
      "Call me Ishmael. Caf\xc3\xa9, \xe6\x97\xa5\xe6\x9c\xac, \xf0\x9f\x90\x8b!\n\t\x7f";
  const std::vector<Token> ids = ByteTokenizer::encode(text);
  ASSERT_EQ(ids.size(), text.size());  // one token per byte, multi-byte characters included
  EXPECT_EQ(ids[0], 'C');
  const size_t e = text.find("\xc3\xa9");
  EXPECT_EQ(ids[e], 0xc3);
  EXPECT_EQ(ids[e + 1], 0xa9);
  const size_t whale = text.find("\xf0\x9f\x90\x8b");
  EXPECT_EQ((std::vector<Token>(ids.begin() + long(whale), ids.begin() + long(whale) + 4)),
            (std::vector<Token>{0xf0, 0x9f, 0x90, 0x8b}));
  for (Token id : ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, ByteTokenizer::vocab_size);
  }
  EXPECT_EQ(ByteTokenizer::decode(ids), text);

  std::vector<Token> all(256);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(ByteTokenizer::encode(ByteTokenizer::decode(all)), all);
  EXPECT_EQ(ByteTokenizer::decode({}), "");
}

TEST(ByteTokenizer, RejectsNonBytes) {
  EXPECT_EQ(error_of([] {
              ByteTokenizer::decode({104, 105, 300});
            }),
            "ByteTokenizer::decode: token 300 at 2 is not a byte (0..255)");
  EXPECT_EQ(error_of([] { ByteTokenizer::decode({-1}); }),
            "ByteTokenizer::decode: token -1 at 0 is not a byte (0..255)");
}

TEST(TextDataset, SplitsTrainThenValidation) {
  std::string text(1000, ' ');
  for (size_t i = 0; i < text.size(); ++i) text[i] = char('a' + i % 26);
  const TextDataset d = TextDataset::from_text(text, 0.1, 16);
  EXPECT_EQ(d.source, "<memory>");
  ASSERT_EQ(d.train.size(), 900u);
  ASSERT_EQ(d.val.size(), 100u);
  EXPECT_EQ(ByteTokenizer::decode(d.train), text.substr(0, 900));
  EXPECT_EQ(ByteTokenizer::decode(d.val), text.substr(900));

  const TextDataset odd = TextDataset::from_text(text.substr(0, 999), 0.25, 16);
  EXPECT_EQ(odd.val.size(), 249u);  // floor(999 * 0.25)
  EXPECT_EQ(odd.train.size(), 750u);

  const TextDataset moby = TextDataset::from_file(kCorpus, 0.1, 32);
  EXPECT_EQ(moby.source, kCorpus);
  const size_t n = moby.train.size() + moby.val.size();
  EXPECT_EQ(n, size_t(fs::file_size(kCorpus)));
  EXPECT_EQ(moby.val.size(), size_t(double(n) * 0.1));
}

TEST(TextDataset, Errors) {
  EXPECT_EQ(error_of([] { TextDataset::from_text("abcdefghij", 0.1, 8); }),
            "data: '<memory>' has 10 bytes; with a validation fraction of 0.1 each split needs at "
            "least 9 tokens (sequence length 8 + 1), found 9 for training and 1 for validation");
  EXPECT_EQ(
      error_of([] { TextDataset::from_text(std::string(100, 'x'), 0.5, 64, "tiny.txt"); }),
      "data: 'tiny.txt' has 100 bytes; with a validation fraction of 0.5 each split needs at "
      "least 65 tokens (sequence length 64 + 1), found 50 for training and 50 for validation");
  EXPECT_EQ(error_of([] { TextDataset::from_text(std::string(100, 'x'), 1.0, 4); }),
            "data: validation fraction 1, expected in (0, 1)");
  EXPECT_EQ(error_of([] { TextDataset::from_text(std::string(100, 'x'), 0.0, 4); }),
            "data: validation fraction 0, expected in (0, 1)");
  const std::string missing = (fs::temp_directory_path() / "strata_no_such_dir/none.txt").string();
  EXPECT_EQ(error_of([&] { TextDataset::from_file(missing, 0.1, 8); }),
            "data: cannot open '" + missing + "': No such file or directory");
}

std::vector<Token> iota_tokens(Index n) {
  std::vector<Token> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), 0);
  return t;
}

TEST(BatchLoader, TargetsAreInputsShiftedByOne) {
  const std::vector<Token> tokens = iota_tokens(500);  // token i at position i: windows are visible
  BatchLoader loader(tokens, 4, 16, 42);
  TokenMatrix x, y;
  std::set<Token> starts;
  for (int n = 0; n < 50; ++n) {
    loader.next(x, y);
    ASSERT_EQ(x.rows(), 4);
    ASSERT_EQ(x.cols(), 16);
    ASSERT_EQ(y.rows(), 4);
    ASSERT_EQ(y.cols(), 16);
    for (Index b = 0; b < 4; ++b) {
      const Token off = x(b, 0);
      ASSERT_GE(off, 0);
      ASSERT_LE(off, 500 - 17);  // the last window ends at the last token
      starts.insert(off);
      for (Index t = 0; t < 16; ++t) {
        ASSERT_EQ(x(b, t), off + t);
        ASSERT_EQ(y(b, t), off + t + 1);
      }
    }
  }
  EXPECT_EQ(loader.batches_drawn(), 50);
  EXPECT_GT(starts.size(), 100u);  // random offsets, not a fixed few

  // A corpus of exactly one window always gives that window.
  const std::vector<Token> one = iota_tokens(17);
  BatchLoader tight(one, 2, 16, 1);
  tight.next(x, y);
  EXPECT_EQ(x(1, 0), 0);
  EXPECT_EQ(y(1, 15), 16);
  EXPECT_EQ(error_of([&] { BatchLoader(one, 2, 17, 1); }),
            "BatchLoader: 17 tokens cannot fill one window of 18");
  EXPECT_EQ(error_of([&] { BatchLoader(one, 0, 4, 1); }),
            "BatchLoader: batch 0 and sequence length 4 must both be >= 1");
}

TEST(BatchLoader, DeterministicForASeedAndRestorable) {
  const std::vector<Token> tokens = iota_tokens(10000);
  auto draw = [&](BatchLoader& l, int n) {
    std::vector<TokenMatrix> out;
    TokenMatrix x, y;
    for (int i = 0; i < n; ++i) {
      l.next(x, y);
      out.push_back(x);
    }
    return out;
  };
  BatchLoader a(tokens, 8, 32, 5), b(tokens, 8, 32, 5), c(tokens, 8, 32, 6);
  const auto sa = draw(a, 6);
  EXPECT_EQ(sa, draw(b, 6));
  EXPECT_NE(sa, draw(c, 6));

  // Save the position after 3 batches; a loader with another seed restored there continues with
  // batches 4.. of the original sequence.
  BatchLoader first(tokens, 8, 32, 5);
  draw(first, 3);
  const strata::Rng::State state = first.rng_state();
  const Index drawn = first.batches_drawn();
  EXPECT_EQ(drawn, 3);
  BatchLoader resumed(tokens, 8, 32, 999);
  resumed.restore(state, drawn);
  const auto rest = draw(resumed, 3);
  EXPECT_EQ(rest, std::vector<TokenMatrix>(sa.begin() + 3, sa.end()));
  EXPECT_EQ(resumed.batches_drawn(), 6);
}

/// A stand-in model for evaluate(): records every batch, and its "loss" is a function of the batch.
struct RecordingModel {
  std::vector<std::pair<TokenMatrix, TokenMatrix>> batches;
  float loss(const TokenMatrix& x, const TokenMatrix& y) {
    batches.emplace_back(x, y);
    return float(x(0, 0) % 7) + 0.25f;
  }
};

TEST(Evaluate, UsesWholeBatchesOfFixedNonOverlappingWindows) {
  const Index T = 8, B = 4;
  const std::vector<Token> tokens = iota_tokens(13 * T + 1);  // exactly 13 windows
  RecordingModel m;
  const double mean = strata::evaluate(m, tokens, B, T, 100);
  ASSERT_EQ(m.batches.size(), 3u);  // 12 of the 13 windows: whole batches only
  std::set<Token> starts;
  double want = 0;
  for (const auto& [x, y] : m.batches) {
    ASSERT_EQ(x.rows(), B);
    ASSERT_EQ(x.cols(), T);
    want += double(x(0, 0) % 7) + 0.25;
    for (Index b = 0; b < B; ++b) {
      EXPECT_EQ(x(b, 0) % T, 0) << "windows are aligned to T, so they never overlap";
      EXPECT_TRUE(starts.insert(x(b, 0)).second) << "window " << x(b, 0) << " used twice";
      for (Index t = 0; t < T; ++t) {
        EXPECT_EQ(x(b, t), x(b, 0) + t);
        EXPECT_EQ(y(b, t), x(b, 0) + t + 1);
      }
    }
  }
  EXPECT_DOUBLE_EQ(mean, want / 3);

  // max_batches limits the work; the windows are spread over the whole text.
  RecordingModel limited;
  const std::vector<Token> long_tokens = iota_tokens(1000 * T + 1);
  strata::evaluate(limited, long_tokens, B, T, 2);
  ASSERT_EQ(limited.batches.size(), 2u);
  EXPECT_EQ(limited.batches[0].first(0, 0), 0);
  EXPECT_GT(limited.batches[1].first(B - 1, 0), 800 * T);

  // Fewer windows than one batch: a single smaller batch.
  RecordingModel few;
  strata::evaluate(few, iota_tokens(3 * T + 1), B, T, 10);
  ASSERT_EQ(few.batches.size(), 1u);
  EXPECT_EQ(few.batches[0].first.rows(), 3);

  RecordingModel none;
  EXPECT_EQ(error_of([&] { strata::evaluate(none, iota_tokens(T), B, T, 10); }),
            "evaluate: 8 tokens cannot fill one window of 9");
}

TEST(Evaluate, DeterministicOnARealModel) {
  strata::set_num_threads(2);
  ModelConfig cfg;
  cfg.n_layer = 1;
  cfg.n_head = 2;
  cfg.n_embd = 16;
  cfg.context_length = 32;
  GPT<float> model(cfg);
  const double a = strata::evaluate(model, corpus().val, 4, 32, 3);
  const double b = strata::evaluate(model, corpus().val, 4, 32, 3);
  EXPECT_TRUE(bit_equal(a, b)) << a << " vs " << b;
  EXPECT_NEAR(a, std::log(256.0), 0.1);  // an untrained model is close to uniform
}

// ---- training
// ---------------------------------------------------------------------------------------

ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab_size = 256;
  c.context_length = 32;
  c.n_layer = 2;
  c.n_head = 2;
  c.n_embd = 32;
  c.seed = 1337;
  return c;
}

TrainOptions tiny_options(Index steps) {
  TrainOptions o;
  o.steps = steps;
  o.batch = 8;
  o.seq_len = 32;
  o.warmup = 5;
  o.lr = 3e-3;
  o.min_lr = 3e-4;
  o.eval_batches = 4;
  o.data_seed = 11;
  return o;
}

// One thread: on a busy 2-core machine the parallel regions of tiny products cost more than they
// save (the threaded path is what Resume.ContinuesBitForBit runs).
TEST(Trainer, LossFallsOnMobyDick) {
  strata::set_num_threads(1);
  GPT<float> model(tiny_config());
  Trainer<float> trainer(model, corpus(), tiny_options(60));
  EXPECT_EQ(trainer.seq_len(), 32);
  const double val_before = trainer.evaluate_validation();

  std::vector<double> losses;
  std::vector<std::pair<Index, double>> evals;
  Trainer<float>::Callbacks cb;
  cb.on_step = [&](const strata::StepReport& r) {
    EXPECT_EQ(r.step, Index(losses.size()) + 1);
    EXPECT_TRUE(std::isfinite(r.loss));
    EXPECT_GT(r.grad_norm, 0);
    losses.push_back(r.loss);
  };
  cb.on_eval = [&](Index step, double loss) { evals.emplace_back(step, loss); };
  trainer.run(cb);

  ASSERT_EQ(losses.size(), 60u);
  EXPECT_EQ(trainer.state().step, 60);
  EXPECT_NEAR(losses.front(), std::log(256.0), 0.1);  // ~5.55 at initialisation
  double last = 0;
  for (size_t i = losses.size() - 5; i < losses.size(); ++i) last += losses[i] / 5;
  EXPECT_LT(last, 3.5) << "first loss " << losses.front();
  // validation at step 0 (fresh start) and at the end
  ASSERT_EQ(evals.size(), 2u);
  EXPECT_EQ(evals[0].first, 0);
  EXPECT_TRUE(bit_equal(evals[0].second, val_before));
  EXPECT_EQ(evals[1].first, 60);
  EXPECT_LT(evals[1].second, 3.6);
  EXPECT_LT(evals[1].second, val_before - 1.5);
}

TEST(Trainer, StepFollowsTheScheduleAndStops) {
  strata::set_num_threads(1);
  GPT<float> model(tiny_config());
  Trainer<float> trainer(model, corpus(), tiny_options(20));
  const LRSchedule s{3e-3, 3e-4, 5, 20};
  for (Index i = 0; i < 3; ++i) {
    const strata::StepReport r = trainer.step();
    EXPECT_EQ(r.step, i + 1);
    EXPECT_EQ(r.lr, s.at(i));
  }
  int calls = 0;
  Trainer<float>::Callbacks cb;
  cb.should_stop = [&] { return ++calls > 2; };
  trainer.run(cb);
  EXPECT_EQ(trainer.state().step, 5);  // two more steps, then stopped

  TrainOptions bad = tiny_options(20);
  bad.seq_len = 64;
  EXPECT_EQ(error_of([&] { Trainer<float>(model, corpus(), bad); }),
            "Trainer: seq_len 64 exceeds the model's context length 32");
  bad = tiny_options(20);
  bad.min_lr = 1.0;
  EXPECT_EQ(error_of([&] { Trainer<float>(model, corpus(), bad); }),
            "TrainOptions: min_lr = 1, expected in [0, lr = 0.003]");
}

using Resume = TempDir;

TEST_F(Resume, ContinuesBitForBit) {
  strata::set_num_threads(2);  // the same thread count for every run: bit-exactness needs it
  const Index k = 3;
  TrainOptions opts = tiny_options(2 * k);
  opts.eval_batches = 1;

  // A: 2k steps straight.
  GPT<float> model_a(tiny_config());
  Trainer<float> a(model_a, corpus(), opts);
  std::vector<double> losses_a;
  for (Index i = 0; i < 2 * k; ++i) losses_a.push_back(a.step().loss);

  // B: k steps, then save.
  const std::string path = file("run.safetensors");
  {
    GPT<float> model_b(tiny_config());
    Trainer<float> b(model_b, corpus(), opts);
    for (Index i = 0; i < k; ++i) {
      const double loss = b.step().loss;
      EXPECT_TRUE(bit_equal(loss, losses_a[size_t(i)])) << "step " << i + 1;
    }
    b.save(path);
  }

  // C: a new model (another seed, so nothing but the checkpoint can make it match) resumes and
  // runs the remaining k steps; run() on a resumed trainer does no step-0 evaluation.
  ModelConfig other = tiny_config();
  other.seed = 4242;
  GPT<float> model_c(other);
  ASSERT_FALSE(bit_equal(model_c.parameters(), model_a.parameters()));
  Trainer<float> c(model_c, corpus(), opts);
  c.resume(path);
  EXPECT_EQ(c.state().step, k);
  EXPECT_EQ(c.state().batches_drawn, k);
  EXPECT_EQ(c.optimizer().step_count(), k);
  std::vector<strata::StepReport> reports;
  std::vector<Index> evals;
  Trainer<float>::Callbacks cb;
  cb.on_step = [&](const strata::StepReport& r) { reports.push_back(r); };
  cb.on_eval = [&](Index s, double) { evals.push_back(s); };
  c.run(cb);
  ASSERT_EQ(reports.size(), size_t(k));
  for (Index i = k; i < 2 * k; ++i) {
    const strata::StepReport& r = reports[size_t(i - k)];
    EXPECT_EQ(r.step, i + 1);
    EXPECT_TRUE(bit_equal(r.loss, losses_a[size_t(i)]))
        << "step " << i + 1 << ": resumed " << r.loss << ", straight " << losses_a[size_t(i)];
  }
  EXPECT_EQ(evals, (std::vector<Index>{2 * k}));
  EXPECT_EQ(std::memcmp(model_c.parameters().data(), model_a.parameters().data(),
                        sizeof(float) * size_t(model_a.num_parameters())),
            0);
  EXPECT_TRUE(bit_equal(c.optimizer().m(), a.optimizer().m()));
  EXPECT_TRUE(bit_equal(c.optimizer().v(), a.optimizer().v()));
  EXPECT_EQ(c.optimizer().step_count(), 2 * k);
  EXPECT_EQ(c.state().step, 2 * k);
}

// A run saved on one thread count and resumed on another is not bit-exact (README, "Resume
// across thread counts"): Eigen's and BLAS's products split their sums by thread count, so the
// last bits differ. What is promised and tested: it is the same run (same data position,
// schedule and optimizer state), equal to the straight run up to rounding, in both directions.
// The bounds are far below what a real resume error makes: a lost optimizer state moves every
// parameter by about lr (relative ~10%), another batch changes the loss by ~1%.
TEST_F(Resume, ContinuesOnAnotherThreadCountUpToRounding) {
  // (bit for bit in the header-only build, see the end)
  // Large enough that every parallel region runs on both threads (LayerNorm, GELU, cross-entropy
  // and AdamW have size thresholds; Eigen splits the products).
  ModelConfig cfg = tiny_config();
  cfg.n_embd = 96;
  const Index k = 2;
  TrainOptions opts = tiny_options(2 * k);
  opts.batch = 16;
  opts.eval_batches = 1;
  const auto relative = [](const Vector<float>& a, const Vector<float>& b) {
    return double((a - b).norm() / b.norm());
  };
  for (const int first : {1, 2}) {
    const int second = 3 - first;
    SCOPED_TRACE("saved on " + std::to_string(first) + " thread(s), resumed on "
                 + std::to_string(second));
    // Straight: 2k steps on `first` threads.
    strata::set_num_threads(first);
    GPT<float> model_a(cfg);
    Trainer<float> a(model_a, corpus(), opts);
    std::vector<double> losses_a;
    for (Index i = 0; i < 2 * k; ++i) losses_a.push_back(a.step().loss);

    // k steps on `first` threads, saved; resumed on `second` threads for k more.
    const std::string path = file("run_" + std::to_string(first) + ".safetensors");
    {
      GPT<float> model_b(cfg);
      Trainer<float> b(model_b, corpus(), opts);
      for (Index i = 0; i < k; ++i) b.step();
      b.save(path);
    }
    strata::set_num_threads(second);
    ASSERT_EQ(strata::num_threads(), second);
    ModelConfig other = cfg;
    other.seed = 4242;
    GPT<float> model_c(other);
    Trainer<float> c(model_c, corpus(), opts);
    c.resume(path);
    for (Index i = k; i < 2 * k; ++i) {
      const double loss = c.step().loss;
      EXPECT_NEAR(loss, losses_a[size_t(i)], 1e-4 * losses_a[size_t(i)]) << "step " << i + 1;
    }
    EXPECT_EQ(c.state().step, 2 * k);
    EXPECT_EQ(c.optimizer().step_count(), 2 * k);
    const double dp = relative(model_c.parameters(), model_a.parameters());
    const double dm = relative(c.optimizer().m(), a.optimizer().m());
    const double dv = relative(c.optimizer().v(), a.optimizer().v());
    EXPECT_LT(dp, 1e-3);
    EXPECT_LT(dm, 1e-3);
    EXPECT_LT(dv, 1e-3);
    std::printf("resume %d -> %d threads: relative differences parameters %.2e, m %.2e, v %.2e\n",
                first, second, dp, dm, dv);
#if !defined(EIGEN_USE_BLAS)
    // In the header-only build neither the products (kernels/gemm.hpp) nor strata's own loops
    // depend on the thread count: the resumed run is the straight one, bit for bit.
    EXPECT_TRUE(model_c.parameters() == model_a.parameters()) << "parameters";
    EXPECT_TRUE(c.optimizer().m() == a.optimizer().m()) << "first moments";
    EXPECT_TRUE(c.optimizer().v() == a.optimizer().v()) << "second moments";
#endif
  }
}

TEST_F(Resume, MismatchedOptionsAreErrors) {
  strata::set_num_threads(1);
  const std::string path = file("run.safetensors");
  {
    GPT<float> model(tiny_config());
    Trainer<float> t(model, corpus(), tiny_options(10));
    t.step();
    t.save(path);
  }
  GPT<float> model(tiny_config());
  TrainOptions lr = tiny_options(10);
  lr.lr = 2e-3;
  Trainer<float> with_lr(model, corpus(), lr);
  EXPECT_EQ(error_of([&] { with_lr.resume(path); }),
            "resume " + path + ": the run was saved with lr 0.003, this run has 0.002");

  TrainOptions seed = tiny_options(10);
  seed.data_seed = 12;
  Trainer<float> with_seed(model, corpus(), seed);
  EXPECT_EQ(error_of([&] { with_seed.resume(path); }),
            "resume " + path + ": the run was saved with data_seed 11, this run has 12");

  // A longer run may extend the schedule.
  Trainer<float> longer(model, corpus(), tiny_options(20));
  EXPECT_EQ(error_of([&] { longer.resume(path); }), "<no error>");
  EXPECT_EQ(longer.state().step, 1);

  // A model of another shape cannot take the checkpoint.
  ModelConfig wide = tiny_config();
  wide.n_embd = 64;
  GPT<float> wide_model(wide);
  Trainer<float> with_wide(wide_model, corpus(), tiny_options(10));
  EXPECT_EQ(error_of([&] { with_wide.resume(path); }),
            "checkpoint " + path + ": saved with n_embd 32, but the model has n_embd 64");
}

// ---- divergence guard
// -----------------------------------------------------------------------------

using Divergence = TempDir;

TEST_F(Divergence, HugeLearningRateStopsAtTheFirstNonFiniteStep) {
  strata::set_num_threads(1);
  TrainOptions opts = tiny_options(50);
  opts.lr = 1e9;
  opts.min_lr = 0;
  opts.warmup = 0;
  GPT<float> model(tiny_config());
  Trainer<float> trainer(model, corpus(), opts);
  const std::string path = file("run.safetensors");
  std::vector<double> losses;
  Trainer<float>::Callbacks cb;
  cb.on_step = [&](const strata::StepReport& r) {
    losses.push_back(r.loss);
    trainer.save(path);  // a checkpoint after every step, as `train --checkpoint-interval 1`
  };
  std::string message = "<no error>";
  Index failed_step = 0;
  double loss = 0, norm = 0;
  try {
    trainer.run(cb);
  } catch (const strata::DivergenceError& e) {
    message = e.what();
    failed_step = e.step();
    loss = e.loss();
    norm = e.grad_norm();
  }
  // Stopped at once: every reported step was finite, the failing one is the next.
  ASSERT_GE(failed_step, 2) << message;
  ASSERT_LT(failed_step, 50) << message;
  EXPECT_EQ(Index(losses.size()), failed_step - 1);
  for (double l : losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_FALSE(std::isfinite(loss) && std::isfinite(norm)) << loss << " " << norm;
  const std::string head = "training diverged at step " + std::to_string(failed_step) + ": the ";
  EXPECT_EQ(message.substr(0, head.size()), head) << message;
  EXPECT_NE(message.find("; stopped before updating the parameters, which stay as after step "
                         + std::to_string(failed_step - 1)
                         + ". Likely cause: a learning rate too high (lr 1e+09, "),
            std::string::npos)
      << message;

  // Nothing of the failed step was applied: the trainer is where the last checkpoint left it.
  EXPECT_EQ(trainer.state().step, failed_step - 1);
  GPT<float> saved(tiny_config());
  Trainer<float> check(saved, corpus(), opts);
  check.resume(path);
  EXPECT_EQ(check.state().step, failed_step - 1);
  EXPECT_TRUE(bit_equal(saved.parameters(), model.parameters()));
  EXPECT_TRUE(bit_equal(check.optimizer().m(), trainer.optimizer().m()));
  // The data position was rewound too: a save now writes the same checkpoint again.
  const std::string again = file("again.safetensors");
  trainer.save(again);
  const auto bytes = [](const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  EXPECT_EQ(bytes(again), bytes(path));
}

TEST(Trainer, NonFiniteParameterIsADivergenceErrorAndChangesNothing) {
  strata::set_num_threads(1);
  GPT<float> model(tiny_config());
  model.parameters()[5] = std::numeric_limits<float>::quiet_NaN();
  const Vector<float> before = model.parameters();
  Trainer<float> trainer(model, corpus(), tiny_options(20));
  EXPECT_EQ(error_of([&] { trainer.step(); }),
            "training diverged at step 1: the training loss is nan (gradient norm nan); stopped "
            "before updating the parameters, which stay as after step 0. Likely cause: a learning "
            "rate too high (lr 0.003, 0.0006 at this step), or unusual data; lower the learning "
            "rate or check the data, then start again or continue from the last good checkpoint");
  EXPECT_THROW(trainer.step(), strata::DivergenceError);
  EXPECT_THROW(trainer.step(), strata::Error);  // a DivergenceError is a strata::Error
  EXPECT_TRUE(bit_equal(model.parameters(), before));
  EXPECT_EQ(trainer.state().step, 0);
  EXPECT_EQ(trainer.optimizer().step_count(), 0);
  EXPECT_TRUE(trainer.optimizer().m().isZero());
}

}  // namespace
