// The billing module in-process: its real gRPC server on 127.0.0.1:0, a real
// channel, a real throwaway database.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <chrono>
#include <functional>
#include <map>

#include "test/pg_fixture.h"
#include "tollgate/billing/cost.h"
#include "tollgate/billing/module.h"
#include "tollgate/billing/v1/billing.grpc.pb.h"
#include "tollgate/civil_date.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/grpc_errors.h"
#include "tollgate/grpc_server.h"
#include "tollgate/metrics.h"

namespace tollgate::billing {
namespace {

namespace pb = ::tollgate::billing::v1;
using testing::TestDatabase;

constexpr char kToken[] = "test-admin-token-0123456789";

class BillingGrpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = Config::Load("", {{"TOLLGATE_BILLING__DATABASE__DSN", db_.dsn()},
                                {"TOLLGATE_BILLING__GRPC_LISTEN", "127.0.0.1:0"},
                                {"TOLLGATE_BILLING__WORKERS", "2"},
                                {"TOLLGATE_BILLING__DATABASE__POOL_SIZE", "2"},
                                {"TOLLGATE_ADMIN__TOKEN", kToken}});
    module_ = MakeBillingModule({config_, metrics_});
    module_->Start();
    const std::string target = "127.0.0.1:" + std::to_string(module_->grpc_port());
    billing_ = pb::BillingService::NewStub(MakeChannel(target));  // as the edge
    // Only the credentials each call adds (Ctx): the admin token, a wrong one or none.
    admin_ = pb::BillingAdminService::NewStub(MakeChannel(target, /*send_service_token=*/false));
  }

  void TearDown() override {
    module_->BeginShutdown();
    module_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }

  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = kToken) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    SetDeadline(*ctx, std::chrono::seconds(10));
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }

  pb::UsageRecord Record(const std::string& request_id, int64_t user) {
    pb::UsageRecord r;
    r.set_request_id(request_id);
    r.set_user_id(user);
    r.set_api_key_id(user * 10);
    r.set_model("gpt-4o-mini");
    r.set_prompt_tokens(1000);
    r.set_completion_tokens(500);
    r.set_status(200);
    r.set_streamed(true);
    return r;
  }

  Metrics metrics_{"127.0.0.1:0"};
  TestDatabase db_;
  Config config_;
  std::unique_ptr<Module> module_;
  std::unique_ptr<pb::BillingService::Stub> billing_;
  std::unique_ptr<pb::BillingAdminService::Stub> admin_;
};

TEST_F(BillingGrpcTest, AdminRpcsWithoutTheTokenAreUnauthenticated) {
  std::vector<std::pair<std::string, std::function<grpc::Status(grpc::ClientContext*)>>> calls = {
      {"GetStatus",
       [&](grpc::ClientContext* c) {
         pb::GetStatusResponse r;
         return admin_->GetStatus(c, {}, &r);
       }},
      {"SetPrice",
       [&](grpc::ClientContext* c) {
         pb::SetPriceRequest q;
         q.set_model("gpt-4o-mini");
         q.set_input_micros_per_mtok(1);
         pb::SetPriceResponse r;
         return admin_->SetPrice(c, q, &r);
       }},
      {"ListPrices",
       [&](grpc::ClientContext* c) {
         pb::ListPricesResponse r;
         return admin_->ListPrices(c, {}, &r);
       }},
      {"SetMultiplier",
       [&](grpc::ClientContext* c) {
         pb::SetMultiplierRequest q;
         q.set_user_id(1);
         q.set_multiplier_ppm(1);
         pb::SetMultiplierResponse r;
         return admin_->SetMultiplier(c, q, &r);
       }},
      {"SetServiceTierMultiplier",
       [&](grpc::ClientContext* c) {
         pb::SetServiceTierMultiplierRequest q;
         q.set_tier("priority");
         q.set_multiplier_ppm(2'000'000);
         pb::SetServiceTierMultiplierResponse r;
         return admin_->SetServiceTierMultiplier(c, q, &r);
       }},
      {"ListServiceTierMultipliers",
       [&](grpc::ClientContext* c) {
         pb::ListServiceTierMultipliersResponse r;
         return admin_->ListServiceTierMultipliers(c, {}, &r);
       }},
      {"CreateAccount",
       [&](grpc::ClientContext* c) {
         pb::CreateAccountRequest q;
         q.set_user_id(1);
         pb::CreateAccountResponse r;
         return admin_->CreateAccount(c, q, &r);
       }},
      {"TopUp",
       [&](grpc::ClientContext* c) {
         pb::TopUpRequest q;
         q.set_user_id(1);
         q.set_amount_micros(1'000'000);
         pb::TopUpResponse r;
         return admin_->TopUp(c, q, &r);
       }},
      {"SetCreditLimit",
       [&](grpc::ClientContext* c) {
         pb::SetCreditLimitRequest q;
         q.set_user_id(1);
         pb::SetCreditLimitResponse r;
         return admin_->SetCreditLimit(c, q, &r);
       }},
      {"GetBalance",
       [&](grpc::ClientContext* c) {
         pb::GetBalanceRequest q;
         q.set_user_id(1);
         pb::GetBalanceResponse r;
         return admin_->GetBalance(c, q, &r);
       }},
      {"UsageReport",
       [&](grpc::ClientContext* c) {
         pb::UsageReportRequest q;
         q.set_from_day("2025-01-01");
         q.set_to_day("2025-01-02");
         pb::UsageReportResponse r;
         return admin_->UsageReport(c, q, &r);
       }},
      {"ListAuditLog",
       [&](grpc::ClientContext* c) {
         pb::ListAuditLogResponse r;
         return admin_->ListAuditLog(c, {}, &r);
       }},
  };
  for (const auto& [name, call] : calls) {
    EXPECT_EQ(call(Ctx("").get()).error_code(), grpc::StatusCode::UNAUTHENTICATED) << name;
    EXPECT_EQ(call(Ctx("wrong-token").get()).error_code(), grpc::StatusCode::UNAUTHENTICATED)
        << name;
  }
  pb::ListAuditLogResponse log;
  ASSERT_TRUE(admin_->ListAuditLog(Ctx().get(), {}, &log).ok());
  EXPECT_EQ(log.entries_size(), 0) << "nothing unauthenticated got through";
  pb::GetBalanceRequest q;
  q.set_user_id(1);
  pb::GetBalanceResponse balance;
  EXPECT_EQ(admin_->GetBalance(Ctx().get(), q, &balance).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(BillingGrpcTest, HoldRecordAndReportOverGrpc) {
  pb::SetPriceRequest price;
  price.set_model("gpt-4o-mini");
  price.set_input_micros_per_mtok(150'000);
  price.set_output_micros_per_mtok(600'000);
  price.set_effective_from_ms(1);
  pb::SetPriceResponse set;
  ASSERT_TRUE(admin_->SetPrice(Ctx().get(), price, &set).ok());
  EXPECT_EQ(set.price().cached_input_micros_per_mtok(), 150'000) << "defaults to the input price";

  pb::HoldRequest hold;
  hold.set_request_id("r1");
  hold.set_user_id(42);
  hold.set_model("gpt-4o-mini");
  hold.set_estimated_prompt_tokens(1000);
  hold.set_max_completion_tokens(500);
  pb::HoldResponse held;
  grpc::Status refused = billing_->Hold(Ctx("").get(), hold, &held);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(FromGrpcStatus(refused), ErrorCode::kInsufficientQuota);

  pb::CreateAccountRequest create;
  create.set_user_id(42);
  pb::CreateAccountResponse created;
  ASSERT_TRUE(admin_->CreateAccount(Ctx().get(), create, &created).ok());
  pb::TopUpRequest topup;
  topup.set_user_id(42);
  topup.set_amount_micros(1000);
  topup.set_note("first");
  pb::TopUpResponse topped;
  auto ctx = Ctx();
  ctx->AddMetadata("x-tollgate-actor", "alice");
  ASSERT_TRUE(admin_->TopUp(ctx.get(), topup, &topped).ok());
  EXPECT_EQ(topped.account().balance_micros(), 1000);

  grpc::Status ok = billing_->Hold(Ctx("").get(), hold, &held);
  ASSERT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_EQ(held.amount_micros(), 450);
  EXPECT_GT(held.hold_id(), 0);

  pb::RecordUsageRequest batch;
  *batch.add_records() = Record("r1", 42);
  batch.mutable_records(0)->set_hold_id(held.hold_id());
  pb::RecordUsageResponse recorded;
  ASSERT_TRUE(billing_->RecordUsage(Ctx("").get(), batch, &recorded).ok());
  EXPECT_EQ(recorded.recorded(), 1);
  EXPECT_EQ(recorded.duplicates(), 0);
  *batch.add_records() = Record("r2", 42);
  ASSERT_TRUE(billing_->RecordUsage(Ctx("").get(), batch, &recorded).ok());
  EXPECT_EQ(recorded.recorded(), 1) << "r2";
  EXPECT_EQ(recorded.duplicates(), 1) << "r1 again";

  pb::RecordUsageRequest bad;
  bad.add_records()->set_user_id(42);
  EXPECT_EQ(billing_->RecordUsage(Ctx("").get(), bad, &recorded).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  pb::GetBalanceRequest q;
  q.set_user_id(42);
  pb::GetBalanceResponse balance;
  ASSERT_TRUE(admin_->GetBalance(Ctx().get(), q, &balance).ok());
  EXPECT_EQ(balance.account().balance_micros(), 100);
  EXPECT_EQ(balance.account().held_micros(), 0) << "the hold was settled";
  EXPECT_EQ(balance.account().total_cost_micros(), 900);

  // The data-path views the edge's /v1/usage and /dashboard/billing/* will use.
  pb::GetAccountRequest account_request;
  account_request.set_user_id(42);
  pb::GetAccountResponse account;
  ASSERT_TRUE(billing_->GetAccount(Ctx("").get(), account_request, &account).ok());
  EXPECT_EQ(account.account().balance_micros(), 100);
  account_request.set_user_id(43);
  EXPECT_EQ(billing_->GetAccount(Ctx("").get(), account_request, &account).error_code(),
            grpc::StatusCode::NOT_FOUND);

  pb::UsageReportRequest report;
  const std::chrono::sys_days today = DayOf(std::chrono::system_clock::now());
  report.set_from_day(FormatDay(today - std::chrono::days(1)));
  report.set_to_day(FormatDay(today + std::chrono::days(1)));
  report.add_group_by(pb::REPORT_DIMENSION_USER);
  report.add_group_by(pb::REPORT_DIMENSION_MODEL);
  pb::UsageReportResponse rows;
  grpc::Status reported = admin_->UsageReport(Ctx().get(), report, &rows);
  ASSERT_TRUE(reported.ok()) << reported.error_message();
  ASSERT_EQ(rows.rows_size(), 1);
  EXPECT_EQ(rows.rows(0).user_id(), 42);
  EXPECT_EQ(rows.rows(0).model(), "gpt-4o-mini");
  EXPECT_EQ(rows.rows(0).requests(), 2);
  EXPECT_EQ(rows.rows(0).cost_micros(), 900);
  EXPECT_EQ(rows.rows(0).day(), "") << "not grouped by day";

  pb::GetUsageRequest usage_request;
  usage_request.set_user_id(42);
  usage_request.set_from_day(report.from_day());
  usage_request.set_to_day(report.to_day());
  pb::GetUsageResponse usage;
  ASSERT_TRUE(billing_->GetUsage(Ctx("").get(), usage_request, &usage).ok());
  ASSERT_EQ(usage.rows_size(), 1);
  EXPECT_EQ(usage.rows(0).day(), FormatDay(today));
  EXPECT_EQ(usage.rows(0).requests(), 2);
  EXPECT_EQ(usage.rows(0).cost_micros(), 900);
  usage_request.set_user_id(0);
  EXPECT_EQ(billing_->GetUsage(Ctx("").get(), usage_request, &usage).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  const std::string metrics = prometheus::TextSerializer().Serialize(metrics_.registry().Collect());
  for (const char* line : {"tollgate_billing_holds_total{result=\"granted\"} 1",
                           "tollgate_billing_holds_total{result=\"refused\"} 1",
                           "tollgate_billing_usage_records_total{result=\"recorded\"} 2",
                           "tollgate_billing_usage_records_total{result=\"duplicate\"} 1",
                           "tollgate_billing_ingest_transaction_records_count 2"})
    EXPECT_NE(metrics.find(line), std::string::npos) << line << "\n" << metrics;

  pb::ListAuditLogResponse log;
  ASSERT_TRUE(admin_->ListAuditLog(Ctx().get(), {}, &log).ok());
  ASSERT_EQ(log.entries_size(), 3);
  EXPECT_EQ(log.entries(0).action(), "top_up");
  EXPECT_EQ(log.entries(0).actor().rfind("alice (", 0), 0u) << log.entries(0).actor();
  EXPECT_EQ(log.entries(0).actor().find(kToken), std::string::npos);
  EXPECT_EQ(log.entries(1).action(), "create_account");
  EXPECT_EQ(log.entries(2).action(), "set_price");
}

TEST_F(BillingGrpcTest, ServiceTierMultipliersPriceHoldsAndRecordsOverGrpc) {
  pb::SetPriceRequest price;
  price.set_model("gpt-4o-mini");
  price.set_input_micros_per_mtok(150'000);
  price.set_output_micros_per_mtok(600'000);
  price.set_effective_from_ms(1);
  pb::SetPriceResponse set_price;
  ASSERT_TRUE(admin_->SetPrice(Ctx().get(), price, &set_price).ok());
  pb::CreateAccountRequest create;
  create.set_user_id(7);
  pb::CreateAccountResponse created;
  ASSERT_TRUE(admin_->CreateAccount(Ctx().get(), create, &created).ok());
  pb::TopUpRequest topup;
  topup.set_user_id(7);
  topup.set_amount_micros(1'000'000);
  pb::TopUpResponse topped;
  ASSERT_TRUE(admin_->TopUp(Ctx().get(), topup, &topped).ok());

  pb::SetServiceTierMultiplierRequest tier;
  tier.set_tier("priority");
  tier.set_multiplier_ppm(2'000'000);
  pb::SetServiceTierMultiplierResponse tier_set;
  auto ctx = Ctx();
  ctx->AddMetadata("x-tollgate-actor", "carol");
  ASSERT_TRUE(admin_->SetServiceTierMultiplier(ctx.get(), tier, &tier_set).ok());
  EXPECT_EQ(tier_set.multiplier().tier(), "priority");
  EXPECT_EQ(tier_set.multiplier().multiplier_ppm(), 2'000'000);
  tier.set_multiplier_ppm(0);
  EXPECT_EQ(admin_->SetServiceTierMultiplier(Ctx().get(), tier, &tier_set).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  pb::ListServiceTierMultipliersResponse listed;
  ASSERT_TRUE(admin_->ListServiceTierMultipliers(Ctx().get(), {}, &listed).ok());
  ASSERT_EQ(listed.multipliers_size(), 1);
  EXPECT_EQ(listed.multipliers(0).tier(), "priority");
  EXPECT_EQ(listed.multipliers(0).multiplier_ppm(), 2'000'000);

  pb::HoldRequest hold;
  hold.set_request_id("p1");
  hold.set_user_id(7);
  hold.set_model("gpt-4o-mini");
  hold.set_estimated_prompt_tokens(1000);
  hold.set_max_completion_tokens(500);
  hold.set_service_tier("priority");
  pb::HoldResponse held;
  ASSERT_TRUE(billing_->Hold(Ctx("").get(), hold, &held).ok());
  EXPECT_EQ(held.amount_micros(), 900) << "450 at x2";

  pb::RecordUsageRequest batch;
  *batch.add_records() = Record("p1", 7);
  batch.mutable_records(0)->set_hold_id(held.hold_id());
  batch.mutable_records(0)->set_service_tier("priority");
  *batch.add_records() = Record("d1", 7);  // no tier: the default, x1
  pb::RecordUsageResponse recorded;
  ASSERT_TRUE(billing_->RecordUsage(Ctx("").get(), batch, &recorded).ok());
  EXPECT_EQ(recorded.recorded(), 2);

  pb::ListUsageRecordsRequest list;
  list.set_user_id(7);
  pb::ListUsageRecordsResponse records;
  ASSERT_TRUE(admin_->ListUsageRecords(Ctx().get(), list, &records).ok());
  ASSERT_EQ(records.records_size(), 2);
  std::map<std::string, std::pair<std::string, int64_t>> by_id;
  for (const auto& r : records.records())
    by_id[r.record().request_id()] = {r.record().service_tier(), r.cost_micros()};
  EXPECT_EQ(by_id["p1"], (std::pair<std::string, int64_t>{"priority", 900}));
  EXPECT_EQ(by_id["d1"], (std::pair<std::string, int64_t>{"", 450}));

  pb::ListAuditLogResponse log;
  ASSERT_TRUE(admin_->ListAuditLog(Ctx().get(), {}, &log).ok());
  ASSERT_GE(log.entries_size(), 1);
  EXPECT_EQ(log.entries(0).action(), "set_service_tier_multiplier");
  EXPECT_EQ(log.entries(0).target(), "service_tier:priority");
  EXPECT_EQ(log.entries(0).actor().rfind("carol (", 0), 0u) << log.entries(0).actor();
}

}  // namespace
}  // namespace tollgate::billing
