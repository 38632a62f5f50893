#include "tollgate/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <regex>
#include <stdexcept>

#include "tollgate/civil_date.h"

namespace tollgate::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::mutex g_write_mu;

const char* LevelName(Level level) {
  switch (level) {
    case Level::kDebug:
      return "debug";
    case Level::kInfo:
      return "info";
    case Level::kWarn:
      return "warn";
    case Level::kError:
      return "error";
  }
  return "info";
}

std::string Timestamp() {
  return FormatTimestamp(
      std::chrono::floor<std::chrono::milliseconds>(std::chrono::system_clock::now()));
}

}  // namespace

void SetLevel(Level level) { g_level.store(static_cast<int>(level)); }

Level ParseLevel(std::string_view text) {
  if (text == "debug") return Level::kDebug;
  if (text == "info") return Level::kInfo;
  if (text == "warn") return Level::kWarn;
  if (text == "error") return Level::kError;
  throw std::invalid_argument("unknown log level");
}

bool Enabled(Level level) { return static_cast<int>(level) >= g_level.load(); }

std::string Redact(std::string_view text) {
  // Tollgate keys (sk-tg-...), provider keys (sk-..., sk-ant-...), bearer tokens.
  static const std::regex kKey(R"((sk-[A-Za-z0-9_\-]{2,6})[A-Za-z0-9_\-]{8,})");
  static const std::regex kBearer(R"(([Bb]earer\s+)[^\s"\\]{4,})");
  std::string out = std::regex_replace(std::string(text), kKey, "$1***");
  return std::regex_replace(out, kBearer, "$1***");
}

void Write(Level level, std::string_view component, std::string_view message,
           const nlohmann::json& fields, std::string_view request_id) {
  if (!Enabled(level)) return;
  nlohmann::json line = {
      {"ts", Timestamp()}, {"level", LevelName(level)}, {"component", component}, {"msg", message}};
  if (!request_id.empty()) line["request_id"] = request_id;
  if (fields.is_object())
    for (const auto& [k, v] : fields.items()) line[k] = v;
  std::string text =
      Redact(line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)) + "\n";
  std::lock_guard lock(g_write_mu);
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

}  // namespace tollgate::log
