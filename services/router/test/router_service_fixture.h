// The router module in-process for tests: its real gRPC server on 127.0.0.1:0 over a real
// throwaway database, stubs of its two services and a seeded catalogue. Used by router_test
// and by the cross-service tests in tests/cross (the edge's routing against it).
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "test/pg_fixture.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/grpc_server.h"
#include "tollgate/metrics.h"
#include "tollgate/router/module.h"
#include "tollgate/router/v1/router.grpc.pb.h"

namespace tollgate::router {

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

}  // namespace tollgate::router
