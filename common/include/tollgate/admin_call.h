// How every service answers an admin RPC on the gRPC callback API (the server
// admitted only the admin identity before the handler ran, see internal_auth.h):
// run the work on the worker pool (it may block on the database),
// finish the reactor from there. What the work throws is answered by
// ExceptionToGrpcStatus: an Error as it says, a lost database as UNAVAILABLE,
// anything else as INTERNAL (logged; no SQL leaks out). When the pool's queue
// is full the call is answered UNAVAILABLE at once.
#pragma once

#include <grpcpp/grpcpp.h>

#include <exception>
#include <string>
#include <utility>

#include "tollgate/grpc_errors.h"
#include "tollgate/worker_call.h"

namespace tollgate {

template <typename Work>
grpc::ServerUnaryReactor* RunAdminCall(grpc::CallbackServerContext* context, WorkerPool& workers,
                                       std::string component, const char* rpc, Work work) {
  auto* reactor = context->DefaultReactor();
  auto run = [reactor, component, rpc, work = std::move(work)]() mutable {
    grpc::Status status = grpc::Status::OK;
    try {
      work();
    } catch (...) {
      status = ExceptionToGrpcStatus(std::current_exception(), component, rpc);
    }
    reactor->Finish(status);
  };
  PostOrRefuse(workers, reactor, component, std::move(run));
  return reactor;
}

// GetStatus of every admin service: answered inline (nothing blocks).
template <typename Fill>
grpc::ServerUnaryReactor* RunStatusCall(grpc::CallbackServerContext* context, Fill fill) {
  auto* reactor = context->DefaultReactor();
  fill();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace tollgate
