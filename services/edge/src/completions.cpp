// Inference: POST /v1/chat/completions, /v1/completions, /v1/embeddings. Admission here (parse,
// field policy; authentication and the route plan started together; then quota admission and the
// billing hold concurrently), then the attempts (attempts.h) and the relay (relay.h).
#include <boost/asio/this_coro.hpp>

#include "src/async.h"
#include "src/attempts.h"
#include "src/endpoints.h"
#include "src/exchange.h"
#include "tollgate/auth/policy.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
using asio::awaitable;

// OpenAI's duration form for x-ratelimit-reset-*: "20ms", "1.5s", "6m0s".
std::string FormatReset(int64_t ms) {
  if (ms < 1000) return std::to_string(std::max<int64_t>(0, ms)) + "ms";
  std::string out;
  if (ms >= 60000) {
    out = std::to_string(ms / 60000) + "m";
    ms %= 60000;
  }
  std::string secs = std::to_string(ms / 1000);
  if (int64_t frac = ms % 1000; frac != 0) {
    std::string f = std::to_string(1000 + frac).substr(1);
    while (f.back() == '0') f.pop_back();
    secs += "." + f;
  }
  return out + secs + "s";
}

// The key's tightest windows as OpenAI's headers; none for an unlimited window.
HttpHeaders RateLimitHeaders(const AdmitResult& admitted) {
  HttpHeaders h;
  auto add = [&h](const RateLimitWindow& w, const char* unit) {
    if (w.limit <= 0) return;
    h.emplace_back(std::string("x-ratelimit-limit-") + unit, std::to_string(w.limit));
    h.emplace_back(std::string("x-ratelimit-remaining-") + unit, std::to_string(w.remaining));
    h.emplace_back(std::string("x-ratelimit-reset-") + unit, FormatReset(w.reset_ms));
  };
  add(admitted.requests, "requests");
  add(admitted.tokens, "tokens");
  return h;
}

// `pin` by value: a coroutine keeps a reference parameter, not the temporary it named.
awaitable<void> Complete(Exchange& x, Endpoint endpoint, PlanPin pin = {}) {
  EdgeContext& edge = x.edge;
  auto parsed = ParseRequest(endpoint, x.request.body);
  if (auto* error = std::get_if<RequestError>(&parsed)) {
    co_await x.SendError(ErrorCode::kInvalidRequest, error->message, error->param);
    co_return;
  }
  auto& request = std::get<ParsedRequest>(parsed);
  // What the operator lets a client ask of its upstream account (field_policy.h).
  FieldDecision fields = edge.field_policy.Apply(request.body);
  if (fields.refusal) {
    co_await x.SendError(ErrorCode::kInvalidRequest, fields.refusal->message,
                         fields.refusal->param);
    co_return;
  }
  auto executor = co_await asio::this_coro::executor;

  // Routing does not depend on who calls, so it starts at once, alongside authentication.
  // Quota and billing need the principal and the plan's canonical model (an alias has no price
  // or limits of its own): they start together once both are known.
  Eventual<RouteResult> route(executor);
  edge.clients.router.Route(request.model, edge.options.max_attempts, route.Setter());
  std::optional<Principal> who = co_await x.Authenticate();
  if (!who) co_return;
  RouteResult plan = co_await route.Wait();
  // The key's model allowlist takes the name the client sent or the canonical name it routes
  // to, so an alias of an allowed model is allowed.
  if (!auth::ModelAllowed(who->allowed_models, request.model) &&
      (plan.failure || !auth::ModelAllowed(who->allowed_models, plan.model))) {
    co_await x.SendError(
        ErrorCode::kPermissionDenied,
        "This API key is not allowed to use the model '" + request.model.substr(0, 256) + "'.",
        "model");
    co_return;
  }
  if (!plan.failure && plan.attempts.empty())
    plan.failure = Failure{ErrorCode::kNoHealthyUpstream,
                           "No healthy upstream is available for model '" +
                               request.model.substr(0, 256) + "'. Retry later."};
  if (plan.failure) {
    co_await x.SendDenied(*plan.failure);
    co_return;
  }
  if (pin && !co_await pin(x, *who, request, plan)) co_return;
  // One worst case for quota and billing: the prompt's upper bound plus every completion token
  // the request may generate (the edge sends the budget upstream when the client set none).
  if (auto error = ApplyCompletionBudget(request, plan.limits, edge.options.default_max_tokens)) {
    co_await x.SendError(ErrorCode::kInvalidRequest, error->message, error->param);
    co_return;
  }
  Eventual<AdmitResult> admit(executor);
  edge.clients.quota.Admit(
      {x.request.request_id, *who, plan.model, WorstCaseTokens(request), x.request.client_ip},
      admit.Setter());
  // Billing's idempotency key is an id the edge made itself, never the client's x-request-id.
  std::string billing_id = x.request.Header("x-request-id") == x.request.request_id
                               ? AcceptOrMakeRequestId("")
                               : x.request.request_id;
  Eventual<HoldResult> hold(executor);
  edge.clients.billing.Hold({billing_id, *who, plan.model, request.prompt_estimate,
                             WorstCaseCompletionTokens(request), fields.service_tier},
                            hold.Setter());
  AdmitResult admitted = co_await admit.Wait();
  x.rate_limit_headers = RateLimitHeaders(admitted);
  HoldResult held = co_await hold.Wait();
  if (admitted.failure || held.failure) {
    // Any denial gives back what the other check granted.
    if (!admitted.failure && !admitted.reservation_id.empty())
      edge.clients.quota.Release(admitted.reservation_id);
    if (!held.failure && !held.hold_id.empty()) edge.clients.billing.Release(held.hold_id);
    co_await x.SendDenied(admitted.failure ? *admitted.failure : *held.failure);
    co_return;
  }

  auto& record = x.record;
  record.request_id = x.request.request_id;
  record.principal = *who;
  record.reservation_id = admitted.reservation_id;
  record.hold_id = held.hold_id;
  record.billing_id = std::move(billing_id);
  record.client_ip = x.request.client_ip;
  record.model = plan.model.empty() ? request.model : plan.model;
  record.streamed = request.stream;
  record.service_tier = fields.service_tier;  // until the answer says which tier served it
  x.keep_bodies = who->store_bodies;
  co_await RunAttempts(x, request, plan);
}

}  // namespace

awaitable<void> ChatCompletions(Exchange& x) { return Complete(x, Endpoint::kChatCompletions); }

awaitable<void> Completions(Exchange& x) { return Complete(x, Endpoint::kCompletions); }

awaitable<void> Embeddings(Exchange& x) { return Complete(x, Endpoint::kEmbeddings); }

awaitable<void> Infer(Exchange& x, Endpoint endpoint, PlanPin pin) {
  co_await Complete(x, endpoint, pin);
}

}  // namespace tollgate::edge
