// Configuration: a YAML file plus TOLLGATE_* environment overrides, checked
// against one schema (config_schema.cpp). Unknown keys and bad values fail at
// start-up with a message naming the key. Secrets are never read from the
// file itself: only from the environment or from a `<key>_file` path.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate {

class ConfigError final : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class ConfigType { kString, kInt, kBool, kDuration, kHostPort, kEnum, kStringList };

struct ConfigKey {
  std::string key;  // dotted path, e.g. "auth.database.pool_size"
  ConfigType type;
  std::string default_value;  // in the same text form a user would write
  std::string help;
  bool secret = false;  // only from env or `<key>_file`
  int64_t min = INT64_MIN;
  int64_t max = INT64_MAX;
  std::vector<std::string> choices;  // for kEnum
  // kStringList: every item must be a name (1 to 64 of A-Z a-z 0-9 _ - .), e.g. a JSON field.
  bool names = false;
  // kStringList: another list key that may share no item with this one.
  std::string disjoint_from;
  // kStringList: items this list may not hold (and why, for the message).
  std::vector<std::string> forbidden;
  std::string forbidden_why;
};

// The schema every binary validates against.
const std::vector<ConfigKey>& ConfigSchema();

class Config final {
 public:
  using Environment = std::map<std::string, std::string>;

  // Loads `path` (empty: defaults only) and applies `env` overrides. Throws
  // ConfigError naming the offending key or variable.
  static Config Load(const std::string& path, const Environment& env,
                     const std::vector<ConfigKey>& schema = ConfigSchema());
  static Environment ProcessEnvironment();
  // TOLLGATE_AUTH__DATABASE__DSN <-> auth.database.dsn
  static std::string EnvName(std::string_view key);

  const std::string& GetString(std::string_view key) const;
  int64_t GetInt(std::string_view key) const;
  bool GetBool(std::string_view key) const;
  std::chrono::milliseconds GetDuration(std::string_view key) const;
  std::vector<std::string> GetList(std::string_view key) const;

  // Overrides a value after loading (tests, --flags). Validates like Load.
  void Set(std::string_view key, std::string value);

 private:
  const std::string& Raw(std::string_view key, ConfigType expect) const;
  std::map<std::string, std::string, std::less<>> values_;
  std::map<std::string, ConfigType, std::less<>> types_;
};

// Parses "250ms", "2s", "5m", "1h" or a bare number of milliseconds.
std::chrono::milliseconds ParseDuration(std::string_view text);

}  // namespace tollgate
