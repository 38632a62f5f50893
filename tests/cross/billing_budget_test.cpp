// The edge's GrpcBillingClient with budgets against a real billing process (`tollgate
// --target=billing`, its own PostgreSQL): money of a user granted to edges in advance and spent
// request by request without a call, never more than the user has, across edges, an edge that
// dies holding budgets, and a billing restart.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <future>
#include <thread>

#include <signal.h>
#include <nlohmann/json.hpp>

#include "src/grpc_billing_client.h"
#include "test/child_process.h"
#include "test/pg_fixture.h"
#include "tollgate/billing/v1/billing.grpc.pb.h"
#include "tollgate/config.h"
#include "tollgate/grpc_server.h"

namespace tollgate::billing {
namespace {

namespace pb = ::tollgate::billing::v1;
using edge::GrpcBillingClient;
using edge::GrpcBillingClientOptions;
using edge::HoldRequest;
using edge::HoldResult;
using edge::UsageRecord;
using testing::TestDatabase;
using ::tollgate::testing::ChildProcess;

constexpr char kToken[] = "test-admin-token-0123456789";
constexpr char kEdgeToken[] = "test-edge-token-0123456789";
const bool kEdgeTokenSet = (ConfigureServiceToken(kEdgeToken), true);

constexpr int64_t kUser = 42;
// 1 micro-unit per prompt token, 2 per completion token: a request of 100 + 100 tokens holds
// 300; its record (80 prompt, 50 completion tokens) costs 180.
constexpr int64_t kWorst = 300;
constexpr int64_t kCost = 180;

class BillingProcess {
 public:
  BillingProcess(const std::string& dsn, const std::string& listen, Config::Environment extra) {
    Config::Environment env = {{"TOLLGATE_BILLING__DATABASE__DSN", dsn},
                               {"TOLLGATE_BILLING__GRPC_LISTEN", listen},
                               {"TOLLGATE_METRICS__LISTEN", "127.0.0.1:0"},
                               {"TOLLGATE_ADMIN__TOKEN", kToken},
                               {"TOLLGATE_GRPC__SERVICE_TOKENS__EDGE", kEdgeToken}};
    for (auto& [k, v] : extra) env[k] = v;
    process_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{TOLLGATE_BIN_PATH, "--target=billing"},
        ChildProcess::Options{env, ChildProcess::Capture::kStderr});
    auto serving = process_->WaitForLog(
        [](const nlohmann::json& j) { return j.value("msg", "") == "serving gRPC"; });
    if (!serving.is_null()) target_ = serving["listen"];
    if (target_.empty()) throw std::runtime_error("the billing process did not start");
    admin_ = pb::BillingAdminService::NewStub(MakeChannel(target_));
  }
  ~BillingProcess() {
    if (!process_) return;
    int code = process_->Stop(SIGTERM);
    EXPECT_EQ(code, 0) << "billing process exit " << code;
  }
  std::string target() const { return target_; }

  template <typename Req, typename Resp, typename Call>
  Resp Admin(const Req& req, Call call) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, std::chrono::seconds(5));
    ctx.AddMetadata("authorization", std::string("Bearer ") + kToken);
    Resp resp;
    grpc::Status status = call(&ctx, req, &resp);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return resp;
  }
  void Setup(int64_t top_up) {
    pb::SetPriceRequest price;
    price.set_model("m");
    price.set_input_micros_per_mtok(1'000'000);
    price.set_output_micros_per_mtok(2'000'000);
    Admin<pb::SetPriceRequest, pb::SetPriceResponse>(
        price, [&](auto* c, auto& q, auto* r) { return admin_->SetPrice(c, q, r); });
    pb::CreateAccountRequest account;
    account.set_user_id(kUser);
    Admin<pb::CreateAccountRequest, pb::CreateAccountResponse>(
        account, [&](auto* c, auto& q, auto* r) { return admin_->CreateAccount(c, q, r); });
    pb::TopUpRequest top;
    top.set_user_id(kUser);
    top.set_amount_micros(top_up);
    Admin<pb::TopUpRequest, pb::TopUpResponse>(
        top, [&](auto* c, auto& q, auto* r) { return admin_->TopUp(c, q, r); });
  }
  pb::Account Balance() {
    pb::GetBalanceRequest req;
    req.set_user_id(kUser);
    return Admin<pb::GetBalanceRequest, pb::GetBalanceResponse>(
               req, [&](auto* c, auto& q, auto* r) { return admin_->GetBalance(c, q, r); })
        .account();
  }
  // Waits until the balance has `cost` charged and nothing is held.
  pb::Account Settled(int64_t top_up, int64_t cost) {
    pb::Account a;
    for (int i = 0; i < 300; ++i) {
      a = Balance();
      if (a.balance_micros() == top_up - cost && a.held_micros() == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return a;
  }
  void Kill() {
    process_->Stop(SIGKILL);
    process_.reset();
  }

 private:
  std::unique_ptr<ChildProcess> process_;
  std::string target_;
  std::unique_ptr<pb::BillingAdminService::Stub> admin_;
};

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/tg-budget-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  std::string path() const { return path_; }

 private:
  std::string path_;
};

GrpcBillingClientOptions Options(const std::string& target, const std::string& spool) {
  GrpcBillingClientOptions o;
  o.target = target;
  o.timeout = std::chrono::seconds(2);
  o.spool_dir = spool;
  o.flush_interval = std::chrono::milliseconds(10);
  o.retry_pause = std::chrono::milliseconds(100);
  return o;
}

HoldResult HoldNow(GrpcBillingClient& client, const std::string& id) {
  HoldRequest r;
  r.request_id = id;
  r.principal.user_id = std::to_string(kUser);
  r.principal.api_key_id = "7";
  r.model = "m";
  r.estimated_prompt_tokens = 100;
  r.max_completion_tokens = 100;
  std::promise<HoldResult> p;
  auto f = p.get_future();
  client.Hold(std::move(r), [&p](HoldResult h) { p.set_value(std::move(h)); });
  return f.get();
}

void RecordOf(GrpcBillingClient& client, const std::string& id, const HoldResult& held) {
  UsageRecord r;
  r.request_id = id;
  r.billing_id = id;
  r.principal.user_id = std::to_string(kUser);
  r.principal.api_key_id = "7";
  r.hold_id = held.hold_id;
  r.model = "m";
  r.prompt_tokens = 80;
  r.completion_tokens = 50;
  r.http_status = 200;
  client.Record(std::move(r));
}

// Threads per edge spend until each has been refused many times in a row; returns what each
// edge admitted (every admitted request is recorded at its cost).
std::vector<int64_t> Spend(std::vector<GrpcBillingClient*> edges, std::vector<int> threads,
                           const std::string& prefix) {
  std::vector<std::atomic<int64_t>> admitted(edges.size());
  std::vector<std::thread> pool;
  std::atomic<int> next{0};
  for (size_t e = 0; e < edges.size(); ++e)
    for (int t = 0; t < threads[e]; ++t)
      pool.emplace_back([&, e] {
        int refused_in_a_row = 0;
        while (refused_in_a_row < 40) {
          const std::string id = prefix + std::to_string(next++);
          HoldResult held = HoldNow(*edges[e], id);
          if (held.failure) {
            ++refused_in_a_row;
            // Budgets idle elsewhere go back within 100 ms: the last money is found.
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
            continue;
          }
          refused_in_a_row = 0;
          ++admitted[e];
          RecordOf(*edges[e], id, held);
        }
      });
  for (auto& t : pool) t.join();
  std::vector<int64_t> out;
  for (auto& a : admitted) out.push_back(a.load());
  return out;
}

// Two edges, traffic 5:1, spend a small prepaid balance: never overdrawn, nearly all of it spent,
// most requests held from budgets, and every record charged exactly once.
TEST(BillingBudgetTest, UnevenTrafficOverTwoEdgesSpendsASmallBalanceAndNeverOverdraws) {
  constexpr int64_t kTopUp = 1'000'000;  // about 5500 requests
  TestDatabase db;
  BillingProcess billing(db.dsn(), "127.0.0.1:0",
                         {{"TOLLGATE_BILLING__BUDGET_MIN_HEADROOM", "20000"}});
  billing.Setup(kTopUp);
  // A new billing process grants no budget for budget_ttl (1 s) after start.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  TempDir s1, s2;
  std::vector<int64_t> admitted;
  int64_t from_budgets = 0, sent = 0;
  {
    GrpcBillingClient e1(Options(billing.target(), s1.path()));
    GrpcBillingClient e2(Options(billing.target(), s2.path()));
    admitted = Spend({&e1, &e2}, {5, 1}, "uneven-");
    from_budgets = e1.held_from_budgets() + e2.held_from_budgets();
    sent = e1.holds_sent() + e2.holds_sent();
  }  // shut down: records delivered, budgets returned
  const int64_t total = admitted[0] + admitted[1];
  EXPECT_GT(admitted[0], 0);
  EXPECT_GT(admitted[1], 0);
  EXPECT_LE(total * kCost, kTopUp) << "never more than the user has";
  pb::Account a = billing.Settled(kTopUp, total * kCost);
  EXPECT_EQ(a.balance_micros(), kTopUp - total * kCost) << "every record charged once";
  EXPECT_EQ(a.held_micros(), 0);
  EXPECT_GE(a.balance_micros(), 0);
  // Nearly all spent: the last holds were decided by billing one at a time, so what is left is
  // less than one request's worst case.
  EXPECT_LT(a.balance_micros(), kWorst);
  EXPECT_GT(from_budgets, total / 2) << "most requests held from budgets (" << from_budgets
                                     << " of " << total << ", " << sent << " Hold calls)";
}

// An edge dies (no return, nothing more delivered) holding a budget and requests in flight: the
// budget keeps counting until it expires (so another edge never spends the same money), the
// records in its spool are charged once when it starts again, and afterwards nothing is held.
TEST(BillingBudgetTest, AnEdgeKilledHoldingBudgetsChargesItsSpoolOnceAndItsBudgetsExpire) {
  constexpr int64_t kTopUp = 1'000'000;
  TestDatabase db;
  BillingProcess billing(db.dsn(), "127.0.0.1:0",
                         {{"TOLLGATE_BILLING__BUDGET_MIN_HEADROOM", "20000"},
                          {"TOLLGATE_BILLING__HOLD_TTL", "2s"},
                          {"TOLLGATE_BILLING__BUDGET_TTL", "1s"}});
  billing.Setup(kTopUp);
  TempDir spool, other;
  int64_t recorded = 0;
  {
    GrpcBillingClient dying(Options(billing.target(), spool.path()));
    for (int i = 0; i < 3000 && dying.held_from_budgets() < 200; ++i) {
      const std::string id = "dying-" + std::to_string(i);
      HoldResult held = HoldNow(dying, id);
      ASSERT_FALSE(held.failure);
      RecordOf(dying, id, held);
      ++recorded;
      if (dying.held_from_budgets() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ASSERT_GE(dying.held_from_budgets(), 200);
    // Requests still running when it dies: held from the budget, never recorded.
    for (int i = 0; i < 5; ++i) ASSERT_FALSE(HoldNow(dying, "lost-" + std::to_string(i)).failure);
    ASSERT_EQ(dying.live_budgets(), 1u);
    // Every record written to the spool (fsynced) before the crash.
    for (int i = 0; i < 500 && dying.delivered() + static_cast<int64_t>(dying.spooled()) < recorded;
         ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_EQ(dying.delivered() + static_cast<int64_t>(dying.spooled()), recorded);
    dying.SimulateCrashForTest();
  }
  // Its budget still counts: billing holds more than the records on their way can cost.
  pb::Account during = billing.Balance();
  EXPECT_GT(during.held_micros(), 0);
  EXPECT_GE(during.balance_micros() - during.held_micros(), 0);
  int64_t survivor = 0;
  {
    GrpcBillingClient e(Options(billing.target(), other.path()));
    for (int i = 0; i < 300; ++i) {
      const std::string id = "survivor-" + std::to_string(i);
      HoldResult held = HoldNow(e, id);
      if (held.failure) continue;
      RecordOf(e, id, held);
      ++survivor;
    }
  }
  {
    // The edge starts again on its spool: what the crash left there is delivered (records of it
    // billing already stored come again and change nothing).
    GrpcBillingClient restarted(Options(billing.target(), spool.path()));
    for (int i = 0; i < 400 && restarted.spooled() > 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    EXPECT_EQ(restarted.spooled(), 0u);
  }
  // After budget_ttl + hold_ttl the dead edge's budget has expired: nothing held, and the balance
  // is exactly top-up minus each record once (the lost requests were never recorded).
  pb::Account a = billing.Settled(kTopUp, (recorded + survivor) * kCost);
  EXPECT_EQ(a.held_micros(), 0);
  EXPECT_EQ(a.balance_micros(), kTopUp - (recorded + survivor) * kCost);
  EXPECT_EQ(a.total_cost_micros(), (recorded + survivor) * kCost);
}

// Billing restarts (SIGKILL) while an edge holds a budget: the edge drops it (the call fails or
// the incarnation changes), the new process grants nothing for budget_ttl, budgets come back,
// and every record, before and after, is charged exactly once.
TEST(BillingBudgetTest, ABillingRestartedWhileAnEdgeHoldsBudgetsChargesEverythingOnce) {
  constexpr int64_t kTopUp = 1'000'000;
  TestDatabase db;
  Config::Environment env = {{"TOLLGATE_BILLING__BUDGET_MIN_HEADROOM", "20000"},
                             {"TOLLGATE_BILLING__BUDGET_TTL", "1s"}};
  auto billing = std::make_unique<BillingProcess>(db.dsn(), "127.0.0.1:0", env);
  const std::string target = billing->target();
  billing->Setup(kTopUp);
  TempDir spool;
  GrpcBillingClient edge(Options(target, spool.path()));
  int64_t admitted = 0;
  auto run = [&](const std::string& prefix, int n) {
    for (int i = 0; i < n; ++i) {
      const std::string id = prefix + std::to_string(i);
      HoldResult held = HoldNow(edge, id);
      if (held.failure) continue;  // 503 while billing is away
      RecordOf(edge, id, held);
      ++admitted;
      if (edge.held_from_budgets() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  run("before-", 300);
  ASSERT_GT(edge.held_from_budgets(), 100);
  ASSERT_EQ(edge.live_budgets(), 1u);
  billing->Kill();
  for (int i = 0; i < 200 && edge.live_budgets() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(edge.live_budgets(), 0u) << "budgets of an unreachable billing are not spent";
  const int64_t from_budgets_before = edge.held_from_budgets();
  run("away-", 20);  // refused: nobody can hold
  billing = std::make_unique<BillingProcess>(db.dsn(), target, env);
  run("after-", 300);
  // Budgets again once the new process's quiet second is over (asked for every 100 ms; the
  // edge's channel may still be backing off from the outage).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  for (int i = 0; edge.held_from_budgets() == from_budgets_before &&
                  std::chrono::steady_clock::now() < deadline;
       ++i) {
    run("later-" + std::to_string(i) + "-", 10);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GT(edge.held_from_budgets(), from_budgets_before) << "budgets again";
  for (int i = 0; i < 400 && edge.spooled() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  pb::Account a = billing->Settled(kTopUp, admitted * kCost);
  EXPECT_EQ(a.balance_micros(), kTopUp - admitted * kCost);
  EXPECT_EQ(a.total_cost_micros(), admitted * kCost);
}

}  // namespace
}  // namespace tollgate::billing
