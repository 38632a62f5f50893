// The open-loop generator's arithmetic, apart from its I/O so a unit test can check it: when
// each request is due (a fixed schedule, never "when the previous one finished") and the
// percentiles of what was measured.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tollgate::bench {

// Request i of a run at `rate` per second is due `Offset(i)` after the start, whatever happened
// to the requests before it: latency is measured from that due time, so a slow answer cannot
// hide the queue it causes (no coordinated omission).
class OpenLoopSchedule {
 public:
  OpenLoopSchedule(double rate_per_second, double duration_seconds);
  size_t count() const { return count_; }
  std::chrono::nanoseconds Offset(size_t i) const;

 private:
  double interval_ns_;
  size_t count_;
};

struct Summary {
  size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// Nearest-rank percentiles (p in (0, 100]) of samples in any order; all zero when empty.
Summary Summarize(std::vector<double> samples);
double Percentile(const std::vector<double>& sorted, double p);

// {"count":N,"mean":..,"p50":..,"p90":..,"p99":..,"max":..}, values with 3 decimals.
std::string ToJson(const Summary& s);

}  // namespace tollgate::bench
