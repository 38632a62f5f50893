#include "stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace tollgate::bench {

OpenLoopSchedule::OpenLoopSchedule(double rate_per_second, double duration_seconds)
    : interval_ns_(rate_per_second > 0 ? 1e9 / rate_per_second : 0),
      count_(rate_per_second > 0 && duration_seconds > 0
                 ? static_cast<size_t>(std::floor(rate_per_second * duration_seconds))
                 : 0) {}

std::chrono::nanoseconds OpenLoopSchedule::Offset(size_t i) const {
  return std::chrono::nanoseconds(static_cast<int64_t>(std::llround(interval_ns_ * i)));
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const double rank = std::ceil(p / 100.0 * static_cast<double>(sorted.size()));
  size_t index = rank < 1 ? 0 : static_cast<size_t>(rank) - 1;
  return sorted[std::min(index, sorted.size() - 1)];
}

Summary Summarize(std::vector<double> samples) {
  Summary s;
  if (samples.empty()) return s;
  std::sort(samples.begin(), samples.end());
  s.count = samples.size();
  s.mean = std::accumulate(samples.begin(), samples.end(), 0.0) / static_cast<double>(s.count);
  s.p50 = Percentile(samples, 50);
  s.p90 = Percentile(samples, 90);
  s.p99 = Percentile(samples, 99);
  s.max = samples.back();
  return s;
}

std::string ToJson(const Summary& s) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "{\"count\":%zu,\"mean\":%.3f,\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"max\":%.3f}",
                s.count, s.mean, s.p50, s.p90, s.p99, s.max);
  return buf;
}

}  // namespace tollgate::bench
