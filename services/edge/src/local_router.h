// RouterClient that routes in the edge itself: the router service's catalogue (secrets opened) is
// polled with GetRoutingTable every `refresh` and fed to the router's own KeyPool, so each request
// is planned in memory (smooth weighted round-robin, breakers, 429 cooldowns) instead of a Route
// call. A model the table does not know is asked of the router (it may be newer than the table).
// Health is kept per edge process, from the outcomes of its own attempts, which also still go to
// the router service (batched) for its view and metrics. Until the first table arrives, and while
// it cannot be refreshed for longer than `max_staleness`, requests are planned by the router
// service (`remote`) as before.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "src/clients.h"
#include "tollgate/router/key_pool.h"

namespace tollgate::edge {

struct LocalRouterOptions {
  std::string target = "127.0.0.1:7103";
  std::chrono::milliseconds refresh{1000};
  std::chrono::milliseconds timeout{2000};
  std::chrono::milliseconds max_staleness{30000};
};

class LocalRouterClient final : public RouterClient {
 public:
  // `remote` plans while no table is held and receives every outcome; it must outlive this.
  LocalRouterClient(LocalRouterOptions options, RouterClient& remote);
  ~LocalRouterClient() override;  // Stop()
  void Stop();

  void Route(std::string model, int32_t max_attempts,
             std::function<void(RouteResult)> done) override;
  void Report(AttemptOutcome outcome) override;
  void ListModels(std::function<void(ModelsResult)> done) override;
  void KeyAttempt(std::string model, int64_t key_id,
                  std::function<void(RouteResult)> done) override;

  // One poll, now (tests; the background thread does it every `refresh`). False on failure.
  bool RefreshOnce();
  bool has_table() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tollgate::edge
