// Wires the router service: its database, the key pool, its gRPC services.
#include "tollgate/router/module.h"

#include <openssl/crypto.h>

#include "src/grpc_services.h"
#include "src/router_metrics.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/metrics.h"
#include "tollgate/pg.h"
#include "tollgate/router/admin.h"
#include "tollgate/router/key_pool.h"
#include "tollgate/router/pg_repository.h"
#include "tollgate/router/refresher.h"
#include "tollgate/router/secret_box.h"

namespace tollgate::router {
namespace {

// Refuses to start without a usable master key: without it no upstream key
// can be stored or read, and a guessed default would be no protection at all.
SecretBox::Key MasterKey(const Config& config) {
  const std::string& text = config.GetString("router.master_key");
  if (text.empty())
    throw std::runtime_error(
        "router.master_key is not set: set TOLLGATE_ROUTER__MASTER_KEY or "
        "router.master_key_file to 32 random bytes written as 64 hex characters or base64 "
        "(generate one with `openssl rand -hex 32`); it encrypts the upstream keys at rest");
  try {
    return SecretBox::ParseKey(text);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(std::string("router.master_key is malformed: ") + e.what());
  }
}

KeyPoolOptions PoolOptions(const Config& config) {
  KeyPoolOptions o;
  o.failure_threshold = static_cast<int>(config.GetInt("router.breaker.failure_threshold"));
  o.breaker_cooldown = config.GetDuration("router.breaker.cooldown");
  o.trial_timeout = config.GetDuration("router.breaker.trial_timeout");
  o.rate_limit_cooldown = config.GetDuration("router.rate_limit_cooldown");
  o.max_attempts = static_cast<int>(config.GetInt("router.max_attempts"));
  return o;
}

class RouterModule final : public DbServiceModule {
 public:
  explicit RouterModule(const ModuleDeps& deps) : DbServiceModule("router", deps, Migrations()) {}

  void Start() override {
    // Checked before the database is touched, so a bad key fails fast.
    auto key = MasterKey(config());
    box_ = std::make_unique<SecretBox>(key);
    OPENSSL_cleanse(key.data(), key.size());
    DbServiceModule::Start();
  }

 protected:
  void RegisterServices(GrpcServer& server) override {
    repo_ = std::make_unique<PgRouterRepository>(pool());
    key_pool_ = std::make_unique<KeyPool>(PoolOptions(config()), clock_);
    router_metrics_ = std::make_unique<RouterMetrics>(metrics().registry());
    refresher_ = std::make_unique<CatalogueRefresher>(
        *repo_, *key_pool_,
        [box = box_.get()](const UpstreamKeyRecord& k) { return box->Open(k.secret); });
    // The first snapshot before serving: Route must never answer from an empty pool.
    refresher_->Reload();
    router_metrics_->SyncBreakers(key_pool_->Health());
    admin_ = std::make_unique<RouterAdmin>(*repo_, *box_, *key_pool_, *refresher_);

    router_service_ = MakeRouterService(
        *key_pool_, *router_metrics_, *refresher_,
        [box = box_.get()](const UpstreamKeyRecord& k) { return box->Open(k.secret); });
    admin_service_ = MakeRouterAdminService(
        {[this](v1::GetStatusResponse* response) { FillStatus(*this, response); }, *admin_,
         workers()});
    server.Register(router_service_.get(), v1::RouterService::service_full_name());
    server.Register(admin_service_.get(), v1::RouterAdminService::service_full_name());
    refresher_->Start(config().GetDuration("router.cache_refresh"),
                      [this] { router_metrics_->SyncBreakers(key_pool_->Health()); });
  }

  void OnStopped() override {
    // Before the pool closes: the refresher reads through it.
    if (refresher_) refresher_->Stop();
  }

 private:
  RealClock clock_;
  std::unique_ptr<SecretBox> box_;
  std::unique_ptr<PgRouterRepository> repo_;
  std::unique_ptr<KeyPool> key_pool_;
  std::unique_ptr<RouterMetrics> router_metrics_;
  std::unique_ptr<CatalogueRefresher> refresher_;
  std::unique_ptr<RouterAdmin> admin_;
  std::unique_ptr<grpc::Service> router_service_;
  std::unique_ptr<grpc::Service> admin_service_;
};

}  // namespace

std::unique_ptr<Module> MakeRouterModule(const ModuleDeps& deps) {
  return std::make_unique<RouterModule>(deps);
}

}  // namespace tollgate::router
