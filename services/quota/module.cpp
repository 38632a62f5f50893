// Wires the quota service: its database, its gRPC services, its admin API.
#include "tollgate/quota/module.h"

#include "tollgate/db_service.h"
#include "tollgate/quota/v1/quota.grpc.pb.h"

namespace tollgate::quota {
namespace {

namespace pb = ::tollgate::quota::v1;

class AdminService final : public pb::QuotaAdminService::CallbackService {
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

class QuotaModule final : public DbServiceModule {
 public:
  explicit QuotaModule(const ModuleDeps& deps) : DbServiceModule("quota", deps, Migrations()) {}

 protected:
  void RegisterServices(GrpcServer& server) override {
    admin_ = std::make_unique<AdminService>(*this);
    server.Register(admin_.get(), pb::QuotaAdminService::service_full_name());
  }

 private:
  std::unique_ptr<AdminService> admin_;
};

}  // namespace

std::unique_ptr<Module> MakeQuotaModule(const ModuleDeps& deps) {
  return std::make_unique<QuotaModule>(deps);
}

}  // namespace tollgate::quota
