// The request path's own metrics (the HTTP server counts requests by route and status itself,
// http_server.cpp). Registered once per process, shared by every I/O thread; prometheus-cpp's
// counters and histograms are thread-safe. Only edge_metrics.cpp sees prometheus-cpp.
#pragma once

#include <array>
#include <chrono>

#include "src/clients.h"

namespace prometheus {
class Counter;
class Histogram;
class Registry;
}  // namespace prometheus

namespace tollgate::edge {

class EdgeMetrics final {
 public:
  explicit EdgeMetrics(prometheus::Registry& registry);

  // tollgate_edge_upstream_attempts_total{outcome}: as reported to the router...
  void CountAttempt(OutcomeKind kind);
  // ... plus outcome="client_cancelled".
  void CountCancelled();
  // tollgate_edge_overhead_seconds: time spent in Tollgate itself, upstream wait excluded.
  void ObserveOverhead(std::chrono::steady_clock::duration overhead);
  // tollgate_edge_usage_records_total{estimated}
  void CountRecord(bool estimated);
  // tollgate_edge_stored_bodies_total
  void CountStoredBodies();

 private:
  std::array<prometheus::Counter*, static_cast<int>(OutcomeKind::kAuthError) + 1> attempts_{};
  prometheus::Counter* cancelled_ = nullptr;
  prometheus::Histogram* overhead_ = nullptr;
  prometheus::Counter* records_exact_ = nullptr;
  prometheus::Counter* records_estimated_ = nullptr;
  prometheus::Counter* bodies_stored_ = nullptr;
};

}  // namespace tollgate::edge
