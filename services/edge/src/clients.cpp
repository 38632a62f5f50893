#include "src/clients.h"

namespace tollgate::edge {

const char* OutcomeName(OutcomeKind kind) {
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
  }
  return "unknown";
}

void RouterClient::KeyAttempt(std::string model, int64_t key_id,
                              std::function<void(RouteResult)> done) {
  // A plan holds at most 16 attempts (the router's cap): every healthy key of most models.
  Route(std::move(model), 16, [key_id, done = std::move(done)](RouteResult plan) {
    if (plan.failure) return done(std::move(plan));
    std::erase_if(plan.attempts,
                  [key_id](const UpstreamAttempt& a) { return a.upstream_key_id != key_id; });
    if (plan.attempts.empty())
      plan.failure = Failure{ErrorCode::kNoHealthyUpstream,
                             "The upstream account that holds this response is not available. "
                             "Retry later."};
    done(std::move(plan));
  });
}

}  // namespace tollgate::edge
