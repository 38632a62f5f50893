// Wires the auth service: its database, its gRPC services, its admin API.
#include "tollgate/auth/module.h"

#include "tollgate/auth/v1/auth.grpc.pb.h"
#include "tollgate/db_service.h"

namespace tollgate::auth {
namespace {

namespace pb = ::tollgate::auth::v1;

class AdminService final : public pb::AuthAdminService::CallbackService {
 public:
  explicit AdminService(const DbServiceModule& module) : module_(module) {}

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* context,
                                      const pb::GetStatusRequest*,
                                      pb::GetStatusResponse* response) override {
    auto* reactor = context->DefaultReactor();
    grpc::Status auth = CheckAdminToken(*context, module_.admin_token());
    if (auth.ok()) FillStatus(module_, response);
    reactor->Finish(auth);
    return reactor;
  }

 private:
  const DbServiceModule& module_;
};

class AuthModule final : public DbServiceModule {
 public:
  explicit AuthModule(const ModuleDeps& deps) : DbServiceModule("auth", deps, Migrations()) {}

 protected:
  void RegisterServices(GrpcServer& server) override {
    admin_ = std::make_unique<AdminService>(*this);
    server.Register(admin_.get(), pb::AuthAdminService::service_full_name());
  }

 private:
  std::unique_ptr<AdminService> admin_;
};

}  // namespace

std::unique_ptr<Module> MakeAuthModule(const ModuleDeps& deps) {
  return std::make_unique<AuthModule>(deps);
}

}  // namespace tollgate::auth
