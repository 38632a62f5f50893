// How every service answers an admin RPC on the gRPC callback API (the server
// admitted only the admin identity before the handler ran, see internal_auth.h):
// run the work on the worker pool (it may block on the database),
// finish the reactor from there. AdminError reaches the caller as is; anything
// else is logged and answered UNAVAILABLE without details (no SQL leaks out).
// When the pool's queue is full the call is answered UNAVAILABLE at once.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>
#include <utility>

#include "tollgate/admin_error.h"
#include "tollgate/errors.h"
#include "tollgate/log.h"
#include "tollgate/worker_call.h"

namespace tollgate {

inline grpc::Status ToGrpcStatus(const AdminError& e) {
  switch (e.kind()) {
    case AdminError::Kind::kInvalidArgument:
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, e.what());
    case AdminError::Kind::kNotFound:
      return grpc::Status(grpc::StatusCode::NOT_FOUND, e.what());
    case AdminError::Kind::kAlreadyExists:
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS, e.what());
    case AdminError::Kind::kFailedPrecondition:
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, e.what());
  }
  return grpc::Status(grpc::StatusCode::INTERNAL, "internal error");
}

template <typename Work>
grpc::ServerUnaryReactor* RunAdminCall(grpc::CallbackServerContext* context, WorkerPool& workers,
                                       std::string component, const char* rpc, Work work) {
  auto* reactor = context->DefaultReactor();
  auto run = [reactor, component, rpc, work = std::move(work)]() mutable {
    grpc::Status status = grpc::Status::OK;
    try {
      work();
    } catch (const AdminError& e) {
      status = ToGrpcStatus(e);
    } catch (const std::exception& e) {
      log::Error(component, "admin call failed", {{"rpc", rpc}, {"error", log::Redact(e.what())}});
      status = ToGrpcStatus(ErrorCode::kServiceUnavailable,
                            "the " + component + " service's database is unavailable; try again");
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
