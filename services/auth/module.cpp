// Wires the auth service: its database, the key cache and its refresh, the gRPC services.
#include "tollgate/auth/module.h"

#include "src/grpc_services.h"
#include "tollgate/auth/admin.h"
#include "tollgate/auth/key_cache.h"
#include "tollgate/auth/pg_repository.h"
#include "tollgate/auth/refresher.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/metrics.h"
#include "tollgate/pg.h"

namespace tollgate::auth {
namespace {

class AuthModule final : public DbServiceModule {
 public:
  explicit AuthModule(const ModuleDeps& deps) : DbServiceModule("auth", deps, Migrations()) {}

  void BeginShutdown() override {
    DbServiceModule::BeginShutdown();
    // Watch streams never end on their own: end them, so shutdown does not wait for them.
    if (auth_.hub) auth_.hub->CloseAll();
  }

 protected:
  void RegisterServices(GrpcServer& server) override {
    repo_ = std::make_unique<PgAuthRepository>(pool());
    cache_ = std::make_unique<KeyCache>();
    refresher_ = std::make_unique<KeyRefresher>(*repo_, *cache_);
    // Every key before serving: Authenticate never answers from an empty cache.
    refresher_->ReloadAll();
    recorder_ = std::make_unique<LastUsedRecorder>(*repo_);
    authenticator_ = std::make_unique<Authenticator>(*cache_, clock_, *recorder_);
    admin_ = std::make_unique<AuthAdmin>(*repo_, *cache_, clock_);

    auth_ = MakeAuthService({*cache_, *authenticator_, *recorder_, clock_,
                             config().GetDuration("auth.watch_heartbeat"), &metrics().registry()});
    admin_service_ = MakeAuthAdminService(
        {[this](v1::GetStatusResponse* response) { FillStatus(*this, response); }, *admin_,
         workers()});
    server.Register(auth_.service.get(), v1::AuthService::service_full_name());
    server.Register(admin_service_.get(), v1::AuthAdminService::service_full_name());
    refresher_->Start(config().GetDuration("auth.cache_refresh"),
                      config().GetDuration("auth.cache_full_reload"));
    recorder_->Start(config().GetDuration("auth.last_used_flush_interval"));
  }

  void OnStopped() override {
    // Before the pool closes: both read or write through it.
    if (refresher_) refresher_->Stop();
    if (recorder_) recorder_->Stop();
  }

 private:
  RealClock clock_;
  std::unique_ptr<PgAuthRepository> repo_;
  std::unique_ptr<KeyCache> cache_;
  std::unique_ptr<KeyRefresher> refresher_;
  std::unique_ptr<LastUsedRecorder> recorder_;
  std::unique_ptr<Authenticator> authenticator_;
  std::unique_ptr<AuthAdmin> admin_;
  AuthService auth_;
  std::unique_ptr<grpc::Service> admin_service_;
};

}  // namespace

std::unique_ptr<Module> MakeAuthModule(const ModuleDeps& deps) {
  return std::make_unique<AuthModule>(deps);
}

}  // namespace tollgate::auth
