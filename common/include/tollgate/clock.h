// Time, injected: the one clock interface of every service, so tests move a fake clock
// (common/test/fake_clock.h) instead of sleeping.
//
// Two readings, because they answer different questions:
// - WallNow (system_clock): timestamps, calendar periods and expiries that are stored or sent
//   (a key's expires_at, a hold's expires_at_ms, a usage record's time, UTC months and days).
// - SteadyNow (steady_clock): durations, windows, breakers and cool-downs, which must not jump
//   when the wall clock is set (quota's sliding windows and reservation TTL, router's breakers).
#pragma once

#include <chrono>
#include <cstdint>

namespace tollgate {

class Clock {
 public:
  using WallTime = std::chrono::system_clock::time_point;
  using SteadyTime = std::chrono::steady_clock::time_point;

  virtual ~Clock() = default;
  virtual WallTime WallNow() const = 0;
  virtual SteadyTime SteadyNow() const = 0;

  // WallNow as unix time.
  int64_t UnixSeconds() const {
    return std::chrono::duration_cast<std::chrono::seconds>(WallNow().time_since_epoch()).count();
  }
  int64_t UnixMillis() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(WallNow().time_since_epoch())
        .count();
  }
};

class RealClock final : public Clock {
 public:
  WallTime WallNow() const override { return std::chrono::system_clock::now(); }
  SteadyTime SteadyNow() const override { return std::chrono::steady_clock::now(); }
};

}  // namespace tollgate
