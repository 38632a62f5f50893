// Time, injected so window and expiry tests move a fake clock instead of sleeping.
// Wall-clock time: calendar months and days (UTC) are read from it too.
#pragma once

#include <chrono>

namespace tollgate::quota {

class Clock {
 public:
  using TimePoint = std::chrono::system_clock::time_point;
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
};

class SystemClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::system_clock::now(); }
};

}  // namespace tollgate::quota
