// The catch-all for every other /v1/... path (files, batches, vector stores, fine-tuning,
// uploads...): the last route of the table (routes.cpp), any method. The request is relayed as it
// is, its body streamed (an upload never sits whole in the edge) and the answer streamed back as
// it comes (JSON, binary, SSE alike).
//
// 1. Off (edge.passthrough.enabled), outside edge.passthrough.allowed_prefixes, or with a "." or
//    ".." segment: 404, as for a path no route has, before anything else.
// 2. Authentication, before any byte of the body is read.
// 3. The upstream: a JSON body (content-type application/json) is read whole (edge.max_body_bytes),
//    put through the field policy when it is an object (field_policy.h: refused fields and
//    service tiers are a 400, stripped fields removed) and, when it names a `model`, routed like
//    a chat completion (the key's model allowlist, the model's route; failover while nothing
//    reached the client). Any other body (multipart, binary) is a file's content, streamed and
//    never parsed, so it is passed as it is. Any other request (no body,
//    multipart, binary, JSON without a model) goes to edge.passthrough.default_model's route,
//    always to its lowest-id healthy upstream key, so every file call of every user lands on one
//    upstream account (a file uploaded through one Tollgate key is usable through another); its
//    body is streamed, so it gets one attempt (a connect failure before any byte of it was read
//    tries the next key).
// 4. Admission by request count and the billing hold, concurrently (AdmitAndHold, admission.h,
//    as for every inference endpoint): quota is asked for the request with zero tokens; billing
//    holds the call's worst case (HoldFor below): at least edge.passthrough.hold_micros, so a
//    user whose balance and credit are spent gets 429 insufficient_quota before any upstream
//    byte, and for a body naming a model at least its token worst case. The answers carry the
//    x-ratelimit-* headers.
// 5. The upstream request: {base_url}{path after /v1}?{query}, the method, content-type, accept,
//    openai-beta and idempotency-key of the client, the attempt's credential (OpenAI and
//    OpenAI-compatible providers only: Azure and Anthropic have no such paths). The answer's
//    status, content-type, content-disposition and cache-control go back with its body as it
//    arrives.
// 6. The usage record: the usage of a JSON answer that carries one, else zero tokens; charged
//    at the model's prices (the default model's for a model-less call), ending the hold.
#include <boost/asio/this_coro.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>

#include "src/admission.h"
#include "src/async.h"
#include "src/attempts.h"
#include "src/edge_metrics.h"
#include "src/endpoints.h"
#include "src/exchange.h"
#include "src/openai.h"
#include "src/provider.h"
#include "tollgate/auth/policy.h"
#include "tollgate/log.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;  // ordered: the upstream sees the client's field order

// Routing needs every healthy key of the default model to pick the lowest id.
constexpr int32_t kAllKeys = 1000;
// A JSON answer up to this size is kept while it is relayed, to read its usage.
constexpr size_t kUsageScanBytes = 1024 * 1024;
// What a whole answer is sent as (with Content-Length) when it arrived in one piece of at most
// this; anything longer is relayed chunked as it comes.
constexpr size_t kWholeAnswerBytes = 64 * 1024;

bool IsJson(std::string_view content_type) {
  std::string_view media = content_type.substr(0, content_type.find(';'));
  while (!media.empty() && media.back() == ' ') media.remove_suffix(1);
  return media == "application/json" || (media.size() > 5 && media.ends_with("+json"));
}

// A "." or ".." segment, also percent-encoded: the upstream would resolve it to another path than
// the one the prefixes allowed ("/v1/files/../x"), so such a path is not relayed at all.
bool HasDotSegment(std::string_view path) {
  while (!path.empty()) {
    const size_t slash = path.find('/');
    const std::string segment = PercentDecode(path.substr(0, slash));
    if (segment == "." || segment == "..") return true;
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return false;
}

bool PrefixAllowed(const PassthroughOptions& options, std::string_view path) {
  if (options.allowed_prefixes.empty()) return true;
  return std::any_of(options.allowed_prefixes.begin(), options.allowed_prefixes.end(),
                     [&](const std::string& prefix) { return path.starts_with(prefix); });
}

// The client's headers that mean something to the upstream; never a credential or a cookie.
constexpr std::string_view kForwardedHeaders[] = {"content-type", "accept", "openai-beta",
                                                  "idempotency-key"};
// The upstream's headers that mean something to the client.
constexpr std::string_view kAnswerHeaders[] = {"content-type", "content-disposition",
                                               "cache-control"};

bool Failover(int status) {
  return status == 429 || status == 401 || status == 403 || status >= 500;
}

// The client's completion limit in a JSON body (max_tokens, max_completion_tokens or the
// Responses API's max_output_tokens: the largest positive integer), else 0.
int64_t ClientBudget(const Json& body) {
  int64_t budget = 0;
  for (const char* name : {"max_tokens", "max_completion_tokens", "max_output_tokens"}) {
    auto it = body.find(name);
    if (it != body.end() && it->is_number_integer() && it->get<int64_t>() > 0)
      budget = std::max(budget, std::min(it->get<int64_t>(), kMaxCompletionTokens));
  }
  return budget;
}

// The worst case a catch-all call is held for. What the upstream charges for a model-less call
// (a file's storage, a batch run later, a fine-tuning job) is never seen by the edge, whose record
// for it carries the answer's usage or zero tokens, so no token count bounds it: the hold is the
// operator's floor (edge.passthrough.hold_micros) and does what the best gateways do for such
// calls (OpenRouter and LiteLLM refuse a spent balance or budget up front and charge what the
// answer reports afterwards): a user with nothing left is refused before any upstream byte. A JSON
// body naming a model may be an inference call the edge does not know: it is also held for its
// token worst case, the body's bytes / 3 (openai.h) plus its completion limit, else the model's
// default, else edge.quota_default_max_tokens, capped by the model's max_output_tokens.
HoldRequest HoldFor(const EdgeContext& edge, const Json* body, size_t body_bytes,
                    const RouteResult& plan) {
  HoldRequest hold;
  hold.model = plan.model;
  hold.min_amount_micros = edge.options.passthrough.hold_micros;
  if (body == nullptr) return hold;
  hold.estimated_prompt_tokens = PromptUpperBound(static_cast<int64_t>(body_bytes), 0, 0);
  int64_t budget = ClientBudget(*body);
  if (budget == 0)
    budget = plan.limits.default_max_tokens > 0 ? plan.limits.default_max_tokens
                                                : edge.options.default_max_tokens;
  if (plan.limits.max_output_tokens > 0) budget = std::min(budget, plan.limits.max_output_tokens);
  hold.max_completion_tokens = budget;
  return hold;
}

}  // namespace

awaitable<void> Passthrough(Exchange& x) {
  EdgeContext& edge = x.edge;
  const PassthroughOptions& options = edge.options.passthrough;
  HttpRequest& request = x.request;
  if (!options.enabled || HasDotSegment(request.path) || !PrefixAllowed(options, request.path)) {
    co_await x.SendError(ErrorCode::kNotFound,
                         "Invalid URL (" + request.method + " " + request.path + ")");
    co_return;
  }
  std::optional<Principal> who = co_await x.Authenticate();
  if (!who) co_return;

  // A JSON body is read whole (it is small) to find its model; any other body is streamed.
  BodyStream* body = request.body_stream;
  const bool has_body =
      body != nullptr ? !body->done() || body->bytes_read() > 0 : !request.body.empty();
  std::string model;
  bool buffered = body == nullptr;
  if (body != nullptr && has_body && IsJson(request.Header("content-type"))) {
    if (auto length = body->content_length(); length && *length > options.max_json_body_bytes) {
      co_await x.SendError(ErrorCode::kRequestTooLarge,
                           "Request body is too large (limit " +
                               std::to_string(options.max_json_body_bytes) + " bytes).");
      co_return;
    }
    std::string piece;
    while (!body->done()) {
      if (!co_await body->Read(piece)) {
        const auto& failure = *body->failure();
        if (failure.status != 0)
          co_await x.SendError(
              failure.status == 413 ? ErrorCode::kRequestTooLarge : ErrorCode::kInvalidRequest,
              failure.message);
        co_return;
      }
      request.body += piece;
      if (request.body.size() > options.max_json_body_bytes) {
        co_await x.SendError(ErrorCode::kRequestTooLarge,
                             "Request body is too large (limit " +
                                 std::to_string(options.max_json_body_bytes) + " bytes).");
        co_return;
      }
    }
    buffered = true;
  }
  // A JSON object is parsed (never deeper than kMaxJsonDepth) and put through the field policy;
  // anything else that claims to be JSON goes as it is and the upstream judges it.
  std::optional<Json> json;
  bool rewrite = false;  // the body changed: sent as dumped from `json`
  std::string service_tier;
  if (buffered && IsJson(request.Header("content-type")) && !request.body.empty()) {
    Json parsed;
    if (!ParseJsonObject(request.body, parsed)) {
      const size_t fields = parsed.size();
      FieldDecision decision = edge.field_policy.Apply(parsed);
      if (decision.refusal) {
        co_await x.SendError(ErrorCode::kInvalidRequest, decision.refusal->message,
                             decision.refusal->param);
        co_return;
      }
      service_tier = std::move(decision.service_tier);
      rewrite = parsed.size() != fields;
      if (auto it = parsed.find("model"); it != parsed.end() && it->is_string())
        model = it->get<std::string>();
      json = std::move(parsed);
    }
  }

  // The upstream: the model's route, or the default model's lowest-id healthy key.
  const bool by_model = !model.empty();
  if (!by_model && options.default_model.empty()) {
    co_await x.SendError(ErrorCode::kNotFound,
                         "Invalid URL (" + request.method + " " + request.path +
                             "): no upstream serves requests without a model here.");
    co_return;
  }
  auto executor = co_await asio::this_coro::executor;
  Eventual<RouteResult> route(executor);
  edge.clients.router.Route(by_model ? model : options.default_model,
                            by_model ? edge.options.max_attempts : kAllKeys, route.Setter());
  RouteResult plan = co_await route.Wait();
  if (by_model && !auth::ModelAllowed(who->allowed_models, model) &&
      (plan.failure || !auth::ModelAllowed(who->allowed_models, plan.model))) {
    co_await x.SendError(
        ErrorCode::kPermissionDenied,
        "This API key is not allowed to use the model '" + model.substr(0, 256) + "'.", "model");
    co_return;
  }
  // Only providers that speak OpenAI's own paths can take the request.
  std::erase_if(plan.attempts,
                [](const UpstreamAttempt& a) { return !OpenAiPathCredential(a).has_value(); });
  if (!by_model)
    std::sort(plan.attempts.begin(), plan.attempts.end(),
              [](const UpstreamAttempt& a, const UpstreamAttempt& b) {
                return a.upstream_key_id < b.upstream_key_id;
              });
  if (!plan.failure && plan.attempts.empty())
    plan.failure =
        Failure{ErrorCode::kNoHealthyUpstream,
                "No healthy upstream that serves OpenAI's API is available for '" +
                    (by_model ? model : options.default_model).substr(0, 256) + "'. Retry later."};
  if (plan.failure) {
    co_await x.SendDenied(*plan.failure);
    co_return;
  }

  // Admitted by request count (the request counts in the key's windows, with zero tokens) and
  // held for its worst case, together.
  std::string billing_id = BillingId(request);
  HoldRequest hold = HoldFor(edge, by_model ? &*json : nullptr, request.body.size(), plan);
  hold.request_id = billing_id;
  hold.principal = *who;
  hold.service_tier = service_tier;
  // Named, then moved (GCC 12 destroys a braced temporary given to a coroutine twice).
  AdmitRequest admit{request.request_id, *who, plan.model, 0, request.client_ip};
  std::optional<Admission> admission = co_await AdmitAndHold(x, std::move(admit), std::move(hold));
  if (!admission) co_return;
  auto& record = x.record;
  record.request_id = request.request_id;
  record.principal = *who;
  record.reservation_id = std::move(admission->reservation_id);
  record.hold_id = std::move(admission->hold_id);
  record.billing_id = std::move(billing_id);
  record.client_ip = request.client_ip;
  record.service_tier = service_tier;
  record.model = plan.model;
  x.keep_bodies = who->store_bodies;

  // The model the upstream knows it by, when the route names another.
  if (json && by_model && !plan.attempts.empty()) {
    const std::string& upstream_model = plan.attempts.front().upstream_model;
    if (!upstream_model.empty() && upstream_model != model) {
      (*json)["model"] = upstream_model;
      rewrite = true;
    }
  }
  if (rewrite) request.body = json->dump(-1, ' ', false, Json::error_handler_t::replace);

  auto slot = std::make_shared<CancelSlot>();
  const std::string_view suffix = std::string_view(request.target).substr(3);  // after "/v1"
  const size_t n = std::min<size_t>(plan.attempts.size(),
                                    static_cast<size_t>(std::max(1, edge.options.max_attempts)));
  OutcomeKind last_kind = OutcomeKind::kConnectError;
  int last_status = 0;
  for (size_t i = 0; i < n; ++i) {
    const UpstreamAttempt& attempt = plan.attempts[i];
    record.attempts = static_cast<int32_t>(i + 1);
    record.upstream_model = attempt.upstream_model;
    auto url = ParseUpstreamUrl(attempt.base_url, suffix);
    if (!url) {
      log::Write(log::Level::kError, "edge", "upstream base_url is not an http(s) URL",
                 {{"upstream_key_id", attempt.upstream_key_id}}, request.request_id);
      ReportAttempt(x, attempt, OutcomeKind::kConnectError, 0, 0, {});
      continue;
    }
    UpstreamRequest upstream{std::move(*url), request.method, {}, {}, nullptr};
    for (std::string_view name : kForwardedHeaders)
      if (auto value = request.Header(name); !value.empty())
        upstream.headers.emplace_back(std::string(name), std::string(value));
    upstream.headers.push_back(*OpenAiPathCredential(attempt));
    if (buffered) {
      upstream.body = request.body;
    } else if (has_body) {
      upstream.body_stream = body;
    }

    std::shared_ptr<UpstreamCall> call =
        edge.pool.NewCall(std::move(upstream), edge.options.upstream);
    slot->current = call;
    const auto t0 = Clock::now();
    UpstreamStatus st = co_await call->Start();
    x.upstream_wait += Clock::now() - t0;
    if (st == UpstreamStatus::kClientBodyFailed) {
      // The client stopped sending (or sent a malformed or oversized body): nothing to report
      // against the upstream.
      const auto& failure = *body->failure();
      if (failure.status != 0) {
        co_await x.SendError(
            failure.status == 413 ? ErrorCode::kRequestTooLarge : ErrorCode::kInvalidRequest,
            failure.message);
        x.Finish(failure.status);
      } else {
        record.client_disconnected = true;
        x.Finish(kClientClosedRequest);
      }
      co_return;
    }
    if (st == UpstreamStatus::kCancelled) {
      record.client_disconnected = true;
      x.Finish(kClientClosedRequest);
      co_return;
    }
    const bool body_gone = !buffered && has_body && body->bytes_read() > 0;
    if (st != UpstreamStatus::kOk) {
      last_kind = KindForFailure(st);
      last_status = 0;
      LogAttempt(x, attempt, last_kind, 0, call->error_detail());
      ReportAttempt(x, attempt, last_kind, 0, 0, Clock::now() - t0);
      if (body_gone) break;  // the body was read from the client: it cannot be sent again
      continue;
    }
    const int status = call->status();
    if (Failover(status) && !body_gone && i + 1 < n) {
      std::string ignored;
      co_await call->ReadAll(ignored);
      last_kind = status == 429                    ? OutcomeKind::kRateLimited
                  : status == 401 || status == 403 ? OutcomeKind::kAuthError
                                                   : OutcomeKind::kServerError;
      last_status = status;
      LogAttempt(x, attempt, last_kind, status, "");
      ReportAttempt(x, attempt, last_kind, status, 0, Clock::now() - t0);
      continue;
    }

    // The answer, relayed as it comes.
    record.upstream_key_id = attempt.upstream_key_id;
    x.answering_key = attempt.api_key;
    HttpHeaders headers = x.CommonHeaders();
    for (std::string_view name : kAnswerHeaders)
      if (auto value = call->Header(name); !value.empty())
        headers.emplace_back(std::string(name), std::move(value));
    const bool json_answer = IsJson(call->Header("content-type"));
    std::string scan;  // a JSON answer, for its usage
    std::string piece;
    st = co_await call->Read(piece);
    bool delivered = false;
    if (st == UpstreamStatus::kOk && call->finished() && piece.size() <= kWholeAnswerBytes) {
      if (json_answer) scan = piece;
      x.Capture(piece);
      delivered = co_await x.writer.Send(status, std::move(headers), std::move(piece));
    } else if (st == UpstreamStatus::kOk) {
      x.writer.WatchDisconnect([slot] {
        slot->client_gone = true;
        if (auto current = slot->current.lock()) current->Cancel();
      });
      delivered = co_await x.writer.BeginStream(status, std::move(headers));
      for (;;) {
        if (!piece.empty()) {
          if (json_answer && scan.size() + piece.size() <= kUsageScanBytes) scan += piece;
          x.Capture(piece);
          if (!delivered || !co_await x.writer.WriteChunk(piece)) {
            delivered = false;
            break;
          }
        }
        if (call->finished()) break;
        piece.clear();
        st = co_await call->Read(piece);
        if (st != UpstreamStatus::kOk) break;
      }
      if (delivered && st == UpstreamStatus::kOk) {
        delivered = co_await x.writer.EndStream();
      } else {
        // Too late to say anything else: the client sees its answer cut off.
        call->Cancel();
        delivered = false;
      }
    }
    if (st != UpstreamStatus::kOk && !x.writer.started()) {
      last_kind = KindForFailure(st);
      last_status = status;
      LogAttempt(x, attempt, last_kind, status, call->error_detail());
      ReportAttempt(x, attempt, last_kind, status, 0, Clock::now() - t0);
      break;
    }
    ReportAttempt(x, attempt,
                  status >= 500                    ? OutcomeKind::kServerError
                  : status == 429                  ? OutcomeKind::kRateLimited
                  : status == 401 || status == 403 ? OutcomeKind::kAuthError
                  : status >= 400                  ? OutcomeKind::kClientError
                                                   : OutcomeKind::kSuccess,
                  status, 0, Clock::now() - t0);
    if (!scan.empty() && status >= 200 && status < 300) {
      int64_t chars = 0;
      Usage usage = UsageFromBody(scan, &chars);
      if (usage.present) {
        record.prompt_tokens = usage.prompt_tokens;
        record.completion_tokens = usage.completion_tokens;
        record.cached_tokens = usage.cached_tokens;
      }
    }
    record.client_disconnected = x.writer.client_gone();
    x.Finish(record.client_disconnected ? kClientClosedRequest : status);
    co_return;
  }
  co_await x.SendError(
      last_kind == OutcomeKind::kTimeout ? ErrorCode::kUpstreamTimeout : ErrorCode::kUpstreamError,
      last_kind == OutcomeKind::kTimeout ? "The upstream provider did not answer in time."
      : last_status > 0
          ? "The upstream provider answered with HTTP " + std::to_string(last_status) + "."
          : "Could not reach the upstream provider.");
  record.upstream_key_id = 0;
  x.Finish(x.writer.status());
}

}  // namespace tollgate::edge
