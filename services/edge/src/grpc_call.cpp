#include "src/grpc_call.h"

#include "tollgate/errors.h"
#include "tollgate/grpc_errors.h"
#include "tollgate/grpc_server.h"

namespace tollgate::edge {
namespace {

// The OpenAI error code a status carries: the one decoding of our services' statuses.
ErrorCode Decode(const grpc::Status& status) { return FromGrpcStatus(status); }

}  // namespace

bool Unreachable(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNIMPLEMENTED: {
      // ...unless the service named a decision of its own (no_healthy_upstream).
      const ErrorCode code = Decode(status);
      return code == ErrorCode::kServiceUnavailable || code == ErrorCode::kInternal;
    }
    default:
      return false;
  }
}

Failure AnsweredError(const grpc::Status& status) {
  return Failure{Decode(status), status.error_message()};
}

grpc::Status ShutDownStatus() {
  return grpc::Status(grpc::StatusCode::UNAVAILABLE, "the edge is shutting down");
}

std::shared_ptr<grpc::Channel> OpenChannel(const std::string& target) {
  auto channel = MakeChannel(target);
  channel->GetState(/*try_to_connect=*/true);
  return channel;
}

bool CallTracker::Begin(grpc::ClientContext* context, Kind kind) {
  std::lock_guard lock(mu_);
  if (kind == Kind::kRequest) {
    if (stopped_) return false;
    live_.insert(context);
  }
  ++in_flight_;
  return true;
}

bool CallTracker::Stop() {
  std::lock_guard lock(mu_);
  if (stopped_) return false;
  stopped_ = true;
  return true;
}

bool CallTracker::stopped() const {
  std::lock_guard lock(mu_);
  return stopped_;
}

void CallTracker::Drain() {
  std::unique_lock lock(mu_);
  stopped_ = true;
  for (auto* context : live_) context->TryCancel();
  cv_.wait(lock, [&] { return in_flight_ == 0; });
}

int CallTracker::in_flight() const {
  std::lock_guard lock(mu_);
  return in_flight_;
}

}  // namespace tollgate::edge
