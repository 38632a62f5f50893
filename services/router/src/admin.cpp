#include "tollgate/router/admin.h"

#include <algorithm>
#include <cctype>
#include <map>

#include "tollgate/log.h"

namespace tollgate::router {
namespace {

constexpr int32_t kMaxWeight = 10000;
constexpr size_t kMaxSecret = 4096;

[[noreturn]] void Invalid(const std::string& message) {
  throw Error(ErrorCode::kInvalidRequest, message);
}

// Identifiers: names of providers, keys, models, aliases, deployments. Model
// names look like "gpt-4o", "meta-llama/Llama-3-8B" or "ft:gpt-4o:org::id".
constexpr int64_t kMaxModelTokens = 10'000'000;

void CheckLimits(int64_t max_output_tokens, int64_t default_max_tokens) {
  for (auto [what, value] : {std::pair{"max_output_tokens", max_output_tokens},
                             std::pair{"default_max_tokens", default_max_tokens}})
    if (value < 0 || value > kMaxModelTokens)
      throw Error(ErrorCode::kInvalidRequest, std::string(what) +
                                                  " must be between 0 (not configured) and " +
                                                  std::to_string(kMaxModelTokens));
  if (max_output_tokens > 0 && default_max_tokens > max_output_tokens)
    throw Error(ErrorCode::kInvalidRequest, "default_max_tokens must not exceed max_output_tokens");
}

void CheckName(std::string_view what, const std::string& value, size_t max) {
  if (value.empty()) Invalid(std::string(what) + " is required");
  if (value.size() > max)
    Invalid(std::string(what) + " is longer than " + std::to_string(max) + " characters");
  for (unsigned char c : value)
    if (!(std::isalnum(c) ||
          std::string_view("._-:/@+").find(static_cast<char>(c)) != std::string_view::npos))
      Invalid(std::string(what) + " '" + value +
              "' may only contain letters, digits and . _ - : / @ +");
}

// Printable ASCII without spaces: it goes into an HTTP header verbatim.
void CheckSecret(std::string_view secret) {
  if (secret.empty()) Invalid("secret is required");
  if (secret.size() > kMaxSecret)
    Invalid("secret is longer than " + std::to_string(kMaxSecret) + " characters");
  for (unsigned char c : secret)
    if (c < 0x21 || c > 0x7e)
      Invalid("secret may only contain printable ASCII characters without spaces");
}

void CheckWeight(int32_t weight) {
  if (weight < 1 || weight > kMaxWeight)
    Invalid("weight must be between 1 and " + std::to_string(kMaxWeight));
}

std::string NormalizeBaseUrl(std::string url) {
  const bool http = url.rfind("http://", 0) == 0;
  const bool https = url.rfind("https://", 0) == 0;
  if (!http && !https) Invalid("base_url must start with http:// or https://");
  const size_t host = http ? 7 : 8;
  // The edge appends "/chat/completions" etc.; a trailing slash would double it.
  while (url.size() > host && url.back() == '/') url.pop_back();
  if (url.size() == host || url[host] == '/') Invalid("base_url has no host");
  if (url.size() > 2048) Invalid("base_url is longer than 2048 characters");
  for (unsigned char c : url)
    if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#')
      Invalid("base_url must be a plain URL without spaces, query or fragment");
  return url;
}

bool EndsWith(std::string_view text, std::string_view suffix) {
  if (text.size() < suffix.size()) return false;
  for (size_t i = 0; i < suffix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(text[text.size() - suffix.size() + i])) !=
        suffix[i])
      return false;
  return true;
}

// The edge appends the endpoint path to base_url (`{base}/chat/completions` for openai and
// openai-compatible, `{base}/openai/deployments/{deployment}/...` for azure-openai,
// `{base}/v1/messages` for anthropic), so a base URL that already holds that path would call
// `.../chat/completions/chat/completions` or `/v1/v1/messages`. Refused with the URL to give
// instead, rather than guessed: only the operator knows the provider's real prefix.
void CheckBaseUrlPath(ProviderType type, const std::string& url) {
  const size_t scheme = url.find("://") + 3;
  const size_t slash = url.find('/', scheme);
  const std::string path = slash == std::string::npos ? "" : url.substr(slash);
  auto refuse = [&](std::string_view tail) {
    Invalid("base_url must be the API's root, without " + std::string(tail) +
            " (the edge appends the endpoint path itself): give " +
            url.substr(0, url.size() - tail.size()) + ".");
  };

  if (path.find("/v1/v1") != std::string::npos)
    Invalid("base_url has a doubled /v1 (" + path + "); give the API's root once");
  switch (type) {
    case ProviderType::kOpenAi:
    case ProviderType::kOpenAiCompatible:
      for (std::string_view tail : {"/chat/completions", "/completions", "/embeddings",
                                    "/responses", "/messages", "/models"})
        if (EndsWith(path, tail)) refuse(tail);
      break;
    case ProviderType::kAzureOpenAi:
      if (path.find("/openai/deployments") != std::string::npos || EndsWith(path, "/openai"))
        Invalid(
            "base_url of an azure-openai provider is the resource's endpoint (e.g. "
            "https://NAME.openai.azure.com): the edge appends "
            "/openai/deployments/{deployment}/...");
      break;
    case ProviderType::kAnthropic:
      for (std::string_view tail : {"/v1/messages", "/v1"})
        if (EndsWith(path, tail)) refuse(tail);
      break;
  }
}

void CheckApiVersion(const std::string& version) {
  if (!version.empty()) CheckName("api_version", version, 64);
}

AuditEntry Described(AuditEntry entry, const std::string& key, const std::string& value) {
  entry.details = AuditDetailsWith(entry.details, key, value);
  return entry;
}

}  // namespace

std::string KeyPrefix(std::string_view secret) {
  return std::string(secret.substr(0, std::min<size_t>(8, secret.size() / 4)));
}

RouterAdmin::RouterAdmin(RouterRepository& repo, const SecretBox& box, KeyPool& pool,
                         CatalogueRefresher& refresher)
    : repo_(repo), box_(box), pool_(pool), refresher_(refresher) {}

void RouterAdmin::Refresh() {
  try {
    refresher_.Reload();
  } catch (const std::exception& e) {
    log::Warn("router", "reload after an admin change failed; the periodic refresh will retry",
              {{"error", log::Redact(e.what())}});
  }
}

KeyListing RouterAdmin::Listing(const UpstreamKeyRecord& key) const {
  KeyListing l;
  l.id = key.id;
  l.provider_id = key.provider_id;
  l.name = key.name;
  l.masked_key = key.key_prefix + "...";
  l.weight = key.weight;
  l.enabled = key.enabled;
  l.created = key.created;
  l.health.key_id = key.id;
  if (auto health = pool_.Health(key.id)) l.health = *health;
  return l;
}

Provider RouterAdmin::CreateProvider(NewProvider p, const AuditEntry& audit) {
  CheckName("name", p.name, 64);
  p.base_url = NormalizeBaseUrl(p.base_url);
  CheckBaseUrlPath(p.type, p.base_url);
  CheckApiVersion(p.api_version);
  if (p.type == ProviderType::kAzureOpenAi && p.api_version.empty())
    Invalid("api_version is required for an azure-openai provider (e.g. 2024-06-01)");
  Provider created = repo_.CreateProvider(p, audit);
  Refresh();
  return created;
}

Provider RouterAdmin::UpdateProvider(int64_t id, ProviderPatch patch, const AuditEntry& audit) {
  if (patch.base_url) {
    patch.base_url = NormalizeBaseUrl(*patch.base_url);
    for (const Provider& p : repo_.ListProviders())
      if (p.id == id) CheckBaseUrlPath(p.type, *patch.base_url);
  }
  if (patch.api_version) CheckApiVersion(*patch.api_version);
  Provider updated = repo_.UpdateProvider(id, patch, audit);
  Refresh();
  return updated;
}

std::vector<Provider> RouterAdmin::ListProviders() { return repo_.ListProviders(); }

KeyListing RouterAdmin::CreateUpstreamKey(int64_t provider_id, const std::string& name,
                                          std::string_view secret, int32_t weight, bool enabled,
                                          const AuditEntry& audit) {
  CheckName("name", name, 64);
  CheckSecret(secret);
  if (weight == 0) weight = 1;
  CheckWeight(weight);
  NewUpstreamKey key;
  key.provider_id = provider_id;
  key.name = name;
  key.secret = box_.Seal(secret);
  key.key_prefix = KeyPrefix(secret);
  key.weight = weight;
  key.enabled = enabled;
  UpstreamKeyRecord created =
      repo_.CreateUpstreamKey(key, Described(audit, "key_prefix", key.key_prefix));
  Refresh();
  return Listing(created);
}

KeyListing RouterAdmin::UpdateUpstreamKey(int64_t id, std::optional<int32_t> weight,
                                          std::optional<bool> enabled,
                                          std::optional<std::string> secret,
                                          const AuditEntry& audit) {
  UpstreamKeyPatch patch;
  if (weight) CheckWeight(*weight);
  patch.weight = weight;
  patch.enabled = enabled;
  if (secret) {
    CheckSecret(*secret);
    patch.secret = box_.Seal(*secret);
    patch.key_prefix = KeyPrefix(*secret);
  }
  UpstreamKeyRecord updated = repo_.UpdateUpstreamKey(
      id, patch, patch.key_prefix ? Described(audit, "key_prefix", *patch.key_prefix) : audit);
  Refresh();
  return Listing(updated);
}

void RouterAdmin::DeleteUpstreamKey(int64_t id, const AuditEntry& audit) {
  repo_.DeleteUpstreamKey(id, audit);
  Refresh();
}

std::vector<KeyListing> RouterAdmin::ListUpstreamKeys(int64_t provider_id) {
  std::vector<KeyListing> out;
  for (const auto& key : repo_.ListUpstreamKeys(provider_id)) out.push_back(Listing(key));
  return out;
}

ModelRecord RouterAdmin::CreateModel(ModelRecord model, const AuditEntry& audit) {
  CheckName("name", model.name, 128);
  if (model.owned_by.empty()) model.owned_by = "system";
  CheckName("owned_by", model.owned_by, 64);
  CheckLimits(model.max_output_tokens, model.default_max_tokens);
  ModelRecord created = repo_.CreateModel(model, audit);
  Refresh();
  return created;
}

ModelRecord RouterAdmin::SetModelLimits(const std::string& name, int64_t max_output_tokens,
                                        int64_t default_max_tokens, const AuditEntry& audit) {
  CheckName("name", name, 128);
  CheckLimits(max_output_tokens, default_max_tokens);
  ModelRecord set = repo_.SetModelLimits(name, max_output_tokens, default_max_tokens, audit);
  Refresh();
  return set;
}

void RouterAdmin::DeleteModel(const std::string& name, const AuditEntry& audit) {
  repo_.DeleteModel(name, audit);
  Refresh();
}

ModelRoute RouterAdmin::SetModelRoute(ModelRoute route, const AuditEntry& audit) {
  CheckName("model", route.model, 128);
  if (route.upstream_model.empty()) route.upstream_model = route.model;
  CheckName("upstream_model", route.upstream_model, 256);
  ModelRoute set = repo_.SetModelRoute(route, audit);
  Refresh();
  return set;
}

void RouterAdmin::DeleteModelRoute(const std::string& model, int64_t provider_id,
                                   const AuditEntry& audit) {
  repo_.DeleteModelRoute(model, provider_id, audit);
  Refresh();
}

void RouterAdmin::SetAlias(const std::string& alias, const std::string& model,
                           const AuditEntry& audit) {
  CheckName("alias", alias, 128);
  CheckName("model", model, 128);
  if (alias == model) Invalid("an alias cannot point at itself");
  repo_.SetAlias(alias, model, audit);
  Refresh();
}

void RouterAdmin::DeleteAlias(const std::string& alias, const AuditEntry& audit) {
  repo_.DeleteAlias(alias, audit);
  Refresh();
}

CatalogueListing RouterAdmin::ListCatalogue() {
  Catalogue c = repo_.LoadCatalogue();
  CatalogueListing out;
  std::map<std::string, size_t> index;
  for (auto& m : c.models) {
    index[m.name] = out.models.size();
    out.models.push_back({std::move(m), {}, {}});
  }
  for (auto& r : c.routes)
    if (auto it = index.find(r.model); it != index.end())
      out.models[it->second].routes.push_back(std::move(r));
  for (auto& a : c.aliases)
    if (auto it = index.find(a.model); it != index.end())
      out.models[it->second].aliases.push_back(std::move(a.alias));
  return out;
}

std::vector<AuditEntry> RouterAdmin::ListAuditLog(int32_t limit) {
  return repo_.ListAudit(AuditLimit(limit));
}

}  // namespace tollgate::router
