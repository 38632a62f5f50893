// Wires the billing service: its database, its gRPC services, its admin API.
#include "tollgate/billing/module.h"

#include "tollgate/billing/v1/billing.grpc.pb.h"
#include "tollgate/db_service.h"

namespace tollgate::billing {
namespace {

namespace pb = ::tollgate::billing::v1;

class AdminService final : public pb::BillingAdminService::CallbackService {
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

class BillingModule final : public DbServiceModule {
 public:
  explicit BillingModule(const ModuleDeps& deps) : DbServiceModule("billing", deps, Migrations()) {}

 protected:
  void RegisterServices(GrpcServer& server) override {
    admin_ = std::make_unique<AdminService>(*this);
    server.Register(admin_.get(), pb::BillingAdminService::service_full_name());
  }

 private:
  std::unique_ptr<AdminService> admin_;
};

}  // namespace

std::unique_ptr<Module> MakeBillingModule(const ModuleDeps& deps) {
  return std::make_unique<BillingModule>(deps);
}

}  // namespace tollgate::billing
