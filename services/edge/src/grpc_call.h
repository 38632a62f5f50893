// The skeleton every gRPC client of the edge (GrpcAuthClient, GrpcQuotaClient, GrpcRouterClient,
// GrpcBillingClient) is built on: opening a channel, one unary call with its deadline and the
// ownership of its objects, a tracker of the calls in flight that drains them at shutdown, and
// the one reading of a failed call: Unreachable (the service gave no decision) or AnsweredError
// (the error it answered).
//
// A call's completion runs exactly once, on a gRPC callback thread (or inline, when the tracker
// has stopped). Like every client in clients.h, the callers hand the result to their own `done`,
// which the request path bridges back onto its executor with Eventual (async.h): no thread ever
// waits for a service.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <unordered_set>
#include <utility>

#include "src/clients.h"

namespace tollgate::edge {

// ---- What a failed call means ---------------------------------------------------------------

// True when the service gave no decision, so the caller applies its outage policy (a cached
// principal, the last plan, fail open or closed, 503): the service was not reached or did not
// answer in time (UNAVAILABLE, DEADLINE_EXCEEDED), the call was cancelled (CANCELLED: a
// shutdown), the answer was not a usable one (UNKNOWN, INTERNAL: a transport or protocol fault
// or a failure inside the service, UNIMPLEMENTED: the target does not serve the method, e.g. a
// wrong address or an older version), or the service said it cannot decide now (UNAVAILABLE with
// service_unavailable, e.g. its database is down). An UNAVAILABLE that names another error is an
// answer (the router's no_healthy_upstream). Every other status is an answered error.
bool Unreachable(const grpc::Status& status);

// The OpenAI error an answered failure (not Unreachable) names: its code (from the status
// details, else from the gRPC code) and the service's message, which services write for the
// caller (never SQL or secrets). The one place where a status is decoded; each call then passes
// on the codes a client can act on (invalid request, model not found, insufficient quota...) and
// answers anything else as its own failure.
Failure AnsweredError(const grpc::Status& status);

// The status a call gets when it is not sent because its client shut down: Unreachable.
grpc::Status ShutDownStatus();

// ---- Channels -------------------------------------------------------------------------------

// A channel to one of our services (MakeChannel: keep-alive, TLS and the edge's service token
// when configured), connecting at once so the first request does not pay for the handshake.
std::shared_ptr<grpc::Channel> OpenChannel(const std::string& target);

// ---- Calls in flight ------------------------------------------------------------------------

// Counts a client's calls in flight so its Shutdown can wait for every callback: the callbacks
// post to executors and touch the client, so both must outlive them. Calls begun after Stop are
// refused: CallUnary then answers them at once with ShutDownStatus().
class CallTracker final {
 public:
  enum class Kind {
    // Refused once stopped; cancelled by Drain.
    kRequest,
    // A background delivery (a flusher's batch): counted even after Stop, so the last batches
    // still go out on the way down, and never cancelled (its own deadline bounds it).
    kDelivery,
  };

  CallTracker() = default;
  CallTracker(const CallTracker&) = delete;
  CallTracker& operator=(const CallTracker&) = delete;
  ~CallTracker() { Drain(); }

  // Counts a call in; false (nothing counted) for a kRequest once stopped.
  bool Begin(grpc::ClientContext* context, Kind kind = Kind::kRequest);

  // Counts the call out. `release` destroys the call's objects (context, messages, callback):
  // they go before the count drops, so Drain (and the channel's destruction after it) never
  // races a callback thread that still holds the call. gRPC 1.51 aborts ("assertion failed:
  // prior > 0" in its callback completion queue) when a channel's last reference goes on one
  // of its own callback threads.
  template <typename Release>
  void End(grpc::ClientContext* context, Release&& release) {
    {
      std::lock_guard lock(mu_);
      live_.erase(context);
    }
    std::forward<Release>(release)();
    std::lock_guard lock(mu_);
    --in_flight_;
    cv_.notify_all();
  }

  // From now on kRequest calls are refused. Idempotent; true the first time.
  bool Stop();
  bool stopped() const;
  // Stop, then cancel the kRequest calls in flight and wait until every call has ended.
  void Drain();
  int in_flight() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopped_ = false;
  int in_flight_ = 0;
  std::unordered_set<grpc::ClientContext*> live_;  // kRequest calls, for TryCancel
};

// One unary call: sends `request` with a deadline `timeout` from now and runs
// `done(const grpc::Status&, Response&)` exactly once: on a gRPC callback thread, or inline with
// ShutDownStatus() when the tracker refuses the call. A `done` that also takes `Request&` gets
// the request back (a failed batch goes back into its queue). `start(context, request*, response*,
// callback)` issues the RPC, e.g.
//   [stub](auto... a) { stub->async()->Route(a...); }
// The call's objects, `done` included, are destroyed before the tracker counts the call out.
template <typename Response, typename Request, typename Start, typename Done>
void CallUnary(CallTracker& tracker, std::chrono::milliseconds timeout, Request request,
               Start&& start, Done done, CallTracker::Kind kind = CallTracker::Kind::kRequest) {
  struct Call {
    Call(Request r, Done d) : request(std::move(r)), done(std::move(d)) {}
    grpc::ClientContext context;
    Request request;
    Response response;
    Done done;
  };
  auto call = std::make_unique<Call>(std::move(request), std::move(done));
  call->context.set_deadline(std::chrono::system_clock::now() + timeout);
  auto finish = [](Call& c, const grpc::Status& status) {
    if constexpr (std::is_invocable_v<Done&, const grpc::Status&, Response&, Request&>)
      c.done(status, c.response, c.request);
    else
      c.done(status, c.response);
  };
  if (!tracker.Begin(&call->context, kind)) {
    finish(*call, ShutDownStatus());
    return;
  }
  Call* raw = call.release();
  start(&raw->context, &raw->request, &raw->response, [&tracker, raw, finish](grpc::Status status) {
    std::unique_ptr<Call> owned(raw);
    finish(*owned, status);
    tracker.End(&owned->context, [&owned] { owned.reset(); });
  });
}

}  // namespace tollgate::edge
