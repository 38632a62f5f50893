// The router's gRPC surface: RouterService (the edge's data path, answered
// from memory in the reactor) and RouterAdminService (operators; database
// work on the worker pool).
#pragma once

#include <functional>
#include <memory>

#include "src/router_metrics.h"
#include "tollgate/router/admin.h"
#include "tollgate/router/key_pool.h"
#include "tollgate/router/refresher.h"
#include "tollgate/router/v1/router.grpc.pb.h"
#include "tollgate/worker_pool.h"

namespace tollgate::router {

// `refresher` and `open` serve GetRoutingTable (the catalogue with secrets opened).
std::unique_ptr<grpc::Service> MakeRouterService(KeyPool& pool, RouterMetrics& metrics,
                                                 const CatalogueRefresher& refresher,
                                                 SecretOpener open);

struct AdminServiceDeps {
  // Fills GetStatus.
  std::function<void(v1::GetStatusResponse*)> status;
  RouterAdmin& admin;
  WorkerPool& workers;
};

std::unique_ptr<grpc::Service> MakeRouterAdminService(AdminServiceDeps deps);

}  // namespace tollgate::router
