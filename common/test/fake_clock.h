// The one fake clock for tests: time stands still until the test moves it. Advance moves wall
// and steady time together (time passing); SetWall moves only the wall clock (someone set it),
// which must not move a window, breaker or cool-down. Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "tollgate/clock.h"

namespace tollgate::testing {

class FakeClock final : public Clock {
 public:
  // 2030-03-17T17:46:40Z by default: far enough ahead that "in the future" means it.
  static constexpr int64_t kDefaultUnixSeconds = 1'900'000'000;

  FakeClock() : FakeClock(WallTime(std::chrono::seconds(kDefaultUnixSeconds))) {}
  explicit FakeClock(WallTime wall) : wall_ns_(Ns(wall.time_since_epoch())) {}

  WallTime WallNow() const override {
    return WallTime(
        std::chrono::duration_cast<WallTime::duration>(std::chrono::nanoseconds(wall_ns_.load())));
  }
  // Starts at an arbitrary point well after the steady clock's epoch.
  SteadyTime SteadyNow() const override {
    return SteadyTime(std::chrono::duration_cast<SteadyTime::duration>(
        std::chrono::hours(1000) + std::chrono::nanoseconds(steady_ns_.load())));
  }

  void Advance(std::chrono::nanoseconds d) {
    wall_ns_ += d.count();
    steady_ns_ += d.count();
  }
  void SetWall(WallTime wall) { wall_ns_ = Ns(wall.time_since_epoch()); }
  void SetUnixSeconds(int64_t s) { SetWall(WallTime(std::chrono::seconds(s))); }
  void SetUnixMillis(int64_t ms) { SetWall(WallTime(std::chrono::milliseconds(ms))); }

 private:
  template <typename D>
  static int64_t Ns(D d) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
  }

  std::atomic<int64_t> wall_ns_;
  std::atomic<int64_t> steady_ns_{0};
};

}  // namespace tollgate::testing
