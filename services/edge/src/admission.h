// Admission for inference, one step for every endpoint family (completions.cpp; messages.cpp:
// Anthropic's Messages API; media.cpp): authentication and the route plan started together, the
// key's model allowlist (the name sent or the canonical one it routes to), the worst case from
// the endpoint kind's table (endpoint_kinds.h), then quota admission and the billing hold
// concurrently on the canonical model, either denial releasing what the other granted; on
// success the usage record is set up (who, reservation, hold, model, endpoint kind, the tier
// asked for). Written in completions.cpp.
#pragma once

#include <boost/asio/awaitable.hpp>

#include <functional>
#include <optional>
#include <string>

#include "src/clients.h"
#include "src/http.h"
#include "src/openai.h"

namespace tollgate::edge {

class Exchange;

// Runs once the caller and the plan are known, before admission (responses.cpp pins a
// previous_response_id to its key): it may rewrite the request and narrow the plan, or send the
// refusal itself and return false. May be empty.
using PlanPin = std::function<boost::asio::awaitable<bool>(Exchange&, const Principal&,
                                                           ParsedRequest&, RouteResult&)>;

// Billing's idempotency key for the request: an id the edge made itself, never the client's
// x-request-id.
std::string BillingId(const HttpRequest& request);

// What AdmitAndHold granted: the quota reservation and the billing hold.
struct Admission {
  std::string reservation_id;
  std::string hold_id;
};

// Quota admission and the billing hold, concurrently (x-ratelimit-* set on `x` from quota's
// answer, denial or not); either denial gives back what the other granted and is sent (nullopt).
// AdmitInference's step, and the /v1 catch-all's (passthrough.cpp).
boost::asio::awaitable<std::optional<Admission>> AdmitAndHold(Exchange& x, AdmitRequest admit,
                                                              HoldRequest hold);

// The field policy (field_policy.h) on a JSON body, then AdmitInference.
boost::asio::awaitable<std::optional<RouteResult>> Admit(Exchange& x, ParsedRequest& request,
                                                         PlanPin pin = {});

// The plan, once admitted; nullopt: the refusal has been sent in the route's dialect.
boost::asio::awaitable<std::optional<RouteResult>> AdmitInference(Exchange& x,
                                                                  ParsedRequest& request,
                                                                  const std::string& service_tier,
                                                                  PlanPin pin = {});

}  // namespace tollgate::edge
