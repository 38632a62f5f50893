// Wall-clock time, injected so expiry tests move a fake clock instead of sleeping. Expiry is a
// calendar time (unix seconds), hence system_clock rather than steady_clock.
#pragma once

#include <chrono>
#include <cstdint>

namespace tollgate::auth {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual std::chrono::system_clock::time_point Now() const = 0;
  int64_t UnixSeconds() const {
    return std::chrono::duration_cast<std::chrono::seconds>(Now().time_since_epoch()).count();
  }
};

class SystemClock final : public Clock {
 public:
  std::chrono::system_clock::time_point Now() const override {
    return std::chrono::system_clock::now();
  }
};

}  // namespace tollgate::auth
