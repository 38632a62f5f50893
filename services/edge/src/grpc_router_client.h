// RouterClient over gRPC (tollgate.router.v1.RouterService), with the callback API so no edge
// thread ever waits on the router. Outcomes are queued and sent in batches by a background
// flusher, off the request path.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "src/clients.h"

namespace tollgate::edge {

struct GrpcRouterClientOptions {
  std::string target = "127.0.0.1:7103";
  std::chrono::milliseconds timeout{2000};  // deadline of every call
  std::chrono::milliseconds flush_interval{100};
  size_t batch_size = 256;     // a full batch goes out at once
  size_t max_queued = 100000;  // beyond this, the oldest outcomes are dropped (router down)
  // When the router cannot be reached, a plan it gave for the model at most this long ago is
  // used again; 0 disables (then: 503).
  std::chrono::milliseconds stale_plan_ttl{30000};
};

class GrpcRouterClient final : public RouterClient {
 public:
  explicit GrpcRouterClient(GrpcRouterClientOptions options);
  ~GrpcRouterClient() override;  // Shutdown()

  // Sends what is still queued, cancels the calls in flight and waits for their callbacks.
  // Calls made afterwards are answered at once (inline) as if the router were unreachable (the
  // last plan, else 503). Idempotent. Call it while the executors the callbacks post to are
  // still alive.
  void Shutdown();

  void Route(std::string model, int32_t max_attempts,
             std::function<void(RouteResult)> done) override;
  void Report(AttemptOutcome outcome) override;
  void ListModels(std::function<void(ModelsResult)> done) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tollgate::edge
