// Time, injected so breaker and cooldown tests move a fake clock instead of sleeping.
#pragma once

#include <chrono>

namespace tollgate::router {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
};

class SystemClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
};

}  // namespace tollgate::router
