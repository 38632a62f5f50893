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

  Provider CreateProvider(const NewProvider& provider) override;
  Provider UpdateProvider(int64_t id, const ProviderPatch& patch) override;
  std::vector<Provider> ListProviders() override;

  UpstreamKeyRecord CreateUpstreamKey(const NewUpstreamKey& key) override;
  UpstreamKeyRecord UpdateUpstreamKey(int64_t id, const UpstreamKeyPatch& patch) override;
  void DeleteUpstreamKey(int64_t id) override;
  std::vector<UpstreamKeyRecord> ListUpstreamKeys(int64_t provider_id) override;

  ModelRecord CreateModel(const std::string& name, const std::string& owned_by) override;
  void DeleteModel(const std::string& name) override;
  ModelRoute SetModelRoute(const ModelRoute& route) override;
  void DeleteModelRoute(const std::string& model, int64_t provider_id) override;
  void SetAlias(const std::string& alias, const std::string& model) override;
  void DeleteAlias(const std::string& alias) override;

 private:
  PgPool& pool_;
};

}  // namespace tollgate::router
