// bench/cpu_model.hpp: the CPU's model name, as the benchmark programs record it next to their
// figures (Google Benchmark context, context_sweep's JSON line).
#pragma once

#include <fstream>
#include <string>

namespace bench {

/// The "model name" line of /proc/cpuinfo, or "unknown".
inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

}  // namespace bench
