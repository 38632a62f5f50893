#include "src/router_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <set>
#include <string>

namespace tollgate::router {
namespace {

const char* OutcomeLabel(OutcomeKind kind) {
  switch (kind) {
    case OutcomeKind::kSuccess:
      return "success";
    case OutcomeKind::kConnectError:
      return "connect_error";
    case OutcomeKind::kTimeout:
      return "timeout";
    case OutcomeKind::kServerError:
      return "server_error";
    case OutcomeKind::kRateLimited:
      return "rate_limited";
    case OutcomeKind::kClientError:
      return "client_error";
    case OutcomeKind::kAuthError:
      return "auth_error";
    case OutcomeKind::kUnspecified:
      break;
  }
  return "unspecified";
}

const char* RouteLabel(RouteResult::Status status) {
  switch (status) {
    case RouteResult::Status::kOk:
      return "ok";
    case RouteResult::Status::kModelNotFound:
      return "model_not_found";
    case RouteResult::Status::kNoHealthyUpstream:
      return "no_healthy_upstream";
    case RouteResult::Status::kNoRoute:
      return "no_route";
  }
  return "ok";
}

double BreakerValue(BreakerState state) {
  switch (state) {
    case BreakerState::kClosed:
      return 0;
    case BreakerState::kOpen:
      return 1;
    case BreakerState::kHalfOpen:
      return 2;
  }
  return 0;
}

}  // namespace

RouterMetrics::RouterMetrics(prometheus::Registry& registry)
    : routes_(prometheus::BuildCounter()
                  .Name("tollgate_router_routes_total")
                  .Help("Route calls by result")
                  .Register(registry)),
      attempts_(prometheus::BuildCounter()
                    .Name("tollgate_router_attempts_total")
                    .Help("Upstream attempt outcomes reported by the edge, by key id and outcome")
                    .Register(registry)),
      breaker_(prometheus::BuildGauge()
                   .Name("tollgate_router_breaker_state")
                   .Help("Circuit breaker of each upstream key (key-wide: connect and auth "
                         "errors) and, with upstream_model, of each model of it (timeouts, "
                         "5xx): 0 closed, 1 open, 2 half-open")
                   .Register(registry)) {}

void RouterMetrics::CountRoute(RouteResult::Status status) {
  routes_.Add({{"result", RouteLabel(status)}}).Increment();
}

void RouterMetrics::CountAttempt(int64_t key_id, OutcomeKind kind) {
  attempts_.Add({{"key_id", std::to_string(key_id)}, {"outcome", OutcomeLabel(kind)}}).Increment();
}

void RouterMetrics::SetBreaker(const KeyHealth& health) {
  std::lock_guard lock(mu_);
  const std::string key_id = std::to_string(health.key_id);
  auto gauge = [&](const std::string& model) -> prometheus::Gauge& {
    auto& g = breaker_gauges_[{health.key_id, model}];
    if (g == nullptr)
      g = model.empty() ? &breaker_.Add({{"key_id", key_id}})
                        : &breaker_.Add({{"key_id", key_id}, {"upstream_model", model}});
    return *g;
  };
  gauge("").Set(BreakerValue(health.state));
  // Models are the operator's catalogue (bounded); their gauges go with their routes.
  for (const auto& m : health.models) gauge(m.upstream_model).Set(BreakerValue(m.state));
}

void RouterMetrics::SyncBreakers(const std::vector<KeyHealth>& all) {
  std::set<std::pair<int64_t, std::string>> live;
  for (const auto& h : all) {
    SetBreaker(h);
    live.emplace(h.key_id, "");
    for (const auto& m : h.models) live.emplace(h.key_id, m.upstream_model);
  }
  std::lock_guard lock(mu_);
  for (auto it = breaker_gauges_.begin(); it != breaker_gauges_.end();) {
    if (live.count(it->first)) {
      ++it;
      continue;
    }
    breaker_.Remove(it->second);
    it = breaker_gauges_.erase(it);
  }
}

}  // namespace tollgate::router
