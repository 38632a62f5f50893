// The quota service's gRPC surface: QuotaService (the edge's data path; admission on the worker
// pool because a subject's first touch reads the database, Settle acknowledged after its group
// commit) and QuotaAdminService (operators).
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "tollgate/quota/group_commit.h"
#include "tollgate/quota/limiter.h"
#include "tollgate/quota/repository.h"
#include "tollgate/quota/v1/quota.grpc.pb.h"
#include "tollgate/worker_pool.h"

namespace prometheus {
class Registry;
}  // namespace prometheus

namespace tollgate::quota {

struct QuotaServiceDeps {
  Limiter& limiter;
  GroupCommitter& committer;
  WorkerPool& workers;
  prometheus::Registry& registry;  // admissions and settlements, counted
  // Leases an earlier incarnation granted may be in use until then (now + quota.lease_ttl at
  // start): admissions wait for it and no lease is granted before it.
  std::chrono::steady_clock::time_point leases_settled_at{};
};

std::unique_ptr<grpc::Service> MakeQuotaService(QuotaServiceDeps deps);

struct QuotaAdminDeps {
  std::function<void(v1::GetStatusResponse*)> status;
  Limiter& limiter;
  QuotaRepository& repo;
  WorkerPool& workers;
};

std::unique_ptr<grpc::Service> MakeQuotaAdminService(QuotaAdminDeps deps);

}  // namespace tollgate::quota
