// How a gRPC callback handler hands its blocking work to the WorkerPool: the work runs on a
// worker and finishes the reactor there. When the pool refuses it (its queue is full, or the
// service is stopping) the call is finished at once with UNAVAILABLE, so the caller fails fast
// and may retry, instead of waiting in a queue that only grows.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>
#include <utility>

#include "tollgate/grpc_errors.h"
#include "tollgate/worker_pool.h"

namespace tollgate {

inline grpc::Status WorkersBusyStatus(const std::string& service) {
  return ToGrpcStatus(ErrorCode::kServiceUnavailable,
                      "the " + service +
                          " service is overloaded (every worker is busy and its queue is full); "
                          "try again");
}

// Runs `task` (which must finish `reactor`) on `workers`, or finishes `reactor` UNAVAILABLE.
template <typename Task>
void PostOrRefuse(WorkerPool& workers, grpc::ServerUnaryReactor* reactor,
                  const std::string& service, Task task) {
  if (!workers.TryPost(std::move(task))) reactor->Finish(WorkersBusyStatus(service));
}

}  // namespace tollgate
