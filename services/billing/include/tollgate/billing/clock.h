// Wall-clock time, injected so hold-expiry tests move a fake clock instead of sleeping.
#pragma once

#include <chrono>
#include <cstdint>

namespace tollgate::billing {

class Clock {
 public:
  virtual ~Clock() = default;
  // Unix milliseconds.
  virtual int64_t NowMs() const = 0;
};

class SystemClock final : public Clock {
 public:
  int64_t NowMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
};

}  // namespace tollgate::billing
