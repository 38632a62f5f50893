#include "src/edge_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace tollgate::edge {

EdgeMetrics::EdgeMetrics(prometheus::Registry& registry) {
  auto& attempts_family = prometheus::BuildCounter()
                              .Name("tollgate_edge_upstream_attempts_total")
                              .Help(
                                  "Upstream attempts by outcome (as reported to the router, "
                                  "plus client_cancelled)")
                              .Register(registry);
  for (int k = 0; k <= static_cast<int>(OutcomeKind::kAuthError); ++k)
    attempts_[k] = &attempts_family.Add({{"outcome", OutcomeName(static_cast<OutcomeKind>(k))}});
  cancelled_ = &attempts_family.Add({{"outcome", "client_cancelled"}});
  overhead_ = &prometheus::BuildHistogram()
                   .Name("tollgate_edge_overhead_seconds")
                   .Help("Time spent in Tollgate itself per request, upstream wait excluded")
                   .Register(registry)
                   .Add({}, prometheus::Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001,
                                                                    0.0025, 0.005, 0.01, 0.025,
                                                                    0.05, 0.1, 0.25, 0.5, 1, 2.5});
  auto& records_family = prometheus::BuildCounter()
                             .Name("tollgate_edge_usage_records_total")
                             .Help("Usage records produced, by whether the tokens are estimated")
                             .Register(registry);
  records_exact_ = &records_family.Add({{"estimated", "false"}});
  records_estimated_ = &records_family.Add({{"estimated", "true"}});
  bodies_stored_ = &prometheus::BuildCounter()
                        .Name("tollgate_edge_stored_bodies_total")
                        .Help("Requests whose bodies were kept (keys with store_bodies)")
                        .Register(registry)
                        .Add({});
}

void EdgeMetrics::CountAttempt(OutcomeKind kind) { attempts_[static_cast<int>(kind)]->Increment(); }

void EdgeMetrics::CountCancelled() { cancelled_->Increment(); }

void EdgeMetrics::ObserveOverhead(std::chrono::steady_clock::duration overhead) {
  overhead_->Observe(std::chrono::duration<double>(overhead).count());
}

void EdgeMetrics::CountRecord(bool estimated) {
  (estimated ? records_estimated_ : records_exact_)->Increment();
}

void EdgeMetrics::CountStoredBodies() { bodies_stored_->Increment(); }

}  // namespace tollgate::edge
