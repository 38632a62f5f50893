// The router's Prometheus series. Keys are labelled by id only: never a
// secret, never its prefix. Breakers also by upstream model (the catalogue's
// routes, so bounded).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
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
  // Sets the breaker gauges of one key: key-wide and per upstream model.
  void SetBreaker(const KeyHealth& health);
  // Sets every key's gauges and drops those of keys and models that are gone.
  void SyncBreakers(const std::vector<KeyHealth>& all);

 private:
  prometheus::Family<prometheus::Counter>& routes_;
  prometheus::Family<prometheus::Counter>& attempts_;
  prometheus::Family<prometheus::Gauge>& breaker_;
  std::mutex mu_;
  // By (key id, upstream model); "" is the key-wide breaker.
  std::map<std::pair<int64_t, std::string>, prometheus::Gauge*> breaker_gauges_;
};

}  // namespace tollgate::router
