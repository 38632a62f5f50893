// The billing service's gRPC surface: BillingService (the edge: holds on the
// request path, usage records in batches) and BillingAdminService (operators).
// SQL runs on the worker pool; usage records go through the group-commit Ingestor.
#pragma once

#include <functional>
#include <memory>

#include "src/billing_metrics.h"
#include "tollgate/billing/billing.h"
#include "tollgate/billing/ingestor.h"
#include "tollgate/billing/v1/billing.grpc.pb.h"
#include "tollgate/worker_pool.h"

namespace tollgate::billing {

std::unique_ptr<grpc::Service> MakeBillingService(Billing& billing, Ingestor& ingestor,
                                                  WorkerPool& workers, BillingMetrics& metrics);

struct AdminServiceDeps {
  // Fills GetStatus.
  std::function<void(v1::GetStatusResponse*)> status;
  Billing& billing;
  WorkerPool& workers;
};

std::unique_ptr<grpc::Service> MakeBillingAdminService(AdminServiceDeps deps);

}  // namespace tollgate::billing
