// The router module in-process: its real gRPC server on 127.0.0.1:0, a real
// channel, a real throwaway database.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <chrono>
#include <future>
#include <map>
#include <thread>

#include "pg_fixture.h"
#include "src/grpc_router_client.h"
#include "src/local_router.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/grpc_errors.h"
#include "tollgate/grpc_server.h"
#include "tollgate/metrics.h"
#include "tollgate/router/module.h"
#include "tollgate/router/v1/router.grpc.pb.h"

namespace tollgate::router {
namespace {

namespace pb = ::tollgate::router::v1;
using testing::TestDatabase;

constexpr char kToken[] = "test-admin-token-0123456789";
constexpr char kMasterKey[] = "8f1c2a7e9b3d4f60a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718";
const std::string kHeavySecret = "sk-heavy-SECRET-0123456789abcdefghij";
const std::string kLightSecret = "sk-light-SECRET-9876543210zyxwvutsrq";
// What "gpt-4o-mini" is routed to.
const std::string kUpstreamModel = "gpt-4o-mini-2024-07-18";

class RouterProcess {
 public:
  RouterProcess(const std::string& dsn, Config::Environment extra = {}) {
    Config::Environment env = {{"TOLLGATE_ROUTER__DATABASE__DSN", dsn},
                               {"TOLLGATE_ROUTER__GRPC_LISTEN", "127.0.0.1:0"},
                               {"TOLLGATE_ROUTER__WORKERS", "2"},
                               {"TOLLGATE_ROUTER__DATABASE__POOL_SIZE", "2"},
                               {"TOLLGATE_ADMIN__TOKEN", kToken},
                               {"TOLLGATE_ROUTER__MASTER_KEY", kMasterKey},
                               {"TOLLGATE_ROUTER__BREAKER__COOLDOWN", "1h"},
                               {"TOLLGATE_ROUTER__CACHE_REFRESH", "100ms"}};
    for (auto& [k, v] : extra) env[k] = v;
    config_ = Config::Load("", env);
    module_ = MakeRouterModule({config_, metrics_});
  }
  ~RouterProcess() {
    module_->BeginShutdown();
    module_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  }
  void Start() { module_->Start(); }
  int port() { return dynamic_cast<DbServiceModule&>(*module_).grpc_port(); }
  Metrics& metrics() { return metrics_; }

 private:
  Metrics metrics_{"127.0.0.1:0"};
  Config config_;
  std::unique_ptr<Module> module_;
};

class RouterGrpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    process_ = std::make_unique<RouterProcess>(db_.dsn());
    process_->Start();
    const std::string target = "127.0.0.1:" + std::to_string(process_->port());
    router_ = pb::RouterService::NewStub(MakeChannel(target));  // as the edge
    // Only the credentials each call adds (Ctx): the admin token, a wrong one or none.
    admin_ = pb::RouterAdminService::NewStub(MakeChannel(target, /*send_service_token=*/false));
  }

  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = kToken) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    SetDeadline(*ctx, std::chrono::seconds(10));
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }

  // Provider "openai" with a heavy (3) and a light (1) key serving "gpt-4o-mini", alias "mini".
  void Seed() {
    pb::CreateProviderRequest cp;
    cp.set_name("openai");
    cp.set_type(pb::PROVIDER_TYPE_OPENAI);
    cp.set_base_url("https://api.openai.com/v1");
    pb::CreateProviderResponse provider;
    ASSERT_TRUE(admin_->CreateProvider(Ctx().get(), cp, &provider).ok());
    provider_id_ = provider.provider().id();
    for (auto [name, secret, weight] :
         {std::tuple{"heavy", kHeavySecret, 3}, std::tuple{"light", kLightSecret, 1}}) {
      pb::CreateUpstreamKeyRequest ck;
      ck.set_provider_id(provider_id_);
      ck.set_name(name);
      ck.set_secret(secret);
      ck.set_weight(weight);
      pb::CreateUpstreamKeyResponse key;
      auto status = admin_->CreateUpstreamKey(Ctx().get(), ck, &key);
      ASSERT_TRUE(status.ok()) << status.error_message();
      EXPECT_EQ(key.SerializeAsString().find(secret), std::string::npos);
      EXPECT_EQ(key.key().masked_key(), secret.substr(0, 8) + "...");
      (weight == 3 ? heavy_id_ : light_id_) = key.key().id();
    }
    pb::CreateModelRequest cm;
    cm.set_name("gpt-4o-mini");
    cm.set_owned_by("openai");
    pb::CreateModelResponse model;
    ASSERT_TRUE(admin_->CreateModel(Ctx().get(), cm, &model).ok());
    pb::SetModelRouteRequest sr;
    sr.set_model("gpt-4o-mini");
    sr.set_provider_id(provider_id_);
    sr.set_upstream_model("gpt-4o-mini-2024-07-18");
    pb::SetModelRouteResponse route;
    ASSERT_TRUE(admin_->SetModelRoute(Ctx().get(), sr, &route).ok());
    pb::SetAliasRequest sa;
    sa.set_alias("mini");
    sa.set_model("gpt-4o-mini");
    pb::SetAliasResponse alias;
    ASSERT_TRUE(admin_->SetAlias(Ctx().get(), sa, &alias).ok());
  }

  grpc::Status Route(const std::string& model, pb::RouteResponse* response) {
    pb::RouteRequest request;
    request.set_model(model);
    return router_->Route(Ctx("").get(), request, response);
  }

  void Report(int64_t key, pb::OutcomeKind kind, int times, int64_t retry_after_ms = 0,
              const std::string& upstream_model = kUpstreamModel) {
    pb::ReportOutcomesRequest request;
    for (int i = 0; i < times; ++i) {
      auto* o = request.add_outcomes();
      o->set_upstream_key_id(key);
      o->set_kind(kind);
      o->set_retry_after_ms(retry_after_ms);
      o->set_upstream_model(upstream_model);
    }
    pb::ReportOutcomesResponse response;
    ASSERT_TRUE(router_->ReportOutcomes(Ctx("").get(), request, &response).ok());
  }

  std::map<int64_t, pb::UpstreamKey> Keys() {
    pb::ListUpstreamKeysResponse response;
    EXPECT_TRUE(admin_->ListUpstreamKeys(Ctx().get(), {}, &response).ok());
    std::map<int64_t, pb::UpstreamKey> out;
    for (const auto& k : response.keys()) out[k.id()] = k;
    EXPECT_EQ(response.SerializeAsString().find("SECRET"), std::string::npos);
    return out;
  }

  TestDatabase db_;
  std::unique_ptr<RouterProcess> process_;
  std::unique_ptr<pb::RouterService::Stub> router_;
  std::unique_ptr<pb::RouterAdminService::Stub> admin_;
  int64_t provider_id_ = 0;
  int64_t heavy_id_ = 0;
  int64_t light_id_ = 0;
};

TEST_F(RouterGrpcTest, AdminRpcsRequireTheAdminToken) {
  pb::GetStatusResponse status;
  EXPECT_EQ(admin_->GetStatus(Ctx("").get(), {}, &status).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(admin_->GetStatus(Ctx("wrong-token").get(), {}, &status).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  pb::CreateProviderRequest cp;
  cp.set_name("sneaky");
  cp.set_type(pb::PROVIDER_TYPE_OPENAI);
  cp.set_base_url("https://evil.example.com/v1");
  pb::CreateProviderResponse created;
  EXPECT_EQ(admin_->CreateProvider(Ctx("").get(), cp, &created).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  pb::ListUpstreamKeysResponse keys;
  EXPECT_EQ(admin_->ListUpstreamKeys(Ctx("").get(), {}, &keys).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  pb::DeleteModelRequest dm;
  dm.set_name("x");
  pb::DeleteModelResponse deleted;
  EXPECT_EQ(admin_->DeleteModel(Ctx("wrong-token").get(), dm, &deleted).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  pb::ListProvidersResponse providers;
  ASSERT_TRUE(admin_->ListProviders(Ctx().get(), {}, &providers).ok());
  EXPECT_EQ(providers.providers_size(), 0) << "the unauthenticated create did nothing";
  ASSERT_TRUE(admin_->GetStatus(Ctx().get(), {}, &status).ok());
  EXPECT_GE(status.schema_version(), 1);
  EXPECT_EQ(status.database(), db_.name());
}

TEST_F(RouterGrpcTest, RouteServesTheWeightedPlanWithTheDecryptedKey) {
  Seed();
  std::map<int64_t, int> first;
  for (int i = 0; i < 8; ++i) {
    pb::RouteResponse plan;
    auto status = Route(i % 2 ? "mini" : "gpt-4o-mini", &plan);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(plan.model(), "gpt-4o-mini");
    ASSERT_EQ(plan.attempts_size(), 2);
    ++first[plan.attempts(0).upstream_key_id()];
    EXPECT_NE(plan.attempts(0).upstream_key_id(), plan.attempts(1).upstream_key_id());
    for (const auto& a : plan.attempts()) {
      EXPECT_EQ(a.api_key(), a.upstream_key_id() == heavy_id_ ? kHeavySecret : kLightSecret);
      EXPECT_EQ(a.provider_type(), pb::PROVIDER_TYPE_OPENAI);
      EXPECT_EQ(a.base_url(), "https://api.openai.com/v1");
      EXPECT_EQ(a.upstream_model(), "gpt-4o-mini-2024-07-18");
      EXPECT_FALSE(a.trial());
    }
  }
  EXPECT_EQ(first[heavy_id_], 6);
  EXPECT_EQ(first[light_id_], 2);

  pb::RouteRequest one;
  one.set_model("gpt-4o-mini");
  one.set_max_attempts(1);
  pb::RouteResponse single;
  ASSERT_TRUE(router_->Route(Ctx("").get(), one, &single).ok());
  EXPECT_EQ(single.attempts_size(), 1);

  pb::ListModelsResponse models;
  ASSERT_TRUE(router_->ListModels(Ctx("").get(), {}, &models).ok());
  ASSERT_EQ(models.models_size(), 2);
  EXPECT_EQ(models.models(0).id(), "gpt-4o-mini");
  EXPECT_EQ(models.models(0).owned_by(), "openai");
  EXPECT_GT(models.models(0).created(), 1600000000);
  EXPECT_EQ(models.models(1).id(), "mini");
}

TEST_F(RouterGrpcTest, GetRoutingTableHandsTheCatalogueWithOpenedSecretsAndVersions) {
  Seed();
  pb::GetRoutingTableRequest request;
  pb::GetRoutingTableResponse table;
  ASSERT_TRUE(router_->GetRoutingTable(Ctx("").get(), request, &table).ok());
  EXPECT_FALSE(table.unchanged());
  ASSERT_EQ(table.keys_size(), 2);
  for (const auto& k : table.keys()) {
    EXPECT_TRUE(k.usable());
    EXPECT_EQ(k.secret(), k.id() == heavy_id_ ? kHeavySecret : kLightSecret);
    EXPECT_EQ(k.weight(), k.id() == heavy_id_ ? 3 : 1);
  }
  EXPECT_EQ(table.models_size(), 1);
  EXPECT_EQ(table.aliases_size(), 1);
  EXPECT_EQ(table.policy().failure_threshold(), 3);
  // Asking with the current version: nothing but "unchanged".
  request.set_known_version(table.version());
  pb::GetRoutingTableResponse again;
  ASSERT_TRUE(router_->GetRoutingTable(Ctx("").get(), request, &again).ok());
  EXPECT_TRUE(again.unchanged());
  EXPECT_EQ(again.keys_size(), 0);
  // A change makes a new version.
  pb::UpdateUpstreamKeyRequest uk;
  uk.set_id(light_id_);
  uk.set_weight(5);
  pb::UpdateUpstreamKeyResponse updated;
  ASSERT_TRUE(admin_->UpdateUpstreamKey(Ctx().get(), uk, &updated).ok());
  pb::GetRoutingTableResponse changed;
  ASSERT_TRUE(router_->GetRoutingTable(Ctx("").get(), request, &changed).ok());
  EXPECT_FALSE(changed.unchanged());
  EXPECT_NE(changed.version(), table.version());
}

// The edge's side: plans made in the edge from the polled table, the router asked only for a
// model the table does not know, breakers fed by the edge's own outcomes.
TEST_F(RouterGrpcTest, AnEdgePlansLocallyFromTheRoutingTable) {
  Seed();
  struct Remote final : edge::RouterClient {
    int routes = 0;
    int reports = 0;
    void Route(std::string, int32_t, std::function<void(edge::RouteResult)> done) override {
      ++routes;
      edge::RouteResult r;
      r.failure = edge::Failure{ErrorCode::kModelNotFound, "remote"};
      done(r);
    }
    void Report(edge::AttemptOutcome) override { ++reports; }
    void ListModels(std::function<void(edge::ModelsResult)> done) override { done({}); }
  } remote;
  edge::LocalRouterOptions options;
  options.target = "127.0.0.1:" + std::to_string(process_->port());
  options.refresh = std::chrono::hours(1);  // polled by hand below
  edge::LocalRouterClient local(options, remote);
  ASSERT_TRUE(local.RefreshOnce());
  ASSERT_TRUE(local.has_table());

  std::map<int64_t, int> first;
  for (int i = 0; i < 8; ++i) {
    edge::RouteResult plan;
    local.Route(i % 2 ? "mini" : "gpt-4o-mini", 3, [&](edge::RouteResult r) { plan = r; });
    ASSERT_FALSE(plan.failure);
    EXPECT_EQ(plan.model, "gpt-4o-mini");
    ASSERT_EQ(plan.attempts.size(), 2u);
    ++first[plan.attempts[0].upstream_key_id];
    for (const auto& a : plan.attempts) {
      EXPECT_EQ(a.api_key, a.upstream_key_id == heavy_id_ ? kHeavySecret : kLightSecret);
      EXPECT_EQ(a.upstream_model, "gpt-4o-mini-2024-07-18");
    }
  }
  EXPECT_EQ(first[heavy_id_], 6);
  EXPECT_EQ(first[light_id_], 2);
  EXPECT_EQ(remote.routes, 0) << "no call to the router per request";

  edge::RouteResult unknown;
  local.Route("gpt-5-nope", 3, [&](edge::RouteResult r) { unknown = r; });
  EXPECT_EQ(remote.routes, 1) << "an unknown model is asked of the router";

  // Three failures of the heavy key open its breaker in this edge: it leaves the plans.
  for (int i = 0; i < 3; ++i)
    local.Report({heavy_id_, edge::OutcomeKind::kServerError, 500, 0, 1, kUpstreamModel});
  EXPECT_EQ(remote.reports, 3) << "outcomes still reach the router";
  edge::RouteResult plan;
  local.Route("mini", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_FALSE(plan.failure);
  ASSERT_EQ(plan.attempts.size(), 1u);
  EXPECT_EQ(plan.attempts[0].upstream_key_id, light_id_);
  // A new table keeps that health.
  ASSERT_TRUE(local.RefreshOnce());
  local.Route("mini", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_EQ(plan.attempts.size(), 1u);
  local.Stop();
}

// Issue #15's flaky e2e test: an operator creates a model and then routes it; an edge that polls
// between the two holds a table where the model exists and nothing serves it. Until its next poll
// it answered 503 no_healthy_upstream; the router, which reloads on every admin change, knows
// the route at once, so the edge asks it (and polls early), as for a model it does not know.
TEST_F(RouterGrpcTest, AnEdgeAsksTheRouterForAModelItsTableHasNoRouteFor) {
  Seed();
  const std::string target = "127.0.0.1:" + std::to_string(process_->port());
  edge::GrpcRouterClient remote({.target = target});
  edge::LocalRouterOptions options;
  options.target = target;
  options.refresh = std::chrono::hours(1);  // polled by hand below
  edge::LocalRouterClient local(options, remote);
  // The poller's own first poll, done before the race is staged (it must not land later).
  for (int i = 0; i < 500 && !local.has_table(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(local.has_table());
  auto route = [&](const std::string& model) {
    std::promise<edge::RouteResult> planned;
    local.Route(model, 3, [&](edge::RouteResult r) { planned.set_value(std::move(r)); });
    return planned.get_future().get();
  };

  pb::CreateModelRequest cm;
  cm.set_name("late-model");
  pb::CreateModelResponse model;
  ASSERT_TRUE(admin_->CreateModel(Ctx().get(), cm, &model).ok());
  ASSERT_TRUE(local.RefreshOnce());  // the edge's poll lands between the two admin calls
  pb::SetModelRouteRequest sr;
  sr.set_model("late-model");
  sr.set_provider_id(provider_id_);
  pb::SetModelRouteResponse set;
  ASSERT_TRUE(admin_->SetModelRoute(Ctx().get(), sr, &set).ok());

  edge::RouteResult plan = route("late-model");
  ASSERT_FALSE(plan.failure) << plan.failure->message;
  EXPECT_EQ(plan.model, "late-model");
  EXPECT_EQ(plan.attempts.size(), 2u);

  // With every key of a routed model out, the edge answers itself: that is no table race.
  ASSERT_TRUE(local.RefreshOnce());
  for (int64_t key : {heavy_id_, light_id_})
    for (int i = 0; i < 3; ++i)
      local.Report({key, edge::OutcomeKind::kServerError, 500, 0, 1, "late-model"});
  plan = route("late-model");
  ASSERT_TRUE(plan.failure);
  EXPECT_EQ(plan.failure->code, ErrorCode::kNoHealthyUpstream);
  local.Stop();
  remote.Shutdown();
}

// Issue #15: the edge's own breakers are per (key, model) too: a model failing on every key
// leaves the other models those keys serve alone.
TEST_F(RouterGrpcTest, AnEdgeKeepsHealthPerKeyAndModel) {
  Seed();
  pb::CreateModelRequest cm;
  cm.set_name("other");
  pb::CreateModelResponse model;
  ASSERT_TRUE(admin_->CreateModel(Ctx().get(), cm, &model).ok());
  pb::SetModelRouteRequest sr;
  sr.set_model("other");
  sr.set_provider_id(provider_id_);
  pb::SetModelRouteResponse set;
  ASSERT_TRUE(admin_->SetModelRoute(Ctx().get(), sr, &set).ok());
  struct Remote final : edge::RouterClient {
    void Route(std::string, int32_t, std::function<void(edge::RouteResult)> done) override {
      done({edge::Failure{ErrorCode::kInternal, "not asked in this test"}});
    }
    void Report(edge::AttemptOutcome) override {}
    void ListModels(std::function<void(edge::ModelsResult)> done) override { done({}); }
  } remote;
  edge::LocalRouterOptions options;
  options.target = "127.0.0.1:" + std::to_string(process_->port());
  options.refresh = std::chrono::hours(1);
  edge::LocalRouterClient local(options, remote);
  ASSERT_TRUE(local.RefreshOnce());

  for (int64_t key : {heavy_id_, light_id_})
    local.Report({key, edge::OutcomeKind::kRateLimited, 429, 60000, 1, kUpstreamModel});
  edge::RouteResult plan;
  local.Route("gpt-4o-mini", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_TRUE(plan.failure);
  EXPECT_EQ(plan.failure->code, ErrorCode::kNoHealthyUpstream);
  local.Route("other", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_FALSE(plan.failure) << "another model of the same keys";
  EXPECT_EQ(plan.attempts.size(), 2u);

  // 401s are the key's: it leaves every model's plans.
  for (int i = 0; i < 3; ++i)
    local.Report({heavy_id_, edge::OutcomeKind::kAuthError, 401, 0, 1, "other"});
  local.Route("other", 3, [&](edge::RouteResult r) { plan = r; });
  ASSERT_FALSE(plan.failure);
  ASSERT_EQ(plan.attempts.size(), 1u);
  EXPECT_EQ(plan.attempts[0].upstream_key_id, light_id_);
  local.Stop();
}

TEST_F(RouterGrpcTest, UnknownModelIsNotFoundInOpenAiWords) {
  Seed();
  pb::RouteResponse plan;
  auto status = Route("gpt-5-nope", &plan);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(FromGrpcStatus(status), ErrorCode::kModelNotFound);
  EXPECT_EQ(status.error_message(),
            "The model `gpt-5-nope` does not exist or you do not have access to it.");
}

TEST_F(RouterGrpcTest, OutcomesOpenBreakersAndShowInListingAndMetrics) {
  Seed();
  Report(heavy_id_, pb::OUTCOME_KIND_SERVER_ERROR, 3);
  Report(987654, pb::OUTCOME_KIND_SERVER_ERROR, 1);  // an unknown key is ignored
  auto keys = Keys();
  const auto& heavy = keys.at(heavy_id_).health();
  EXPECT_EQ(heavy.state(), pb::BREAKER_STATE_CLOSED) << "5xx are the model's, not the key's";
  EXPECT_EQ(heavy.failures(), 3);
  EXPECT_EQ(heavy.requests(), 3);
  ASSERT_EQ(heavy.models_size(), 1);
  const auto& heavy_model = heavy.models(0);
  EXPECT_EQ(heavy_model.upstream_model(), kUpstreamModel);
  EXPECT_EQ(heavy_model.state(), pb::BREAKER_STATE_OPEN);
  EXPECT_EQ(heavy_model.consecutive_failures(), 3);
  EXPECT_EQ(heavy_model.failures(), 3);
  EXPECT_EQ(heavy_model.requests(), 3);
  auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch())
                    .count();
  EXPECT_GT(heavy_model.breaker_open_until_ms(), now_ms + 3500 * 1000) << "cooldown 1h";
  EXPECT_EQ(heavy.breaker_open_until_ms(), 0);
  EXPECT_EQ(keys.at(light_id_).health().models(0).state(), pb::BREAKER_STATE_CLOSED);

  for (int i = 0; i < 5; ++i) {
    pb::RouteResponse plan;
    ASSERT_TRUE(Route("mini", &plan).ok());
    ASSERT_EQ(plan.attempts_size(), 1);
    EXPECT_EQ(plan.attempts(0).upstream_key_id(), light_id_);
  }

  Report(light_id_, pb::OUTCOME_KIND_RATE_LIMITED, 1, 60000);
  EXPECT_GT(Keys().at(light_id_).health().models(0).rate_limited_until_ms(), now_ms + 50000);
  EXPECT_EQ(Keys().at(light_id_).health().rate_limited_until_ms(), 0);
  pb::RouteResponse plan;
  auto status = Route("mini", &plan);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(FromGrpcStatus(status), ErrorCode::kNoHealthyUpstream);

  prometheus::TextSerializer serializer;
  std::string text = serializer.Serialize(process_->metrics().registry().Collect());
  const std::string heavy_label = "key_id=\"" + std::to_string(heavy_id_) + "\"";
  EXPECT_NE(
      text.find("tollgate_router_attempts_total{" + heavy_label + ",outcome=\"server_error\"} 3"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("tollgate_router_breaker_state{" + heavy_label + "} 0"), std::string::npos)
      << text;
  EXPECT_NE(text.find("tollgate_router_breaker_state{" + heavy_label + ",upstream_model=\"" +
                      kUpstreamModel + "\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("tollgate_router_routes_total{result=\"no_healthy_upstream\"} 1"),
            std::string::npos);
  EXPECT_EQ(text.find("987654"), std::string::npos);
  EXPECT_EQ(text.find("SECRET"), std::string::npos);
  EXPECT_EQ(text.find("sk-heavy"), std::string::npos) << "not even the prefix";
}

TEST_F(RouterGrpcTest, AdminErrorsMapToStatusCodes) {
  Seed();
  pb::CreateProviderRequest cp;
  cp.set_name("openai");
  cp.set_type(pb::PROVIDER_TYPE_OPENAI);
  cp.set_base_url("https://api.openai.com/v1");
  pb::CreateProviderResponse provider;
  EXPECT_EQ(admin_->CreateProvider(Ctx().get(), cp, &provider).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  cp.set_name("other");
  cp.set_type(pb::PROVIDER_TYPE_UNSPECIFIED);
  EXPECT_EQ(admin_->CreateProvider(Ctx().get(), cp, &provider).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  cp.set_type(pb::PROVIDER_TYPE_OPENAI);
  cp.set_base_url("not a url");
  EXPECT_EQ(admin_->CreateProvider(Ctx().get(), cp, &provider).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  pb::UpdateUpstreamKeyRequest uk;
  uk.set_id(123456);
  uk.set_weight(2);
  pb::UpdateUpstreamKeyResponse updated;
  EXPECT_EQ(admin_->UpdateUpstreamKey(Ctx().get(), uk, &updated).error_code(),
            grpc::StatusCode::NOT_FOUND);
  uk.set_id(heavy_id_);
  uk.set_weight(0);
  EXPECT_EQ(admin_->UpdateUpstreamKey(Ctx().get(), uk, &updated).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // Disabling the provider takes its keys out of rotation at once.
  pb::UpdateProviderRequest up;
  up.set_id(provider_id_);
  up.set_enabled(false);
  pb::UpdateProviderResponse disabled;
  ASSERT_TRUE(admin_->UpdateProvider(Ctx().get(), up, &disabled).ok());
  EXPECT_FALSE(disabled.provider().enabled());
  EXPECT_EQ(disabled.provider().base_url(), "https://api.openai.com/v1");
  pb::RouteResponse plan;
  EXPECT_EQ(FromGrpcStatus(Route("mini", &plan)), ErrorCode::kNoHealthyUpstream);

  pb::ListCatalogueResponse catalogue;
  ASSERT_TRUE(admin_->ListCatalogue(Ctx().get(), {}, &catalogue).ok());
  ASSERT_EQ(catalogue.models_size(), 1);
  EXPECT_EQ(catalogue.models(0).aliases(0), "mini");
  EXPECT_EQ(catalogue.models(0).routes(0).upstream_model(), "gpt-4o-mini-2024-07-18");
}

TEST_F(RouterGrpcTest, AnotherReplicaSeesChangesWithinTheRefreshInterval) {
  RouterProcess replica(db_.dsn());
  replica.Start();
  auto stub =
      pb::RouterService::NewStub(MakeChannel("127.0.0.1:" + std::to_string(replica.port())));
  pb::RouteRequest request;
  request.set_model("mini");
  pb::RouteResponse plan;
  EXPECT_EQ(stub->Route(Ctx("").get(), request, &plan).error_code(), grpc::StatusCode::NOT_FOUND);
  Seed();  // through the first replica
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  grpc::Status status;
  do {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    plan.Clear();
    status = stub->Route(Ctx("").get(), request, &plan);
  } while (!status.ok() && std::chrono::steady_clock::now() < deadline);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(plan.attempts_size(), 2);
}

TEST(RouterStartupTest, RefusesToStartWithoutAUsableMasterKey) {
  TestDatabase db;
  for (const std::string& key : {std::string(), std::string("tooshort-but-secret-ish-value")}) {
    Config::Environment extra = {{"TOLLGATE_ROUTER__MASTER_KEY", key}};
    RouterProcess process(db.dsn(), extra);
    try {
      process.Start();
      ADD_FAILURE() << "started with master key '" << key << "'";
    } catch (const std::runtime_error& e) {
      std::string what = e.what();
      EXPECT_NE(what.find("router.master_key"), std::string::npos) << what;
      if (key.empty()) {
        EXPECT_NE(what.find("TOLLGATE_ROUTER__MASTER_KEY"), std::string::npos) << what;
      } else {
        EXPECT_NE(what.find("malformed"), std::string::npos) << what;
        EXPECT_EQ(what.find(key), std::string::npos) << "the error repeats the secret";
      }
    }
  }
  // The secret cannot come from a config file.
  char path[] = "/tmp/router-config-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  std::string yaml = std::string("router:\n  master_key: ") + kMasterKey + "\n";
  ASSERT_EQ(write(fd, yaml.data(), yaml.size()), static_cast<ssize_t>(yaml.size()));
  close(fd);
  EXPECT_THROW(Config::Load(path, {}), ConfigError);
  unlink(path);
}

TEST_F(RouterGrpcTest, AdminRpcsAreAuditedWithoutTheUpstreamSecret) {
  auto ctx = [&] {
    auto c = Ctx();
    c->AddMetadata("x-tollgate-actor", "bob@ops");
    return c;
  };
  pb::CreateProviderRequest cp;
  cp.set_name("audited");
  cp.set_type(pb::PROVIDER_TYPE_OPENAI);
  cp.set_base_url("https://api.openai.com/v1");
  pb::CreateProviderResponse provider;
  ASSERT_TRUE(admin_->CreateProvider(ctx().get(), cp, &provider).ok());
  pb::CreateUpstreamKeyRequest ck;
  ck.set_provider_id(provider.provider().id());
  ck.set_name("main");
  ck.set_secret("sk-secret-xyz");
  pb::CreateUpstreamKeyResponse key;
  ASSERT_TRUE(admin_->CreateUpstreamKey(ctx().get(), ck, &key).ok());
  const int64_t key_id = key.key().id();
  pb::UpdateUpstreamKeyRequest uk;
  uk.set_id(key_id);
  uk.set_secret("sk-rotated-secret-abc");
  pb::UpdateUpstreamKeyResponse updated;
  ASSERT_TRUE(admin_->UpdateUpstreamKey(ctx().get(), uk, &updated).ok());
  pb::CreateModelRequest cm;
  cm.set_name("gpt-4o");
  pb::CreateModelResponse model;
  ASSERT_TRUE(admin_->CreateModel(ctx().get(), cm, &model).ok());
  // Failed: nothing written.
  EXPECT_EQ(admin_->CreateModel(ctx().get(), cm, &model).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  ck.set_provider_id(9999);
  EXPECT_EQ(admin_->CreateUpstreamKey(ctx().get(), ck, &key).error_code(),
            grpc::StatusCode::NOT_FOUND);

  pb::ListAuditLogRequest lr;
  pb::ListAuditLogResponse log;
  EXPECT_EQ(admin_->ListAuditLog(Ctx("").get(), lr, &log).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  ASSERT_TRUE(admin_->ListAuditLog(Ctx().get(), lr, &log).ok());
  ASSERT_EQ(log.entries_size(), 4) << log.DebugString();
  EXPECT_EQ(log.entries(0).action(), "create_model");
  EXPECT_EQ(log.entries(0).target(), "model:gpt-4o");
  EXPECT_EQ(log.entries(1).action(), "update_upstream_key");
  EXPECT_EQ(log.entries(1).target(), "upstream_key:" + std::to_string(key_id));
  EXPECT_EQ(log.entries(2).action(), "create_upstream_key");
  EXPECT_EQ(log.entries(2).target(), "upstream_key:" + std::to_string(key_id));
  EXPECT_NE(log.entries(2).details().find("\"name\": \"main\""), std::string::npos)
      << log.entries(2).details();
  EXPECT_NE(log.entries(2).details().find("[redacted]"), std::string::npos);
  EXPECT_EQ(log.entries(3).action(), "create_provider");
  EXPECT_EQ(log.entries(3).target(), "provider:" + std::to_string(provider.provider().id()));
  for (const auto& e : log.entries()) EXPECT_EQ(e.actor().rfind("bob@ops (", 0), 0u) << e.actor();
  const std::string all = log.DebugString();
  EXPECT_EQ(all.find("sk-secret-xyz"), std::string::npos) << all;
  EXPECT_EQ(all.find("secret-xyz"), std::string::npos) << all;
  EXPECT_EQ(all.find("sk-rotated-secret-abc"), std::string::npos) << all;
}

}  // namespace
}  // namespace tollgate::router
