// Wires the router service: its database, its gRPC services, its admin API.
#include "tollgate/router/module.h"

#include "tollgate/db_service.h"
#include "tollgate/router/v1/router.grpc.pb.h"

namespace tollgate::router {
namespace {

namespace pb = ::tollgate::router::v1;

class AdminService final : public pb::RouterAdminService::CallbackService {
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

class RouterModule final : public DbServiceModule {
 public:
  explicit RouterModule(const ModuleDeps& deps) : DbServiceModule("router", deps, Migrations()) {}

 protected:
  void RegisterServices(GrpcServer& server) override {
    admin_ = std::make_unique<AdminService>(*this);
    server.Register(admin_.get(), pb::RouterAdminService::service_full_name());
  }

 private:
  std::unique_ptr<AdminService> admin_;
};

}  // namespace

std::unique_ptr<Module> MakeRouterModule(const ModuleDeps& deps) {
  return std::make_unique<RouterModule>(deps);
}

}  // namespace tollgate::router
