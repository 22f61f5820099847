// examples/cli_common.hpp: command-line pieces shared by the example programs.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

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
  int skip_distance = 0;  // 0 = default round(3L/4)
  int skip_heads = -1;    // -1 = default round(3NH/4)
  std::string skip_mode = "split";
  std::vector<int> depths;  // empty = all intermediate layers
  long feature_width = 0;   // 0 = C
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
    app.add_option("--skip-mode", skip_mode, "split: skip heads read only the earlier layer; "
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
          skip_distance > 0 ? std::optional<int>(skip_distance) : std::nullopt,
          skip_heads >= 0 ? std::optional<int>(skip_heads) : std::nullopt,
          strata::parse_skip_mode(skip_mode));
    if (kind == "shortcut") return strata::AttentionPlan::shortcut(depths, feature_width, embeddings);
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

/// Makes control characters of sampled text visible without breaking a terminal.
inline std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c == '\n' || c == '\t' || c >= 0x20) out += char(c);
    else out += '?';
  }
  return out;
}

}  // namespace examples
