// The quota module in-process: its real gRPC server on 127.0.0.1:0, real channels, a real
// throwaway PostgreSQL database. The exactness claims under concurrency and across a restart.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <pqxx/pqxx>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>

#include "test/pg_fixture.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/grpc_server.h"
#include "tollgate/metrics.h"
#include "tollgate/quota/module.h"
#include "tollgate/quota/v1/quota.grpc.pb.h"

namespace tollgate::quota {
namespace {

namespace pb = ::tollgate::quota::v1;
using testing::TestDatabase;

constexpr char kToken[] = "test-admin-token-0123456789";
// The edge's service token: this test process calls the data path as the edge.
constexpr char kEdgeToken[] = "test-edge-token-0123456789";
const bool kEdgeTokenSet = (ConfigureServiceToken(kEdgeToken), true);

class QuotaProcess {
 public:
  QuotaProcess(const std::string& dsn, Config::Environment extra = {}) {
    Config::Environment env = {{"TOLLGATE_QUOTA__DATABASE__DSN", dsn},
                               {"TOLLGATE_QUOTA__GRPC_LISTEN", "127.0.0.1:0"},
                               {"TOLLGATE_QUOTA__WORKERS", "4"},
                               {"TOLLGATE_QUOTA__DATABASE__POOL_SIZE", "4"},
                               {"TOLLGATE_ADMIN__TOKEN", kToken}};
    for (auto& [k, v] : extra) env[k] = v;
    config_ = Config::Load("", env);
    module_ = MakeQuotaModule({config_, metrics_});
  }
  ~QuotaProcess() { Stop(); }
  void Start() { module_->Start(); }
  void Stop() {
    if (stopped_) return;
    stopped_ = true;
    module_->BeginShutdown();
    module_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
  int port() { return dynamic_cast<DbServiceModule&>(*module_).grpc_port(); }
  std::string MetricsText() {
    return prometheus::TextSerializer().Serialize(metrics_.registry().Collect());
  }

 private:
  Metrics metrics_{"127.0.0.1:0"};
  Config config_;
  std::unique_ptr<Module> module_;
  bool stopped_ = false;
};

// A distinct channel (its own connection) per call site: what two edge processes look like.
std::shared_ptr<grpc::Channel> Channel(int port, int id) {
  grpc::ChannelArguments args;
  args.SetInt("tollgate.test.channel_id", id);  // no subchannel sharing between the two
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials(), args);
}

enum class As { kNobody, kEdge, kAdmin };

std::unique_ptr<grpc::ClientContext> Ctx(As as) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  SetDeadline(*ctx, std::chrono::seconds(10));
  if (as != As::kNobody)
    ctx->AddMetadata("authorization",
                     std::string("Bearer ") + (as == As::kAdmin ? kToken : kEdgeToken));
  return ctx;
}

std::unique_ptr<grpc::ClientContext> Ctx(bool admin = false) {
  return Ctx(admin ? As::kAdmin : As::kEdge);
}

pb::AdmitRequest AdmitFor(const std::string& request_id, const std::string& key, int64_t tokens,
                          const std::string& user = "") {
  pb::AdmitRequest r;
  r.set_request_id(request_id);
  r.set_api_key_id(key);
  r.set_user_id(user);
  r.set_model("gpt-4o-mini");
  r.set_estimated_tokens(tokens);
  return r;
}

pb::GetUsageResponse Usage(pb::QuotaAdminService::Stub& admin, pb::SubjectKind kind,
                           const std::string& subject) {
  pb::GetUsageRequest req;
  req.set_subject_kind(kind);
  req.set_subject(subject);
  pb::GetUsageResponse resp;
  auto ctx = Ctx(true);
  grpc::Status s = admin.GetUsage(ctx.get(), req, &resp);
  EXPECT_TRUE(s.ok()) << s.error_message();
  return resp;
}

TEST(QuotaGrpcTest, BurstOfTenTimesRpmFromTwoChannelsAdmitsExactlyRpm) {
  constexpr int kRpm = 25;
  TestDatabase db;
  QuotaProcess process(db.dsn(), {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", std::to_string(kRpm)}});
  process.Start();
  std::unique_ptr<pb::QuotaService::Stub> stubs[2] = {
      pb::QuotaService::NewStub(Channel(process.port(), 1)),
      pb::QuotaService::NewStub(Channel(process.port(), 2))};

  std::atomic<int> allowed{0}, denied{0}, failed{0};
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  constexpr int kThreads = 25;  // 10 * kRpm requests in all, 10 per thread
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go) std::this_thread::yield();
      for (int i = 0; i < 10 * kRpm / kThreads; ++i) {
        pb::AdmitResponse resp;
        auto ctx = Ctx();
        auto req = AdmitFor("burst-" + std::to_string(t) + "-" + std::to_string(i), "key-burst", 1);
        grpc::Status s = stubs[t % 2]->Admit(ctx.get(), req, &resp);
        if (!s.ok())
          ++failed;
        else if (resp.allowed())
          ++allowed;
        else {
          EXPECT_EQ(resp.error_code(), "rate_limit_exceeded");
          EXPECT_EQ(resp.denied_limit(), pb::LIMIT_KIND_RPM);
          EXPECT_GT(resp.retry_after_ms(), 0);
          EXPECT_EQ(resp.requests().limit(), kRpm);
          EXPECT_EQ(resp.requests().remaining(), 0);
          ++denied;
        }
      }
    });
  }
  go = true;
  for (auto& th : threads) th.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(allowed.load(), kRpm);
  EXPECT_EQ(denied.load(), 9 * kRpm);
  const std::string text = process.MetricsText();
  EXPECT_NE(
      text.find("tollgate_quota_admissions_total{result=\"allowed\"} " + std::to_string(kRpm)),
      std::string::npos)
      << text;
  EXPECT_NE(
      text.find("tollgate_quota_admissions_total{result=\"rpm\"} " + std::to_string(9 * kRpm)),
      std::string::npos)
      << text;
}

TEST(QuotaGrpcTest, MonthlyQuotaNeverOvershotUnderConcurrency) {
  constexpr int64_t kQuota = 20000;
  TestDatabase db;
  QuotaProcess process(db.dsn(),
                       {{"TOLLGATE_QUOTA__DEFAULT_USER_MONTHLY_TOKENS", std::to_string(kQuota)}});
  process.Start();
  std::unique_ptr<pb::QuotaService::Stub> stubs[2] = {
      pb::QuotaService::NewStub(Channel(process.port(), 1)),
      pb::QuotaService::NewStub(Channel(process.port(), 2))};

  std::atomic<int64_t> settled_sum{0};
  std::atomic<int> allowed{0}, quota_denials{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 60; ++i) {
        const int64_t estimate = 100 + static_cast<int64_t>(rng() % 400);
        const std::string id = "m-" + std::to_string(t) + "-" + std::to_string(i);
        pb::AdmitResponse resp;
        auto ctx = Ctx();
        // Several keys of one user: the user's quota is the shared one.
        ASSERT_TRUE(
            stubs[t % 2]
                ->Admit(ctx.get(), AdmitFor(id, "key-" + std::to_string(t), estimate, "u1"), &resp)
                .ok());
        if (!resp.allowed()) {
          EXPECT_EQ(resp.error_code(), "insufficient_quota");
          ++quota_denials;
          continue;
        }
        ++allowed;
        // The estimate is an upper bound: actual usage is at most the estimate.
        const int64_t actual = estimate - static_cast<int64_t>(rng() % 50);
        pb::SettleRequest settle;
        auto* s = settle.add_settlements();
        s->set_request_id(id);
        s->set_reservation_id(resp.reservation_id());
        s->set_actual_tokens(actual);
        pb::SettleResponse ack;
        auto sctx = Ctx();
        ASSERT_TRUE(stubs[t % 2]->Settle(sctx.get(), settle, &ack).ok());
        settled_sum += actual;
      }
    });
  }
  for (auto& th : threads) th.join();
  auto admin = pb::QuotaAdminService::NewStub(Channel(process.port(), 3));
  auto usage = Usage(*admin, pb::SUBJECT_KIND_USER, "u1");
  EXPECT_GT(quota_denials.load(), 0);  // the quota was reached: the test exercised it
  EXPECT_EQ(usage.monthly_tokens(), settled_sum.load());
  EXPECT_LE(usage.monthly_tokens(), kQuota);
  EXPECT_GT(usage.monthly_tokens(), kQuota - 500);  // and not wildly under-admitted
  EXPECT_EQ(usage.reserved_tokens(), 0);
}

TEST(QuotaGrpcTest, RestartMidLoadKeepsEverySettledToken) {
  TestDatabase db;
  auto first = std::make_unique<QuotaProcess>(db.dsn());
  first->Start();
  auto channel = Channel(first->port(), 1);
  auto stub = pb::QuotaService::NewStub(channel);

  std::mutex mu;
  std::vector<pb::Settlement> unacked;  // the edge keeps these and retries them
  int64_t total = 0;                    // every settlement the edge ever made
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        const std::string id = "r-" + std::to_string(t) + "-" + std::to_string(i);
        pb::AdmitResponse resp;
        auto ctx = Ctx();
        if (!stub->Admit(ctx.get(), AdmitFor(id, "key-r", 50, "u-r"), &resp).ok()) break;
        pb::SettleRequest settle;
        auto* s = settle.add_settlements();
        s->set_request_id(id);
        s->set_reservation_id(resp.reservation_id());
        s->set_actual_tokens(10 + i % 7);
        s->set_api_key_id("key-r");
        s->set_user_id("u-r");
        pb::SettleResponse ack;
        auto sctx = Ctx();
        grpc::Status st = stub->Settle(sctx.get(), settle, &ack);
        std::lock_guard lock(mu);
        total += s->actual_tokens();
        if (!st.ok()) {
          unacked.push_back(*s);
          break;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  first->Stop();  // mid-load
  stop = true;
  for (auto& th : threads) th.join();
  first.reset();
  ASSERT_GT(total, 0);

  QuotaProcess second(db.dsn());
  second.Start();
  auto stub2 = pb::QuotaService::NewStub(Channel(second.port(), 2));
  auto admin = pb::QuotaAdminService::NewStub(Channel(second.port(), 3));
  // The unacknowledged ones are retried against the new process (idempotent: some may have
  // been committed already).
  if (!unacked.empty()) {
    pb::SettleRequest retry;
    for (const auto& s : unacked) *retry.add_settlements() = s;
    pb::SettleResponse ack;
    auto ctx = Ctx();
    ASSERT_TRUE(stub2->Settle(ctx.get(), retry, &ack).ok());
    auto ctx2 = Ctx();
    ASSERT_TRUE(stub2->Settle(ctx2.get(), retry, &ack).ok());
  }
  EXPECT_EQ(Usage(*admin, pb::SUBJECT_KIND_KEY, "key-r").monthly_tokens(), total);
  EXPECT_EQ(Usage(*admin, pb::SUBJECT_KIND_USER, "u-r").monthly_tokens(), total);
  EXPECT_EQ(Usage(*admin, pb::SUBJECT_KIND_USER, "u-r").daily_tokens(), total);
}

TEST(QuotaGrpcTest, AdminPoliciesOverrideDefaultsAndNeedTheToken) {
  TestDatabase db;
  QuotaProcess process(db.dsn(), {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", "100"}});
  process.Start();
  auto channel = Channel(process.port(), 1);
  auto admin = pb::QuotaAdminService::NewStub(channel);
  auto quota = pb::QuotaService::NewStub(channel);

  pb::SetPolicyRequest set;
  set.set_subject_kind(pb::SUBJECT_KIND_KEY);
  set.set_subject("key-p");
  set.set_rpm(1);
  pb::SetPolicyResponse set_resp;
  {
    auto ctx = Ctx(As::kNobody);
    EXPECT_EQ(admin->SetPolicy(ctx.get(), set, &set_resp).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    auto ctx = Ctx(As::kEdge);
    EXPECT_EQ(admin->SetPolicy(ctx.get(), set, &set_resp).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    auto ctx = Ctx(true);
    ASSERT_TRUE(admin->SetPolicy(ctx.get(), set, &set_resp).ok());
  }
  EXPECT_EQ(set_resp.policy().rpm(), 1);
  EXPECT_TRUE(set_resp.policy().overridden());

  pb::AdmitResponse resp;
  {
    auto ctx = Ctx();
    ASSERT_TRUE(quota->Admit(ctx.get(), AdmitFor("p-1", "key-p", 1), &resp).ok());
    EXPECT_TRUE(resp.allowed());
  }
  {
    auto ctx = Ctx();
    ASSERT_TRUE(quota->Admit(ctx.get(), AdmitFor("p-2", "key-p", 1), &resp).ok());
    EXPECT_FALSE(resp.allowed());
  }
  {
    pb::DeletePolicyRequest del;
    del.set_subject_kind(pb::SUBJECT_KIND_KEY);
    del.set_subject("key-p");
    pb::DeletePolicyResponse del_resp;
    auto actx = Ctx(true);
    ASSERT_TRUE(admin->DeletePolicy(actx.get(), del, &del_resp).ok());
    auto actx2 = Ctx(true);
    EXPECT_EQ(admin->DeletePolicy(actx2.get(), del, &del_resp).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  pb::GetPolicyRequest get;
  get.set_subject_kind(pb::SUBJECT_KIND_KEY);
  get.set_subject("key-p");
  pb::GetPolicyResponse get_resp;
  auto gctx = Ctx(true);
  ASSERT_TRUE(admin->GetPolicy(gctx.get(), get, &get_resp).ok());
  EXPECT_EQ(get_resp.policy().rpm(), 100);
  EXPECT_FALSE(get_resp.policy().overridden());

  set.clear_rpm();
  set.set_subject_kind(pb::SUBJECT_KIND_USER);
  set.set_rpm(5);
  auto bctx = Ctx(true);
  EXPECT_EQ(admin->SetPolicy(bctx.get(), set, &set_resp).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // The audit log: the set and the delete that happened, nothing for the refused calls
  // (no token, a delete of nothing, a bad policy); append-only in the database.
  pb::ListAuditLogRequest lr;
  pb::ListAuditLogResponse log;
  auto nctx = Ctx(As::kNobody);
  EXPECT_EQ(admin->ListAuditLog(nctx.get(), lr, &log).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto lctx = Ctx(true);
  ASSERT_TRUE(admin->ListAuditLog(lctx.get(), lr, &log).ok());
  ASSERT_EQ(log.entries_size(), 2) << log.DebugString();
  EXPECT_EQ(log.entries(0).action(), "delete_policy");
  EXPECT_EQ(log.entries(0).target(), "policy:key:key-p");
  EXPECT_EQ(log.entries(1).action(), "set_policy");
  EXPECT_EQ(log.entries(1).target(), "policy:key:key-p");
  EXPECT_NE(log.entries(1).details().find("\"rpm\""), std::string::npos)
      << log.entries(1).details();
  EXPECT_EQ(log.entries(1).actor().rfind("admin (", 0), 0u) << log.entries(1).actor();
  EXPECT_GT(log.entries(1).at_ms(), 0);

  auto actor_ctx = Ctx(true);
  actor_ctx->AddMetadata("x-tollgate-actor", "carol@ops");
  set.set_subject_kind(pb::SUBJECT_KIND_KEY);
  ASSERT_TRUE(admin->SetPolicy(actor_ctx.get(), set, &set_resp).ok());
  auto l2ctx = Ctx(true);
  lr.set_limit(1);
  ASSERT_TRUE(admin->ListAuditLog(l2ctx.get(), lr, &log).ok());
  ASSERT_EQ(log.entries_size(), 1);
  EXPECT_EQ(log.entries(0).actor().rfind("carol@ops (", 0), 0u) << log.entries(0).actor();

  pqxx::connection conn(db.dsn());
  for (const char* sql :
       {"UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log", "TRUNCATE audit_log"}) {
    pqxx::work tx(conn);
    EXPECT_THROW(tx.exec(sql), pqxx::sql_error) << sql;
  }
  pqxx::work tx(conn);
  EXPECT_EQ(tx.exec("SELECT count(*) FROM audit_log WHERE actor <> 'mallory'")[0][0].as<int>(), 3);
}

TEST(QuotaGrpcTest, ReleaseOverGrpcRestoresHeadroom) {
  TestDatabase db;
  QuotaProcess process(db.dsn(), {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", "1"}});
  process.Start();
  auto quota = pb::QuotaService::NewStub(Channel(process.port(), 1));
  pb::AdmitResponse resp;
  auto c1 = Ctx();
  ASSERT_TRUE(quota->Admit(c1.get(), AdmitFor("x-1", "key-x", 1), &resp).ok());
  ASSERT_TRUE(resp.allowed());
  pb::ReleaseRequest rel;
  rel.set_reservation_id(resp.reservation_id());
  pb::ReleaseResponse rel_resp;
  auto c2 = Ctx();
  ASSERT_TRUE(quota->Release(c2.get(), rel, &rel_resp).ok());
  auto c3 = Ctx();
  ASSERT_TRUE(quota->Admit(c3.get(), AdmitFor("x-2", "key-x", 1), &resp).ok());
  EXPECT_TRUE(resp.allowed());
}

}  // namespace
}  // namespace tollgate::quota
