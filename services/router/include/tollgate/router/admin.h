// The operator's view of the router: validates admin input, seals secrets,
// writes through the repository and reloads the key pool so the change is
// live on this replica before the call returns. Throws Error for bad
// input or a missing/duplicate object; other exceptions mean the database failed.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tollgate/router/catalogue.h"
#include "tollgate/router/key_pool.h"
#include "tollgate/router/refresher.h"
#include "tollgate/router/repository.h"
#include "tollgate/router/secret_box.h"

namespace tollgate::router {

// An upstream key as an operator sees it: never the secret, only its prefix.
struct KeyListing {
  int64_t id = 0;
  int64_t provider_id = 0;
  std::string name;
  std::string masked_key;  // "sk-abc12..."
  int32_t weight = 1;
  bool enabled = true;
  int64_t created = 0;
  KeyHealth health;  // closed with zero counters for a key the pool has not seen yet
};

struct CatalogueListing {
  struct Entry {
    ModelRecord model;
    std::vector<ModelRoute> routes;
    std::vector<std::string> aliases;
  };
  std::vector<Entry> models;
};

// The few leading characters of `secret` an operator may see: at most 8, and
// never more than a quarter of it, so a short secret keeps most of its entropy.
std::string KeyPrefix(std::string_view secret);

class RouterAdmin final {
 public:
  RouterAdmin(RouterRepository& repo, const SecretBox& box, KeyPool& pool,
              CatalogueRefresher& refresher);

  // Each change is audited with `audit` (actor, action, target, details) in its transaction;
  // an upstream key's entry gets its display prefix, never its secret.
  Provider CreateProvider(NewProvider provider, const AuditEntry& audit);
  Provider UpdateProvider(int64_t id, ProviderPatch patch, const AuditEntry& audit);
  std::vector<Provider> ListProviders();

  // weight 0 means 1.
  KeyListing CreateUpstreamKey(int64_t provider_id, const std::string& name,
                               std::string_view secret, int32_t weight, bool enabled,
                               const AuditEntry& audit);
  KeyListing UpdateUpstreamKey(int64_t id, std::optional<int32_t> weight,
                               std::optional<bool> enabled, std::optional<std::string> secret,
                               const AuditEntry& audit);
  void DeleteUpstreamKey(int64_t id, const AuditEntry& audit);
  // provider_id 0: every key.
  std::vector<KeyListing> ListUpstreamKeys(int64_t provider_id);

  // owned_by empty means "system"; limits as in SetModelLimits.
  ModelRecord CreateModel(ModelRecord model, const AuditEntry& audit);
  // Completion limits: each 0 (not configured) to 10,000,000; a default above the maximum is
  // refused.
  ModelRecord SetModelLimits(const std::string& name, int64_t max_output_tokens,
                             int64_t default_max_tokens, const AuditEntry& audit);
  void DeleteModel(const std::string& name, const AuditEntry& audit);
  // upstream_model empty means the public name.
  ModelRoute SetModelRoute(ModelRoute route, const AuditEntry& audit);
  void DeleteModelRoute(const std::string& model, int64_t provider_id, const AuditEntry& audit);
  void SetAlias(const std::string& alias, const std::string& model, const AuditEntry& audit);
  void DeleteAlias(const std::string& alias, const AuditEntry& audit);
  CatalogueListing ListCatalogue();
  // Newest first; `limit` 0 is 100.
  std::vector<AuditEntry> ListAuditLog(int32_t limit);

 private:
  KeyListing Listing(const UpstreamKeyRecord& key) const;
  // Makes a committed change live here; a failure is left to the periodic refresh.
  void Refresh();

  RouterRepository& repo_;
  const SecretBox& box_;
  KeyPool& pool_;
  CatalogueRefresher& refresher_;
};

}  // namespace tollgate::router
