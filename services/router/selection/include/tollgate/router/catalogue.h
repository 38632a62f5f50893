// The router's catalogue as plain values: providers, their upstream keys (the
// secret sealed), public models, routes and aliases. This is what the
// repository stores and what the key pool is built from.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate::router {

enum class ProviderType { kOpenAi, kAzureOpenAi, kOpenAiCompatible, kAnthropic };

// "openai", "azure-openai", "openai-compatible", "anthropic": the database spelling.
std::string_view ProviderTypeName(ProviderType type);
std::optional<ProviderType> ParseProviderType(std::string_view name);

struct Provider {
  int64_t id = 0;
  std::string name;
  ProviderType type = ProviderType::kOpenAi;
  std::string base_url;
  std::string api_version;
  bool enabled = true;
  int64_t created = 0;  // unix seconds
  bool operator==(const Provider&) const = default;
};

// AES-256-GCM output: `ciphertext` carries the 16-byte tag at its end.
struct SealedSecret {
  std::string ciphertext;
  std::string nonce;
  bool operator==(const SealedSecret&) const = default;
};

struct UpstreamKeyRecord {
  int64_t id = 0;
  int64_t provider_id = 0;
  std::string name;
  SealedSecret secret;
  std::string key_prefix;  // the first few characters of the plaintext, for display
  int32_t weight = 1;
  bool enabled = true;
  int64_t created = 0;  // unix seconds
  bool operator==(const UpstreamKeyRecord&) const = default;
};

struct ModelRecord {
  std::string name;
  std::string owned_by;
  int64_t created = 0;  // unix seconds
  // Completion limits (0: not configured): the most a request may ask for, and the budget of
  // one that asks for none. See proto Model.
  int64_t max_output_tokens = 0;
  int64_t default_max_tokens = 0;
  bool operator==(const ModelRecord&) const = default;
};

struct ModelRoute {
  std::string model;
  int64_t provider_id = 0;
  std::string upstream_model;
  bool operator==(const ModelRoute&) const = default;
};

struct ModelAlias {
  std::string alias;
  std::string model;
  bool operator==(const ModelAlias&) const = default;
};

struct Catalogue {
  std::vector<Provider> providers;
  std::vector<UpstreamKeyRecord> keys;
  std::vector<ModelRecord> models;
  std::vector<ModelRoute> routes;
  std::vector<ModelAlias> aliases;
  bool operator==(const Catalogue&) const = default;
};

}  // namespace tollgate::router
