// RouterRepository on the router's own PostgreSQL database (migrations/).
#pragma once

#include "tollgate/router/repository.h"

namespace tollgate {
class PgPool;
}  // namespace tollgate

namespace tollgate::router {

class PgRouterRepository final : public RouterRepository {
 public:
  explicit PgRouterRepository(PgPool& pool) : pool_(pool) {}

  Catalogue LoadCatalogue() override;

  Provider CreateProvider(const NewProvider& provider, const AuditEntry& audit) override;
  Provider UpdateProvider(int64_t id, const ProviderPatch& patch, const AuditEntry& audit) override;
  std::vector<Provider> ListProviders() override;

  UpstreamKeyRecord CreateUpstreamKey(const NewUpstreamKey& key, const AuditEntry& audit) override;
  UpstreamKeyRecord UpdateUpstreamKey(int64_t id, const UpstreamKeyPatch& patch,
                                      const AuditEntry& audit) override;
  void DeleteUpstreamKey(int64_t id, const AuditEntry& audit) override;
  std::vector<UpstreamKeyRecord> ListUpstreamKeys(int64_t provider_id) override;

  ModelRecord SetModelLimits(const std::string& name, int64_t max_output_tokens,
                             int64_t default_max_tokens, const AuditEntry& audit) override;
  ModelRecord CreateModel(const ModelRecord& model, const AuditEntry& audit) override;
  void DeleteModel(const std::string& name, const AuditEntry& audit) override;
  ModelRoute SetModelRoute(const ModelRoute& route, const AuditEntry& audit) override;
  void DeleteModelRoute(const std::string& model, int64_t provider_id,
                        const AuditEntry& audit) override;
  void SetAlias(const std::string& alias, const std::string& model,
                const AuditEntry& audit) override;
  void DeleteAlias(const std::string& alias, const AuditEntry& audit) override;
  std::vector<AuditEntry> ListAudit(int32_t limit) override;

 private:
  PgPool& pool_;
};

}  // namespace tollgate::router
