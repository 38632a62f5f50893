// The edge's GrpcQuotaClient against two real quota processes (two databases): subject sharding,
// exactness across replicas and edges, release of granted parts, settlement, fail closed/open.
#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>

#include <signal.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include "src/grpc_quota_client.h"
#include "test/child_process.h"
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
using edge::AdmitRequest;
using edge::AdmitResult;
using edge::GrpcQuotaClient;
using edge::GrpcQuotaClientOptions;
using edge::QuotaOwner;
using testing::TestDatabase;
using ::tollgate::testing::ChildProcess;

constexpr char kToken[] = "test-admin-token-0123456789";
// The edge's service token, shared with the `tollgate --target=quota` children (grpc_test.cpp,
// in the same binary, configures the same one).
constexpr char kEdgeToken[] = "test-edge-token-0123456789";
const bool kEdgeTokenSet = (ConfigureServiceToken(kEdgeToken), true);

class Replica {
 public:
  explicit Replica(Config::Environment extra) {
    Config::Environment env = {{"TOLLGATE_QUOTA__DATABASE__DSN", db_.dsn()},
                               {"TOLLGATE_QUOTA__GRPC_LISTEN", "127.0.0.1:0"},
                               {"TOLLGATE_QUOTA__WORKERS", "4"},
                               {"TOLLGATE_QUOTA__DATABASE__POOL_SIZE", "4"},
                               {"TOLLGATE_ADMIN__TOKEN", kToken}};
    for (auto& [k, v] : extra) env[k] = v;
    config_ = Config::Load("", env);
    module_ = MakeQuotaModule({config_, metrics_});
    module_->Start();
    admin_ = pb::QuotaAdminService::NewStub(MakeChannel(target()));
  }
  ~Replica() {
    module_->BeginShutdown();
    module_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
  std::string target() {
    return "127.0.0.1:" + std::to_string(dynamic_cast<DbServiceModule&>(*module_).grpc_port());
  }
  pb::GetUsageResponse Usage(pb::SubjectKind kind, const std::string& subject) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, std::chrono::seconds(5));
    ctx.AddMetadata("authorization", std::string("Bearer ") + kToken);
    pb::GetUsageRequest req;
    req.set_subject_kind(kind);
    req.set_subject(subject);
    pb::GetUsageResponse resp;
    EXPECT_TRUE(admin_->GetUsage(&ctx, req, &resp).ok());
    return resp;
  }

 private:
  TestDatabase db_;
  Metrics metrics_{"127.0.0.1:0"};
  Config config_;
  std::unique_ptr<Module> module_;
  std::unique_ptr<pb::QuotaAdminService::Stub> admin_;
};

// The same replica as a separate `tollgate --target=quota` process: exactness must not depend on
// sharing an address space.
class ReplicaProcess {
 public:
  explicit ReplicaProcess(Config::Environment extra) {
    Config::Environment env = {{"TOLLGATE_QUOTA__DATABASE__DSN", db_.dsn()},
                               {"TOLLGATE_QUOTA__GRPC_LISTEN", "127.0.0.1:0"},
                               {"TOLLGATE_METRICS__LISTEN", "127.0.0.1:0"},
                               {"TOLLGATE_ADMIN__TOKEN", kToken},
                               {"TOLLGATE_GRPC__SERVICE_TOKENS__EDGE", kEdgeToken}};
    for (auto& [k, v] : extra) env[k] = v;
    process_ = std::make_unique<ChildProcess>(
        std::vector<std::string>{TOLLGATE_BIN_PATH, "--target=quota"},
        ChildProcess::Options{env, ChildProcess::Capture::kStderr});
    auto serving = process_->WaitForLog(
        [](const nlohmann::json& j) { return j.value("msg", "") == "serving gRPC"; });
    if (!serving.is_null()) target_ = serving["listen"];
    if (target_.empty()) throw std::runtime_error("the quota process did not start");
    admin_ = pb::QuotaAdminService::NewStub(MakeChannel(target_));
  }
  ~ReplicaProcess() {
    int code = process_->Stop(SIGTERM);
    EXPECT_EQ(code, 0) << "quota process exit " << code;
  }
  std::string target() const { return target_; }
  pb::GetUsageResponse Usage(pb::SubjectKind kind, const std::string& subject) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, std::chrono::seconds(5));
    ctx.AddMetadata("authorization", std::string("Bearer ") + kToken);
    pb::GetUsageRequest req;
    req.set_subject_kind(kind);
    req.set_subject(subject);
    pb::GetUsageResponse resp;
    EXPECT_TRUE(admin_->GetUsage(&ctx, req, &resp).ok());
    return resp;
  }

 private:
  TestDatabase db_;
  std::unique_ptr<ChildProcess> process_;
  std::string target_;
  std::unique_ptr<pb::QuotaAdminService::Stub> admin_;
};

AdmitResult AdmitNow(GrpcQuotaClient& client, AdmitRequest request) {
  std::promise<AdmitResult> p;
  auto f = p.get_future();
  client.Admit(std::move(request), [&p](AdmitResult r) { p.set_value(std::move(r)); });
  return f.get();
}

AdmitRequest Request(const std::string& id, const std::string& key, const std::string& user,
                     const std::string& ip, int64_t tokens = 10) {
  AdmitRequest r;
  r.request_id = id;
  r.principal.api_key_id = key;
  r.principal.user_id = user;
  r.client_ip = ip;
  r.model = "gpt-4o-mini";
  r.estimated_tokens = tokens;
  return r;
}

// A subject name of `kind` owned by replica `owner` of 2.
std::string OwnedBy(const char* kind, size_t owner, const std::string& prefix) {
  for (int i = 0;; ++i) {
    std::string s = prefix + std::to_string(i);
    if (QuotaOwner(kind, s, 2) == owner) return s;
  }
}

GrpcQuotaClientOptions Options(std::vector<std::string> targets) {
  GrpcQuotaClientOptions o;
  o.targets = std::move(targets);
  o.timeout = std::chrono::seconds(2);
  o.flush_interval = std::chrono::milliseconds(10);
  return o;
}

TEST(QuotaOwnerTest, StableAndSpread) {
  EXPECT_EQ(QuotaOwner("key", "anything", 1), 0u);
  EXPECT_EQ(QuotaOwner("key", "k-1", 3), QuotaOwner("key", "k-1", 3));
  int counts[3] = {0, 0, 0};
  for (int i = 0; i < 3000; ++i) ++counts[QuotaOwner("key", "k-" + std::to_string(i), 3)];
  for (int c : counts) EXPECT_GT(c, 800);
}

// A burst of 10 x RPM from two edges over two replicas admits exactly RPM.
template <typename ReplicaT>
void ExpectExactAcrossTwoReplicas() {
  constexpr int kRpm = 20;
  Config::Environment env = {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", std::to_string(kRpm)}};
  ReplicaT a(env), b(env);
  // Two edges, each with its own channels to both replicas.
  GrpcQuotaClient edge1(Options({a.target(), b.target()}));
  GrpcQuotaClient edge2(Options({a.target(), b.target()}));
  // The key lives on one replica, the user and IP on the other: every Admit spans both.
  const std::string key = OwnedBy("key", 0, "key-");
  const std::string user = OwnedBy("user", 1, "user-");
  const std::string ip = OwnedBy("ip", 1, "10.0.0.");

  std::atomic<int> allowed{0}, limited{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 20; ++t) {
    threads.emplace_back([&, t] {
      GrpcQuotaClient& edge = t % 2 ? edge2 : edge1;
      for (int i = 0; i < 10 * kRpm / 20; ++i) {
        auto r = AdmitNow(
            edge, Request("b-" + std::to_string(t) + "-" + std::to_string(i), key, user, ip));
        if (!r.failure) {
          ++allowed;
          EXPECT_NE(r.reservation_id.find(','), std::string::npos) << "one part per replica";
        } else if (r.failure->code == ErrorCode::kRateLimited) {
          ++limited;
          EXPECT_GT(r.failure->retry_after_ms, 0);
          EXPECT_EQ(r.requests.limit, kRpm);
          EXPECT_EQ(r.requests.remaining, 0);
        } else {
          ++other;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_EQ(allowed.load(), kRpm);
  EXPECT_EQ(limited.load(), 9 * kRpm);
  EXPECT_EQ(a.Usage(pb::SUBJECT_KIND_KEY, key).window_requests(), kRpm);
  EXPECT_EQ(b.Usage(pb::SUBJECT_KIND_IP, ip).window_requests(), kRpm);
}

TEST(GrpcQuotaClientTest, TwoReplicasAndTwoEdgesAdmitExactlyRpm) {
  ExpectExactAcrossTwoReplicas<Replica>();
}

TEST(GrpcQuotaClientTest, TwoQuotaProcessesAndTwoEdgesAdmitExactlyRpm) {
  ExpectExactAcrossTwoReplicas<ReplicaProcess>();
}

TEST(GrpcQuotaClientTest, ADenialOnOneReplicaReleasesTheGrantedPartOnTheOther) {
  Config::Environment env = {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", "100"},
                             {"TOLLGATE_QUOTA__DEFAULT_IP_RPM", "1"}};
  Replica a(env), b(env);
  GrpcQuotaClient edge(Options({a.target(), b.target()}));
  const std::string key = OwnedBy("key", 0, "key-");
  const std::string ip = OwnedBy("ip", 1, "10.0.0.");
  auto first = AdmitNow(edge, Request("d-1", key, "", ip));
  ASSERT_FALSE(first.failure);
  // The tightest requests window is the IP's (1), on the other replica.
  EXPECT_EQ(first.requests.limit, 1);
  EXPECT_EQ(first.requests.remaining, 0);
  auto second = AdmitNow(edge, Request("d-2", key, "", ip));
  ASSERT_TRUE(second.failure);
  EXPECT_EQ(second.failure->code, ErrorCode::kRateLimited);
  // The key's part of d-2 was granted on replica a, then released.
  for (int i = 0; i < 100 && a.Usage(pb::SUBJECT_KIND_KEY, key).window_requests() != 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(a.Usage(pb::SUBJECT_KIND_KEY, key).window_requests(), 1);
  // Release of the whole composite reservation frees both parts.
  edge.Release(first.reservation_id);
  for (int i = 0; i < 100 && b.Usage(pb::SUBJECT_KIND_IP, ip).window_requests() != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(AdmitNow(edge, Request("d-3", key, "", ip)).failure);
}

TEST(GrpcQuotaClientTest, SettleFromTheUsageRecordReachesEachOwner) {
  Config::Environment env = {{"TOLLGATE_QUOTA__DEFAULT_USER_MONTHLY_TOKENS", "1000"}};
  Replica a(env), b(env);
  GrpcQuotaClient edge(Options({a.target(), b.target()}));
  const std::string key = OwnedBy("key", 0, "key-");
  const std::string user = OwnedBy("user", 1, "user-");
  auto r = AdmitNow(edge, Request("s-1", key, user, "", 500));
  ASSERT_FALSE(r.failure);
  edge::UsageRecord record;
  record.request_id = "s-1";
  record.principal.api_key_id = key;
  record.principal.user_id = user;
  record.reservation_id = r.reservation_id;
  record.prompt_tokens = 120;
  record.completion_tokens = 80;
  edge.Settle(record);
  edge.Settle(record);  // a duplicate is harmless
  for (int i = 0; i < 200 && edge.settlements_sent() < 4; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(edge.settlements_sent(), 4);
  EXPECT_EQ(a.Usage(pb::SUBJECT_KIND_KEY, key).monthly_tokens(), 200);
  EXPECT_EQ(b.Usage(pb::SUBJECT_KIND_USER, user).monthly_tokens(), 200);
  EXPECT_EQ(b.Usage(pb::SUBJECT_KIND_USER, user).reserved_tokens(), 0);
  // 800 left: an estimate of 801 is refused as an exhausted quota.
  auto over = AdmitNow(edge, Request("s-2", key, user, "", 801));
  ASSERT_TRUE(over.failure);
  EXPECT_EQ(over.failure->code, ErrorCode::kInsufficientQuota);
  EXPECT_GT(over.failure->retry_after_ms, 0);
}

TEST(GrpcQuotaClientTest, UnreachableReplicaFailsClosedByDefaultOrOpenWhenConfigured) {
  Replica a(Config::Environment{{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", "100"}});
  // Replica 1 is a port nobody listens on.
  auto targets = std::vector<std::string>{a.target(), "127.0.0.1:1"};
  const std::string key = OwnedBy("key", 0, "key-");
  const std::string ip = OwnedBy("ip", 1, "10.0.0.");
  {
    GrpcQuotaClient closed(Options(targets));
    auto r = AdmitNow(closed, Request("u-1", key, "", ip));
    ASSERT_TRUE(r.failure);
    EXPECT_EQ(r.failure->code, ErrorCode::kServiceUnavailable);
    EXPECT_EQ(closed.unavailable(), 1);
    // The key's part granted on the live replica was given back.
    for (int i = 0; i < 100 && a.Usage(pb::SUBJECT_KIND_KEY, key).window_requests() != 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    EXPECT_EQ(a.Usage(pb::SUBJECT_KIND_KEY, key).window_requests(), 0);
  }
  {
    auto o = Options(targets);
    o.fail_open = true;
    GrpcQuotaClient open(o);
    auto r = AdmitNow(open, Request("u-2", key, "", ip));
    ASSERT_FALSE(r.failure);
    EXPECT_EQ(open.unavailable(), 1);
    EXPECT_EQ(r.reservation_id.substr(0, 2), "0:");  // only the reachable part
    EXPECT_EQ(r.requests.limit, 100);
  }
}

// A quota server on a given database and address: a replica that restarts in place.
class QuotaServer {
 public:
  QuotaServer(const std::string& dsn, const std::string& listen) {
    config_ = Config::Load("", {{"TOLLGATE_QUOTA__DATABASE__DSN", dsn},
                                {"TOLLGATE_QUOTA__GRPC_LISTEN", listen},
                                {"TOLLGATE_QUOTA__WORKERS", "2"},
                                {"TOLLGATE_QUOTA__DATABASE__POOL_SIZE", "2"},
                                {"TOLLGATE_ADMIN__TOKEN", kToken}});
    module_ = MakeQuotaModule({config_, metrics_});
    module_->Start();
  }
  ~QuotaServer() {
    module_->BeginShutdown();
    module_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
  int port() { return dynamic_cast<DbServiceModule&>(*module_).grpc_port(); }

 private:
  Metrics metrics_{"127.0.0.1:0"};
  Config config_;
  std::unique_ptr<Module> module_;
};

TEST(GrpcQuotaClientTest, SettlementsAreRetriedUntilTheReplicaIsBack) {
  TestDatabase db;
  auto server = std::make_unique<QuotaServer>(db.dsn(), "127.0.0.1:0");
  const std::string target = "127.0.0.1:" + std::to_string(server->port());
  GrpcQuotaClient edge(Options({target}));
  auto r = AdmitNow(edge, Request("t-1", "key-t", "user-t", "", 100));
  ASSERT_FALSE(r.failure);
  server.reset();  // the replica goes away with the reservation in its memory

  edge::UsageRecord record;
  record.request_id = "t-1";
  record.principal.api_key_id = "key-t";
  record.principal.user_id = "user-t";
  record.reservation_id = r.reservation_id;
  record.prompt_tokens = 30;
  record.completion_tokens = 12;
  edge.Settle(record);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(edge.settlements_sent(), 0);

  // Back on the same address and database: the queued settlement gets through, and charges the
  // subjects it names even though the new process never saw the reservation.
  server = std::make_unique<QuotaServer>(db.dsn(), target);
  for (int i = 0; i < 1000 && edge.settlements_sent() < 1; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(edge.settlements_sent(), 1);
  EXPECT_EQ(edge.settlements_dropped(), 0);
  auto admin = pb::QuotaAdminService::NewStub(MakeChannel(target));
  for (auto [kind, subject] :
       {std::pair{pb::SUBJECT_KIND_KEY, "key-t"}, std::pair{pb::SUBJECT_KIND_USER, "user-t"}}) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, std::chrono::seconds(5));
    ctx.AddMetadata("authorization", std::string("Bearer ") + kToken);
    pb::GetUsageRequest req;
    req.set_subject_kind(kind);
    req.set_subject(subject);
    pb::GetUsageResponse resp;
    ASSERT_TRUE(admin->GetUsage(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.monthly_tokens(), 42) << subject;
  }
}

}  // namespace
}  // namespace tollgate::quota
