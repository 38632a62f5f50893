// Structured logging: one JSON object per line on stderr with time, level,
// component, message, an optional request id and fields. Anything that looks
// like a credential is masked before the line is written, as a safety net
// behind the rule that secrets are never passed to the logger.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace tollgate::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void SetLevel(Level level);
Level ParseLevel(std::string_view text);  // throws std::invalid_argument
bool Enabled(Level level);

void Write(Level level, std::string_view component, std::string_view message,
           const nlohmann::json& fields = nullptr, std::string_view request_id = {});

inline void Debug(std::string_view c, std::string_view m, const nlohmann::json& f = nullptr) {
  if (Enabled(Level::kDebug)) Write(Level::kDebug, c, m, f);
}
inline void Info(std::string_view c, std::string_view m, const nlohmann::json& f = nullptr) {
  Write(Level::kInfo, c, m, f);
}
inline void Warn(std::string_view c, std::string_view m, const nlohmann::json& f = nullptr) {
  Write(Level::kWarn, c, m, f);
}
inline void Error(std::string_view c, std::string_view m, const nlohmann::json& f = nullptr) {
  Write(Level::kError, c, m, f);
}

// Masks bearer tokens and key-shaped strings ("sk-...") in `text`.
std::string Redact(std::string_view text);

// For a warning that can happen once per request (a dependency down under load): at most one
// line per `every`; the line says how many were suppressed since the last one.
//   static log::Throttle throttle;
//   if (int64_t skipped; throttle.Allow(&skipped)) log::Warn(..., {{"suppressed", skipped}});
class Throttle {
 public:
  explicit Throttle(std::chrono::milliseconds every = std::chrono::seconds(1))
      : every_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(every).count()) {}
  bool Allow(int64_t* suppressed) {
    const int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
    int64_t last = last_.load(std::memory_order_relaxed);
    if ((last != 0 && now - last < every_ns_) || !last_.compare_exchange_strong(last, now)) {
      skipped_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    *suppressed = skipped_.exchange(0, std::memory_order_relaxed);
    return true;
  }

 private:
  const int64_t every_ns_;
  std::atomic<int64_t> last_{0};
  std::atomic<int64_t> skipped_{0};
};

}  // namespace tollgate::log
