// Wires the quota service: its database, the limiter, the group committer, its gRPC services
// and a background loop (reservation expiry, policy refresh, pruning of settled request ids).
#include "tollgate/quota/module.h"

#include <algorithm>
#include <chrono>
#include <stop_token>

#include "src/grpc_services.h"
#include "tollgate/background_thread.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/pg.h"
#include "tollgate/quota/group_commit.h"
#include "tollgate/quota/limiter.h"
#include "tollgate/quota/pg_repository.h"

namespace tollgate::quota {
namespace {

namespace pb = ::tollgate::quota::v1;

constexpr int kSettledRetentionDays = 40;

LimiterOptions Options(const Config& config) {
  LimiterOptions o;
  o.key_defaults.rpm = config.GetInt("quota.default_key_rpm");
  o.key_defaults.tpm = config.GetInt("quota.default_key_tpm");
  o.key_defaults.monthly_tokens = config.GetInt("quota.default_key_monthly_tokens");
  o.key_defaults.daily_tokens = config.GetInt("quota.default_key_daily_tokens");
  o.user_defaults.monthly_tokens = config.GetInt("quota.default_user_monthly_tokens");
  o.user_defaults.daily_tokens = config.GetInt("quota.default_user_daily_tokens");
  o.ip_defaults.rpm = config.GetInt("quota.default_ip_rpm");
  o.ip_defaults.tpm = config.GetInt("quota.default_ip_tpm");
  o.reservation_ttl = config.GetDuration("quota.reservation_ttl");
  o.lease_ttl = config.GetDuration("quota.lease_ttl");
  o.lease_min_headroom = config.GetInt("quota.lease_min_headroom");
  return o;
}

// Expires reservations every second, reloads policy overrides (set on another replica) every
// `refresh`, prunes old settled request ids hourly.
class Background final {
 public:
  Background(Limiter& limiter, QuotaRepository& repo, std::chrono::milliseconds refresh)
      : limiter_(limiter), repo_(repo), refresh_(refresh) {
    thread_.Start([this](std::stop_token stop) { Loop(stop); });
  }

 private:
  void Loop(const std::stop_token& stop) {
    using Steady = std::chrono::steady_clock;
    auto next_refresh = Steady::now() + refresh_;
    auto next_prune = Steady::now();
    while (thread_.SleepFor(
        stop, std::min<std::chrono::milliseconds>(refresh_, std::chrono::seconds(1)))) {
      limiter_.Expire();
      try {
        if (Steady::now() >= next_refresh) {
          limiter_.ReplacePolicies(repo_.LoadPolicies());
          next_refresh = Steady::now() + refresh_;
        }
        if (Steady::now() >= next_prune) {
          repo_.PruneSettled(kSettledRetentionDays);
          next_prune = Steady::now() + std::chrono::hours(1);
        }
      } catch (const std::exception& e) {
        log::Warn("quota", "background refresh failed", {{"error", log::Redact(e.what())}});
      }
    }
  }

  Limiter& limiter_;
  QuotaRepository& repo_;
  const std::chrono::milliseconds refresh_;
  BackgroundThread thread_;  // last: stopped (on destruction) before the members its loop uses
};

class QuotaModule final : public DbServiceModule {
 public:
  explicit QuotaModule(const ModuleDeps& deps) : DbServiceModule("quota", deps, Migrations()) {}

 protected:
  void RegisterServices(GrpcServer& server) override {
    repo_ = std::make_unique<PgQuotaRepository>(pool());
    limiter_ = std::make_unique<Limiter>(Options(config()), clock_, *repo_);
    // Overrides before serving: Admit must never run on defaults alone.
    limiter_->ReplacePolicies(repo_->LoadPolicies());
    committer_ = std::make_unique<GroupCommitter>(*repo_);
    quota_service_ = MakeQuotaService(
        {*limiter_, *committer_, workers(), metrics().registry(),
         std::chrono::steady_clock::now() + config().GetDuration("quota.lease_ttl")});
    admin_service_ = MakeQuotaAdminService(
        {[this](pb::GetStatusResponse* response) { FillStatus(*this, response); }, *limiter_,
         *repo_, workers()});
    server.Register(quota_service_.get(), pb::QuotaService::service_full_name());
    server.Register(admin_service_.get(), pb::QuotaAdminService::service_full_name());
    background_ = std::make_unique<Background>(*limiter_, *repo_,
                                               config().GetDuration("quota.policy_refresh"));
  }

  void OnStopped() override {
    // Before the pool closes: both write through it.
    background_.reset();
    if (committer_) committer_->Stop();
  }

 private:
  RealClock clock_;
  std::unique_ptr<PgQuotaRepository> repo_;
  std::unique_ptr<Limiter> limiter_;
  std::unique_ptr<GroupCommitter> committer_;
  std::unique_ptr<Background> background_;
  std::unique_ptr<grpc::Service> quota_service_;
  std::unique_ptr<grpc::Service> admin_service_;
};

}  // namespace

std::unique_ptr<Module> MakeQuotaModule(const ModuleDeps& deps) {
  return std::make_unique<QuotaModule>(deps);
}

}  // namespace tollgate::quota
