// The edge's HTTP surface with the real GrpcQuotaClient and a real quota replica: 429s in the
// OpenAI format (rate_limit_exceeded / insufficient_quota) with Retry-After, x-ratelimit-*
// headers on every answer, usage settled from the record, 503 when the quota service is down.
// The upstream is the real mock upstream binary; routing is an in-process fake.
#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <signal.h>
#include <unistd.h>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "src/grpc_quota_client.h"
#include "src/http_server.h"
#include "src/proxy.h"
#include "test/child_process.h"
#include "test/permissive_clients.h"
#include "test/pg_fixture.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/grpc_server.h"
#include "tollgate/metrics.h"
#include "tollgate/quota/module.h"
#include "tollgate/quota/v1/quota.grpc.pb.h"

namespace tollgate::quota {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using ::tollgate::testing::ChildProcess;
namespace pb = ::tollgate::quota::v1;
using tcp = asio::ip::tcp;
using Json = nlohmann::json;
using namespace std::chrono_literals;
using namespace ::tollgate::edge;

constexpr char kToken[] = "test-admin-token-0123456789";

struct Reply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  Json json;
};

Reply PostChat(int port, int max_tokens = 16, const std::string& model = "gpt-4o-mini") {
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)));
  Json body = {{"model", model},
               {"max_tokens", max_tokens},
               {"messages", {{{"role", "user"}, {"content", "Say hello to the test."}}}}};
  http::request<http::string_body> req{http::verb::post, "/v1/chat/completions", 11};
  req.set(http::field::host, "127.0.0.1");
  req.set(http::field::content_type, "application/json");
  req.body() = body.dump();
  req.prepare_payload();
  http::write(stream, req);
  beast::flat_buffer buffer;
  http::response<http::string_body> res;
  http::read(stream, buffer, res);
  Reply reply;
  reply.status = res.result_int();
  for (const auto& f : res) {
    std::string name(f.name_string());
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    reply.headers[name] = std::string(f.value());
  }
  reply.json = Json::parse(res.body(), nullptr, false);
  return reply;
}

class MockUpstream {
 public:
  MockUpstream() {
    std::string line = process_.ReadLine().value_or("");
    auto colon = line.rfind(':');
    if (line.rfind("listening on ", 0) != 0 || colon == std::string::npos)
      throw std::runtime_error("mock upstream did not start: '" + line + "'");
    port_ = std::stoi(line.substr(colon + 1));
  }
  ~MockUpstream() { process_.Stop(SIGTERM); }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }

 private:
  ChildProcess process_{{TOLLGATE_MOCK_UPSTREAM_PATH, "--listen=127.0.0.1:0", "--threads=1"},
                        {.capture = ChildProcess::Capture::kStdout}};
  int port_ = 0;
};

// Every model goes to the mock upstream.
class FakeRouter final : public RouterClient {
 public:
  explicit FakeRouter(std::string base_url) : base_url_(std::move(base_url)) {}
  void Route(std::string model, int32_t, std::function<void(RouteResult)> done) override {
    RouteResult r;
    r.model = model;
    UpstreamAttempt a;
    a.upstream_key_id = 1;
    a.base_url = base_url_;
    a.upstream_model = model;
    a.api_key = "sk-upstream-test";
    r.attempts.push_back(a);
    done(std::move(r));
  }
  void Report(AttemptOutcome) override {}
  void ListModels(std::function<void(ModelsResult)> done) override { done(ModelsResult{}); }

 private:
  std::string base_url_;
};

class Replica {
 public:
  explicit Replica(Config::Environment extra) {
    Config::Environment env = {{"TOLLGATE_QUOTA__DATABASE__DSN", db_.dsn()},
                               {"TOLLGATE_QUOTA__GRPC_LISTEN", "127.0.0.1:0"},
                               {"TOLLGATE_QUOTA__WORKERS", "2"},
                               {"TOLLGATE_QUOTA__DATABASE__POOL_SIZE", "2"},
                               {"TOLLGATE_ADMIN__TOKEN", kToken}};
    for (auto& [k, v] : extra) env[k] = v;
    config_ = Config::Load("", env);
    module_ = MakeQuotaModule({config_, metrics_});
    module_->Start();
  }
  ~Replica() {
    module_->BeginShutdown();
    module_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
  std::string target() {
    return "127.0.0.1:" + std::to_string(dynamic_cast<DbServiceModule&>(*module_).grpc_port());
  }
  int64_t MonthlyTokens(const std::string& key) {
    auto admin = pb::QuotaAdminService::NewStub(MakeChannel(target()));
    grpc::ClientContext ctx;
    SetDeadline(ctx, std::chrono::seconds(5));
    ctx.AddMetadata("authorization", std::string("Bearer ") + kToken);
    pb::GetUsageRequest req;
    req.set_subject_kind(pb::SUBJECT_KIND_KEY);
    req.set_subject(key);
    pb::GetUsageResponse resp;
    EXPECT_TRUE(admin->GetUsage(&ctx, req, &resp).ok());
    return resp.monthly_tokens();
  }

 private:
  testing::TestDatabase db_;
  Metrics metrics_{"127.0.0.1:0"};
  Config config_;
  std::unique_ptr<Module> module_;
};

// An edge (HTTP server + proxy) over the given quota targets.
class Edge {
 public:
  Edge(std::vector<std::string> quota_targets, const std::string& upstream)
      : router_(upstream), quota_([&] {
          GrpcQuotaClientOptions o;
          o.targets = std::move(quota_targets);
          o.timeout = 1s;
          o.flush_interval = 10ms;
          o.registry = &registry_;
          return o;
        }()) {
    HttpServerOptions options;
    options.listen = "127.0.0.1:0";
    options.threads = 1;
    server_ = std::make_unique<HttpServer>(
        options, registry_,
        MakeProxyHandlers({}, EdgeClients{auth_, quota_, router_, billing_}, registry_));
    server_->Start();
  }
  ~Edge() {
    server_->Drain(std::chrono::steady_clock::now() + 2s);
    quota_.Shutdown();
    server_->Shutdown(std::chrono::steady_clock::now());
  }
  int port() const { return server_->port(); }
  GrpcQuotaClient& quota() { return quota_; }

 private:
  prometheus::Registry registry_;
  AllowAllAuthClient auth_;  // every caller is the principal "anonymous"
  FakeRouter router_;
  DiscardingBillingClient billing_;
  GrpcQuotaClient quota_;
  std::unique_ptr<HttpServer> server_;
};

TEST(EdgeQuotaHttpTest, RateLimitHeadersOnEveryAnswerAnd429WithRetryAfter) {
  MockUpstream upstream;
  Replica replica(
      {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", "2"}, {"TOLLGATE_QUOTA__DEFAULT_KEY_TPM", "100000"}});
  Edge edge({replica.target()}, upstream.base_url());

  int64_t used = 0;
  for (int i = 0; i < 2; ++i) {
    Reply ok = PostChat(edge.port());
    ASSERT_EQ(ok.status, 200) << ok.json.dump();
    EXPECT_EQ(ok.headers["x-ratelimit-limit-requests"], "2");
    EXPECT_EQ(ok.headers["x-ratelimit-remaining-requests"], std::to_string(1 - i));
    EXPECT_EQ(ok.headers["x-ratelimit-reset-requests"], "1m0s");
    EXPECT_EQ(ok.headers["x-ratelimit-limit-tokens"], "100000");
    EXPECT_LT(std::stoll(ok.headers["x-ratelimit-remaining-tokens"]), 100000);
    EXPECT_EQ(ok.headers["x-ratelimit-reset-tokens"], "1m0s");
    used += ok.json["usage"]["total_tokens"].get<int64_t>();
  }
  Reply limited = PostChat(edge.port());
  ASSERT_EQ(limited.status, 429);
  EXPECT_EQ(limited.json["error"]["code"], "rate_limit_exceeded");
  ASSERT_TRUE(limited.headers.count("retry-after"));
  EXPECT_GT(std::stoll(limited.headers["retry-after"]), 0);
  EXPECT_LE(std::stoll(limited.headers["retry-after"]), 60);
  EXPECT_EQ(limited.headers["x-ratelimit-limit-requests"], "2");
  EXPECT_EQ(limited.headers["x-ratelimit-remaining-requests"], "0");

  // The two answered requests were settled with the upstream's actual usage.
  for (int i = 0; i < 200 && edge.quota().settlements_sent() < 2; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(edge.quota().settlements_sent(), 2);
  EXPECT_GT(used, 0);
  EXPECT_EQ(replica.MonthlyTokens("anonymous"), used);
}

TEST(EdgeQuotaHttpTest, ARequestThatFailedBeforeAnyTokenGivesItsReservationBack) {
  MockUpstream upstream;
  Replica replica(
      {{"TOLLGATE_QUOTA__DEFAULT_KEY_RPM", "2"}, {"TOLLGATE_QUOTA__DEFAULT_KEY_TPM", "100000"}});
  Edge edge({replica.target()}, upstream.base_url());
  // The upstream fails (mock model grammar): no token was produced, so the request is released,
  // not settled, and does not use up the minute's requests.
  for (int i = 0; i < 3; ++i) {
    Reply failed = PostChat(edge.port(), 16, "mock-fail-500");
    ASSERT_GE(failed.status, 500) << failed.json.dump();
  }
  for (int i = 0; i < 2; ++i) {
    Reply ok = PostChat(edge.port());
    EXPECT_EQ(ok.status, 200) << "request " << i << ": " << ok.json.dump();
  }
  EXPECT_EQ(PostChat(edge.port()).status, 429);
}

TEST(EdgeQuotaHttpTest, ExhaustedMonthlyQuotaIsInsufficientQuota) {
  MockUpstream upstream;
  Replica replica(Config::Environment{{"TOLLGATE_QUOTA__DEFAULT_KEY_MONTHLY_TOKENS", "50"}});
  Edge edge({replica.target()}, upstream.base_url());
  // The estimate (prompt + max_tokens) is an upper bound: 1000 cannot fit in 50.
  Reply r = PostChat(edge.port(), 1000);
  ASSERT_EQ(r.status, 429);
  EXPECT_EQ(r.json["error"]["code"], "insufficient_quota");
  EXPECT_EQ(r.json["error"]["type"], "insufficient_quota");
  EXPECT_TRUE(r.headers.count("retry-after"));
  EXPECT_FALSE(r.headers.count("x-ratelimit-limit-requests"));  // no RPM limit: no header
}

TEST(EdgeQuotaHttpTest, QuotaServiceDownFailsClosedWith503) {
  MockUpstream upstream;
  Edge edge({"127.0.0.1:1"}, upstream.base_url());
  Reply r = PostChat(edge.port());
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(edge.quota().unavailable(), 1);
}

}  // namespace
}  // namespace tollgate::quota
