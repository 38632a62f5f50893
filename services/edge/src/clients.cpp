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

}  // namespace tollgate::edge
