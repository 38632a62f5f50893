#include "tollgate/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

extern char** environ;

namespace tollgate {
namespace {

constexpr std::string_view kEnvPrefix = "TOLLGATE_";
constexpr std::string_view kFileSuffix = "_file";
// Names the config file; not a key.
constexpr std::string_view kConfigPathVar = "TOLLGATE_CONFIG";
constexpr char kListSep = '\n';

std::string Trim(std::string s) {
  auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A list value (items separated by kListSep), trimmed, empty items dropped.
std::vector<std::string> SplitList(const std::string& value) {
  std::vector<std::string> out;
  std::stringstream ss(value);
  for (std::string item; std::getline(ss, item, kListSep);) {
    item = Trim(item);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

bool IsName(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_' || c == '-' || c == '.';
  });
}

std::optional<int64_t> ParseInt(std::string_view text) {
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size() || text.empty()) return std::nullopt;
  return v;
}

std::optional<bool> ParseBool(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), ::tolower);
  if (text == "true" || text == "yes" || text == "on" || text == "1") return true;
  if (text == "false" || text == "no" || text == "off" || text == "0") return false;
  return std::nullopt;
}

// Where a value came from, for error messages.
struct Origin {
  std::string where;  // "config file /x.yaml" or "environment variable TOLLGATE_X"
};

// Checks `value` against `spec` and returns it normalised; throws naming the key.
std::string Validate(const ConfigKey& spec, const std::string& value, const Origin& origin) {
  auto fail = [&](const std::string& why) -> std::string {
    throw ConfigError("invalid value for " + spec.key + " (" + origin.where + "): " + why);
  };
  switch (spec.type) {
    case ConfigType::kString:
      return value;
    case ConfigType::kStringList:
      for (const auto& item : SplitList(value)) {
        if (spec.names && !IsName(item))
          fail("'" + item.substr(0, 64) + "' is not a name (1 to 64 of A-Z a-z 0-9 _ - .)");
        if (std::find(spec.forbidden.begin(), spec.forbidden.end(), item) != spec.forbidden.end())
          fail("'" + item + "' is not allowed here: " + spec.forbidden_why);
      }
      return value;
    case ConfigType::kInt: {
      auto v = ParseInt(value);
      if (!v) fail("'" + value + "' is not an integer");
      if (*v < spec.min || *v > spec.max)
        fail(value + " is outside [" + std::to_string(spec.min) + ", " + std::to_string(spec.max) +
             "]");
      return value;
    }
    case ConfigType::kBool: {
      auto v = ParseBool(value);
      if (!v) fail("'" + value + "' is not a boolean (true/false)");
      return *v ? "true" : "false";
    }
    case ConfigType::kDuration: {
      int64_t ms = 0;
      try {
        ms = ParseDuration(value).count();
      } catch (const std::invalid_argument&) {
        fail("'" + value + "' is not a duration (e.g. 250ms, 2s, 5m)");
      }
      if (ms < spec.min || ms > spec.max)
        fail(value + " is outside [" + std::to_string(spec.min) + "ms, " +
             std::to_string(spec.max) + "ms]");
      return std::to_string(ms);
    }
    case ConfigType::kHostPort: {
      auto colon = value.rfind(':');
      if (colon == std::string::npos || colon == 0) fail("'" + value + "' is not host:port");
      auto port = ParseInt(std::string_view(value).substr(colon + 1));
      if (!port || *port < 0 || *port > 65535) fail("'" + value + "' has no valid port (0-65535)");
      return value;
    }
    case ConfigType::kEnum:
      if (std::find(spec.choices.begin(), spec.choices.end(), value) == spec.choices.end()) {
        std::string list;
        for (const auto& c : spec.choices) list += (list.empty() ? "" : ", ") + c;
        fail("'" + value + "' is not one of " + list);
      }
      return value;
  }
  return value;
}

// A DSN in the config file must not carry a password: it would sit in a file
// that is committed, templated into a ConfigMap, shown in reviews.
bool DsnHasPassword(const std::string& dsn) {
  static const std::regex kw(R"((^|\s)password\s*=)", std::regex::icase);
  static const std::regex url(R"(^postgres(ql)?://[^/@:]*:[^/@]*@)", std::regex::icase);
  return std::regex_search(dsn, kw) || std::regex_search(dsn, url);
}

void Flatten(const YAML::Node& node, const std::string& prefix,
             std::vector<std::pair<std::string, YAML::Node>>& out) {
  if (node.IsMap()) {
    for (const auto& kv : node) {
      std::string key = kv.first.as<std::string>();
      Flatten(kv.second, prefix.empty() ? key : prefix + "." + key, out);
    }
  } else {
    out.emplace_back(prefix, node);
  }
}

std::string ReadSecretFile(const std::string& path, const std::string& key) {
  std::ifstream in(path);
  if (!in) throw ConfigError("cannot read " + key + "_file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  return Trim(ss.str());
}

}  // namespace

std::chrono::milliseconds ParseDuration(std::string_view text) {
  size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  auto number = ParseInt(text.substr(0, i));
  if (!number) throw std::invalid_argument("not a duration");
  std::string_view unit = text.substr(i);
  int64_t factor = 0;
  if (unit.empty() || unit == "ms")
    factor = 1;
  else if (unit == "s")
    factor = 1000;
  else if (unit == "m")
    factor = 60 * 1000;
  else if (unit == "h")
    factor = 3600 * 1000;
  else
    throw std::invalid_argument("not a duration");
  return std::chrono::milliseconds(*number * factor);
}

std::string Config::EnvName(std::string_view key) {
  std::string name(kEnvPrefix);
  for (size_t i = 0; i < key.size(); ++i) {
    if (key[i] == '.')
      name += "__";
    else
      name += static_cast<char>(std::toupper(static_cast<unsigned char>(key[i])));
  }
  return name;
}

Config::Environment Config::ProcessEnvironment() {
  Environment env;
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  return env;
}

Config Config::Load(const std::string& path, const Environment& env,
                    const std::vector<ConfigKey>& schema) {
  // Every key, plus an implicit `<key>_file` for each secret.
  std::map<std::string, const ConfigKey*, std::less<>> by_key;
  std::vector<ConfigKey> file_keys;
  file_keys.reserve(schema.size());
  for (const auto& k : schema) {
    by_key[k.key] = &k;
    if (k.secret)
      file_keys.push_back(
          {k.key + std::string(kFileSuffix), ConfigType::kString, "", "file holding " + k.key});
  }
  for (const auto& k : file_keys) by_key.emplace(k.key, &k);

  Config config;
  for (const auto& [key, spec] : by_key) {
    config.types_[key] = spec->type;
    config.values_[key] = spec->type == ConfigType::kDuration
                              ? Validate(*spec, spec->default_value, {"default"})
                              : spec->default_value;
    if (spec->type == ConfigType::kStringList)
      std::replace(config.values_[key].begin(), config.values_[key].end(), ',', kListSep);
  }

  if (!path.empty()) {
    YAML::Node root;
    try {
      root = YAML::LoadFile(path);
    } catch (const YAML::BadFile&) {
      throw ConfigError("cannot read config file '" + path + "'");
    } catch (const YAML::Exception& e) {
      throw ConfigError("config file '" + path + "' is not valid YAML: " + e.what());
    }
    if (!root.IsNull() && !root.IsMap())
      throw ConfigError("config file '" + path + "' must be a YAML mapping");
    std::vector<std::pair<std::string, YAML::Node>> flat;
    if (root.IsMap()) Flatten(root, "", flat);
    Origin origin{"config file " + path};
    for (const auto& [key, node] : flat) {
      auto it = by_key.find(key);
      if (it == by_key.end()) throw ConfigError("unknown key '" + key + "' in " + origin.where);
      const ConfigKey& spec = *it->second;
      if (spec.secret)
        throw ConfigError(key + " is a secret and cannot be set in the config file: set " +
                          EnvName(key) + " or " + key + std::string(kFileSuffix));
      std::string value;
      if (node.IsSequence()) {
        if (spec.type != ConfigType::kStringList)
          throw ConfigError("invalid value for " + key + " (" + origin.where +
                            "): a list is not allowed here");
        for (const auto& item : node) value += (value.empty() ? "" : "\n") + item.as<std::string>();
      } else if (node.IsScalar()) {
        value = node.as<std::string>();
      } else if (node.IsNull()) {
        value = "";
      } else {
        throw ConfigError("invalid value for " + key + " (" + origin.where + "): expected a " +
                          "scalar");
      }
      if (EndsWith(key, ".database.dsn") && DsnHasPassword(value))
        throw ConfigError(key + " in " + origin.where + " contains a password; put the DSN in " +
                          EnvName(key) + " or " + key +
                          "_file, or the password in PGPASSWORD/.pgpass");
      config.values_[key] = Validate(spec, value, origin);
    }
  }

  for (const auto& [name, raw] : env) {
    if (name.rfind(kEnvPrefix, 0) != 0 || name == kConfigPathVar) continue;
    std::string key;
    std::string_view rest = std::string_view(name).substr(kEnvPrefix.size());
    for (size_t i = 0; i < rest.size(); ++i) {
      if (rest[i] == '_' && i + 1 < rest.size() && rest[i + 1] == '_') {
        key += '.';
        ++i;
      } else {
        key += static_cast<char>(std::tolower(static_cast<unsigned char>(rest[i])));
      }
    }
    auto it = by_key.find(key);
    if (it == by_key.end())
      throw ConfigError("unknown environment variable " + name + " (no config key '" + key + "')");
    std::string value = raw;
    if (it->second->type == ConfigType::kStringList)
      std::replace(value.begin(), value.end(), ',', kListSep);
    config.values_[key] = Validate(*it->second, value, {"environment variable " + name});
  }

  // `<key>_file` wins over an inline default, but an explicit env value for the key wins over it.
  for (const auto& [key, spec] : by_key) {
    if (!EndsWith(key, kFileSuffix)) continue;
    std::string base = key.substr(0, key.size() - kFileSuffix.size());
    if (!by_key.count(base) || config.values_[key].empty()) continue;
    if (env.count(EnvName(base))) continue;
    config.values_[base] = Validate(*by_key[base], ReadSecretFile(config.values_[key], base),
                                    {"file " + config.values_[key]});
  }
  for (const auto& spec : schema) {
    if (spec.disjoint_from.empty() || !config.values_.count(spec.disjoint_from)) continue;
    const auto other = SplitList(config.values_[spec.disjoint_from]);
    for (const auto& item : SplitList(config.values_[spec.key]))
      if (std::find(other.begin(), other.end(), item) != other.end())
        throw ConfigError("invalid value for " + spec.key + ": '" + item + "' is also in " +
                          spec.disjoint_from + "; an item may be in only one of them");
  }
  return config;
}

const std::string& Config::Raw(std::string_view key, ConfigType expect) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw ConfigError("no config key '" + std::string(key) + "'");
  auto t = types_.find(key);
  if (t->second != expect)
    throw ConfigError("config key '" + std::string(key) + "' read with the wrong type");
  return it->second;
}

const std::string& Config::GetString(std::string_view key) const {
  auto t = types_.find(key);
  if (t != types_.end() && (t->second == ConfigType::kHostPort || t->second == ConfigType::kEnum))
    return Raw(key, t->second);
  return Raw(key, ConfigType::kString);
}

int64_t Config::GetInt(std::string_view key) const { return *ParseInt(Raw(key, ConfigType::kInt)); }

bool Config::GetBool(std::string_view key) const { return Raw(key, ConfigType::kBool) == "true"; }

std::chrono::milliseconds Config::GetDuration(std::string_view key) const {
  return std::chrono::milliseconds(*ParseInt(Raw(key, ConfigType::kDuration)));
}

std::vector<std::string> Config::GetList(std::string_view key) const {
  return SplitList(Raw(key, ConfigType::kStringList));
}

void Config::Set(std::string_view key, std::string value) {
  auto it = std::find_if(ConfigSchema().begin(), ConfigSchema().end(),
                         [&](const ConfigKey& k) { return k.key == key; });
  if (it == ConfigSchema().end()) throw ConfigError("unknown key '" + std::string(key) + "'");
  if (it->type == ConfigType::kStringList) std::replace(value.begin(), value.end(), ',', kListSep);
  values_[std::string(key)] = Validate(*it, value, {"override"});
}

}  // namespace tollgate
