// Wires the billing service: its database, the ledger logic, group commit for
// usage records, its gRPC services.
#include "tollgate/billing/module.h"

#include "src/billing_metrics.h"
#include "src/grpc_services.h"
#include "tollgate/background_thread.h"
#include "tollgate/billing/billing.h"
#include "tollgate/billing/ingestor.h"
#include "tollgate/billing/pg_repository.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/log.h"
#include "tollgate/metrics.h"
#include "tollgate/pg.h"

#include <algorithm>
#include <chrono>

namespace tollgate::billing {
namespace {

class BillingModule final : public DbServiceModule {
 public:
  explicit BillingModule(const ModuleDeps& deps) : DbServiceModule("billing", deps, Migrations()) {}
  ~BillingModule() override { StopSweeper(); }

 protected:
  void RegisterServices(GrpcServer& server) override {
    repo_ = std::make_unique<PgBillingRepository>(pool());
    BillingOptions options;
    options.hold_ttl = config().GetDuration("billing.hold_ttl");
    options.budget_ttl = config().GetDuration("billing.budget_ttl");
    options.budget_min_headroom_micros = config().GetInt("billing.budget_min_headroom");
    // Budgets of an earlier incarnation may still be spent at the edges for one budget_ttl.
    options.quiet_after_start = options.budget_ttl;
    billing_ = std::make_unique<Billing>(*repo_, clock_, options);
    billing_metrics_ = std::make_unique<BillingMetrics>(metrics().registry());
    ingestor_ = std::make_unique<Ingestor>(
        [this](std::vector<UsageInput> records) {
          const size_t n = records.size();
          auto stored = billing_->Record(std::move(records));
          billing_metrics_->ObserveTransaction(n);
          return stored;
        },
        static_cast<size_t>(config().GetInt("billing.ingest_max_records")));
    service_ = MakeBillingService(*billing_, *ingestor_, workers(), *billing_metrics_);
    admin_ = MakeBillingAdminService(
        {[this](v1::GetStatusResponse* response) { FillStatus(*this, response); }, *billing_,
         workers()});
    server.Register(service_.get(), v1::BillingService::service_full_name());
    server.Register(admin_.get(), v1::BillingAdminService::service_full_name());
    StartSweeper(config().GetDuration("billing.balance_refresh"));
  }

  void OnStopped() override {
    StopSweeper();
    // Before the pool closes: the writer commits what is still queued.
    if (ingestor_) ingestor_->Stop();
  }

 private:
  // Every `every`: drops expired holds and idle users from the hold book, reloads the balances of
  // the others (top-ups and charges made through other replicas) and ends the holds whose
  // records another replica stored.
  void StartSweeper(std::chrono::milliseconds every) {
    sweeper_.Every(every, [this] {
      if (int64_t n = billing_->ExpireHolds(); n > 0)
        log::Info("billing", "expired holds", {{"holds", n}});
      try {
        billing_->RefreshBalances();
      } catch (const std::exception& e) {
        log::Warn("billing", "refreshing balances failed", {{"error", log::Redact(e.what())}});
      }
    });
  }

  void StopSweeper() { sweeper_.Stop(); }

  RealClock clock_;
  std::unique_ptr<PgBillingRepository> repo_;
  std::unique_ptr<Billing> billing_;
  std::unique_ptr<BillingMetrics> billing_metrics_;
  std::unique_ptr<Ingestor> ingestor_;
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Service> admin_;
  BackgroundThread sweeper_;  // last: stopped (on destruction) before the members it uses
};

}  // namespace

std::unique_ptr<Module> MakeBillingModule(const ModuleDeps& deps) {
  return std::make_unique<BillingModule>(deps);
}

}  // namespace tollgate::billing
