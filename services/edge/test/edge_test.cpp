// The edge's request path in one process: the real HttpServer and proxy, the real
// GrpcRouterClient talking to a small fake RouterService on 127.0.0.1:0, and the real mock
// upstream binary (tools/mock_upstream) as the provider.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <prometheus/registry.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "src/grpc_router_client.h"
#include "src/http_server.h"
#include "src/proxy.h"
#include "test/child_process.h"
#include "test/permissive_clients.h"
#include "tollgate/grpc_errors.h"
#include "tollgate/grpc_server.h"
#include "tollgate/router/v1/router.grpc.pb.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace pb = tollgate::router::v1;
using ::tollgate::testing::ChildProcess;
using tcp = asio::ip::tcp;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ---------------------------------------------------------------------------------------------
// A blocking HTTP client, good enough for tests.

struct Reply {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
  Json json() const { return Json::parse(body, nullptr, false); }
};

template <typename Message>
std::map<std::string, std::string> HeaderMap(const Message& msg) {
  std::map<std::string, std::string> out;
  for (const auto& f : msg) {
    std::string name(f.name_string());
    for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    out[name] = std::string(f.value());
  }
  return out;
}

http::request<http::string_body> MakeRequest(http::verb method, const std::string& target,
                                             const std::string& body,
                                             const std::map<std::string, std::string>& headers) {
  http::request<http::string_body> req{method, target, 11};
  req.set(http::field::host, "127.0.0.1");
  req.set(http::field::content_type, "application/json");
  for (const auto& [k, v] : headers) req.set(k, v);
  req.body() = body;
  req.prepare_payload();
  return req;
}

Reply Call(int port, http::verb method, const std::string& target, const std::string& body = "",
           const std::map<std::string, std::string>& headers = {}) {
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)));
  auto req = MakeRequest(method, target, body, headers);
  http::write(stream, req);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  http::read(stream, buffer, parser);
  Reply reply;
  reply.status = parser.get().result_int();
  reply.headers = HeaderMap(parser.get());
  reply.body = parser.get().body();
  return reply;
}

Reply Post(int port, const std::string& target, const Json& body,
           const std::map<std::string, std::string>& headers = {}) {
  return Call(port, http::verb::post, target, body.dump(), headers);
}

struct StreamReply {
  int status = 0;
  std::map<std::string, std::string> headers;
  std::vector<std::string> events;  // each "data: ...", without the blank line
  std::vector<double> times_ms;     // when each event arrived, from the request's start
  int chunks = 0;                   // chunks of the chunked transfer encoding
  std::string body;
};

// Streams a POST, noting when each SSE event arrives. `stop` may end it early: the client then
// closes the connection (a disconnect).
StreamReply Stream(int port, const Json& body,
                   const std::function<bool(const std::string&)>& stop = {},
                   const std::map<std::string, std::string>& headers = {}) {
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)));
  auto t0 = Clock::now();
  auto req = MakeRequest(http::verb::post, "/v1/chat/completions", body.dump(), headers);
  http::write(stream, req);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  StreamReply out;
  auto on_chunk = [&](uint64_t size, std::string_view, beast::error_code&) {
    if (size > 0) ++out.chunks;
  };
  parser.on_chunk_header(on_chunk);
  http::read_header(stream, buffer, parser);
  out.status = parser.get().result_int();
  out.headers = HeaderMap(parser.get());
  size_t scanned = 0;
  while (!parser.is_done()) {
    beast::error_code ec;
    http::read_some(stream, buffer, parser, ec);
    if (ec) break;
    const std::string& text = parser.get().body();
    for (size_t end; (end = text.find("\n\n", scanned)) != std::string::npos; scanned = end + 2) {
      out.events.push_back(text.substr(scanned, end - scanned));
      out.times_ms.push_back(MsSince(t0));
      if (stop && stop(out.events.back())) {
        stream.socket().close();
        out.body = text;
        return out;
      }
    }
  }
  out.body = parser.get().body();
  return out;
}

// ---------------------------------------------------------------------------------------------
// The mock upstream, as a child process.

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
  int port() const { return port_; }
  std::string base_url() const { return "http://127.0.0.1:" + std::to_string(port_); }

  Json Stats() const { return Call(port_, http::verb::get, "/_mock/stats").json(); }
  int64_t KeyCount(const std::string& key) const {
    auto stats = Stats();
    return stats["by_key"].contains(key) ? stats["by_key"][key].get<int64_t>() : 0;
  }
  void SetKey(const std::string& key, const Json& behavior) const {
    auto reply = Call(port_, http::verb::post, "/_mock/keys/" + key, behavior.dump());
    ASSERT_EQ(reply.status, 200) << reply.body;
  }
  Json Last() const { return Call(port_, http::verb::get, "/_mock/last").json(); }

 private:
  // --verbose: one stderr line per request, next to the test's output when it fails.
  ChildProcess process_{
      {TOLLGATE_MOCK_UPSTREAM, "--listen=127.0.0.1:0", "--threads=2", "--verbose"},
      {.capture = ChildProcess::Capture::kStdout}};
  int port_ = 0;
};

// ---------------------------------------------------------------------------------------------
// A fake router: fixed plans per model, outcomes recorded.

class FakeRouter final : public pb::RouterService::Service {
 public:
  void SetPlan(const std::string& model, std::vector<pb::Attempt> attempts) {
    std::lock_guard lock(mu_);
    plans_[model] = std::move(attempts);
  }

  grpc::Status Route(grpc::ServerContext*, const pb::RouteRequest* request,
                     pb::RouteResponse* response) override {
    std::lock_guard lock(mu_);
    ++route_calls_;
    auto it = plans_.find(request->model());
    if (it == plans_.end()) return ToGrpcStatus(ErrorCode::kModelNotFound, "no such model");
    if (it->second.empty()) return ToGrpcStatus(ErrorCode::kNoHealthyUpstream, "all open");
    response->set_model(request->model());
    for (const auto& a : it->second) *response->add_attempts() = a;
    return grpc::Status::OK;
  }

  grpc::Status ReportOutcomes(grpc::ServerContext*, const pb::ReportOutcomesRequest* request,
                              pb::ReportOutcomesResponse*) override {
    std::lock_guard lock(mu_);
    ++report_calls_;
    for (const auto& o : request->outcomes()) outcomes_.push_back(o);
    cv_.notify_all();
    return grpc::Status::OK;
  }

  grpc::Status ListModels(grpc::ServerContext*, const pb::ListModelsRequest*,
                          pb::ListModelsResponse* response) override {
    for (const char* id : {"gpt-4o-mini", "org/with-slash"}) {
      auto* m = response->add_models();
      m->set_id(id);
      m->set_created(1700000000);
      m->set_owned_by("tollgate");
    }
    return grpc::Status::OK;
  }

  // Waits until an outcome for `key_id` arrived; returns it.
  std::optional<pb::Outcome> WaitOutcome(int64_t key_id, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mu_);
    std::optional<pb::Outcome> found;
    cv_.wait_for(lock, timeout, [&] {
      for (const auto& o : outcomes_)
        if (o.upstream_key_id() == key_id) found = o;
      return found.has_value();
    });
    return found;
  }

  int route_calls() {
    std::lock_guard lock(mu_);
    return route_calls_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<pb::Attempt>> plans_;
  std::vector<pb::Outcome> outcomes_;
  int route_calls_ = 0;
  int report_calls_ = 0;
};

pb::Attempt MakeAttempt(int64_t key_id, const std::string& base_url, const std::string& key,
                        const std::string& upstream_model,
                        pb::ProviderType type = pb::PROVIDER_TYPE_OPENAI) {
  pb::Attempt a;
  a.set_upstream_key_id(key_id);
  a.set_provider_type(type);
  a.set_base_url(base_url);
  a.set_api_key(key);
  a.set_upstream_model(upstream_model);
  if (type == pb::PROVIDER_TYPE_AZURE_OPENAI) a.set_api_version("2024-10-21");
  return a;
}

class RecordingBillingClient final : public BillingClient {
 public:
  void Hold(HoldRequest, std::function<void(HoldResult)> done) override { done({}); }
  void Release(std::string) override {}
  void GetAccount(const Principal&, std::function<void(AccountResult)> done) override {
    done(AccountResult{Failure{ErrorCode::kServiceUnavailable, "Billing is not enabled."}});
  }
  void GetUsage(const Principal&, bool, std::string, std::string,
                std::function<void(UsageResult)> done) override {
    done(UsageResult{Failure{ErrorCode::kServiceUnavailable, "Billing is not enabled."}});
  }
  void Record(UsageRecord record) override {
    std::lock_guard lock(mu_);
    records_.push_back(std::move(record));
    cv_.notify_all();
  }
  std::optional<UsageRecord> WaitFor(const std::string& request_id,
                                     std::chrono::milliseconds timeout = 3s) {
    std::unique_lock lock(mu_);
    std::optional<UsageRecord> found;
    cv_.wait_for(lock, timeout, [&] {
      for (const auto& r : records_)
        if (r.request_id == request_id) found = r;
      return found.has_value();
    });
    return found;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<UsageRecord> records_;
};

// ---------------------------------------------------------------------------------------------

class EdgeTest : public ::testing::Test {
 protected:
  // Polls the mock's count of cancelled calls (2 s at most) until it moves past `before`: the
  // count then (`*cancelled`) and the milliseconds since `since`.
  static double WaitForUpstreamCancel(int64_t before, Clock::time_point since, int64_t* cancelled) {
    *cancelled = before;
    while (*cancelled == before && MsSince(since) < 2000) {
      std::this_thread::sleep_for(10ms);
      *cancelled = mock_->Stats()["cancelled"].get<int64_t>();
    }
    return MsSince(since);
  }

  static void SetUpTestSuite() {
    mock_ = new MockUpstream();
    router_ = new FakeRouter();
    router_server_ = new GrpcServer("127.0.0.1:0");
    router_server_->Register(router_);
    router_server_->Start();
    const std::string mock = mock_->base_url() + "/v1";
    router_->SetPlan("chat", {MakeAttempt(1, mock, "sk-chat", "gpt-4o-mini")});
    router_->SetPlan("slow-stream", {MakeAttempt(2, mock, "sk-slow", "mock-chunks-5-delay-200")});
    router_->SetPlan("failover", {MakeAttempt(11, mock, "sk-bad", "gpt-4o-mini"),
                                  MakeAttempt(12, mock, "sk-good", "gpt-4o-mini")});
    router_->SetPlan("ratelimited", {MakeAttempt(21, mock, "sk-limited", "gpt-4o-mini"),
                                     MakeAttempt(22, mock, "sk-spare", "gpt-4o-mini")});
    router_->SetPlan("too-long", {MakeAttempt(31, mock, "sk-400",
                                              "mock-fail-400-code-"
                                              "context_length_exceeded"),
                                  MakeAttempt(32, mock, "sk-400-spare", "gpt-4o-mini")});
    router_->SetPlan("disconnect",
                     {MakeAttempt(41, mock, "sk-disconnect", "mock-chunks-40-delay-100")});
    router_->SetPlan("azure", {MakeAttempt(51, mock_->base_url(), "az-key", "my-deployment",
                                           pb::PROVIDER_TYPE_AZURE_OPENAI)});
    router_->SetPlan("hang", {MakeAttempt(61, mock, "sk-hang", "mock-hang")});
    router_->SetPlan("all-bad", {MakeAttempt(71, mock, "sk-all-bad-1", "mock-fail-503"),
                                 MakeAttempt(72, mock, "sk-all-bad-2", "mock-fail-500")});
    router_->SetPlan("refused", {MakeAttempt(81, "http://127.0.0.1:1/v1", "sk-nowhere", "x"),
                                 MakeAttempt(82, mock, "sk-after-refused", "gpt-4o-mini")});
    router_->SetPlan("revoked", {MakeAttempt(23, mock, "sk-revoked", "gpt-4o-mini"),
                                 MakeAttempt(24, mock, "sk-valid", "gpt-4o-mini")});
    router_->SetPlan("all-open", {});
    router_->SetPlan("embed", {MakeAttempt(91, mock, "sk-embed", "text-embedding-3-small")});
    router_->SetPlan("text", {MakeAttempt(92, mock, "sk-text", "gpt-3.5-turbo-instruct")});
    // Anthropic upstreams: the base URL without /v1 (the edge appends /v1/messages).
    const std::string anthropic = mock_->base_url();
    router_->SetPlan("claude", {MakeAttempt(101, anthropic, "sk-ant", "claude-haiku",
                                            pb::PROVIDER_TYPE_ANTHROPIC)});
    router_->SetPlan("claude-tools", {MakeAttempt(102, anthropic, "sk-ant-tools", "mock-tools-2",
                                                  pb::PROVIDER_TYPE_ANTHROPIC)});
    router_->SetPlan("claude-midstream",
                     {MakeAttempt(103, anthropic, "sk-ant-mid", "mock-midstream-5",
                                  pb::PROVIDER_TYPE_ANTHROPIC)});
    router_->SetPlan("resp", {MakeAttempt(121, mock, "sk-resp-a", "gpt-4o-mini"),
                              MakeAttempt(122, mock, "sk-resp-b", "gpt-4o-mini")});
    router_->SetPlan("claude-failover", {MakeAttempt(111, anthropic, "sk-ant-overloaded",
                                                     "claude-haiku", pb::PROVIDER_TYPE_ANTHROPIC),
                                         MakeAttempt(112, anthropic, "sk-ant-ok", "claude-haiku",
                                                     pb::PROVIDER_TYPE_ANTHROPIC)});
  }

  static void TearDownTestSuite() {
    router_server_->Shutdown(std::chrono::system_clock::now());
    delete router_server_;
    delete router_;
    delete mock_;
  }

  void SetUp() override {
    GrpcRouterClientOptions router_options;
    router_options.target = "127.0.0.1:" + std::to_string(router_server_->port());
    router_options.flush_interval = 20ms;
    router_client_ = std::make_unique<GrpcRouterClient>(router_options);
    ProxyOptions proxy;
    proxy.max_attempts = 3;
    proxy.upstream.first_byte = 1500ms;  // the "hang" model times out quickly
    proxy.upstream.idle = 5s;            // a stalled stream fails the test fast
    proxy.response_id_secret = "edge-test-response-id-secret";
    HttpServerOptions options;
    options.listen = "127.0.0.1:0";
    options.threads = 2;
    options.max_body_bytes = 64 * 1024;
    options.max_header_bytes = 8 * 1024;
    options.idle_timeout = 1500ms;
    options.read_timeout = 500ms;
    server_ = std::make_unique<HttpServer>(
        options, registry_,
        MakeProxyHandlers(proxy, EdgeClients{auth_, quota_, *router_client_, billing_}, registry_));
    server_->Start();
    port_ = server_->port();
  }

  void TearDown() override {
    server_->Drain(Clock::now() + 5s);
    router_client_->Shutdown();
    server_->Shutdown(Clock::now());
    server_.reset();
    router_client_.reset();
  }

  // Another server on the fixture's router and billing, with its own options and (optionally)
  // its own auth and quota clients.
  std::unique_ptr<HttpServer> StartServer(HttpServerOptions options, AuthClient* auth = nullptr,
                                          QuotaClient* quota = nullptr) {
    options.listen = "127.0.0.1:0";
    auto server = std::make_unique<HttpServer>(
        options, registry_,
        MakeProxyHandlers(
            {},
            EdgeClients{auth ? *auth : auth_, quota ? *quota : quota_, *router_client_, billing_},
            registry_));
    server->Start();
    return server;
  }

  static Json Chat(const std::string& model, bool stream = false) {
    Json body = {{"model", model},
                 {"messages", {{{"role", "user"}, {"content", "Say hello to the test."}}}}};
    if (stream) body["stream"] = true;
    return body;
  }

  static inline MockUpstream* mock_ = nullptr;
  static inline FakeRouter* router_ = nullptr;
  static inline GrpcServer* router_server_ = nullptr;

  prometheus::Registry registry_;
  AllowAllAuthClient auth_;
  AllowAllQuotaClient quota_;
  RecordingBillingClient billing_;
  std::unique_ptr<GrpcRouterClient> router_client_;
  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
};

TEST_F(EdgeTest, NonStreamingChatIsRelayedAndRecorded) {
  Json body = Chat("chat");
  body["temperature"] = 0.25;
  body["tools"] =
      Json::array({{{"type", "function"},
                    {"function", {{"name", "lookup"}, {"parameters", {{"type", "object"}}}}}}});
  body["tool_choice"] = "none";
  body["response_format"] = {{"type", "text"}};
  body["n"] = 1;
  body["logprobs"] = false;
  auto reply = Post(port_, "/v1/chat/completions", body, {{"x-request-id", "test-chat-1"}});
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(reply.headers["x-request-id"], "test-chat-1");
  ASSERT_TRUE(reply.headers.count("x-tollgate-overhead-ms"));
  EXPECT_LT(std::stod(reply.headers["x-tollgate-overhead-ms"]), 100.0);
  EXPECT_EQ(reply.headers["content-type"], "application/json");
  auto json = reply.json();
  EXPECT_EQ(json["object"], "chat.completion");
  EXPECT_FALSE(json["choices"][0]["message"]["content"].get<std::string>().empty());

  // Upstream got the upstream model, every other field untouched, our credential only; the
  // client set no max_tokens, so the edge sent the budget it admitted and held for.
  auto sent = mock_->Last();
  EXPECT_EQ(sent["target"], "/v1/chat/completions");
  EXPECT_EQ(sent["headers"]["authorization"], "Bearer sk-chat");
  EXPECT_EQ(sent["body"]["model"], "gpt-4o-mini");
  Json expected = body;
  expected["model"] = "gpt-4o-mini";
  expected["max_completion_tokens"] = ProxyOptions{}.default_max_tokens;
  EXPECT_EQ(sent["body"], expected);

  auto record = billing_.WaitFor("test-chat-1");
  ASSERT_TRUE(record);
  EXPECT_EQ(record->model, "chat");
  EXPECT_EQ(record->upstream_key_id, 1);
  EXPECT_EQ(record->prompt_tokens, json["usage"]["prompt_tokens"].get<int64_t>());
  EXPECT_EQ(record->completion_tokens, json["usage"]["completion_tokens"].get<int64_t>());
  EXPECT_FALSE(record->usage_estimated);
  EXPECT_FALSE(record->streamed);
  EXPECT_EQ(record->http_status, 200);
  EXPECT_FALSE(record->client_disconnected);
  auto outcome = router_->WaitOutcome(1, 2s);
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->kind(), pb::OUTCOME_KIND_SUCCESS);
}

TEST_F(EdgeTest, GeneratesARequestIdWhenTheClientSendsNone) {
  auto reply = Post(port_, "/v1/chat/completions", Chat("chat"));
  ASSERT_EQ(reply.status, 200);
  EXPECT_EQ(reply.headers["x-request-id"].rfind("req_", 0), 0u);
}

TEST_F(EdgeTest, StreamingDeliversEachEventAsItArrives) {
  auto t0 = Clock::now();
  auto reply = Stream(port_, Chat("slow-stream", true), {}, {{"x-request-id", "test-stream-1"}});
  double total_ms = MsSince(t0);
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(reply.headers["content-type"], "text/event-stream; charset=utf-8");
  EXPECT_EQ(reply.headers["cache-control"], "no-cache");
  EXPECT_EQ(reply.headers["x-accel-buffering"], "no");
  EXPECT_EQ(reply.headers["transfer-encoding"], "chunked");
  EXPECT_EQ(reply.headers["x-request-id"], "test-stream-1");
  EXPECT_TRUE(reply.headers.count("x-tollgate-overhead-ms"));

  // role chunk, 5 content chunks, the finish chunk, [DONE]; the usage-only chunk is dropped
  // because this client did not ask for it.
  ASSERT_EQ(reply.events.size(), 8u) << reply.body;
  EXPECT_EQ(reply.events.back(), "data: [DONE]");
  for (const auto& e : reply.events) EXPECT_EQ(e.find("\"choices\":[]"), std::string::npos) << e;
  EXPECT_EQ(reply.chunks, 8);  // one chunk per event

  // The first content chunk long before the last: 200 ms gaps, really streamed.
  double first_content = reply.times_ms[1];
  double last_content = reply.times_ms[5];
  std::cout << "[ measured ] first content chunk " << first_content << " ms, last " << last_content
            << " ms, whole stream " << total_ms << " ms\n";
  EXPECT_LT(first_content, 600);
  EXPECT_GT(last_content - first_content, 600);
  for (int i = 2; i <= 5; ++i) EXPECT_GT(reply.times_ms[i] - reply.times_ms[i - 1], 120);

  // Upstream was asked for usage anyway, and the usage is in the record.
  auto sent = mock_->Last();
  EXPECT_EQ(sent["body"]["stream_options"]["include_usage"], true);
  EXPECT_EQ(sent["body"]["model"], "mock-chunks-5-delay-200");
  auto record = billing_.WaitFor("test-stream-1");
  ASSERT_TRUE(record);
  EXPECT_TRUE(record->streamed);
  EXPECT_FALSE(record->usage_estimated);
  EXPECT_EQ(record->completion_tokens, 5);
  EXPECT_GT(record->prompt_tokens, 0);
}

TEST_F(EdgeTest, StreamingKeepsTheUsageChunkWhenTheClientAsks) {
  Json body = Chat("slow-stream", true);
  body["stream_options"] = {{"include_usage", true}};
  auto reply = Stream(port_, body);
  ASSERT_EQ(reply.status, 200);
  ASSERT_EQ(reply.events.size(), 9u) << reply.body;
  auto usage = Json::parse(reply.events[7].substr(6));
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 5);
  EXPECT_EQ(reply.events.back(), "data: [DONE]");
}

TEST_F(EdgeTest, FailsOverFromAKeyAnswering500) {
  mock_->SetKey("sk-bad", {{"status", 500}});
  int64_t bad_before = mock_->KeyCount("sk-bad");
  int64_t good_before = mock_->KeyCount("sk-good");
  for (int i = 0; i < 3; ++i) {
    auto reply = Post(port_, "/v1/chat/completions", Chat("failover"));
    ASSERT_EQ(reply.status, 200) << reply.body;
  }
  EXPECT_EQ(mock_->KeyCount("sk-bad") - bad_before, 3);
  EXPECT_EQ(mock_->KeyCount("sk-good") - good_before, 3);
  auto bad = router_->WaitOutcome(11, 2s);
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->kind(), pb::OUTCOME_KIND_SERVER_ERROR);
  EXPECT_EQ(bad->http_status(), 500);
  auto good = router_->WaitOutcome(12, 2s);
  ASSERT_TRUE(good);
  EXPECT_EQ(good->kind(), pb::OUTCOME_KIND_SUCCESS);

  // Streams fail over the same way: nothing had reached the client yet.
  auto stream = Stream(port_, Chat("failover", true));
  EXPECT_EQ(stream.status, 200);
  EXPECT_EQ(stream.events.back(), "data: [DONE]");
}

TEST_F(EdgeTest, RateLimitedKeyMovesTrafficAndReportsRetryAfter) {
  mock_->SetKey("sk-limited", {{"status", 429}, {"retry_after", 2}});
  int64_t spare_before = mock_->KeyCount("sk-spare");
  auto reply = Post(port_, "/v1/chat/completions", Chat("ratelimited"));
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(mock_->KeyCount("sk-spare") - spare_before, 1);
  auto limited = router_->WaitOutcome(21, 2s);
  ASSERT_TRUE(limited);
  EXPECT_EQ(limited->kind(), pb::OUTCOME_KIND_RATE_LIMITED);
  EXPECT_EQ(limited->retry_after_ms(), 2000);
}

TEST_F(EdgeTest, RejectedUpstreamKeyIsAnAuthErrorAndFailsOver) {
  mock_->SetKey("sk-revoked", {{"status", 401}});
  auto reply = Post(port_, "/v1/chat/completions", Chat("revoked"));
  ASSERT_EQ(reply.status, 200) << reply.body;
  auto revoked = router_->WaitOutcome(23, 2s);
  ASSERT_TRUE(revoked);
  EXPECT_EQ(revoked->kind(), pb::OUTCOME_KIND_AUTH_ERROR);
  EXPECT_EQ(revoked->http_status(), 401);
}

TEST_F(EdgeTest, UpstreamClientErrorIsPassedThroughWithoutFailover) {
  int64_t spare_before = mock_->KeyCount("sk-400-spare");
  auto reply = Post(port_, "/v1/chat/completions", Chat("too-long"));
  ASSERT_EQ(reply.status, 400);
  auto json = reply.json();
  EXPECT_EQ(json["error"]["code"], "context_length_exceeded");
  EXPECT_EQ(json["error"]["type"], "invalid_request_error");
  EXPECT_EQ(mock_->KeyCount("sk-400-spare"), spare_before);  // the request's fault: no retry
  auto outcome = router_->WaitOutcome(31, 2s);
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->kind(), pb::OUTCOME_KIND_CLIENT_ERROR);
}

TEST_F(EdgeTest, EveryAttemptFailingGives502) {
  auto reply = Post(port_, "/v1/chat/completions", Chat("all-bad"));
  EXPECT_EQ(reply.status, 502);
  EXPECT_EQ(reply.json()["error"]["code"], "upstream_error");
  EXPECT_TRUE(reply.headers.count("x-request-id"));
}

TEST_F(EdgeTest, ConnectErrorFailsOver) {
  auto reply = Post(port_, "/v1/chat/completions", Chat("refused"));
  EXPECT_EQ(reply.status, 200) << reply.body;
  auto outcome = router_->WaitOutcome(81, 2s);
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->kind(), pb::OUTCOME_KIND_CONNECT_ERROR);
}

TEST_F(EdgeTest, UpstreamWithoutFirstByteGives504) {
  auto t0 = Clock::now();
  auto reply = Post(port_, "/v1/chat/completions", Chat("hang"));
  EXPECT_EQ(reply.status, 504);
  EXPECT_EQ(reply.json()["error"]["code"], "upstream_timeout");
  EXPECT_GE(MsSince(t0), 1400);
  auto outcome = router_->WaitOutcome(61, 2s);
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->kind(), pb::OUTCOME_KIND_TIMEOUT);
}

TEST_F(EdgeTest, RequestErrorsUseTheOpenAiFormat) {
  auto too_large =
      Call(port_, http::verb::post, "/v1/chat/completions",
           R"({"model":"chat","messages":[],"pad":")" + std::string(70000, 'x') + "\"}");
  EXPECT_EQ(too_large.status, 413);
  EXPECT_EQ(too_large.json()["error"]["code"], "request_too_large");
  EXPECT_TRUE(too_large.headers.count("x-request-id"));

  auto malformed = Call(port_, http::verb::post, "/v1/chat/completions", "{\"model\": ");
  EXPECT_EQ(malformed.status, 400);
  EXPECT_EQ(malformed.json()["error"]["type"], "invalid_request_error");

  auto missing = Post(port_, "/v1/chat/completions", Json{{"model", "chat"}});
  EXPECT_EQ(missing.status, 400);
  EXPECT_EQ(missing.json()["error"]["param"], "messages");

  auto no_model = Post(port_, "/v1/chat/completions", Json{{"messages", Json::array()}});
  EXPECT_EQ(no_model.status, 400);
  EXPECT_EQ(no_model.json()["error"]["param"], "model");

  auto unknown = Post(port_, "/v1/chat/completions", Chat("no-such-model"));
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(unknown.json()["error"]["code"], "model_not_found");

  auto all_open = Post(port_, "/v1/chat/completions", Chat("all-open"));
  EXPECT_EQ(all_open.status, 503);
  EXPECT_EQ(all_open.json()["error"]["code"], "no_healthy_upstream");

  auto wrong_path = Call(port_, http::verb::get, "/v1/nothing");
  EXPECT_EQ(wrong_path.status, 404);
  EXPECT_TRUE(wrong_path.headers.count("x-request-id"));
}

TEST_F(EdgeTest, DeeplyNestedBodiesAreA400AndTheEdgeServesOn) {
  // Under this test's 64 KiB body limit: 30,000 levels in a message's content and in metadata.
  const std::string deep = std::string(30000, '[') + std::string(30000, ']');
  for (const std::string& body :
       {R"({"model":"chat","messages":[{"role":"user","content":)" + deep + "}]}",
        R"({"model":"chat","messages":[{"role":"user","content":"hi"}],"metadata":)" + deep +
            "}"}) {
    auto reply = Call(port_, http::verb::post, "/v1/chat/completions", body);
    EXPECT_EQ(reply.status, 400);
    EXPECT_EQ(reply.json()["error"]["type"], "invalid_request_error");
  }
  EXPECT_EQ(Post(port_, "/v1/chat/completions", Chat("chat")).status, 200);
}

TEST_F(EdgeTest, ClientDisconnectCancelsTheUpstreamAndStillRecordsUsage) {
  auto before = mock_->Stats()["cancelled"].get<int64_t>();
  int content_events = 0;
  auto reply = Stream(port_, Chat("disconnect", true),
                      [&](const std::string& event) {
                        return event.find("\"content\":\"") != std::string::npos &&
                               event.find("\"content\":\"\"") == std::string::npos &&
                               ++content_events == 3;
                      },
                      {{"x-request-id", "test-disconnect-1"}});
  auto closed = Clock::now();
  ASSERT_EQ(reply.status, 200);
  // The upstream sees its connection closed long before its 4 s answer would end.
  int64_t cancelled = 0;
  double cancel_ms = WaitForUpstreamCancel(before, closed, &cancelled);
  std::cout << "[ measured ] upstream cancelled " << cancel_ms << " ms after the client left\n";
  EXPECT_EQ(cancelled, before + 1);
  EXPECT_LT(cancel_ms, 1000);

  auto record = billing_.WaitFor("test-disconnect-1");
  ASSERT_TRUE(record);
  EXPECT_TRUE(record->client_disconnected);
  EXPECT_TRUE(record->streamed);
  EXPECT_TRUE(record->usage_estimated);  // the usage chunk never came
  EXPECT_GE(record->completion_tokens, 1);
  EXPECT_GT(record->prompt_tokens, 0);
  EXPECT_EQ(record->upstream_key_id, 41);
}

// A client that hangs up while a whole (not streamed) answer is awaited: nothing is being
// written to it, so only the server's disconnect watch can tell, and the upstream call is
// cancelled at once rather than at the first-byte timeout (1.5 s here). The same connection
// kept alive for a second request first: the watch of the first request must not take (or
// lose) the bytes of the next.
TEST_F(EdgeTest, ClientLeavingBeforeAWholeAnswerCancelsTheUpstream) {
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_)));
  beast::flat_buffer buffer;
  for (int i = 0; i < 2; ++i) {
    http::write(stream,
                MakeRequest(http::verb::post, "/v1/chat/completions", Chat("chat").dump(), {}));
    http::response<http::string_body> res;
    http::read(stream, buffer, res);
    ASSERT_EQ(res.result_int(), 200) << res.body();
  }
  auto before = mock_->Stats()["cancelled"].get<int64_t>();
  http::write(stream, MakeRequest(http::verb::post, "/v1/chat/completions", Chat("hang").dump(),
                                  {{"x-request-id", "test-leave-whole-1"}}));
  // The upstream has the request (the mock holds "hang" until its client leaves).
  for (int i = 0; i < 100 && mock_->Last()["body"]["model"] != "mock-hang"; ++i)
    std::this_thread::sleep_for(10ms);
  ASSERT_EQ(mock_->Last()["body"]["model"], "mock-hang");
  stream.socket().close();
  auto closed = Clock::now();
  int64_t cancelled = 0;
  double cancel_ms = WaitForUpstreamCancel(before, closed, &cancelled);
  std::cout << "[ measured ] upstream cancelled " << cancel_ms << " ms after the client left\n";
  EXPECT_EQ(cancelled, before + 1);
  EXPECT_LT(cancel_ms, 700);  // the first-byte timeout would have been later
  auto record = billing_.WaitFor("test-leave-whole-1");
  ASSERT_TRUE(record);
  EXPECT_TRUE(record->client_disconnected);
  EXPECT_FALSE(record->streamed);
}

TEST_F(EdgeTest, AzureDeploymentFormUsesApiKeyHeader) {
  auto reply = Post(port_, "/v1/chat/completions", Chat("azure"));
  ASSERT_EQ(reply.status, 200) << reply.body;
  auto sent = mock_->Last();
  EXPECT_EQ(sent["target"],
            "/openai/deployments/my-deployment/chat/completions?api-version=2024-10-21");
  EXPECT_EQ(sent["headers"]["api-key"], "az-key");
  EXPECT_FALSE(sent["headers"].contains("authorization"));
}

TEST_F(EdgeTest, AzureFrontTakesTheModelFromTheDeploymentAndAnswersInAzuresFormat) {
  // The deployment in the path is the model; the body's own `model` (absent or another) is not.
  Json body = Chat("ignored");
  body.erase("model");
  auto reply = Post(port_, "/openai/deployments/chat/chat/completions?api-version=2024-10-21", body,
                    {{"x-request-id", "az-front-1"}});
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(reply.json()["object"], "chat.completion");
  EXPECT_EQ(mock_->Last()["target"], "/v1/chat/completions");
  EXPECT_EQ(mock_->Last()["body"]["model"], "gpt-4o-mini");
  auto record = billing_.WaitFor("az-front-1");
  ASSERT_TRUE(record);
  EXPECT_EQ(record->model, "chat");

  auto embed = Post(port_, "/openai/deployments/embed/embeddings?api-version=2024-10-21",
                    Json{{"model", "chat"}, {"input", {"a"}}});
  ASSERT_EQ(embed.status, 200) << embed.body;
  EXPECT_EQ(mock_->Last()["target"], "/v1/embeddings");

  auto no_version = Post(port_, "/openai/deployments/chat/chat/completions", body);
  EXPECT_EQ(no_version.status, 400);
  EXPECT_EQ(no_version.json(),
            Json::parse(R"({"error":{"code":"BadRequest","message":"Missing required query )"
                        R"(parameter: api-version","param":"api-version",)"
                        R"("type":"invalid_request_error"}})"));
  auto unknown =
      Post(port_, "/openai/deployments/no-such-model/chat/completions?api-version=1", body);
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(unknown.json()["error"]["code"], "DeploymentNotFound");
  auto missing =
      Post(port_, "/openai/deployments/chat/chat/completions?api-version=1", Json::object());
  EXPECT_EQ(missing.status, 400);
  EXPECT_EQ(missing.json()["error"]["code"], "BadRequest");
  EXPECT_EQ(missing.json()["error"]["param"], "messages");
  auto wrong_method = Call(port_, http::verb::get, "/openai/deployments/chat/chat/completions");
  EXPECT_EQ(wrong_method.status, 404);
  EXPECT_EQ(wrong_method.json()["error"]["code"], "404");
}

TEST_F(EdgeTest, EmbeddingsAndCompletions) {
  auto embed = Post(port_, "/v1/embeddings", Json{{"model", "embed"}, {"input", {"a", "b"}}});
  ASSERT_EQ(embed.status, 200) << embed.body;
  EXPECT_EQ(embed.json()["data"].size(), 2u);
  EXPECT_EQ(mock_->Last()["target"], "/v1/embeddings");

  auto text = Post(port_, "/v1/completions", Json{{"model", "text"}, {"prompt", "Once upon"}});
  ASSERT_EQ(text.status, 200) << text.body;
  EXPECT_EQ(text.json()["object"], "text_completion");
}

TEST_F(EdgeTest, AnthropicChatIsTranslatedAndRecorded) {
  auto reply = Post(port_, "/v1/chat/completions", Chat("claude"), {{"x-request-id", "ant-1"}});
  ASSERT_EQ(reply.status, 200) << reply.body;
  auto json = reply.json();
  EXPECT_EQ(json["object"], "chat.completion");
  EXPECT_EQ(json["model"], "claude");  // the model the client asked for
  EXPECT_EQ(json["choices"][0]["finish_reason"], "stop");
  EXPECT_FALSE(json["choices"][0]["message"]["content"].get<std::string>().empty());

  // The Messages API's URL, headers and body; the edge's budget is max_tokens.
  auto sent = mock_->Last();
  EXPECT_EQ(sent["target"], "/v1/messages");
  EXPECT_EQ(sent["headers"]["x-api-key"], "sk-ant");
  EXPECT_EQ(sent["headers"]["anthropic-version"], "2023-06-01");
  EXPECT_FALSE(sent["headers"].contains("authorization"));
  EXPECT_EQ(sent["body"]["model"], "claude-haiku");
  EXPECT_EQ(sent["body"]["max_tokens"], ProxyOptions{}.default_max_tokens);
  EXPECT_EQ(sent["body"]["messages"][0]["content"], "Say hello to the test.");

  auto record = billing_.WaitFor("ant-1");
  ASSERT_TRUE(record);
  EXPECT_EQ(record->upstream_key_id, 101);
  EXPECT_GT(record->prompt_tokens, 0);
  EXPECT_EQ(record->prompt_tokens, json["usage"]["prompt_tokens"].get<int64_t>());
  EXPECT_EQ(record->completion_tokens, json["usage"]["completion_tokens"].get<int64_t>());
  EXPECT_FALSE(record->usage_estimated);

  // Only chat translates: a legacy completion for an Anthropic model is a 400, sent nowhere.
  int64_t before = mock_->KeyCount("sk-ant");
  auto text = Post(port_, "/v1/completions", {{"model", "claude"}, {"prompt", "hi"}});
  EXPECT_EQ(text.status, 400) << text.body;
  EXPECT_EQ(text.json()["error"]["type"], "invalid_request_error");
  auto many = Chat("claude");
  many["n"] = 2;
  auto refused = Post(port_, "/v1/chat/completions", many);
  EXPECT_EQ(refused.status, 400) << refused.body;
  EXPECT_EQ(refused.json()["error"]["param"], "n");
  EXPECT_EQ(mock_->KeyCount("sk-ant"), before);
}

TEST_F(EdgeTest, AnthropicStreamWithToolsBecomesToolCallChunks) {
  Json body = Chat("claude-tools", true);
  body["stream_options"] = {{"include_usage", true}};
  Json params = {{"type", "object"},
                 {"properties", {{"city", {{"type", "string"}}}, {"days", {{"type", "integer"}}}}}};
  body["tools"] = Json::array(
      {{{"type", "function"}, {"function", {{"name", "weather"}, {"parameters", params}}}},
       {{"type", "function"}, {"function", {{"name", "time"}, {"parameters", params}}}}});
  auto reply = Stream(port_, body, {}, {{"x-request-id", "ant-stream-1"}});
  ASSERT_EQ(reply.status, 200) << reply.body;
  ASSERT_GE(reply.events.size(), 4u);
  EXPECT_EQ(reply.events.back(), "data: [DONE]");
  std::map<int64_t, std::string> arguments, names;
  std::string finish_reason;
  Json usage;
  for (size_t i = 0; i + 1 < reply.events.size(); ++i) {
    ASSERT_EQ(reply.events[i].rfind("data: ", 0), 0u) << reply.events[i];
    Json chunk = Json::parse(reply.events[i].substr(6));
    EXPECT_EQ(chunk["object"], "chat.completion.chunk");
    EXPECT_EQ(chunk["model"], "claude-tools");
    if (chunk.contains("usage") && chunk["usage"].is_object()) usage = chunk["usage"];
    for (const auto& choice : chunk["choices"]) {
      if (choice["finish_reason"].is_string()) finish_reason = choice["finish_reason"];
      for (const auto& call : choice["delta"].value("tool_calls", Json::array())) {
        int64_t index = call["index"];
        if (call["function"].contains("name")) names[index] = call["function"]["name"];
        arguments[index] += call["function"].value("arguments", "");
      }
    }
  }
  EXPECT_EQ(finish_reason, "tool_calls");
  ASSERT_EQ(arguments.size(), 2u);
  EXPECT_EQ(names[0], "weather");
  EXPECT_EQ(names[1], "time");
  for (const auto& [index, text] : arguments) {
    Json args = Json::parse(text, nullptr, false);
    ASSERT_TRUE(args.is_object()) << index << ": " << text;
    EXPECT_TRUE(args.contains("city"));
  }
  ASSERT_TRUE(usage.is_object());
  auto record = billing_.WaitFor("ant-stream-1");
  ASSERT_TRUE(record);
  EXPECT_TRUE(record->streamed);
  EXPECT_FALSE(record->usage_estimated);
  EXPECT_EQ(record->prompt_tokens, usage["prompt_tokens"].get<int64_t>());
  EXPECT_EQ(record->completion_tokens, usage["completion_tokens"].get<int64_t>());
  EXPECT_GT(record->completion_tokens, 0);

  // Without include_usage the usage chunk stays away, as for an OpenAI upstream.
  body.erase("stream_options");
  auto plain = Stream(port_, body);
  ASSERT_EQ(plain.status, 200);
  for (const auto& event : plain.events) EXPECT_EQ(event.find("\"usage\""), std::string::npos);
}

TEST_F(EdgeTest, AnthropicErrorEventEndsTheStreamWithAnOpenAiError) {
  auto reply = Stream(port_, Chat("claude-midstream", true));
  ASSERT_EQ(reply.status, 200) << reply.body;
  ASSERT_GE(reply.events.size(), 2u);
  EXPECT_NE(reply.events.back(), "data: [DONE]");
  Json error = Json::parse(reply.events.back().substr(6), nullptr, false);
  ASSERT_TRUE(error.contains("error")) << reply.events.back();
  EXPECT_TRUE(error["error"]["message"].is_string());
  auto outcome = router_->WaitOutcome(103, 2s);
  ASSERT_TRUE(outcome);
  EXPECT_EQ(outcome->kind(), pb::OUTCOME_KIND_SERVER_ERROR);
}

TEST_F(EdgeTest, AnthropicOverloadedKeyFailsOverToTheNext) {
  mock_->SetKey("sk-ant-overloaded", {{"status", 529}});
  int64_t ok_before = mock_->KeyCount("sk-ant-ok");
  auto reply = Post(port_, "/v1/chat/completions", Chat("claude-failover"));
  ASSERT_EQ(reply.status, 200) << reply.body;
  EXPECT_EQ(mock_->KeyCount("sk-ant-ok") - ok_before, 1);
  auto overloaded = router_->WaitOutcome(111, 2s);
  ASSERT_TRUE(overloaded);
  EXPECT_EQ(overloaded->kind(), pb::OUTCOME_KIND_SERVER_ERROR);
  EXPECT_EQ(overloaded->http_status(), 503);

  auto stream = Stream(port_, Chat("claude-failover", true));
  EXPECT_EQ(stream.status, 200);
  EXPECT_EQ(stream.events.back(), "data: [DONE]");

  // A rate-limited key counts as a 429 with its retry-after (the key's cooldown), and fails over.
  mock_->SetKey("sk-ant-overloaded", {{"status", 429}, {"retry_after", 3}});
  auto limited = Post(port_, "/v1/chat/completions", Chat("claude-failover"));
  ASSERT_EQ(limited.status, 200) << limited.body;
  std::optional<pb::Outcome> rate_limited;
  for (auto deadline = Clock::now() + 3s; Clock::now() < deadline;
       std::this_thread::sleep_for(20ms)) {
    rate_limited = router_->WaitOutcome(111, 2s);  // the key's latest outcome
    if (rate_limited && rate_limited->kind() == pb::OUTCOME_KIND_RATE_LIMITED) break;
  }
  ASSERT_TRUE(rate_limited);
  EXPECT_EQ(rate_limited->kind(), pb::OUTCOME_KIND_RATE_LIMITED);
  EXPECT_EQ(rate_limited->http_status(), 429);
  EXPECT_EQ(rate_limited->retry_after_ms(), 3000);

  // An Anthropic error that another key cannot fix reaches the client in OpenAI's format.
  mock_->SetKey("sk-ant-ok", {{"status", 400}});
  auto bad = Post(port_, "/v1/chat/completions", Chat("claude-failover"));
  EXPECT_EQ(bad.status, 400) << bad.body;
  EXPECT_EQ(bad.json()["error"]["type"], "invalid_request_error");
  mock_->SetKey("sk-ant-ok", Json::object());
  mock_->SetKey("sk-ant-overloaded", Json::object());
}

// Anthropic's events of a whole SSE body: (name, data) per event.
std::vector<std::pair<std::string, Json>> AnthropicEvents(const std::string& body) {
  std::vector<std::pair<std::string, Json>> out;
  for (size_t at = 0, end; (end = body.find("\n\n", at)) != std::string::npos; at = end + 2) {
    std::string event = body.substr(at, end - at);
    size_t nl = event.find('\n');
    EXPECT_EQ(event.rfind("event: ", 0), 0u) << event;
    out.emplace_back(event.substr(7, nl - 7), Json::parse(event.substr(nl + 7), nullptr, false));
  }
  return out;
}

TEST_F(EdgeTest, MessagesFrontToAnOpenAiUpstreamIsTranslatedAndRecorded) {
  Json body = {
      {"model", "chat"},
      {"max_tokens", 50},
      {"system", "Be brief."},
      {"messages", Json::array({{{"role", "user"}, {"content", "Say hello to the test."}}})}};
  auto reply = Post(port_, "/v1/messages", body, {{"x-request-id", "front-1"}});
  ASSERT_EQ(reply.status, 200) << reply.body;
  auto json = reply.json();
  EXPECT_EQ(json["type"], "message");
  EXPECT_EQ(json["model"], "chat");
  EXPECT_EQ(json["stop_reason"], "end_turn");
  EXPECT_EQ(json["content"][0]["type"], "text");
  auto sent = mock_->Last();
  EXPECT_EQ(sent["target"], "/v1/chat/completions");
  EXPECT_EQ(sent["body"]["model"], "gpt-4o-mini");
  EXPECT_EQ(sent["body"]["max_completion_tokens"], 50);
  EXPECT_EQ(sent["body"]["messages"][0], (Json{{"role", "system"}, {"content", "Be brief."}}));
  auto record = billing_.WaitFor("front-1");
  ASSERT_TRUE(record);
  EXPECT_EQ(record->prompt_tokens, json["usage"]["input_tokens"].get<int64_t>());
  EXPECT_EQ(record->completion_tokens, json["usage"]["output_tokens"].get<int64_t>());
  EXPECT_FALSE(record->usage_estimated);

  // Streamed: Anthropic's events, no [DONE]; the usage chunk's counts in message_delta.
  body["stream"] = true;
  auto streamed = Post(port_, "/v1/messages", body, {{"x-request-id", "front-2"}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  EXPECT_EQ(streamed.body.find("[DONE]"), std::string::npos);
  auto events = AnthropicEvents(streamed.body);
  ASSERT_GE(events.size(), 5u);
  EXPECT_EQ(events.front().first, "message_start");
  EXPECT_EQ(events.back().first, "message_stop");
  const Json& delta = events[events.size() - 2].second;
  EXPECT_EQ(delta["type"], "message_delta");
  EXPECT_EQ(delta["delta"]["stop_reason"], "end_turn");
  auto streamed_record = billing_.WaitFor("front-2");
  ASSERT_TRUE(streamed_record);
  EXPECT_TRUE(streamed_record->streamed);
  EXPECT_EQ(streamed_record->completion_tokens, delta["usage"]["output_tokens"].get<int64_t>());
  EXPECT_EQ(streamed_record->prompt_tokens, delta["usage"]["input_tokens"].get<int64_t>());
  EXPECT_FALSE(streamed_record->usage_estimated);

  // Anthropic's errors: max_tokens is required; an upstream 4xx is translated.
  body.erase("max_tokens");
  auto missing = Post(port_, "/v1/messages", body);
  EXPECT_EQ(missing.status, 400);
  EXPECT_EQ(
      missing.body,
      R"({"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}})");
}

TEST_F(EdgeTest, MessagesFrontPassesThroughToAnthropicWithCacheUsage) {
  Json body = {
      {"model", "claude"},
      {"max_tokens", 40},
      {"system", Json::array({{{"type", "text"},
                               {"text", "A prefix no other test sends. " + std::string(400, 'x')},
                               {"cache_control", {{"type", "ephemeral"}}}}})},
      {"messages", Json::array({{{"role", "user"}, {"content", "Say hello to the test."}}})}};
  auto first = Post(port_, "/v1/messages", body,
                    {{"x-request-id", "front-3"},
                     {"anthropic-beta", "beta-1"},
                     {"anthropic-version", "2023-06-01"}});
  ASSERT_EQ(first.status, 200) << first.body;
  auto sent = mock_->Last();
  EXPECT_EQ(sent["target"], "/v1/messages");
  EXPECT_EQ(sent["headers"]["anthropic-beta"], "beta-1");
  EXPECT_EQ(sent["headers"]["x-api-key"], "sk-ant");
  EXPECT_EQ(sent["body"]["model"], "claude-haiku");
  EXPECT_EQ(sent["body"]["system"], body["system"]);
  auto usage = first.json()["usage"];
  ASSERT_GT(usage["cache_creation_input_tokens"].get<int64_t>(), 0);
  auto record = billing_.WaitFor("front-3");
  ASSERT_TRUE(record);
  EXPECT_EQ(record->prompt_tokens, usage["input_tokens"].get<int64_t>() +
                                       usage["cache_creation_input_tokens"].get<int64_t>());

  body["stream"] = true;
  auto streamed = Post(port_, "/v1/messages", body, {{"x-request-id", "front-4"}});
  ASSERT_EQ(streamed.status, 200) << streamed.body;
  auto events = AnthropicEvents(streamed.body);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().first, "message_stop");
  const Json start = events.front().second["message"]["usage"];
  const int64_t cached = start["cache_read_input_tokens"].get<int64_t>();
  ASSERT_GT(cached, 0);
  auto streamed_record = billing_.WaitFor("front-4");
  ASSERT_TRUE(streamed_record);
  EXPECT_EQ(streamed_record->cached_tokens, cached);
  EXPECT_EQ(streamed_record->prompt_tokens, start["input_tokens"].get<int64_t>() + cached);

  // count_tokens: passed through here; answered by the edge (an upper bound) for an OpenAI route.
  Json count = {{"model", "claude"},
                {"messages", Json::array({{{"role", "user"}, {"content", "Count me."}}})}};
  auto exact = Post(port_, "/v1/messages/count_tokens", count, {{"x-request-id", "front-5"}});
  ASSERT_EQ(exact.status, 200) << exact.body;
  EXPECT_EQ(mock_->Last()["target"], "/v1/messages/count_tokens");
  count["model"] = "chat";
  int64_t calls = mock_->KeyCount("sk-chat");
  auto estimated = Post(port_, "/v1/messages/count_tokens", count, {{"x-request-id", "front-6"}});
  ASSERT_EQ(estimated.status, 200) << estimated.body;
  EXPECT_EQ(mock_->KeyCount("sk-chat"), calls);
  EXPECT_GE(estimated.json()["input_tokens"].get<int64_t>(),
            exact.json()["input_tokens"].get<int64_t>());
  for (const char* id : {"front-5", "front-6"}) {
    auto free = billing_.WaitFor(id);
    ASSERT_TRUE(free) << id;
    EXPECT_EQ(free->prompt_tokens, 0) << id;
    EXPECT_EQ(free->completion_tokens, 0) << id;
  }
}

TEST_F(EdgeTest, ModelsComeFromTheRouter) {
  auto list = Call(port_, http::verb::get, "/v1/models");
  ASSERT_EQ(list.status, 200);
  auto json = list.json();
  EXPECT_EQ(json["object"], "list");
  ASSERT_EQ(json["data"].size(), 2u);
  EXPECT_EQ(json["data"][0], (Json{{"id", "gpt-4o-mini"},
                                   {"object", "model"},
                                   {"created", 1700000000},
                                   {"owned_by", "tollgate"}}));

  auto one = Call(port_, http::verb::get, "/v1/models/org%2Fwith-slash");
  ASSERT_EQ(one.status, 200);
  EXPECT_EQ(one.json()["id"], "org/with-slash");
  auto slash = Call(port_, http::verb::get, "/v1/models/org/with-slash");
  EXPECT_EQ(slash.status, 200);

  auto missing = Call(port_, http::verb::get, "/v1/models/nope");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.json()["error"]["code"], "model_not_found");
}

TEST_F(EdgeTest, KeepAliveConnectionServesManyRequests) {
  asio::io_context io;
  beast::tcp_stream stream(io);
  stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port_)));
  beast::flat_buffer buffer;
  for (int i = 0; i < 5; ++i) {
    auto req = MakeRequest(http::verb::post, "/v1/chat/completions", Chat("chat").dump(), {});
    http::write(stream, req);
    http::response<http::string_body> res;
    http::read(stream, buffer, res);
    EXPECT_EQ(res.result_int(), 200);
    EXPECT_TRUE(res.keep_alive());
  }
}

// Not a benchmark (tests share two cores with builds): a sanity bound on the edge's own time,
// and the numbers for the record.
TEST_F(EdgeTest, OverheadStaysSmall) {
  asio::io_context io;
  auto time_requests = [&](int port, const std::string& target, const std::string& body,
                           std::vector<double>* overhead) {
    beast::tcp_stream stream(io);
    stream.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)));
    beast::flat_buffer buffer;
    std::vector<double> latency;
    for (int i = 0; i < 200; ++i) {
      auto req = MakeRequest(http::verb::post, target, body, {{"authorization", "Bearer sk-chat"}});
      auto t0 = Clock::now();
      http::write(stream, req);
      http::response<http::string_body> res;
      http::read(stream, buffer, res);
      latency.push_back(MsSince(t0));
      EXPECT_EQ(res.result_int(), 200);
      if (overhead) overhead->push_back(std::stod(std::string(res["x-tollgate-overhead-ms"])));
    }
    std::sort(latency.begin(), latency.end());
    return latency;
  };
  std::vector<double> overhead;
  Json body = Chat("chat");
  auto direct =
      time_requests(mock_->port(), "/v1/chat/completions",
                    Json{{"model", "gpt-4o-mini"}, {"messages", body["messages"]}}.dump(), nullptr);
  auto via_edge = time_requests(port_, "/v1/chat/completions", body.dump(), &overhead);
  std::sort(overhead.begin(), overhead.end());
  std::cout << "[ measured ] 200 sequential non-streamed chats on one keep-alive connection: "
            << "direct to mock p50 " << direct[100] << " ms p99 " << direct[198]
            << " ms; through the edge p50 " << via_edge[100] << " ms p99 " << via_edge[198]
            << " ms; x-tollgate-overhead-ms p50 " << overhead[100] << " p99 " << overhead[198]
            << "\n";
  EXPECT_LT(overhead[100], 20.0);
}

// Milliseconds until the server closes a connection on which the client sent `prefix` only.
double MsUntilClosed(int port, const std::string& prefix) {
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port)));
  if (!prefix.empty()) asio::write(socket, asio::buffer(prefix));
  auto t0 = Clock::now();
  char scratch[4096];
  beast::error_code ec;
  while (!ec) socket.read_some(asio::buffer(scratch), ec);
  return MsSince(t0);
}

TEST_F(EdgeTest, SlowAndIdleClientsAreDisconnected) {
  // Half a request head, then nothing: the read timeout (500 ms here) ends it.
  double slow = MsUntilClosed(port_, "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n");
  EXPECT_GT(slow, 400);
  EXPECT_LT(slow, 1400);
  // Nothing at all: the idle timeout (1.5 s here).
  double idle = MsUntilClosed(port_, "");
  EXPECT_GT(idle, 1300);
  EXPECT_LT(idle, 2500);

  auto huge_header =
      Call(port_, http::verb::get, "/v1/models", "", {{"x-padding", std::string(10 * 1024, 'p')}});
  EXPECT_EQ(huge_header.status, 413);
  EXPECT_EQ(huge_header.json()["error"]["code"], "request_too_large");
}

TEST_F(EdgeTest, MetricsCountRoutesAndOutcomesWithoutKeys) {
  mock_->SetKey("sk-bad", {{"status", 500}});
  ASSERT_EQ(Post(port_, "/v1/chat/completions", Chat("failover")).status, 200);
  ASSERT_EQ(Post(port_, "/v1/chat/completions", Chat("no-such-model")).status, 404);
  // Counted once the response is written, so possibly just after the client has it.
  auto collect = [&] {
    std::map<std::string, double> seen;
    for (const auto& family : registry_.Collect()) {
      for (const auto& metric : family.metric) {
        std::string name = family.name;
        for (const auto& label : metric.label) {
          EXPECT_EQ(label.value.find("sk-"), std::string::npos) << family.name;
          name += "," + label.name + "=" + label.value;
        }
        seen[name] += metric.counter.value + static_cast<double>(metric.histogram.sample_count);
      }
    }
    return seen;
  };
  auto seen = collect();
  for (int i = 0;
       i < 50 && (seen["tollgate_edge_http_requests_total,code=404,route=chat_completions"] == 0 ||
                  seen["tollgate_edge_http_requests_total,code=200,route=chat_completions"] == 0);
       ++i) {
    std::this_thread::sleep_for(10ms);
    seen = collect();
  }
  EXPECT_EQ((seen["tollgate_edge_http_requests_total,code=200,route=chat_completions"]), 1);
  EXPECT_EQ((seen["tollgate_edge_http_requests_total,code=404,route=chat_completions"]), 1);
  EXPECT_EQ((seen["tollgate_edge_upstream_attempts_total,outcome=server_error"]), 1);
  EXPECT_EQ((seen["tollgate_edge_upstream_attempts_total,outcome=success"]), 1);
  EXPECT_EQ((seen["tollgate_edge_overhead_seconds"]), 2);
}

TEST_F(EdgeTest, LastPlanServesWhileTheRouterIsDown) {
  FakeRouter router;
  router.SetPlan("chat", {MakeAttempt(1, mock_->base_url() + "/v1", "sk-chat", "gpt-4o-mini")});
  auto router_server = std::make_unique<GrpcServer>("127.0.0.1:0");
  router_server->Register(&router);
  router_server->Start();
  GrpcRouterClientOptions router_options;
  router_options.target = "127.0.0.1:" + std::to_string(router_server->port());
  router_options.timeout = 3s;  // the first call connects; a loaded box took over 500 ms once
  GrpcRouterClient client(router_options);
  HttpServerOptions options;
  options.listen = "127.0.0.1:0";
  options.threads = 1;
  HttpServer server(options, registry_,
                    MakeProxyHandlers({}, EdgeClients{auth_, quota_, client, billing_}, registry_));
  server.Start();
  EXPECT_EQ(Post(server.port(), "/v1/chat/completions", Chat("chat")).status, 200);
  router_server->Shutdown(std::chrono::system_clock::now());
  router_server.reset();
  EXPECT_EQ(Post(server.port(), "/v1/chat/completions", Chat("chat")).status, 200);
  // A model the router never planned has no last plan.
  EXPECT_EQ(Post(server.port(), "/v1/chat/completions", Chat("failover")).status, 503);
  server.Drain(Clock::now() + 1s);
  client.Shutdown();
  server.Shutdown(Clock::now());
}

// ---------------------------------------------------------------------------------------------
// Raw connections, for requests no HTTP library would send. Plain POSIX sockets with deadlines,
// so a server that misbehaves fails the test instead of hanging it.

class RawConnection {
 public:
  explicit RawConnection(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
      throw std::runtime_error("connect");
    timeval one_second{1, 0};  // a send that cannot progress gives up (the server stopped reading)
    setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &one_second, sizeof one_second);
  }
  ~RawConnection() { close(fd_); }

  // False once the server no longer takes bytes (closed, reset, or stalled for a second).
  bool Send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }

  // Reads until the server closes or `timeout` passes; `closed` tells which, `first` when the
  // first byte came.
  std::string ReadAll(std::chrono::milliseconds timeout, bool* closed = nullptr,
                      Clock::time_point* first = nullptr) {
    auto end = Clock::now() + timeout;
    std::string out;
    char buf[16 * 1024];
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
      ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n > 0 && out.empty() && first) *first = Clock::now();
      if (n <= 0) {
        if (closed) *closed = true;
        return out;
      }
      if (out.size() < 1024 * 1024) out.append(buf, static_cast<size_t>(n));
    }
    if (closed) *closed = false;
    return out;
  }

 private:
  int fd_ = -1;
};

// The first response in `text`: its status and JSON body (content-length framed).
struct RawReply {
  int status = 0;
  Json json;
  bool closed = false;  // the server closed the connection afterwards
};

RawReply ParseRaw(const std::string& text, bool closed) {
  RawReply reply;
  reply.closed = closed;
  if (text.rfind("HTTP/1.", 0) != 0 || text.size() < 12) return reply;
  reply.status = std::stoi(text.substr(9, 3));
  auto head_end = text.find("\r\n\r\n");
  if (head_end == std::string::npos) return reply;
  std::string head = text.substr(0, head_end);
  for (char& c : head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t length = 0;
  if (auto at = head.find("content-length:"); at != std::string::npos)
    length = std::stoul(head.substr(at + 15));
  reply.json = Json::parse(text.substr(head_end + 4, length), nullptr, false);
  return reply;
}

// Sends `bytes` on a fresh connection and reads the answer and the close (3 s at most).
RawReply SendRaw(int port, const std::string& bytes) {
  RawConnection conn(port);
  conn.Send(bytes);
  bool closed = false;
  std::string text = conn.ReadAll(3s, &closed);
  return ParseRaw(text, closed);
}

void ExpectInvalidRequest(const RawReply& reply, const std::string& what) {
  EXPECT_EQ(reply.status, 400) << what;
  EXPECT_EQ(reply.json["error"]["type"], "invalid_request_error") << what;
  EXPECT_TRUE(reply.json["error"]["param"].is_null()) << what;
  EXPECT_TRUE(reply.json["error"].contains("code")) << what;
  EXPECT_FALSE(reply.json["error"]["message"].get<std::string>().empty()) << what;
  EXPECT_TRUE(reply.closed) << what << ": the connection stays open after a framing error";
}

TEST_F(EdgeTest, AmbiguousFramingIsRefusedAndTheConnectionClosed) {
  const std::string post = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n";
  const std::string body = Chat("chat").dump();
  const std::string length = "content-length: " + std::to_string(body.size()) + "\r\n";
  std::stringstream hex;
  hex << std::hex << body.size();
  const std::string chunked_body = hex.str() + "\r\n" + body + "\r\n0\r\n\r\n";
  struct Case {
    std::string what;
    std::string bytes;
  };
  std::vector<Case> cases = {
      {"xchunked", post + "transfer-encoding: xchunked\r\n\r\n" + chunked_body},
      {"gzip", post + "transfer-encoding: gzip\r\n\r\n" + body},
      {"chunked not last", post + "transfer-encoding: chunked, gzip\r\n\r\n" + chunked_body},
      {"chunked twice", post + "transfer-encoding: chunked, chunked\r\n\r\n" + chunked_body},
      {"two lines",
       post + "transfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n\r\n" + chunked_body},
      {"gzip with content-length", post + "transfer-encoding: gzip\r\n" + length + "\r\n" + body},
      {"chunked then content-length",
       post + "transfer-encoding: chunked\r\n" + length + "\r\n" + chunked_body},
      {"content-length then chunked",
       post + length + "transfer-encoding: chunked\r\n\r\n" + chunked_body},
      {"HTTP/1.0 with transfer-encoding",
       "POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" +
           chunked_body},
      {"no host", "POST /v1/chat/completions HTTP/1.1\r\n" + length + "\r\n" + body},
      {"two hosts", post + "host: y\r\n" + length + "\r\n" + body},
      {"two different lengths", post + length + "content-length: 3\r\n\r\n" + body},
  };
  for (const auto& c : cases) ExpectInvalidRequest(SendRaw(port_, c.bytes), c.what);

  // What is allowed still works: chunked alone (any case, with an extension and a trailer),
  // HTTP/1.0 without a Host, and the same request on the same connection afterwards.
  std::string with_extension =
      hex.str() + ";name=value\r\n" + body + "\r\n0\r\nx-trailer: t\r\n\r\n";
  auto chunked = SendRaw(
      port_, post + "transfer-encoding: Chunked\r\nconnection: close\r\n\r\n" + with_extension);
  EXPECT_EQ(chunked.status, 200) << chunked.json;
  auto http10 = SendRaw(port_, "GET /healthz HTTP/1.0\r\n\r\n");
  EXPECT_EQ(http10.status, 200);
}

TEST_F(EdgeTest, TrailerFieldsNeverReachTheHandler) {
  // Trailers are read and dropped: a trailer cannot add an x-request-id (or anything) to the
  // request the handler sees.
  RawConnection conn(port_);
  conn.Send(
      "GET /v1/models HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
      "\r\n0\r\nx-request-id: from-the-trailer\r\n\r\n");
  std::string text = conn.ReadAll(3s);
  EXPECT_EQ(text.rfind("HTTP/1.1 200", 0), 0u) << text;
  EXPECT_EQ(text.find("from-the-trailer"), std::string::npos) << text;
}

// A request that must be refused before the read timeout (10 s here), however much the client
// keeps sending (up to 4 MiB).
void ExpectPromptRefusal(int port, const std::string& head, const std::string& filler, int status,
                         const std::string& what, size_t piece = 64 * 1024,
                         std::chrono::milliseconds pause = 0ms) {
  RawConnection conn(port);
  auto t0 = Clock::now();
  std::thread writer([&] {
    if (!conn.Send(head)) return;
    std::string chunk;
    while (chunk.size() < piece) chunk += filler;
    for (size_t sent = 0; sent < 4 * 1024 * 1024; sent += chunk.size()) {
      if (!conn.Send(chunk)) return;
      if (pause.count() > 0) std::this_thread::sleep_for(pause);
    }
  });
  bool closed = false;
  Clock::time_point answered = Clock::now() + 1h;
  std::string text = conn.ReadAll(8s, &closed, &answered);
  writer.join();
  double ms = std::chrono::duration<double, std::milli>(answered - t0).count();
  auto reply = ParseRaw(text, closed);
  EXPECT_EQ(reply.status, status) << what << ": " << text.substr(0, 200);
  EXPECT_TRUE(closed) << what;
  EXPECT_LT(ms, 3000) << what;  // the read timeout is 10 s
  std::cout << "[ measured ] " << what << ": " << reply.status << " after " << ms << " ms\n";
}

TEST_F(EdgeTest, OversizedFramingIsRefusedPromptly) {
  HttpServerOptions options;
  options.threads = 1;
  options.max_body_bytes = 64 * 1024;
  options.max_header_bytes = 8 * 1024;
  options.read_timeout = 10s;
  auto server = StartServer(options);
  const int port = server->port();
  const std::string chunked =
      "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
  // A chunk-size line that never ends.
  ExpectPromptRefusal(port, chunked + "10;", "x", 400, "endless chunk extension");
  // A whole extension that is too long, in one piece.
  ExpectInvalidRequest(
      SendRaw(port, chunked + "1;" + std::string(5000, 'e') + "\r\nx\r\n0\r\n\r\n"),
      "long chunk extension");
  // A trailer section that never ends, and one that is too long in one piece.
  ExpectPromptRefusal(port, chunked + "1\r\nx\r\n0\r\nx-trailer: ", "t", 400, "endless trailer");
  ExpectInvalidRequest(
      SendRaw(port, chunked + "1\r\nx\r\n0\r\nx-t: " + std::string(5000, 't') + "\r\n\r\n"),
      "long trailer");
  // Many short trailer fields dripped in small pieces.
  ExpectPromptRefusal(port, chunked + "1\r\nx\r\n0\r\n", "x-t: t\r\n", 400, "dripped trailers", 512,
                      2ms);
  // Tiny chunks each carrying a long extension: the payload stays small, the bytes on the wire
  // do not. The wire bound ends it (413).
  ExpectPromptRefusal(port, chunked, "1;" + std::string(4000, 'e') + "\r\nx\r\n", 413,
                      "chunks padded with extensions");
  // A head that never ends: one endless field, and many short fields dripped in pieces.
  ExpectPromptRefusal(port, "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-pad: ", "p", 413,
                      "endless header");
  ExpectPromptRefusal(port, "GET /v1/models HTTP/1.1\r\nhost: x\r\n", "x-a: b\r\n", 413,
                      "dripped header fields", 512, 2ms);
  // A body over the limit, declared or chunked.
  ExpectPromptRefusal(port,
                      "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: "
                      "100000000\r\n\r\n",
                      "b", 413, "declared large body");
  ExpectPromptRefusal(port, chunked, "1000\r\n" + std::string(4096, 'b') + "\r\n", 413,
                      "chunked large body");
  // And the server still serves.
  EXPECT_EQ(Post(port, "/v1/chat/completions", Chat("chat")).status, 200);
}

// VmRSS of this process, in KiB.
int64_t RssKib() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return -1;
}

// The attack of issue #15 against the edge in this process: 4 connections each push 64 MiB of a
// request that never ends (a chunk extension, a trailer, a header), while the read timeout is
// long. Every one is answered at once, the edge's memory stays flat, and it still serves.
TEST_F(EdgeTest, EndlessRequestsKeepMemoryBounded) {
  HttpServerOptions options;  // the production limits: 4 MiB body, 16 KiB head
  options.threads = 2;
  options.read_timeout = 20s;
  auto server = StartServer(options);
  const int port = server->port();
  ASSERT_EQ(Post(port, "/v1/chat/completions", Chat("chat")).status, 200);

  const std::string chunked =
      "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
  struct Attack {
    std::string what, head;
    char filler;
  };
  const std::vector<Attack> attacks = {
      {"chunk extension", chunked + "10;", 'x'},
      {"trailer", chunked + "1\r\nx\r\n0\r\nx-trailer: ", 't'},
      {"header", "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-pad: ", 'p'},
      {"chunk extension", chunked + "10;", 'y'},
  };
  constexpr size_t kPerConnection = 64 * 1024 * 1024;

  const int64_t before = RssKib();
  std::atomic<bool> sampling{true};
  std::atomic<int64_t> peak{before};
  std::thread sampler([&] {
    while (sampling) {
      int64_t now = RssKib();
      if (now > peak) peak = now;
      std::this_thread::sleep_for(5ms);
    }
  });
  std::vector<std::thread> clients;
  std::vector<int> statuses(attacks.size());
  std::vector<double> answer_ms(attacks.size());
  std::vector<size_t> pushed(attacks.size());
  auto t0 = Clock::now();
  for (size_t i = 0; i < attacks.size(); ++i) {
    clients.emplace_back([&, i] {
      RawConnection conn(port);
      std::thread reader([&] {
        Clock::time_point answered = Clock::now() + 1h;
        std::string text = conn.ReadAll(15s, nullptr, &answered);
        answer_ms[i] = std::chrono::duration<double, std::milli>(answered - t0).count();
        statuses[i] = ParseRaw(text, true).status;
      });
      const std::string chunk(64 * 1024, attacks[i].filler);
      size_t sent = 0;
      if (conn.Send(attacks[i].head))
        while (sent < kPerConnection && conn.Send(chunk)) sent += chunk.size();
      pushed[i] = sent;
      reader.join();
    });
  }
  for (auto& c : clients) c.join();
  sampling = false;
  sampler.join();
  const double growth_mib = static_cast<double>(peak - before) / 1024.0;
  size_t total = 0;
  for (size_t i = 0; i < attacks.size(); ++i) {
    total += pushed[i];
    std::cout << "[ measured ] endless " << attacks[i].what << ": " << statuses[i] << " after "
              << answer_ms[i] << " ms, " << pushed[i] / (1024 * 1024) << " MiB taken\n";
    EXPECT_TRUE(statuses[i] == 400 || statuses[i] == 413) << attacks[i].what;
  }
  std::cout << "[ measured ] " << total / (1024 * 1024) << " MiB pushed over " << attacks.size()
            << " connections in " << MsSince(t0) << " ms; VmRSS " << before / 1024
            << " MiB before, peak " << peak / 1024 << " MiB (+" << growth_mib << " MiB)\n";
  EXPECT_LT(growth_mib, 64.0);
  // Refused at once, not at the 20 s read timeout.
  for (double ms : answer_ms) EXPECT_LT(ms, 3000);
  EXPECT_EQ(Post(port, "/v1/chat/completions", Chat("chat")).status, 200);
}

// ---------------------------------------------------------------------------------------------
// The client's address behind a proxy, as auth's IP allowlist and quota's per-IP limit see it.

// Judges every key with auth's own policy code: a key allowed from 203.0.113.0/24 only.
class AllowlistAuthClient final : public AuthClient {
 public:
  AllowlistAuthClient() {
    principal_.key_id = 7;
    principal_.user_id = 7;
    principal_.allowed_cidrs = {"203.0.113.0/24"};
    auth::ParseNetworks(principal_);
  }
  void Authenticate(std::string, std::string client_ip,
                    std::function<void(AuthResult)> done) override {
    {
      std::lock_guard lock(mu_);
      seen_.push_back(client_ip);
    }
    AuthResult result;
    if (auth::Evaluate(principal_, client_ip, 0) != auth::Verdict::kOk)
      result.failure = Failure{ErrorCode::kPermissionDenied, "not from " + client_ip};
    result.principal.api_key_id = "7";
    result.principal.user_id = "7";
    done(std::move(result));
  }
  std::string last() {
    std::lock_guard lock(mu_);
    return seen_.empty() ? "" : seen_.back();
  }

 private:
  auth::KeyPrincipal principal_;
  std::mutex mu_;
  std::vector<std::string> seen_;
};

class RecordingQuotaClient final : public QuotaClient {
 public:
  void Admit(AdmitRequest request, std::function<void(AdmitResult)> done) override {
    {
      std::lock_guard lock(mu_);
      last_ = request.client_ip;
    }
    done(AdmitResult{});
  }
  void Release(std::string) override {}
  void Settle(const UsageRecord&) override {}
  std::string last() {
    std::lock_guard lock(mu_);
    return last_;
  }

 private:
  std::mutex mu_;
  std::string last_;
};

TEST_F(EdgeTest, ForwardedClientAddressCountsOnlyFromATrustedPeer) {
  AllowlistAuthClient auth;
  RecordingQuotaClient quota;
  const std::map<std::string, std::string> forwarded = {
      {"x-forwarded-for", "198.51.100.1, 203.0.113.7"}};

  // Behind a trusted proxy (this test connects from 127.0.0.1).
  HttpServerOptions behind;
  behind.threads = 1;
  behind.trusted_proxies = TrustedProxies::Parse({"127.0.0.0/8", "::1"});
  auto proxied = StartServer(behind, &auth, &quota);
  auto ok = Post(proxied->port(), "/v1/chat/completions", Chat("chat"), forwarded);
  EXPECT_EQ(ok.status, 200) << ok.body;
  EXPECT_EQ(auth.last(), "203.0.113.7");
  EXPECT_EQ(quota.last(), "203.0.113.7");
  auto rfc7239 = Post(proxied->port(), "/v1/chat/completions", Chat("chat"),
                      {{"forwarded", "for=\"203.0.113.8:4711\";proto=https"}});
  EXPECT_EQ(rfc7239.status, 200) << rfc7239.body;
  EXPECT_EQ(auth.last(), "203.0.113.8");
  // The proxy itself is not on the key's allowlist.
  auto direct = Post(proxied->port(), "/v1/chat/completions", Chat("chat"));
  EXPECT_EQ(direct.status, 403) << direct.body;
  EXPECT_EQ(auth.last(), "127.0.0.1");

  // The same headers from a peer that is not a trusted proxy are ignored: spoofing gains
  // nothing.
  HttpServerOptions elsewhere;
  elsewhere.threads = 1;
  elsewhere.trusted_proxies = TrustedProxies::Parse({"10.0.0.0/8"});
  auto exposed = StartServer(elsewhere, &auth, &quota);
  auto spoofed = Post(exposed->port(), "/v1/chat/completions", Chat("chat"), forwarded);
  EXPECT_EQ(spoofed.status, 403) << spoofed.body;
  EXPECT_EQ(spoofed.json()["error"]["code"], "permission_denied");
  EXPECT_EQ(auth.last(), "127.0.0.1");
  EXPECT_EQ(Post(exposed->port(), "/v1/chat/completions", Chat("chat"),
                 {{"forwarded", "for=203.0.113.7"}})
                .status,
            403);

  // And by default nobody is trusted.
  HttpServerOptions plain;
  plain.threads = 1;
  auto server = StartServer(plain, &auth, &quota);
  EXPECT_EQ(Post(server->port(), "/v1/chat/completions", Chat("chat"), forwarded).status, 403);
  EXPECT_EQ(auth.last(), "127.0.0.1");
}

TEST(EdgeRouterDown, RouterUnreachableGives503) {
  prometheus::Registry registry;
  AllowAllAuthClient auth;
  AllowAllQuotaClient quota;
  DiscardingBillingClient billing;
  GrpcRouterClientOptions router_options;
  router_options.target = "127.0.0.1:1";  // nothing listens there
  router_options.timeout = 500ms;
  router_options.stale_plan_ttl = 0ms;
  GrpcRouterClient router(router_options);
  HttpServerOptions options;
  options.listen = "127.0.0.1:0";
  options.threads = 1;
  HttpServer server(options, registry,
                    MakeProxyHandlers({}, EdgeClients{auth, quota, router, billing}, registry));
  server.Start();
  auto t0 = Clock::now();
  auto reply = Post(server.port(), "/v1/chat/completions",
                    Json{{"model", "m"}, {"messages", Json::array()}});
  EXPECT_EQ(reply.status, 503);
  EXPECT_EQ(reply.json()["error"]["code"], "service_unavailable");
  EXPECT_LT(MsSince(t0), 1500);  // the gRPC deadline, not a hang
  auto models = Call(server.port(), http::verb::get, "/v1/models");
  EXPECT_EQ(models.status, 503);
  server.Drain(Clock::now() + 1s);
  router.Shutdown();
  server.Shutdown(Clock::now());
}

}  // namespace
}  // namespace tollgate::edge

namespace tollgate::edge {
namespace {

// Each API key is its own user (user id = the key), so tests can call as two users.
class KeyIsUserAuthClient final : public AuthClient {
 public:
  void Authenticate(std::string api_key, std::string,
                    std::function<void(AuthResult)> done) override {
    AuthResult result;
    result.principal.api_key_id = api_key;
    result.principal.user_id = api_key;
    done(std::move(result));
  }
};

TEST_F(EdgeTest, ResponsesAreSealedFoundAgainOnTheirKeyAndStreamedWithoutDone) {
  Json create = {{"model", "resp"}, {"input", "Say hello to the test."}};
  auto reply = Post(port_, "/v1/responses", create, {{"x-request-id", "test-resp-1"}});
  ASSERT_EQ(reply.status, 200) << reply.body;
  Json response = reply.json();
  const std::string id = response["id"];
  ASSERT_TRUE(id.starts_with("resp_tg")) << id;
  auto sent = mock_->Last();
  EXPECT_EQ(sent["target"], "/v1/responses");
  EXPECT_EQ(sent["headers"]["authorization"], "Bearer sk-resp-a");
  EXPECT_EQ(sent["body"]["max_output_tokens"], ProxyOptions{}.default_max_tokens);
  auto record = billing_.WaitFor("test-resp-1");
  ASSERT_TRUE(record);
  EXPECT_EQ(record->upstream_key_id, 121);
  EXPECT_EQ(record->prompt_tokens, response["usage"]["input_tokens"].get<int64_t>());
  EXPECT_EQ(record->completion_tokens, response["usage"]["output_tokens"].get<int64_t>());
  EXPECT_FALSE(record->usage_estimated);

  // Retrieve and input_items go to key 121 with the upstream id; answers carry the sealed id.
  auto got = Call(port_, http::verb::get, "/v1/responses/" + id, "", {{"x-request-id", "r-get"}});
  ASSERT_EQ(got.status, 200) << got.body;
  EXPECT_EQ(got.json()["id"], id);
  sent = mock_->Last();
  EXPECT_EQ(sent["method"], "GET");
  EXPECT_EQ(sent["headers"]["authorization"], "Bearer sk-resp-a");
  const std::string upstream_target = sent["target"];
  EXPECT_TRUE(upstream_target.starts_with("/v1/responses/resp_")) << upstream_target;
  EXPECT_EQ(upstream_target.find("resp_tg"), std::string::npos);
  auto follow_up = billing_.WaitFor("r-get");
  ASSERT_TRUE(follow_up);
  EXPECT_EQ(follow_up->upstream_key_id, 121);
  EXPECT_EQ(follow_up->prompt_tokens + follow_up->completion_tokens, 0);
  EXPECT_EQ(follow_up->http_status, 200);
  auto items = Call(port_, http::verb::get, "/v1/responses/" + id + "/input_items?limit=1");
  ASSERT_EQ(items.status, 200) << items.body;
  EXPECT_EQ(items.json()["data"].size(), 1u);
  EXPECT_EQ(mock_->Last()["target"], upstream_target + "/input_items?limit=1");

  // A chained request goes to the same key even though another is first in the plan... here
  // key 121 is first anyway; the pin replaces the plan with its single attempt.
  auto chained = Post(port_, "/v1/responses",
                      {{"model", "resp"}, {"input", "more"}, {"previous_response_id", id}});
  ASSERT_EQ(chained.status, 200) << chained.body;
  EXPECT_EQ(chained.json()["previous_response_id"], id);
  EXPECT_EQ(mock_->Last()["body"]["previous_response_id"],
            upstream_target.substr(std::string("/v1/responses/").size()));

  // Streamed: typed events, ids sealed, no [DONE].
  Json streamed = create;
  streamed["stream"] = true;
  auto stream = Call(port_, http::verb::post, "/v1/responses", streamed.dump());
  ASSERT_EQ(stream.status, 200) << stream.body;
  EXPECT_EQ(stream.body.find("[DONE]"), std::string::npos);
  EXPECT_TRUE(stream.body.starts_with("event: response.created\ndata: {")) << stream.body;
  const size_t last = stream.body.rfind("event: ");
  ASSERT_NE(last, std::string::npos);
  EXPECT_TRUE(stream.body.substr(last).starts_with("event: response.completed\n"));
  auto count = [&](std::string_view needle) {
    size_t n = 0;
    for (size_t at = stream.body.find(needle); at != std::string::npos;
         at = stream.body.find(needle, at + 1))
      ++n;
    return n;
  };
  EXPECT_GE(count("\"id\":\"resp_tg"), 3u);                       // created, in_progress, completed
  EXPECT_EQ(count("\"id\":\"resp_"), count("\"id\":\"resp_tg"));  // no upstream id left

  // Delete, then it is gone.
  EXPECT_EQ(Call(port_, http::verb::delete_, "/v1/responses/" + id).status, 200);
  auto gone = Call(port_, http::verb::get, "/v1/responses/" + id);
  EXPECT_EQ(gone.status, 404);
  EXPECT_EQ(gone.json()["error"]["message"], "Response with id '" + id + "' not found.");
}

TEST_F(EdgeTest, AResponseIsNotFoundForAnotherUserOrWithAForgedId) {
  KeyIsUserAuthClient auth;
  ProxyOptions proxy;
  proxy.response_id_secret = "edge-test-response-id-secret";
  HttpServerOptions options;
  options.listen = "127.0.0.1:0";
  options.threads = 1;
  HttpServer server(
      options, registry_,
      MakeProxyHandlers(proxy, EdgeClients{auth, quota_, *router_client_, billing_}, registry_));
  server.Start();
  const int port = server.port();
  const std::map<std::string, std::string> alice = {{"authorization", "Bearer alice"}};
  const std::map<std::string, std::string> bob = {{"authorization", "Bearer bob"}};
  auto created = Post(port, "/v1/responses", {{"model", "resp"}, {"input", "mine"}}, alice);
  ASSERT_EQ(created.status, 200) << created.body;
  const std::string id = created.json()["id"];
  const int64_t upstream_calls = mock_->Stats()["total"].get<int64_t>();

  auto expect_unknown = [&](const Reply& r, const std::string& what) {
    EXPECT_EQ(r.status, 404) << what << ": " << r.body;
    EXPECT_EQ(r.json()["error"]["code"], "not_found") << what;
    EXPECT_EQ(r.json()["error"]["type"], "invalid_request_error") << what;
  };
  expect_unknown(Call(port, http::verb::get, "/v1/responses/" + id, "", bob), "get");
  expect_unknown(Call(port, http::verb::delete_, "/v1/responses/" + id, "", bob), "delete");
  expect_unknown(Call(port, http::verb::post, "/v1/responses/" + id + "/cancel", "", bob),
                 "cancel");
  expect_unknown(Call(port, http::verb::get, "/v1/responses/" + id + "/input_items", "", bob),
                 "input_items");
  auto chained = Post(port, "/v1/responses",
                      {{"model", "resp"}, {"input", "x"}, {"previous_response_id", id}}, bob);
  expect_unknown(chained, "previous_response_id");
  EXPECT_EQ(chained.json()["error"]["param"], "previous_response_id");
  std::string forged = id;
  forged[10] = forged[10] == 'A' ? 'B' : 'A';
  expect_unknown(Call(port, http::verb::get, "/v1/responses/" + forged, "", alice), "forged");
  expect_unknown(Call(port, http::verb::get, "/v1/responses/resp_0123", "", alice), "raw id");
  EXPECT_EQ(mock_->Stats()["total"].get<int64_t>(), upstream_calls);  // none reached upstream
  EXPECT_EQ(Call(port, http::verb::get, "/v1/responses/" + id, "", alice).status, 200);

  server.Drain(Clock::now() + 5s);
  server.Shutdown(Clock::now());
}

}  // namespace
}  // namespace tollgate::edge
