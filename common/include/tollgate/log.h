// Structured logging: one JSON object per line on stderr with time, level,
// component, message, an optional request id and fields. Anything that looks
// like a credential is masked before the line is written, as a safety net
// behind the rule that secrets are never passed to the logger.
#pragma once

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

}  // namespace tollgate::log
