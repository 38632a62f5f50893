// kill -9 resilience: the real `tollgate --target=billing` as a child process,
// requests admitted (Hold) and their usage batches streamed to it from several senders, SIGKILL in
// the middle of the load, a restart, and every batch not acknowledged delivered again (as the
// edge's spool does). Afterwards the ledger must hold exactly one record per admitted request and
// every balance must be its top-ups minus its costs.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <pqxx/pqxx>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test/child_process.h"
#include "test/pg_fixture.h"
#include "tollgate/billing/cost.h"
#include "tollgate/billing/v1/billing.grpc.pb.h"

namespace tollgate::billing {
namespace {

namespace pb = ::tollgate::billing::v1;
using testing::TestDatabase;
using ::tollgate::testing::ChildProcess;

constexpr char kToken[] = "kill-test-admin-token-0123456789";
constexpr char kEdgeToken[] = "kill-test-edge-token-0123456789";

// `tollgate --target=billing` with its stderr in a file.
class BillingChild {
 public:
  BillingChild(const std::string& dsn, const std::string& log_path)
      : log_path_(log_path),
        process_({TOLLGATE_BIN_PATH, "--target=billing"},
                 {.env = {{"TOLLGATE_METRICS__LISTEN", "127.0.0.1:0"},
                          {"TOLLGATE_BILLING__GRPC_LISTEN", "127.0.0.1:0"},
                          {"TOLLGATE_BILLING__DATABASE__DSN", dsn},
                          {"TOLLGATE_BILLING__INGEST_MAX_RECORDS", "200"},
                          {"TOLLGATE_ADMIN__TOKEN", kToken},
                          {"TOLLGATE_GRPC__SERVICE_TOKENS__EDGE", kEdgeToken},
                          {"TOLLGATE_SHUTDOWN__DRAIN_TIMEOUT", "5s"}},
                  .stderr_file = log_path}) {}

  // The gRPC address of this run, read from its "serving gRPC" log line.
  std::string WaitServing(size_t skip_lines) {
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (std::chrono::steady_clock::now() < end) {
      std::ifstream in(log_path_);
      std::string line;
      for (size_t n = 0; std::getline(in, line); ++n) {
        if (n < skip_lines) continue;
        auto j = nlohmann::json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.value("msg", "") == "serving gRPC") return j.value("listen", "");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return "";
  }

  int Stop(int sig) { return process_.Stop(sig); }

 private:
  std::string log_path_;
  ChildProcess process_;  // killed (SIGKILL) on destruction unless stopped
};

size_t LineCount(const std::string& path) {
  std::ifstream in(path);
  size_t n = 0;
  for (std::string line; std::getline(in, line);) ++n;
  return n;
}

std::unique_ptr<grpc::ClientContext> Ctx(std::chrono::milliseconds timeout, bool admin) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + timeout);
  // The data path is the edge's: this test calls it with the edge's service token.
  ctx->AddMetadata("authorization", std::string("Bearer ") + (admin ? kToken : kEdgeToken));
  return ctx;
}

TEST(BillingKillTest, EveryAdmittedRecordIsBilledOnceAcrossAKill9) {
  TestDatabase db;
  char tmpl[] = "/tmp/billing-kill-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string log_path = std::string(tmpl) + "/billing.log";

  auto first = std::make_unique<BillingChild>(db.dsn(), log_path);
  std::string target = first->WaitServing(0);
  ASSERT_FALSE(target.empty()) << "billing did not start; see " << log_path;

  constexpr int kUsers = 4;
  constexpr int64_t kTopUp = 50'000'000;
  const Rates rates{150'000, 600'000, 75'000};
  {
    auto admin = pb::BillingAdminService::NewStub(
        grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
    pb::SetPriceRequest price;
    price.set_model("gpt-4o-mini");
    price.set_input_micros_per_mtok(rates.input_micros_per_mtok);
    price.set_output_micros_per_mtok(rates.output_micros_per_mtok);
    price.set_cached_input_micros_per_mtok(rates.cached_input_micros_per_mtok);
    price.set_effective_from_ms(1);
    pb::SetPriceResponse set;
    ASSERT_TRUE(admin->SetPrice(Ctx(std::chrono::seconds(10), true).get(), price, &set).ok());
    for (int u = 1; u <= kUsers; ++u) {
      pb::CreateAccountRequest create;
      create.set_user_id(u);
      pb::CreateAccountResponse created;
      ASSERT_TRUE(
          admin->CreateAccount(Ctx(std::chrono::seconds(10), true).get(), create, &created).ok());
      pb::TopUpRequest topup;
      topup.set_user_id(u);
      topup.set_amount_micros(kTopUp);
      pb::TopUpResponse topped;
      ASSERT_TRUE(admin->TopUp(Ctx(std::chrono::seconds(10), true).get(), topup, &topped).ok());
    }
  }

  // The admitted requests, cut into the batches each sender must get acknowledged.
  constexpr int kSenders = 4, kBatchesPerSender = 60, kPerBatch = 25;
  std::map<int64_t, int64_t> expected_cost;
  std::vector<std::vector<pb::RecordUsageRequest>> work(kSenders);
  std::mt19937_64 rng(42);
  for (int s = 0; s < kSenders; ++s)
    for (int b = 0; b < kBatchesPerSender; ++b) {
      pb::RecordUsageRequest batch;
      for (int i = 0; i < kPerBatch; ++i) {
        auto* r = batch.add_records();
        r->set_request_id("req-" + std::to_string(s) + "-" + std::to_string(b) + "-" +
                          std::to_string(i));
        r->set_user_id(static_cast<int64_t>(rng() % kUsers) + 1);
        r->set_api_key_id(r->user_id() * 100);
        r->set_model("gpt-4o-mini");
        r->set_prompt_tokens(static_cast<int64_t>(rng() % 4000));
        r->set_cached_tokens(static_cast<int64_t>(rng() % 2) ? r->prompt_tokens() / 2 : 0);
        r->set_completion_tokens(static_cast<int64_t>(rng() % 2000));
        r->set_streamed(true);
        r->set_status(200);
        expected_cost[r->user_id()] +=
            CostMicros(rates, {r->prompt_tokens(), r->completion_tokens(), r->cached_tokens()},
                       kMultiplierOne);
      }
      work[s].push_back(std::move(batch));
    }
  const int64_t admitted = int64_t{kSenders} * kBatchesPerSender * kPerBatch;

  std::mutex mu;
  std::string current = target;
  std::atomic<int> acked{0}, failed_attempts{0};
  std::atomic<int64_t> recorded{0};
  std::vector<std::thread> senders;
  for (int s = 0; s < kSenders; ++s)
    senders.emplace_back([&, s] {
      std::string my_target;
      std::unique_ptr<pb::BillingService::Stub> stub;
      auto reconnect = [&] {
        std::lock_guard lock(mu);
        if (current != my_target) {
          my_target = current;
          stub = pb::BillingService::NewStub(
              grpc::CreateChannel(my_target, grpc::InsecureChannelCredentials()));
        }
      };
      for (auto& batch : work[s]) {
        // Admission: each request's hold first (a retry of the same request id gets the
        // same hold back, so a hold interrupted by the kill is not placed twice).
        for (auto& r : *batch.mutable_records()) {
          pb::HoldRequest hold;
          hold.set_request_id(r.request_id());
          hold.set_user_id(r.user_id());
          hold.set_model(r.model());
          hold.set_estimated_prompt_tokens(r.prompt_tokens());
          hold.set_max_completion_tokens(2000);
          for (;;) {
            reconnect();
            pb::HoldResponse held;
            grpc::Status status =
                stub->Hold(Ctx(std::chrono::seconds(2), false).get(), hold, &held);
            if (status.ok()) {
              r.set_hold_id(held.hold_id());
              break;
            }
            ++failed_attempts;
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
          }
        }
        for (;;) {  // until acknowledged: a batch is never dropped
          reconnect();
          pb::RecordUsageResponse response;
          if (stub->RecordUsage(Ctx(std::chrono::seconds(2), false).get(), batch, &response).ok()) {
            recorded += response.recorded();
            ++acked;
            break;
          }
          ++failed_attempts;
          std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
      }
    });

  // SIGKILL once a third of the batches are in, while the senders keep sending.
  const int total_batches = kSenders * kBatchesPerSender;
  while (acked.load() < total_batches / 3)
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(first->Stop(SIGKILL), 128 + SIGKILL);
  const int acked_at_kill = acked.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Both runs log to one file: the second one's address comes after the first one's lines.
  const size_t first_run_lines = LineCount(log_path);
  auto second = std::make_unique<BillingChild>(db.dsn(), log_path);
  const std::string restarted = second->WaitServing(first_run_lines);
  ASSERT_FALSE(restarted.empty()) << "billing did not restart; see " << log_path;
  {
    std::lock_guard lock(mu);
    current = restarted;
  }
  for (auto& t : senders) t.join();
  EXPECT_LT(acked_at_kill, total_batches) << "the kill landed after the load";
  EXPECT_GT(failed_attempts.load(), 0) << "no delivery was interrupted by the kill";
  EXPECT_LE(recorded.load(), admitted) << "acknowledged counts never exceed what was sent";

  // An edge that restarts before dropping acknowledged batches from its spool sends them
  // again: billing answers "duplicates" and charges nothing more.
  {
    auto stub = pb::BillingService::NewStub(
        grpc::CreateChannel(restarted, grpc::InsecureChannelCredentials()));
    for (int b = 0; b < 10; ++b) {
      pb::RecordUsageResponse response;
      ASSERT_TRUE(
          stub->RecordUsage(Ctx(std::chrono::seconds(10), false).get(), work[0][b], &response)
              .ok());
      EXPECT_EQ(response.recorded(), 0);
      EXPECT_EQ(response.duplicates(), kPerBatch);
    }
  }
  // Records committed whose acknowledgement the kill lost were redelivered as duplicates.
  std::cout << "batches acknowledged before the kill: " << acked_at_kill << "/" << total_batches
            << "; failed deliveries: " << failed_attempts.load()
            << "; records committed but not acknowledged (redelivered as duplicates): "
            << admitted - recorded.load() << "\n";
  EXPECT_EQ(second->Stop(SIGTERM), 0) << "see " << log_path;

  pqxx::connection conn(db.dsn());
  pqxx::read_transaction tx(conn);
  EXPECT_EQ(tx.exec1("SELECT count(*) FROM usage_records")[0].as<int64_t>(), admitted);
  EXPECT_EQ(tx.exec1("SELECT count(DISTINCT request_id) FROM usage_records")[0].as<int64_t>(),
            admitted);
  EXPECT_EQ(tx.exec1("SELECT sum(requests)::BIGINT FROM usage_daily")[0].as<int64_t>(), admitted);
  // Every admitted request held once, and every record names its hold (holds live in memory).
  EXPECT_EQ(tx.exec1("SELECT count(DISTINCT hold_id) FROM usage_records WHERE hold_id <> 0")[0]
                .as<int64_t>(),
            admitted);
  for (int u = 1; u <= kUsers; ++u) {
    auto row = tx.exec_params1(
        "SELECT a.balance_micros, "
        "(SELECT COALESCE(sum(amount_micros), 0)::BIGINT FROM top_ups t WHERE t.user_id = $1), "
        "(SELECT COALESCE(sum(cost_micros), 0)::BIGINT FROM usage_records r WHERE r.user_id = $1), "
        "(SELECT COALESCE(sum(cost_micros), 0)::BIGINT FROM usage_daily d WHERE d.user_id = $1) "
        "FROM accounts a WHERE a.user_id = $1",
        u);
    const int64_t balance = row[0].as<int64_t>(), top_ups = row[1].as<int64_t>(),
                  costs = row[2].as<int64_t>(), daily = row[3].as<int64_t>();
    EXPECT_EQ(top_ups, kTopUp) << "user " << u;
    EXPECT_EQ(costs, expected_cost[u]) << "user " << u;
    EXPECT_EQ(daily, expected_cost[u]) << "user " << u;
    EXPECT_EQ(balance, top_ups - costs) << "user " << u;
  }
  std::system(("rm -rf " + std::string(tmpl)).c_str());
}

}  // namespace
}  // namespace tollgate::billing
