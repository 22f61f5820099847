// context_sweep: time and memory of one training step for ONE (plan, context length) pair, printed
// as one JSON line. bench/compare/context_sweep.py runs it once per configuration, so that the
// process's peak RSS belongs to that configuration alone.
//
//   build/bench/context_sweep --plan standard --T 1024 --threads 2          # B = 2048 / T
//   build/bench/context_sweep --plan shortcut --T 2048 --batch 1 --steps 5
//
// The model is the tiny width (L4 H4 C128, byte vocabulary) with context_length = T. A step is what
// bench_model and Trainer time: forward_backward, clip_grad_norm, AdamW. Memory is reported three
// ways: the process's peak RSS (getrusage ru_maxrss) and RSS before/after the step phase; the bytes
// the model's workspace holds (GPT::workspace_bytes); and the attention's saved state (out and lse
// of every layer), next to what an attention that materialises its [T, T] probabilities would have
// to keep.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <strata/strata.hpp>

#include "cpu_model.hpp"

namespace {

using strata::Index;

struct Args {
  std::string plan = "standard";
  Index T = 128;
  Index batch = 0;  // 0: tokens / T
  Index tokens = 2048;
  Index L = 4, NH = 4, C = 128;
  int steps = 10;
  int warmup = 2;
  int threads = 2;
};

[[noreturn]] void usage(const char* msg) {
  if (msg) std::cerr << "context_sweep: " << msg << "\n";
  std::cerr << "usage: context_sweep [--plan standard|skip_split|skip_concat|shortcut] [--T 128]\n"
               "                     [--batch B | --tokens 2048] [--steps 10] [--warmup 2] "
               "[--threads 2]\n"
               "                     [--layers 4] [--heads 4] [--embd 128]\n"
               "Runs warm-up then timed training steps of the GPT with context_length = T and "
               "prints one\n"
               "JSON line (median ms per step, peak RSS, workspace and attention bytes).\n"
               "--batch defaults to tokens / T (at least 1); --threads 0 = all cores.\n";
  std::exit(msg ? 2 : 0);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string key = argv[i], value;
    if (key == "-h" || key == "--help") usage(nullptr);
    const auto eq = key.find('=');
    if (eq != std::string::npos) {
      value = key.substr(eq + 1);
      key = key.substr(0, eq);
    } else {
      if (i + 1 >= argc) usage(("missing value for " + key).c_str());
      value = argv[++i];
    }
    auto num = [&](long lo) {
      char* end = nullptr;
      const long v = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || v < lo)
        usage((key + " " + value + ": expected an integer >= " + std::to_string(lo)).c_str());
      return v;
    };
    if (key == "--plan")
      a.plan = value;
    else if (key == "--T")
      a.T = num(1);
    else if (key == "--batch")
      a.batch = num(1);
    else if (key == "--tokens")
      a.tokens = num(1);
    else if (key == "--steps")
      a.steps = int(num(1));
    else if (key == "--warmup")
      a.warmup = int(num(0));
    else if (key == "--threads")
      a.threads = int(num(0));
    else if (key == "--layers")
      a.L = num(1);
    else if (key == "--heads")
      a.NH = num(1);
    else if (key == "--embd")
      a.C = num(1);
    else
      usage(("unknown option " + key).c_str());
  }
  if (a.batch == 0) a.batch = std::max<Index>(1, a.tokens / a.T);
  return a;
}

strata::AttentionPlan make_plan(const std::string& name) {
  if (name == "standard") return strata::AttentionPlan::standard();
  if (name == "skip_split") return strata::AttentionPlan::skip_layer();
  if (name == "skip_concat")
    return strata::AttentionPlan::skip_layer(std::nullopt, std::nullopt, strata::SkipMode::concat);
  if (name == "shortcut") return strata::AttentionPlan::shortcut();
  usage(("unknown plan '" + name + "' (standard, skip_split, skip_concat, shortcut)").c_str());
}

// ---- memory of the process
// ------------------------------------------------------------------------
long long peak_rss_bytes() {  // high-water mark of the whole process life
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<long long>(ru.ru_maxrss) * 1024;  // Linux: KiB
}

long long status_field_bytes(const char* field) {  // VmRSS / VmHWM of /proc/self/status, in bytes
  std::ifstream in("/proc/self/status");
  std::string line;
  const std::size_t n = std::strlen(field);
  while (std::getline(in, line))
    if (line.compare(0, n, field) == 0 && line.size() > n && line[n] == ':')
      return std::atoll(line.c_str() + n + 1) * 1024;
  return -1;
}

// Writing 5 to /proc/self/clear_refs resets VmHWM (not ru_maxrss) to the current RSS, so that the
// VmHWM read after the steps is the step phase's own peak. Returns false where that is refused.
bool reset_hwm() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  f.flush();
  return bool(f);
}

// ---- memory of the model ------------------------------------------------------------------------
struct ModelBytes {
  double workspace = 0;  // every activation and backward-scratch buffer (GPT::workspace_bytes)
  double attention_saved =
      0;                    // what the attention kernel keeps for backward: out + lse, all layers
  double attention_kv = 0;  // the K/V the attention reads (qkv buffers and shortcut feature kv)
  double txt_probs = 0;     // a [T, T]-materialising attention's probabilities, all layers/heads
  double txt_probs_standard = 0;  // the same for the standard plan: L*B*NH*T*T*4
  double param_state = 0;         // parameters, gradients, AdamW m and v
};

ModelBytes model_bytes(const strata::GPT<float>& model, Index B, Index T) {
  const strata::ModelConfig& c = model.config();
  const double N = double(B * T), C = double(c.n_embd), NH = double(c.n_head);
  const double F = double(model.params().features.size()), L = double(c.n_layer), f = sizeof(float);
  ModelBytes m;
  m.workspace = double(model.workspace_bytes());
  m.attention_saved = f * L * N * (C + NH);
  m.attention_kv = f * (L * N * 2 * C + F * N * 2 * C);
  for (const auto& layer : model.plan_table())
    for (const auto& head : layer) m.txt_probs += f * N * double(T) * double(head.size());
  m.txt_probs_standard = f * L * N * double(T) * NH;
  m.param_state = f * 4 * double(model.num_parameters());
  return m;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) try {
  const Args a = parse(argc, argv);
  strata::set_num_threads(a.threads);
  const long long rss_start = status_field_bytes("VmRSS");

  strata::ModelConfig cfg;
  cfg.n_layer = a.L;
  cfg.n_head = a.NH;
  cfg.n_embd = a.C;
  cfg.context_length = a.T;
  cfg.attention = make_plan(a.plan);
  strata::GPT<float> model(cfg);
  strata::AdamW<float> opt(model);
  strata::Rng rng(1);
  std::vector<strata::TokenMatrix> xs(4, strata::TokenMatrix(a.batch, a.T)), ys = xs;
  for (auto* set : {&xs, &ys})
    for (auto& m : *set)
      for (Index i = 0; i < m.size(); ++i) m.data()[i] = strata::Token(rng.below(cfg.vocab_size));
  const long long rss_model = status_field_bytes("VmRSS");

  int it = 0;
  double first_loss = 0, last_loss = 0;
  auto step = [&] {
    const float loss = model.forward_backward(xs[it % 4], ys[it % 4]);
    const double norm = strata::grad_norm(model.gradients());  // clipped as the Trainer does
    opt.step(model, 1e-4, strata::clip_coefficient(norm, 1.0));
    if (it == 0) first_loss = loss;
    last_loss = loss;
    ++it;
  };
  // The first step allocates the workspace: measure what it adds on its own.
  step();
  const long long rss_first_step = status_field_bytes("VmRSS");
  for (int i = 1; i < a.warmup; ++i) step();
  const long long rss_warm = status_field_bytes("VmRSS");
  const bool hwm_reset = reset_hwm();

  std::vector<double> ms;
  for (int i = 0; i < a.steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  const long long rss_end = status_field_bytes("VmRSS");
  const long long hwm_steps = hwm_reset ? status_field_bytes("VmHWM") : -1;
  const long long peak = peak_rss_bytes();
  const ModelBytes mb = model_bytes(model, a.batch, a.T);
  const double med = median(ms);

  std::ostringstream o;
  o.precision(6);
  o << "{\"plan\":\"" << a.plan << "\",\"T\":" << a.T << ",\"B\":" << a.batch
    << ",\"tokens_per_step\":" << a.batch * a.T << ",\"L\":" << cfg.n_layer
    << ",\"NH\":" << cfg.n_head << ",\"C\":" << cfg.n_embd
    << ",\"threads\":" << strata::num_threads() << ",\"warmup\":" << a.warmup
    << ",\"steps\":" << a.steps << ",\"ms_median\":" << med
    << ",\"ms_min\":" << *std::min_element(ms.begin(), ms.end())
    << ",\"ms_max\":" << *std::max_element(ms.begin(), ms.end())
    << ",\"tokens_per_s\":" << double(a.batch * a.T) / (med / 1000.0) << ",\"ms\":[";
  for (std::size_t i = 0; i < ms.size(); ++i) o << (i ? "," : "") << ms[i];
  o << "],\"params\":" << model.num_parameters() << ",\"peak_rss_bytes\":" << peak
    << ",\"rss_start_bytes\":" << rss_start << ",\"rss_model_bytes\":" << rss_model
    << ",\"rss_first_step_bytes\":" << rss_first_step << ",\"rss_warm_bytes\":" << rss_warm
    << ",\"rss_end_bytes\":" << rss_end << ",\"step_peak_rss_bytes\":" << hwm_steps
    << ",\"step_rss_growth_bytes\":" << (peak - rss_model) << std::fixed << std::setprecision(0)
    << ",\"workspace_bytes\":" << mb.workspace
    << ",\"attention_saved_bytes\":" << mb.attention_saved
    << ",\"attention_kv_bytes\":" << mb.attention_kv << ",\"txt_probs_bytes\":" << mb.txt_probs
    << ",\"txt_probs_standard_bytes\":" << mb.txt_probs_standard
    << ",\"param_state_bytes\":" << mb.param_state << std::defaultfloat << std::setprecision(6)
    << ",\"first_loss\":" << first_loss << ",\"last_loss\":" << last_loss << ",\"eigen_simd\":\""
    << Eigen::SimdInstructionSetsInUse() << "\",\"cpu\":\"" << bench::cpu_model()
    << "\",\"product_backend\":\"" << strata::product_backend() << "\",\"strata_version\":\""
    << strata::version << "\"}";
  std::cout << o.str() << std::endl;
  return 0;
} catch (const std::exception& e) {
  std::cerr << "context_sweep: " << e.what() << "\n";
  return 1;
}
