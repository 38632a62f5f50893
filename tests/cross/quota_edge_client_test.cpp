// The edge's GrpcQuotaClient against two real quota processes (two databases): subject sharding,
// exactness across replicas and edges, release of granted parts, settlement, fail closed/open.
#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
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
  // The central path under test: a lease on the key (far from its 100) would sit in a's window
  // beside the one request, whenever the background renewal happens to ask for it.
  auto options = Options({a.target(), b.target()});
  options.leases = false;
  GrpcQuotaClient edge(options);
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
    auto o = Options(targets);
    o.leases =
        false;  // a lease on the key would stay in a's window: the central path is under test
    GrpcQuotaClient closed(o);
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

// ---- Leases (issue #13): admission from capacity granted to the edge in advance -------------

edge::UsageRecord RecordOf(const AdmitRequest& request, const AdmitResult& result, int64_t actual) {
  edge::UsageRecord record;
  record.request_id = request.request_id;
  record.principal = request.principal;
  record.client_ip = request.client_ip;
  record.reservation_id = result.reservation_id;
  record.prompt_tokens = actual / 2;
  record.completion_tokens = actual - actual / 2;
  return record;
}

// Sends requests from `threads` threads per edge until each thread has met `stop_after`
// denials in a row; returns the admitted requests per edge (settled with `actual` tokens each
// when `settle`).
std::vector<int> Flood(std::vector<GrpcQuotaClient*> edges, std::vector<int> threads_per_edge,
                       const std::string& key, const std::string& user, const std::string& ip,
                       const std::string& prefix, bool settle, int64_t actual = 60,
                       int stop_after = 20) {
  std::vector<std::atomic<int>> allowed(edges.size());
  std::atomic<int> other{0};
  std::vector<std::thread> threads;
  for (size_t e = 0; e < edges.size(); ++e)
    for (int t = 0; t < threads_per_edge[e]; ++t)
      threads.emplace_back([&, e, t] {
        int denied_in_a_row = 0;
        for (int i = 0; denied_in_a_row < stop_after; ++i) {
          auto request = Request(
              prefix + std::to_string(e) + "-" + std::to_string(t) + "-" + std::to_string(i), key,
              user, ip, 100);
          auto r = AdmitNow(*edges[e], request);
          if (r.failure) {
            if (r.failure->code != ErrorCode::kRateLimited &&
                r.failure->code != ErrorCode::kInsufficientQuota)
              ++other;
            ++denied_in_a_row;
            continue;
          }
          denied_in_a_row = 0;
          ++allowed[e];
          if (settle) edges[e]->Settle(RecordOf(request, r, actual));
        }
      });
  for (auto& th : threads) th.join();
  EXPECT_EQ(other.load(), 0);
  std::vector<int> out;
  for (auto& a : allowed) out.push_back(a.load());
  return out;
}

// Three edges, traffic split 8:3:1, two quota processes: leases are used, the RPM is never passed,
// and the replica's window holds exactly the requests admitted (unused lease capacity came back).
TEST(QuotaLeaseTest, UnevenTrafficOverThreeEdgesNeverPassesTheRpm) {
  constexpr int kRpm = 3000;
  Config::Environment env = {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", std::to_string(kRpm)}};
  ReplicaProcess a(env), b(env);
  const std::string key = OwnedBy("key", 0, "key-");
  const std::string user = OwnedBy("user", 1, "user-");
  const std::string ip = OwnedBy("ip", 1, "10.0.0.");
  int64_t from_leases = 0;
  int total = 0;
  {
    GrpcQuotaClient e1(Options({a.target(), b.target()}));
    GrpcQuotaClient e2(Options({a.target(), b.target()}));
    GrpcQuotaClient e3(Options({a.target(), b.target()}));
    auto allowed = Flood({&e1, &e2, &e3}, {8, 3, 1}, key, user, ip, "uneven-", false);
    total = allowed[0] + allowed[1] + allowed[2];
    from_leases = e1.admitted_from_leases() + e2.admitted_from_leases() + e3.admitted_from_leases();
    EXPECT_GT(allowed[0], allowed[2]);
  }  // the edges shut down: what their leases did not use goes back
  EXPECT_LE(total, kRpm);
  // Close to the limit no lease is granted: the last requests were decided one at a time.
  EXPECT_GE(total, kRpm - 64);
  EXPECT_GT(from_leases, kRpm / 2) << "most requests admitted from leases";
  EXPECT_EQ(a.Usage(pb::SUBJECT_KIND_KEY, key).window_requests(), total);
  EXPECT_EQ(b.Usage(pb::SUBJECT_KIND_IP, ip).window_requests(), total);
}

// A user's monthly quota through leases from two edges (traffic 5:1): used up, never overshot, and
// every settled token counted once.
TEST(QuotaLeaseTest, AMonthlyQuotaIsNeverOvershotThroughLeasesFromTwoEdges) {
  constexpr int64_t kQuota = 200000;  // 2000 requests of 100 tokens
  Config::Environment env = {
      {"TOLLGATE_QUOTA__DEFAULT_USER_MONTHLY_TOKENS", std::to_string(kQuota)}};
  ReplicaProcess a(env), b(env);
  const std::string key = OwnedBy("key", 0, "key-");
  const std::string user = OwnedBy("user", 1, "user-");
  const std::string ip = OwnedBy("ip", 0, "10.0.0.");
  int total = 0;
  int64_t from_leases = 0;
  {
    GrpcQuotaClient e1(Options({a.target(), b.target()}));
    GrpcQuotaClient e2(Options({a.target(), b.target()}));
    auto allowed = Flood({&e1, &e2}, {5, 1}, key, user, ip, "monthly-", true, 100);
    total = allowed[0] + allowed[1];
    from_leases = e1.admitted_from_leases() + e2.admitted_from_leases();
  }
  EXPECT_LE(total * 100, kQuota);
  EXPECT_GE(total * 100, kQuota - 100 * 64);
  EXPECT_GT(from_leases, total / 2);
  for (int i = 0;
       i < 100 && (b.Usage(pb::SUBJECT_KIND_USER, user).monthly_tokens() != 100 * total ||
                   b.Usage(pb::SUBJECT_KIND_USER, user).reserved_tokens() != 0);
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto usage = b.Usage(pb::SUBJECT_KIND_USER, user);
  EXPECT_EQ(usage.monthly_tokens(), 100 * total);
  EXPECT_EQ(usage.reserved_tokens(), 0);
  EXPECT_LE(usage.monthly_tokens(), kQuota);
}

// An edge dies holding leases: its leases keep counting until they expire (under-admission
// bounded by one lease per subject), never more is admitted than the limit, and once they expire
// nothing of them stays reserved; every settled token is counted once.
TEST(QuotaLeaseTest, AnEdgeKilledWhileHoldingLeasesLosesNothingAndCountsNothingTwice) {
  constexpr int kRpm = 3000;
  Config::Environment env = {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", std::to_string(kRpm)},
                             {"TOLLGATE_QUOTA__DEFAULT_USER_MONTHLY_TOKENS", "100000000"},
                             {"TOLLGATE_QUOTA__RESERVATION_TTL", "2s"}};
  ReplicaProcess a(env), b(env);
  const std::string key = OwnedBy("key", 0, "key-");
  const std::string user = OwnedBy("user", 1, "user-");
  const std::string ip = OwnedBy("ip", 1, "10.0.0.");

  GrpcQuotaClient dying(Options({a.target(), b.target()}));
  int dying_allowed = 0;
  for (int i = 0; i < 2000 && (dying.admitted_from_leases() < 50 || dying.live_leases() < 3); ++i) {
    auto r = AdmitNow(dying, Request("dying-" + std::to_string(i), key, user, ip, 100));
    ASSERT_FALSE(r.failure);
    ++dying_allowed;
    if (dying.admitted_from_leases() == 0)
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ASSERT_GE(dying.admitted_from_leases(), 50);
  ASSERT_EQ(dying.live_leases(), 3u);
  dying.SimulateCrashForTest();  // nothing returned, nothing settled
  // Its unused leases still count, so what it admitted is never given to another edge twice.
  EXPECT_GE(a.Usage(pb::SUBJECT_KIND_KEY, key).window_requests(), dying_allowed);
  EXPECT_GT(b.Usage(pb::SUBJECT_KIND_USER, user).reserved_tokens(), 0);

  int other_allowed = 0;
  {
    GrpcQuotaClient survivor(Options({a.target(), b.target()}));
    other_allowed = Flood({&survivor}, {6}, key, user, ip, "survivor-", true)[0];
  }  // shut down: its last settlements sent, its leases returned
  EXPECT_LE(dying_allowed + other_allowed, kRpm);
  EXPECT_GE(dying_allowed + other_allowed, kRpm - kRpm / 8 - 64);
  // After lease_ttl + reservation_ttl (3 s) the dead edge's leases are gone: nothing reserved,
  // and the month holds exactly what was settled (the dead edge's requests never settled).
  for (int i = 0;
       i < 100 && (b.Usage(pb::SUBJECT_KIND_USER, user).reserved_tokens() != 0 ||
                   b.Usage(pb::SUBJECT_KIND_USER, user).monthly_tokens() != 60 * other_allowed);
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto usage = b.Usage(pb::SUBJECT_KIND_USER, user);
  EXPECT_EQ(usage.reserved_tokens(), 0);
  EXPECT_EQ(usage.monthly_tokens(), 60 * other_allowed);
  EXPECT_EQ(a.Usage(pb::SUBJECT_KIND_KEY, key).monthly_tokens(), 60 * other_allowed);
}

// An edge killed before its settlements left it: they were written into its settlement journal
// as Settle was called, and its next start (the same journal) sends them; quota counts each once.
TEST(QuotaLeaseTest, AKilledEdgesSettlementsAreSentByItsNextStart) {
  Config::Environment env = {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", "100000"},
                             {"TOLLGATE_QUOTA__DEFAULT_USER_MONTHLY_TOKENS", "100000000"}};
  ReplicaProcess a(env), b(env);
  const std::string key = OwnedBy("key", 0, "jkey-");
  const std::string user = OwnedBy("user", 1, "juser-");
  const std::string ip = OwnedBy("ip", 1, "10.0.1.");
  const std::string journal = std::filesystem::temp_directory_path() /
                              ("tollgate-quota-journal-" + std::to_string(getpid()));
  std::filesystem::remove_all(journal);
  constexpr int kRequests = 40;
  {
    auto options = Options({a.target(), b.target()});
    options.journal_dir = journal;
    options.flush_interval = std::chrono::seconds(30);  // nothing leaves before the kill
    GrpcQuotaClient dying(options);
    for (int i = 0; i < kRequests; ++i) {
      auto request = Request("journal-" + std::to_string(i), key, user, ip, 100);
      auto r = AdmitNow(dying, request);
      ASSERT_FALSE(r.failure) << i;
      dying.Settle(RecordOf(request, r, 25));
    }
    dying.SimulateCrashForTest();  // nothing settled, nothing returned
  }
  EXPECT_EQ(b.Usage(pb::SUBJECT_KIND_USER, user).monthly_tokens(), 0) << "settled before the kill";
  {
    auto options = Options({a.target(), b.target()});
    options.journal_dir = journal;
    GrpcQuotaClient restarted(options);
    for (int i = 0;
         i < 100 && b.Usage(pb::SUBJECT_KIND_USER, user).monthly_tokens() < 25 * kRequests; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_EQ(b.Usage(pb::SUBJECT_KIND_USER, user).monthly_tokens(), 25 * kRequests);
  EXPECT_EQ(a.Usage(pb::SUBJECT_KIND_KEY, key).monthly_tokens(), 25 * kRequests);
  {
    // Acknowledged entries left the journal: a third start sends nothing again (and if it did,
    // quota would count nothing twice).
    auto options = Options({a.target(), b.target()});
    options.journal_dir = journal;
    GrpcQuotaClient again(options);
    // Twenty flush intervals: a replayed entry would have been sent (and counted) by now.
    std::this_thread::sleep_for(20 * options.flush_interval);
    EXPECT_EQ(again.settlements_sent(), 0);
  }
  EXPECT_EQ(b.Usage(pb::SUBJECT_KIND_USER, user).monthly_tokens(), 25 * kRequests);
  std::filesystem::remove_all(journal);
}

// A replica restarts while an edge holds its leases: the edge drops them, the new incarnation
// admits nothing and grants nothing for lease_ttl (old leases may still be in use until then),
// and every settlement, before and after, is counted exactly once.
TEST(QuotaLeaseTest, AReplicaRestartedWhileEdgesHoldLeases) {
  TestDatabase db;
  Config::Environment env = {{"TOLLGATE_QUOTA__DATABASE__DSN", db.dsn()},
                             {"TOLLGATE_QUOTA__GRPC_LISTEN", "127.0.0.1:0"},
                             {"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", "100000"},
                             {"TOLLGATE_QUOTA__DEFAULT_USER_MONTHLY_TOKENS", "100000000"},
                             {"TOLLGATE_QUOTA__LEASE_TTL", "1s"},
                             {"TOLLGATE_METRICS__LISTEN", "127.0.0.1:0"},
                             {"TOLLGATE_ADMIN__TOKEN", kToken},
                             {"TOLLGATE_GRPC__SERVICE_TOKENS__EDGE", kEdgeToken}};
  auto start = [&env](const std::string& listen) {
    auto e = env;
    e["TOLLGATE_QUOTA__GRPC_LISTEN"] = listen;
    return std::make_unique<ReplicaProcess>(e);
  };
  auto replica = start("127.0.0.1:0");
  const std::string target = replica->target();
  GrpcQuotaClient edge(Options({target}));
  int allowed = 0;
  auto run = [&](const std::string& prefix, int n) {
    for (int i = 0; i < n; ++i) {
      auto request = Request(prefix + std::to_string(i), "key-r", "user-r", "10.1.1.1", 100);
      auto r = AdmitNow(edge, request);
      if (r.failure) continue;  // 503 while the replica is away
      ++allowed;
      edge.Settle(RecordOf(request, r, 50));
      if (edge.admitted_from_leases() == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  run("before-", 300);
  ASSERT_GT(edge.admitted_from_leases(), 100);
  ASSERT_GT(edge.live_leases(), 0u);

  replica.reset();  // SIGTERM: the leases die with it
  for (int i = 0; i < 200 && edge.live_leases() > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(edge.live_leases(), 0u) << "leases of an unreachable replica are dropped";
  const int64_t from_leases_before = edge.admitted_from_leases();
  replica = start(target);
  const auto serving_at = std::chrono::steady_clock::now();
  // The new incarnation answers nothing before lease_ttl from its start (the edge's channel may
  // still be backing off from the outage: retry).
  AdmitResult first;
  for (int i = 0; i < 100; ++i) {
    first = AdmitNow(edge, Request("after-first", "key-r", "user-r", "10.1.1.1", 100));
    if (!first.failure) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_FALSE(first.failure);
  EXPECT_GE(std::chrono::steady_clock::now() - serving_at, std::chrono::milliseconds(800));
  EXPECT_EQ(edge.admitted_from_leases(), from_leases_before);
  edge.Settle(RecordOf(Request("after-first", "key-r", "user-r", "10.1.1.1", 100), first, 50));
  ++allowed;
  run("after-", 300);
  EXPECT_GT(edge.admitted_from_leases(), from_leases_before) << "leased again";
  for (int i = 0;
       i < 500 && replica->Usage(pb::SUBJECT_KIND_USER, "user-r").monthly_tokens() != 50 * allowed;
       ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(edge.settlements_dropped(), 0);
  EXPECT_EQ(replica->Usage(pb::SUBJECT_KIND_USER, "user-r").monthly_tokens(), 50 * allowed);
  EXPECT_EQ(replica->Usage(pb::SUBJECT_KIND_KEY, "key-r").monthly_tokens(), 50 * allowed);
}

}  // namespace
}  // namespace tollgate::quota
