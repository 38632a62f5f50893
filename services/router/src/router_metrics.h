// The router's Prometheus series. Keys are labelled by id only: never a
// secret, never its prefix.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "tollgate/router/key_pool.h"

namespace prometheus {
class Registry;
template <typename T>
class Family;
class Counter;
class Gauge;
}  // namespace prometheus

namespace tollgate::router {

class RouterMetrics final {
 public:
  explicit RouterMetrics(prometheus::Registry& registry);

  void CountRoute(RouteResult::Status status);
  void CountAttempt(int64_t key_id, OutcomeKind kind);
  // Sets the breaker gauge of one key.
  void SetBreaker(const KeyHealth& health);
  // Sets every key's gauge and drops the gauges of keys that are gone.
  void SyncBreakers(const std::vector<KeyHealth>& all);

 private:
  prometheus::Family<prometheus::Counter>& routes_;
  prometheus::Family<prometheus::Counter>& attempts_;
  prometheus::Family<prometheus::Gauge>& breaker_;
  std::mutex mu_;
  std::map<int64_t, prometheus::Gauge*> breaker_gauges_;
};

}  // namespace tollgate::router
