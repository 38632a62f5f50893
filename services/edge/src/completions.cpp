// Inference: POST /v1/chat/completions, /v1/completions, /v1/embeddings (and the same under
// Azure OpenAI's /openai/deployments/{deployment}/, the deployment as the model). Admission here
// (parse; Admit: the field policy, then AdmitInference, admission.h, shared with messages.cpp and
// media.cpp: authentication and the route plan started together, then quota admission and the
// billing hold concurrently), then the attempts (attempts.h) and the relay (relay.h).
#include <boost/asio/this_coro.hpp>

#include "src/admission.h"
#include "src/async.h"
#include "src/attempts.h"
#include "src/endpoint_kinds.h"
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
  // Azure's routes name the model in the path (the deployment); the body's `model` then
  // does not matter.
  auto parsed = ParseRequest(endpoint, x.request.body, x.params.Get("deployment"));
  if (auto* error = std::get_if<RequestError>(&parsed)) {
    co_await x.SendError(ErrorCode::kInvalidRequest, error->message, error->param);
    co_return;
  }
  auto& request = std::get<ParsedRequest>(parsed);
  std::optional<RouteResult> plan = co_await Admit(x, request, std::move(pin));
  if (plan) co_await RunAttempts(x, request, *plan);
}

}  // namespace

std::string BillingId(const HttpRequest& request) {
  return request.Header("x-request-id") == request.request_id ? AcceptOrMakeRequestId("")
                                                              : request.request_id;
}

awaitable<std::optional<Admission>> AdmitAndHold(Exchange& x, AdmitRequest admit_request,
                                                 HoldRequest hold_request) {
  EdgeContext& edge = x.edge;
  auto executor = co_await asio::this_coro::executor;
  Eventual<AdmitResult> admit(executor);
  edge.clients.quota.Admit(std::move(admit_request), admit.Setter());
  Eventual<HoldResult> hold(executor);
  edge.clients.billing.Hold(std::move(hold_request), hold.Setter());
  AdmitResult admitted = co_await admit.Wait();
  x.rate_limit_headers = RateLimitHeaders(admitted);
  HoldResult held = co_await hold.Wait();
  if (admitted.failure || held.failure) {
    // Any denial gives back what the other check granted.
    if (!admitted.failure && !admitted.reservation_id.empty())
      edge.clients.quota.Release(admitted.reservation_id);
    if (!held.failure && !held.hold_id.empty()) edge.clients.billing.Release(held.hold_id);
    co_await x.SendDenied(admitted.failure ? *admitted.failure : *held.failure);
    co_return std::nullopt;
  }
  co_return Admission{std::move(admitted.reservation_id), std::move(held.hold_id)};
}

// `pin` by value: a coroutine keeps a reference parameter, not the temporary it named.
awaitable<std::optional<RouteResult>> AdmitInference(Exchange& x, ParsedRequest& request,
                                                     const std::string& service_tier, PlanPin pin) {
  EdgeContext& edge = x.edge;
  auto executor = co_await asio::this_coro::executor;

  // Routing does not depend on who calls, so it starts at once, alongside authentication.
  // Quota and billing need the principal and the plan's canonical model (an alias has no price
  // or limits of its own): they start together once both are known.
  Eventual<RouteResult> route(executor);
  edge.clients.router.Route(request.model, edge.options.max_attempts, route.Setter());
  std::optional<Principal> who = co_await x.Authenticate();
  if (!who) co_return std::nullopt;
  RouteResult plan = co_await route.Wait();
  // The key's model allowlist takes the name the client sent or the canonical name it routes
  // to, so an alias of an allowed model is allowed.
  if (!auth::ModelAllowed(who->allowed_models, request.model) &&
      (plan.failure || !auth::ModelAllowed(who->allowed_models, plan.model))) {
    co_await x.SendError(
        ErrorCode::kPermissionDenied,
        "This API key is not allowed to use the model '" + request.model.substr(0, 256) + "'.",
        "model");
    co_return std::nullopt;
  }
  if (!plan.failure && plan.attempts.empty())
    plan.failure = Failure{ErrorCode::kNoHealthyUpstream,
                           "No healthy upstream is available for model '" +
                               request.model.substr(0, 256) + "'. Retry later."};
  if (plan.failure) {
    co_await x.SendDenied(*plan.failure);
    co_return std::nullopt;
  }
  if (pin && !co_await pin(x, *who, request, plan)) co_return std::nullopt;
  // One worst case for quota and billing: the prompt's upper bound plus every completion token
  // the request may generate (the edge sends the budget upstream when the client set none), and
  // the units of the endpoints billed beyond tokens (endpoint_kinds.h).
  const EndpointKind& kind = KindOf(request.endpoint);
  if (auto error = kind.budget(request, plan.limits, edge.options.default_max_tokens)) {
    co_await x.SendError(ErrorCode::kInvalidRequest, error->message, error->param);
    co_return std::nullopt;
  }
  const HoldUnits units = WorstCaseUnits(request);
  std::string billing_id = BillingId(x.request);
  // Named, then moved: GCC 12 destroys a braced temporary passed by value to a coroutine in a
  // co_await expression twice.
  AdmitRequest admit{x.request.request_id, *who, plan.model, WorstCaseTokens(request),
                     x.request.client_ip};
  HoldRequest hold{billing_id,
                   *who,
                   plan.model,
                   request.prompt_estimate,
                   WorstCaseCompletionTokens(request),
                   service_tier,
                   units.images,
                   units.audio_ms,
                   units.characters};
  std::optional<Admission> admission = co_await AdmitAndHold(x, std::move(admit), std::move(hold));
  if (!admission) co_return std::nullopt;

  auto& record = x.record;
  record.request_id = x.request.request_id;
  record.principal = *who;
  record.reservation_id = std::move(admission->reservation_id);
  record.hold_id = std::move(admission->hold_id);
  record.billing_id = std::move(billing_id);
  record.client_ip = x.request.client_ip;
  record.model = plan.model.empty() ? request.model : plan.model;
  record.streamed = request.stream;
  record.service_tier = service_tier;  // until the answer says which tier served it
  record.endpoint_kind = std::string(kind.label);
  x.keep_bodies = who->store_bodies;
  co_return std::move(plan);
}

awaitable<std::optional<RouteResult>> Admit(Exchange& x, ParsedRequest& request, PlanPin pin) {
  // What the operator lets a client ask of its upstream account (field_policy.h).
  FieldDecision fields =
      x.edge.field_policy.Apply(request.body, KindOf(request.endpoint).kept_fields);
  if (fields.refusal) {
    co_await x.SendError(ErrorCode::kInvalidRequest, fields.refusal->message,
                         fields.refusal->param);
    co_return std::nullopt;
  }
  if (fields.stripped) request.BodyChanged();
  co_return co_await AdmitInference(x, request, fields.service_tier, std::move(pin));
}

namespace {

// Azure OpenAI refuses a request without ?api-version= (400 BadRequest); any version is
// accepted: the edge speaks one API to its clients whatever version they name.
awaitable<void> AzureComplete(Exchange& x, Endpoint endpoint) {
  if (QueryParam(x.request.target, "api-version").empty()) {
    co_await x.SendError(ErrorCode::kInvalidRequest,
                         "Missing required query parameter: api-version", "api-version");
    co_return;
  }
  co_await Complete(x, endpoint);
}

}  // namespace

awaitable<void> ChatCompletions(Exchange& x) { return Complete(x, Endpoint::kChatCompletions); }

awaitable<void> Completions(Exchange& x) { return Complete(x, Endpoint::kCompletions); }

awaitable<void> Embeddings(Exchange& x) { return Complete(x, Endpoint::kEmbeddings); }

awaitable<void> AzureChatCompletions(Exchange& x) {
  return AzureComplete(x, Endpoint::kChatCompletions);
}

awaitable<void> AzureCompletions(Exchange& x) { return AzureComplete(x, Endpoint::kCompletions); }

awaitable<void> AzureEmbeddings(Exchange& x) { return AzureComplete(x, Endpoint::kEmbeddings); }

awaitable<void> Infer(Exchange& x, Endpoint endpoint, PlanPin pin) {
  co_await Complete(x, endpoint, pin);
}

}  // namespace tollgate::edge
