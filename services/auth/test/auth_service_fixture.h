// The auth module in-process for tests: its real gRPC server on 127.0.0.1:0 over a real
// throwaway database, and stubs of its two services. Used by auth_test and by the
// cross-service tests in tests/cross (the edge's GrpcAuthClient against it).
#pragma once

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include "test/pg_fixture.h"
#include "tollgate/auth/module.h"
#include "tollgate/auth/v1/auth.grpc.pb.h"
#include "tollgate/config.h"
#include "tollgate/db_service.h"
#include "tollgate/grpc_server.h"
#include "tollgate/metrics.h"

namespace tollgate::auth {

namespace pb = ::tollgate::auth::v1;
using testing::TestDatabase;
using namespace std::chrono_literals;
using Ms = std::chrono::duration<double, std::milli>;

constexpr char kToken[] = "test-admin-token-0123456789";

class AuthProcess {
 public:
  AuthProcess(const std::string& dsn, int port = 0) {
    Config::Environment env = {{"TOLLGATE_AUTH__DATABASE__DSN", dsn},
                               {"TOLLGATE_AUTH__GRPC_LISTEN", "127.0.0.1:" + std::to_string(port)},
                               {"TOLLGATE_AUTH__WORKERS", "2"},
                               {"TOLLGATE_AUTH__DATABASE__POOL_SIZE", "2"},
                               {"TOLLGATE_ADMIN__TOKEN", kToken},
                               {"TOLLGATE_AUTH__CACHE_REFRESH", "100ms"},
                               {"TOLLGATE_AUTH__LAST_USED_FLUSH_INTERVAL", "100ms"},
                               {"TOLLGATE_AUTH__WATCH_HEARTBEAT", "200ms"}};
    config_ = Config::Load("", env);
    module_ = MakeAuthModule({config_, metrics_});
    module_->Start();
  }
  ~AuthProcess() { Stop(); }
  void Stop() {
    if (!module_) return;
    module_->BeginShutdown();
    module_->Shutdown(std::chrono::system_clock::now() + 5s);
    module_.reset();
  }
  int port() { return dynamic_cast<DbServiceModule&>(*module_).grpc_port(); }

 private:
  Metrics metrics_{"127.0.0.1:0"};
  Config config_;
  std::unique_ptr<Module> module_;
};

template <typename Fn>
bool WaitUntil(Fn&& fn, std::chrono::milliseconds timeout = 10s) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (fn()) return true;
    std::this_thread::sleep_for(1ms);
  }
  return fn();
}

class AuthGrpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    process_ = std::make_unique<AuthProcess>(db_.dsn());
    port_ = process_->port();
    auth_ = pb::AuthService::NewStub(MakeChannel(Target()));  // as the edge
    // Only the credentials each call adds (Ctx): the admin token, a wrong one or none.
    admin_ = pb::AuthAdminService::NewStub(MakeChannel(Target(), /*send_service_token=*/false));
  }

  std::string Target() const { return "127.0.0.1:" + std::to_string(port_); }

  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = kToken) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    SetDeadline(*ctx, 10s);
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    return ctx;
  }

  int64_t MakeUser(const std::string& name = "acme") {
    pb::CreateUserRequest request;
    request.set_name(name);
    pb::CreateUserResponse response;
    auto status = admin_->CreateUser(Ctx().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.user().id();
  }

  pb::CreateApiKeyResponse MakeKey(int64_t user, pb::CreateApiKeyRequest request = {}) {
    request.set_user_id(user);
    pb::CreateApiKeyResponse response;
    auto status = admin_->CreateApiKey(Ctx().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  pb::ApiKey Update(pb::UpdateApiKeyRequest request) {
    pb::UpdateApiKeyResponse response;
    auto status = admin_->UpdateApiKey(Ctx().get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response.key();
  }

  void Revoke(int64_t id) {
    pb::RevokeApiKeyRequest request;
    request.set_id(id);
    pb::RevokeApiKeyResponse response;
    auto status = admin_->RevokeApiKey(Ctx().get(), request, &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }

  pb::AuthenticateResponse AuthenticateRpc(const std::string& key, const std::string& ip) {
    pb::AuthenticateRequest request;
    request.set_api_key(key);
    request.set_client_ip(ip);
    pb::AuthenticateResponse response;
    auto status = auth_->Authenticate(Ctx("").get(), request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  TestDatabase db_;
  std::unique_ptr<AuthProcess> process_;
  int port_ = 0;
  std::unique_ptr<pb::AuthService::Stub> auth_;
  std::unique_ptr<pb::AuthAdminService::Stub> admin_;
};

}  // namespace tollgate::auth
