// The router module in-process: its real gRPC server on 127.0.0.1:0, a real channel, a real
// throwaway database (router_service_fixture.h). The edge's routing against it: tests/cross.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include <chrono>
#include <future>
#include <map>
#include <thread>

#include "test/router_service_fixture.h"
#include "tollgate/grpc_errors.h"

namespace tollgate::router {
namespace {

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

TEST_F(RouterGrpcTest, AnthropicProviderIsStoredAndRoutedWithItsType) {
  pb::CreateProviderRequest cp;
  cp.set_name("anthropic");
  cp.set_type(pb::PROVIDER_TYPE_ANTHROPIC);
  cp.set_base_url("https://api.anthropic.com/");  // no api_version needed
  pb::CreateProviderResponse provider;
  auto status = admin_->CreateProvider(Ctx().get(), cp, &provider);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(provider.provider().type(), pb::PROVIDER_TYPE_ANTHROPIC);
  EXPECT_EQ(provider.provider().base_url(), "https://api.anthropic.com");
  pb::CreateUpstreamKeyRequest ck;
  ck.set_provider_id(provider.provider().id());
  ck.set_name("ant-1");
  ck.set_secret("sk-ant-api03-secret");
  pb::CreateUpstreamKeyResponse key;
  ASSERT_TRUE(admin_->CreateUpstreamKey(Ctx().get(), ck, &key).ok());
  pb::CreateModelRequest cm;
  cm.set_name("claude");
  pb::CreateModelResponse model;
  ASSERT_TRUE(admin_->CreateModel(Ctx().get(), cm, &model).ok());
  pb::SetModelRouteRequest sr;
  sr.set_model("claude");
  sr.set_provider_id(provider.provider().id());
  sr.set_upstream_model("claude-sonnet-4-5");
  pb::SetModelRouteResponse route;
  ASSERT_TRUE(admin_->SetModelRoute(Ctx().get(), sr, &route).ok());

  pb::ListProvidersResponse providers;
  ASSERT_TRUE(admin_->ListProviders(Ctx().get(), {}, &providers).ok());
  ASSERT_EQ(providers.providers_size(), 1);
  EXPECT_EQ(providers.providers(0).type(), pb::PROVIDER_TYPE_ANTHROPIC);
  pb::RouteResponse plan;
  ASSERT_TRUE(Route("claude", &plan).ok());
  ASSERT_EQ(plan.attempts_size(), 1);
  EXPECT_EQ(plan.attempts(0).provider_type(), pb::PROVIDER_TYPE_ANTHROPIC);
  EXPECT_EQ(plan.attempts(0).base_url(), "https://api.anthropic.com");
  EXPECT_EQ(plan.attempts(0).upstream_model(), "claude-sonnet-4-5");
  EXPECT_EQ(plan.attempts(0).api_key(), "sk-ant-api03-secret");
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
