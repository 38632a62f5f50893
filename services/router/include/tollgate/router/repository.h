// Where the router's catalogue is stored. Secrets arrive here already sealed.
// Expected failures throw Error (ErrorCode kNotFound, kAlreadyExists,
// kInvalidRequest); anything else (the database is down) throws another
// std::exception.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "tollgate/audit.h"
#include "tollgate/errors.h"
#include "tollgate/router/catalogue.h"

namespace tollgate::router {

struct NewProvider {
  std::string name;
  ProviderType type = ProviderType::kOpenAi;
  std::string base_url;
  std::string api_version;
  bool enabled = true;
};

struct ProviderPatch {
  std::optional<bool> enabled;
  std::optional<std::string> base_url;
  std::optional<std::string> api_version;
};

struct NewUpstreamKey {
  int64_t provider_id = 0;
  std::string name;
  SealedSecret secret;
  std::string key_prefix;
  int32_t weight = 1;
  bool enabled = true;
};

struct UpstreamKeyPatch {
  std::optional<int32_t> weight;
  std::optional<bool> enabled;
  // A rotated secret and its new display prefix, always together.
  std::optional<SealedSecret> secret;
  std::optional<std::string> key_prefix;
};

class RouterRepository {
 public:
  virtual ~RouterRepository() = default;

  // Everything, in one consistent snapshot.
  virtual Catalogue LoadCatalogue() = 0;

  // Every change writes `audit` to the audit log in its own transaction (a creation first sets
  // the entry's target to the new object: "provider:3", "upstream_key:5"); a failed change
  // writes none.
  virtual Provider CreateProvider(const NewProvider& provider, const AuditEntry& audit) = 0;
  virtual Provider UpdateProvider(int64_t id, const ProviderPatch& patch,
                                  const AuditEntry& audit) = 0;
  virtual std::vector<Provider> ListProviders() = 0;

  virtual UpstreamKeyRecord CreateUpstreamKey(const NewUpstreamKey& key,
                                              const AuditEntry& audit) = 0;
  virtual UpstreamKeyRecord UpdateUpstreamKey(int64_t id, const UpstreamKeyPatch& patch,
                                              const AuditEntry& audit) = 0;
  virtual void DeleteUpstreamKey(int64_t id, const AuditEntry& audit) = 0;
  // provider_id 0: every provider's keys.
  virtual std::vector<UpstreamKeyRecord> ListUpstreamKeys(int64_t provider_id) = 0;

  // kAlreadyExists also when the name is taken by an alias.
  // kAlreadyExists also when the name is taken by an alias. Uses name, owned_by and the limits.
  virtual ModelRecord CreateModel(const ModelRecord& model, const AuditEntry& audit) = 0;
  // kNotFound for an unknown model.
  virtual ModelRecord SetModelLimits(const std::string& name, int64_t max_output_tokens,
                                     int64_t default_max_tokens, const AuditEntry& audit) = 0;
  virtual void DeleteModel(const std::string& name, const AuditEntry& audit) = 0;
  virtual ModelRoute SetModelRoute(const ModelRoute& route, const AuditEntry& audit) = 0;
  virtual void DeleteModelRoute(const std::string& model, int64_t provider_id,
                                const AuditEntry& audit) = 0;
  // kAlreadyExists when `alias` is a model name; kNotFound when `model` is not one.
  virtual void SetAlias(const std::string& alias, const std::string& model,
                        const AuditEntry& audit) = 0;
  virtual void DeleteAlias(const std::string& alias, const AuditEntry& audit) = 0;

  // The newest `limit` audit entries, newest first.
  virtual std::vector<AuditEntry> ListAudit(int32_t limit) = 0;
};

}  // namespace tollgate::router
