#include "src/proxy.h"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/this_coro.hpp>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>

#include "src/async.h"
#include "src/openai.h"
#include "tollgate/auth/policy.h"
#include "tollgate/log.h"
#include "tollgate/redact.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using Clock = std::chrono::steady_clock;

// Not an HTTP status anyone sends: nginx's "client closed request", for records and metrics.
constexpr int kClientClosedRequest = 499;

struct Metrics {
  explicit Metrics(prometheus::Registry& registry) {
    auto& attempts_family = prometheus::BuildCounter()
                                .Name("tollgate_edge_upstream_attempts_total")
                                .Help(
                                    "Upstream attempts by outcome (as reported to the router, "
                                    "plus client_cancelled)")
                                .Register(registry);
    for (int k = 0; k <= static_cast<int>(OutcomeKind::kAuthError); ++k)
      attempts[k] = &attempts_family.Add({{"outcome", OutcomeName(static_cast<OutcomeKind>(k))}});
    cancelled = &attempts_family.Add({{"outcome", "client_cancelled"}});
    overhead = &prometheus::BuildHistogram()
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
    records_exact = &records_family.Add({{"estimated", "false"}});
    records_estimated = &records_family.Add({{"estimated", "true"}});
    bodies_stored = &prometheus::BuildCounter()
                         .Name("tollgate_edge_stored_bodies_total")
                         .Help("Requests whose bodies were kept (keys with store_bodies)")
                         .Register(registry)
                         .Add({});
  }
  std::array<prometheus::Counter*, static_cast<int>(OutcomeKind::kAuthError) + 1> attempts{};
  prometheus::Counter* cancelled = nullptr;
  prometheus::Histogram* overhead = nullptr;
  prometheus::Counter* records_exact = nullptr;
  prometheus::Counter* records_estimated = nullptr;
  prometheus::Counter* bodies_stored = nullptr;
};

// One request's bookkeeping: the clock for x-tollgate-overhead-ms and the usage record.
struct Exchange {
  HttpRequest& request;
  ResponseWriter& writer;
  Clock::time_point start;
  Clock::duration upstream_wait{0};  // connect + waiting for upstream answers
  bool overhead_observed = false;
  UsageRecord record;
  HttpHeaders rate_limit_headers;  // x-ratelimit-*, once the quota service answered
  // The key opted in to storing bodies: what the client got is kept (up to a bound) and goes,
  // redacted, with the usage record (Finish). `answering_key` is redacted from it too.
  bool keep_bodies = false;
  std::string response_capture;
  bool response_overflow = false;
  std::string answering_key;
  std::optional<StreamTranscript> transcript;  // a streamed answer, put back together
};

// Appends what the client received to the capture, up to `max` bytes (+ a margin, so a secret
// cut at the bound is still recognised and redacted before the final cut).
void Capture(Exchange& x, std::string_view bytes, size_t max) {
  if (!x.keep_bodies) return;
  const size_t room =
      max + 256 > x.response_capture.size() ? max + 256 - x.response_capture.size() : 0;
  if (bytes.size() > room) x.response_overflow = true;
  x.response_capture.append(bytes.substr(0, room));
}

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

// The first `name` parameter of the target's query, percent-decoded; "" when absent.
std::string QueryParam(std::string_view target, std::string_view name) {
  size_t q = target.find('?');
  if (q == std::string_view::npos) return {};
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    size_t amp = query.find('&');
    std::string_view pair = query.substr(0, amp);
    size_t eq = pair.find('=');
    if (pair.substr(0, eq) == name)
      return eq == std::string_view::npos ? std::string() : PercentDecode(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return {};
}

// A UTC day written YYYY-MM-DD (a real calendar date), or nothing.
std::optional<std::chrono::sys_days> ParseDay(std::string_view text) {
  if (text.size() != 10 || text[4] != '-' || text[7] != '-') return std::nullopt;
  int parts[3] = {0, 0, 0};
  const size_t at[3][2] = {{0, 4}, {5, 2}, {8, 2}};
  for (int i = 0; i < 3; ++i)
    for (size_t k = 0; k < at[i][1]; ++k) {
      char c = text[at[i][0] + k];
      if (c < '0' || c > '9') return std::nullopt;
      parts[i] = parts[i] * 10 + (c - '0');
    }
  std::chrono::year_month_day ymd{std::chrono::year(parts[0]),
                                  std::chrono::month(static_cast<unsigned>(parts[1])),
                                  std::chrono::day(static_cast<unsigned>(parts[2]))};
  if (!ymd.ok()) return std::nullopt;
  return std::chrono::sys_days(ymd);
}

std::string FormatDay(std::chrono::sys_days day) {
  std::chrono::year_month_day ymd(day);
  char text[16];
  std::snprintf(text, sizeof text, "%04d-%02u-%02u", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()));
  return text;
}

std::chrono::year_month_day Today() {
  return std::chrono::year_month_day(
      std::chrono::floor<std::chrono::days>(std::chrono::system_clock::now()));
}

// A range of UTC days (inclusive, YYYY-MM-DD) read from a query, or why not (a 400).
struct DayRange {
  std::string from;
  std::string to;
  std::string error;
  std::string param;
};

DayRange OwnUsageRange(std::string_view target) {
  DayRange r;
  std::string start = QueryParam(target, "start_date");
  std::string end = QueryParam(target, "end_date");
  if (std::string date = QueryParam(target, "date"); !date.empty()) start = end = date;
  const auto today = Today();
  if (end.empty()) end = FormatDay(std::chrono::sys_days(today));
  if (start.empty())
    start = FormatDay(std::chrono::sys_days(
        std::chrono::year_month_day(today.year(), today.month(), std::chrono::day(1))));
  auto from = ParseDay(start);
  auto to = ParseDay(end);
  if (!from) {
    r.error = "Invalid start_date '" + start.substr(0, 64) + "': use YYYY-MM-DD.";
    r.param = "start_date";
  } else if (!to) {
    r.error = "Invalid end_date '" + end.substr(0, 64) + "': use YYYY-MM-DD.";
    r.param = "end_date";
  } else if (*to < *from || (*to - *from).count() > 366) {
    r.error = "end_date must not be before start_date, and the range is at most 366 days.";
    r.param = "end_date";
  }
  r.from = start;
  r.to = end;
  return r;
}

// OpenAI's legacy form: both required, end_date exclusive, at most 100 days.
DayRange DashboardRange(std::string_view target) {
  DayRange r;
  std::string start = QueryParam(target, "start_date");
  std::string end = QueryParam(target, "end_date");
  auto from = ParseDay(start);
  auto to = ParseDay(end);
  if (!from) {
    r.error = "Invalid or missing start_date '" + start.substr(0, 64) + "': use YYYY-MM-DD.";
    r.param = "start_date";
  } else if (!to) {
    r.error = "Invalid or missing end_date '" + end.substr(0, 64) + "': use YYYY-MM-DD.";
    r.param = "end_date";
  } else if (*to <= *from || (*to - *from).count() > 100) {
    r.error = "end_date must be after start_date, and the range is at most 100 days.";
    r.param = "end_date";
  } else {
    r.from = FormatDay(*from);
    r.to = FormatDay(*to - std::chrono::days(1));
  }
  return r;
}

nlohmann::ordered_json UsageFigures(const UsageDay& d) {
  nlohmann::ordered_json j;
  j["requests"] = d.requests;
  j["prompt_tokens"] = d.prompt_tokens;
  j["completion_tokens"] = d.completion_tokens;
  j["cached_tokens"] = d.cached_tokens;
  j["cost_micros"] = d.cost_micros;
  j["cost"] = static_cast<double>(d.cost_micros) / 1e6;
  return j;
}

// {"object":"usage","start_date","end_date","total":{figures},"data":[{"date",figures}...]}
// where figures are requests, prompt/completion/cached tokens, cost_micros (integer micro-units
// of the operator's currency) and cost (the same as a decimal).
std::string OwnUsageBody(const UsageResult& usage, const DayRange& range) {
  nlohmann::ordered_json data = nlohmann::ordered_json::array();
  UsageDay total;
  for (const auto& d : usage.days) {
    nlohmann::ordered_json item;
    item["date"] = d.day;
    item.update(UsageFigures(d));
    data.push_back(std::move(item));
    total.requests += d.requests;
    total.prompt_tokens += d.prompt_tokens;
    total.completion_tokens += d.completion_tokens;
    total.cached_tokens += d.cached_tokens;
    total.cost_micros += d.cost_micros;
  }
  nlohmann::ordered_json body;
  body["object"] = "usage";
  body["start_date"] = range.from;
  body["end_date"] = range.to;
  body["total"] = UsageFigures(total);
  body["data"] = std::move(data);
  return body.dump();
}

// hard_limit_usd = top-ups + credit limit (all the user may spend), soft_limit_usd = top-ups,
// so hard_limit_usd - total_usage/100 (what front-ends show as remaining) is the balance plus the
// credit limit. access_until 0: no expiry. Plus balance_usd and available_usd (balance + credit
// limit - live holds). A user without an account sees zeros.
std::string SubscriptionBody(const AccountResult& account) {
  auto usd = [](int64_t micros) { return static_cast<double>(micros) / 1e6; };
  const int64_t hard = account.total_top_ups_micros + account.credit_limit_micros;
  nlohmann::ordered_json body;
  body["object"] = "billing_subscription";
  body["has_payment_method"] = true;
  body["hard_limit_usd"] = usd(hard);
  body["soft_limit_usd"] = usd(account.total_top_ups_micros);
  body["system_hard_limit_usd"] = usd(hard);
  body["access_until"] = 0;
  body["balance_usd"] = usd(account.balance_micros);
  body["available_usd"] = usd(account.available_micros);
  return body.dump();
}

// {"object":"list","total_usage":cents,"daily_costs":[{"timestamp":unix s of the UTC day,
// "line_items":[{"name":"usage","cost":cents}]}]}
std::string DashboardUsageBody(const UsageResult& usage) {
  auto cents = [](int64_t micros) { return static_cast<double>(micros) / 1e4; };
  nlohmann::ordered_json daily = nlohmann::ordered_json::array();
  int64_t total = 0;
  for (const auto& d : usage.days) {
    auto day = ParseDay(d.day);
    nlohmann::ordered_json item;
    item["name"] = "usage";
    item["cost"] = cents(d.cost_micros);
    nlohmann::ordered_json entry;
    entry["timestamp"] =
        day ? std::chrono::duration_cast<std::chrono::seconds>(day->time_since_epoch()).count() : 0;
    entry["line_items"] = nlohmann::ordered_json::array();
    entry["line_items"].push_back(std::move(item));
    daily.push_back(std::move(entry));
    total += d.cost_micros;
  }
  nlohmann::ordered_json body;
  body["object"] = "list";
  body["total_usage"] = cents(total);
  body["daily_costs"] = std::move(daily);
  return body.dump();
}

// Lets the client's disconnect reach whichever upstream call is current.
struct CancelSlot {
  bool client_gone = false;
  std::weak_ptr<UpstreamCall> current;
};

std::string_view ApiKey(const HttpRequest& request) {
  std::string_view auth = request.Header("authorization");
  if (auth.size() > 7 && (auth.substr(0, 7) == "Bearer " || auth.substr(0, 7) == "bearer "))
    return auth.substr(7);
  return request.Header("api-key");
}

bool IsEventStream(std::string_view content_type) {
  return content_type.substr(0, 17) == "text/event-stream";
}

// retry-after-ms (OpenAI) or retry-after in seconds; 0 when absent or an HTTP date.
int64_t RetryAfterMs(const UpstreamCall& call) {
  auto parse = [](const std::string& text) -> double {
    try {
      size_t used = 0;
      double v = std::stod(text, &used);
      return used == text.size() && v > 0 ? v : 0;
    } catch (const std::exception&) {
      return 0;
    }
  };
  if (double ms = parse(call.Header("retry-after-ms")); ms > 0) return static_cast<int64_t>(ms);
  return static_cast<int64_t>(parse(call.Header("retry-after")) * 1000);
}

OutcomeKind KindForStatus(int status) {
  if (status == 429) return OutcomeKind::kRateLimited;
  if (status == 401 || status == 403) return OutcomeKind::kAuthError;
  if (status >= 500) return OutcomeKind::kServerError;
  if (status >= 400) return OutcomeKind::kClientError;
  return OutcomeKind::kSuccess;
}

OutcomeKind KindForFailure(UpstreamStatus status) {
  switch (status) {
    case UpstreamStatus::kTimeout:
      return OutcomeKind::kTimeout;
    case UpstreamStatus::kConnectError:
      return OutcomeKind::kConnectError;
    default:
      return OutcomeKind::kServerError;  // a cut-off or malformed answer
  }
}

// An upstream error body can quote the credential it was sent ("Incorrect API key provided:
// sk-..."); it never reaches the client with it.
void Scrub(std::string& body, const std::string& secret) {
  if (secret.size() < 4) return;
  for (size_t at = body.find(secret); at != std::string::npos; at = body.find(secret, at))
    body.replace(at, secret.size(), "***");
}

class Proxy final : public RequestHandler {
 public:
  Proxy(asio::io_context& io, const ProxyOptions& options, EdgeClients clients,
        std::shared_ptr<Metrics> metrics)
      : options_(options),
        field_policy_(options.fields),
        clients_(clients),
        metrics_(std::move(metrics)),
        pool_(io, options.pool) {}

  awaitable<std::string> Handle(HttpRequest& request, ResponseWriter& writer) override {
    Exchange x{request, writer, request.received};
    const std::string& path = request.path;
    const bool post = request.method == "POST";
    const bool get = request.method == "GET";
    if (path == "/v1/chat/completions" && post) {
      co_await Complete(x, Endpoint::kChatCompletions);
      co_return "chat_completions";
    }
    if (path == "/v1/completions" && post) {
      co_await Complete(x, Endpoint::kCompletions);
      co_return "completions";
    }
    if (path == "/v1/embeddings" && post) {
      co_await Complete(x, Endpoint::kEmbeddings);
      co_return "embeddings";
    }
    if (path == "/v1/models" && get) {
      co_await Models(x, std::nullopt);
      co_return "models";
    }
    constexpr std::string_view kModelPrefix = "/v1/models/";
    if (get && path.size() > kModelPrefix.size() && path.starts_with(kModelPrefix)) {
      co_await Models(x, PercentDecode(std::string_view(path).substr(kModelPrefix.size())));
      co_return "model";
    }
    if (get && path == "/v1/usage") {
      co_await OwnUsage(x);
      co_return "usage";
    }
    // Chat front-ends call these with or without /v1 in their base URL.
    if (get && (path == "/dashboard/billing/subscription" ||
                path == "/v1/dashboard/billing/subscription")) {
      co_await BillingSubscription(x);
      co_return "billing_subscription";
    }
    if (get && (path == "/dashboard/billing/usage" || path == "/v1/dashboard/billing/usage")) {
      co_await BillingUsage(x);
      co_return "billing_usage";
    }
    co_await SendError(x, ErrorCode::kNotFound,
                       "Invalid URL (" + request.method + " " + request.path + ")");
    co_return "unknown";
  }

 private:
  HttpHeaders CommonHeaders(Exchange& x) {
    auto overhead = Clock::now() - x.start - x.upstream_wait;
    if (!x.overhead_observed) {
      x.overhead_observed = true;
      metrics_->overhead->Observe(std::chrono::duration<double>(overhead).count());
    }
    HttpHeaders headers = {{"x-request-id", x.request.request_id},
                           {"x-tollgate-overhead-ms", FormatMillis(overhead)}};
    headers.insert(headers.end(), x.rate_limit_headers.begin(), x.rate_limit_headers.end());
    return headers;
  }

  awaitable<void> SendError(Exchange& x, ErrorCode code, std::string_view message,
                            std::string_view param = {}, HttpHeaders extra = {}) {
    auto headers = CommonHeaders(x);
    headers.emplace_back("content-type", "application/json");
    for (auto& h : extra) headers.push_back(std::move(h));
    std::string body = OpenAiErrorBody(code, message, param);
    Capture(x, body, options_.store_bodies_max_bytes);
    co_await x.writer.Send(Describe(code).http, std::move(headers), std::move(body));
  }

  awaitable<void> SendDenied(Exchange& x, const Failure& denied) {
    HttpHeaders extra;
    if (denied.retry_after_ms > 0)
      extra.emplace_back("retry-after", std::to_string((denied.retry_after_ms + 999) / 1000));
    co_await SendError(x, denied.code, denied.message,
                       denied.code == ErrorCode::kModelNotFound ? "model" : "", std::move(extra));
  }

  void Report(const UpstreamAttempt& attempt, OutcomeKind kind, int status, int64_t retry_after_ms,
              Clock::duration latency) {
    metrics_->attempts[static_cast<int>(kind)]->Increment();
    clients_.router.Report({attempt.upstream_key_id, kind, status, retry_after_ms,
                            std::chrono::duration_cast<std::chrono::milliseconds>(latency).count(),
                            attempt.upstream_model});
  }

  void Finish(Exchange& x, int status) {
    x.record.http_status = status;
    x.record.latency =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - x.start);
    (x.record.usage_estimated ? metrics_->records_estimated : metrics_->records_exact)->Increment();
    if (x.keep_bodies) StoreBodies(x);
    // A request that failed before any token gives its reservation back; one that produced
    // tokens, or succeeded, is settled with its actual usage.
    bool no_tokens = x.record.prompt_tokens == 0 && x.record.completion_tokens == 0;
    if (status >= 400 && no_tokens && !x.record.reservation_id.empty())
      clients_.quota.Release(x.record.reservation_id);
    else
      clients_.quota.Settle(x.record);
    clients_.billing.Record(std::move(x.record));
  }

  // The request as the client sent it and the response as it got it, secrets redacted (the
  // client's own key and the upstream key by value, other credentials by shape), then cut at
  // edge.store_bodies_max_bytes on a character boundary.
  void StoreBodies(Exchange& x) {
    const size_t max = options_.store_bodies_max_bytes;
    std::vector<std::string_view> exact = {ApiKey(x.request), x.answering_key};
    bool cut_request = x.request.body.size() > max + 256;
    bool cut_response = x.response_overflow;
    std::string request =
        RedactSecrets(std::string_view(x.request.body).substr(0, max + 256), exact);
    std::string response;
    if (x.transcript) {
      response = RedactSecrets(x.transcript->Json(), exact);
      cut_response = x.transcript->overflowed();
    } else {
      response = RedactSecrets(x.response_capture, exact);
    }
    bool cut = false;
    x.record.request_body = SanitizeText(request, max, &cut);
    cut_request = cut_request || cut;
    x.record.response_body = SanitizeText(response, max, &cut);
    cut_response = cut_response || cut;
    x.record.bodies_truncated = cut_request || cut_response;
    metrics_->bodies_stored->Increment();
  }

  awaitable<AuthResult> Authenticate(Exchange& x) {
    Eventual<AuthResult> auth(co_await asio::this_coro::executor);
    clients_.auth.Authenticate(std::string(ApiKey(x.request)), x.request.client_ip, auth.Setter());
    co_return co_await auth.Wait();
  }

  awaitable<void> Complete(Exchange& x, Endpoint endpoint) {
    auto parsed = ParseRequest(endpoint, x.request.body);
    if (auto* error = std::get_if<RequestError>(&parsed)) {
      co_await SendError(x, ErrorCode::kInvalidRequest, error->message, error->param);
      co_return;
    }
    auto& request = std::get<ParsedRequest>(parsed);
    // What the operator lets a client ask of its upstream account (field_policy.h).
    FieldDecision fields = field_policy_.Apply(request.body);
    if (fields.refusal) {
      co_await SendError(x, ErrorCode::kInvalidRequest, fields.refusal->message,
                         fields.refusal->param);
      co_return;
    }
    auto executor = co_await asio::this_coro::executor;

    // Routing does not depend on who calls, so it starts at once, alongside authentication.
    // Quota and billing need the principal and the plan's canonical model (an alias has no price
    // or limits of its own): they start together once both are known.
    Eventual<RouteResult> route(executor);
    clients_.router.Route(request.model, options_.max_attempts, route.Setter());
    AuthResult who = co_await Authenticate(x);
    if (who.failure) {
      co_await SendError(x, who.failure->code, who.failure->message);
      co_return;
    }
    RouteResult plan = co_await route.Wait();
    // The key's model allowlist takes the name the client sent or the canonical name it routes
    // to, so an alias of an allowed model is allowed.
    if (!auth::ModelAllowed(who.principal.allowed_models, request.model) &&
        (plan.failure || !auth::ModelAllowed(who.principal.allowed_models, plan.model))) {
      co_await SendError(
          x, ErrorCode::kPermissionDenied,
          "This API key is not allowed to use the model '" + request.model.substr(0, 256) + "'.",
          "model");
      co_return;
    }
    if (!plan.failure && plan.attempts.empty())
      plan.failure = Failure{ErrorCode::kNoHealthyUpstream,
                             "No healthy upstream is available for model '" +
                                 request.model.substr(0, 256) + "'. Retry later."};
    if (plan.failure) {
      co_await SendDenied(x, *plan.failure);
      co_return;
    }
    // One worst case for quota and billing: the prompt's upper bound plus every completion token
    // the request may generate (the edge sends the budget upstream when the client set none).
    if (auto error = ApplyCompletionBudget(request, plan.limits, options_.default_max_tokens)) {
      co_await SendError(x, ErrorCode::kInvalidRequest, error->message, error->param);
      co_return;
    }
    Eventual<AdmitResult> admit(executor);
    clients_.quota.Admit({x.request.request_id, who.principal, plan.model, WorstCaseTokens(request),
                          x.request.client_ip},
                         admit.Setter());
    // Billing's idempotency key is an id the edge made itself, never the client's x-request-id.
    std::string billing_id = x.request.Header("x-request-id") == x.request.request_id
                                 ? AcceptOrMakeRequestId("")
                                 : x.request.request_id;
    Eventual<HoldResult> hold(executor);
    clients_.billing.Hold({billing_id, who.principal, plan.model, request.prompt_estimate,
                           WorstCaseCompletionTokens(request), fields.service_tier},
                          hold.Setter());
    AdmitResult admitted = co_await admit.Wait();
    x.rate_limit_headers = RateLimitHeaders(admitted);
    HoldResult held = co_await hold.Wait();
    if (admitted.failure || held.failure) {
      // Any denial gives back what the other check granted.
      if (!admitted.failure && !admitted.reservation_id.empty())
        clients_.quota.Release(admitted.reservation_id);
      if (!held.failure && !held.hold_id.empty()) clients_.billing.Release(held.hold_id);
      co_await SendDenied(x, admitted.failure ? *admitted.failure : *held.failure);
      co_return;
    }

    auto& record = x.record;
    record.request_id = x.request.request_id;
    record.principal = who.principal;
    record.reservation_id = admitted.reservation_id;
    record.hold_id = held.hold_id;
    record.billing_id = std::move(billing_id);
    record.client_ip = x.request.client_ip;
    record.model = plan.model.empty() ? request.model : plan.model;
    record.streamed = request.stream;
    record.service_tier = fields.service_tier;  // until the answer says which tier served it
    x.keep_bodies = who.principal.store_bodies;
    co_await RunAttempts(x, request, plan);
  }

  awaitable<void> RunAttempts(Exchange& x, ParsedRequest& request, RouteResult& plan) {
    auto slot = std::make_shared<CancelSlot>();
    // While Tollgate waits on the upstream, a client that hangs up cancels the upstream call.
    x.writer.WatchDisconnect([slot] {
      slot->client_gone = true;
      if (auto call = slot->current.lock()) call->Cancel();
    });
    const size_t n = std::min<size_t>(plan.attempts.size(),
                                      static_cast<size_t>(std::max(1, options_.max_attempts)));
    OutcomeKind last_kind = OutcomeKind::kConnectError;
    int last_status = 0;
    int64_t last_retry_after_ms = 0;
    const UpstreamAttempt* sent_to = nullptr;  // the attempt the client left during, if sent
    for (size_t i = 0; i < n && !slot->client_gone; ++i) {
      const UpstreamAttempt& attempt = plan.attempts[i];
      x.record.attempts = static_cast<int32_t>(i + 1);
      x.record.upstream_model = attempt.upstream_model;
      auto url = ParseUpstreamUrl(attempt.base_url,
                                  UpstreamSuffix(attempt.provider, request.endpoint,
                                                 attempt.upstream_model, attempt.api_version));
      if (!url) {
        log::Write(log::Level::kError, "edge", "upstream base_url is not an http(s) URL",
                   {{"upstream_key_id", attempt.upstream_key_id}}, x.request.request_id);
        Report(attempt, OutcomeKind::kConnectError, 0, 0, {});
        last_kind = OutcomeKind::kConnectError;
        continue;
      }
      UpstreamRequest upstream{std::move(*url), "POST", {}, {}};
      upstream.headers.emplace_back("content-type", "application/json");
      upstream.headers.emplace_back("accept",
                                    request.stream ? "text/event-stream" : "application/json");
      if (attempt.provider == ProviderKind::kAzureOpenAi) {
        upstream.headers.emplace_back("api-key", attempt.api_key);
      } else {
        upstream.headers.emplace_back("authorization", "Bearer " + attempt.api_key);
      }
      upstream.body = RenderUpstreamBody(request, attempt.upstream_model, attempt.provider);

      std::shared_ptr<UpstreamCall> call = pool_.NewCall(std::move(upstream), options_.upstream);
      slot->current = call;
      const auto t0 = Clock::now();
      UpstreamStatus st = co_await call->Start();
      if (st == UpstreamStatus::kCancelled || slot->client_gone) {
        x.upstream_wait += Clock::now() - t0;
        metrics_->cancelled->Increment();
        if (call->request_sent()) sent_to = &attempt;
        break;
      }
      if (st != UpstreamStatus::kOk) {
        x.upstream_wait += Clock::now() - t0;
        last_kind = KindForFailure(st);
        last_status = 0;
        LogAttempt(x, attempt, last_kind, 0, call->error_detail());
        Report(attempt, last_kind, 0, 0, Clock::now() - t0);
        continue;
      }
      const int status = call->status();
      if (status >= 200 && status < 300 && request.stream &&
          IsEventStream(call->Header("content-type"))) {
        x.upstream_wait += Clock::now() - t0;  // the first upstream byte is here
        x.record.upstream_key_id = attempt.upstream_key_id;
        co_await RelayStream(x, request, attempt, *call, t0, *slot);
        co_return;
      }
      // Everything else is buffered: nothing has reached the client yet, so failover is safe.
      std::string body;
      st = co_await call->ReadAll(body);
      x.upstream_wait += Clock::now() - t0;
      // A complete answer is delivered (or, if the client left, charged) as it is.
      if (st == UpstreamStatus::kCancelled || (st != UpstreamStatus::kOk && slot->client_gone)) {
        metrics_->cancelled->Increment();
        sent_to = &attempt;
        break;
      }
      OutcomeKind kind = KindForStatus(status);
      if (st != UpstreamStatus::kOk &&
          (kind == OutcomeKind::kSuccess || kind == OutcomeKind::kClientError)) {
        // An answer we cannot deliver whole counts as the upstream's failure.
        kind = KindForFailure(st);
        LogAttempt(x, attempt, kind, status, call->error_detail());
        Report(attempt, kind, status, 0, Clock::now() - t0);
        last_kind = kind;
        last_status = status;
        continue;
      }
      if (kind == OutcomeKind::kSuccess || kind == OutcomeKind::kClientError) {
        Report(attempt, kind, status, 0, Clock::now() - t0);
        x.record.upstream_key_id = attempt.upstream_key_id;
        if (kind == OutcomeKind::kSuccess) {
          int64_t completion_chars = 0;
          Usage usage = UsageFromBody(body, &completion_chars);
          SetUsage(x.record, request, usage, completion_chars);
        } else {
          Scrub(body, attempt.api_key);  // the upstream's own 4xx goes back as it was sent
        }
        x.answering_key = attempt.api_key;
        Capture(x, body, options_.store_bodies_max_bytes);
        std::string content_type = call->Header("content-type");
        auto headers = CommonHeaders(x);
        headers.emplace_back("content-type",
                             content_type.empty() ? "application/json" : content_type);
        bool delivered = co_await x.writer.Send(status, std::move(headers), std::move(body));
        x.record.client_disconnected = !delivered;
        Finish(x, status);
        co_return;
      }
      last_kind = kind;
      last_status = status;
      last_retry_after_ms = kind == OutcomeKind::kRateLimited ? RetryAfterMs(*call) : 0;
      LogAttempt(x, attempt, kind, status, "");
      Report(attempt, kind, status, last_retry_after_ms, Clock::now() - t0);
    }

    if (slot->client_gone) {
      // Left before any answer: the upstream call was cancelled and nothing was delivered. Once
      // the provider had the request it was working (and billing) for it: the prompt is charged
      // at the whole-body estimate, which bounds what the provider counts.
      x.record.client_disconnected = true;
      if (sent_to != nullptr) {
        x.record.upstream_key_id = sent_to->upstream_key_id;
        x.record.upstream_model = sent_to->upstream_model;
        x.record.prompt_tokens = request.prompt_estimate;
        x.record.completion_tokens = 0;
        x.record.usage_estimated = true;
      }
      Finish(x, kClientClosedRequest);
      co_return;
    }
    // Every attempt failed: the last failure decides what the client sees.
    ErrorCode code = ErrorCode::kUpstreamError;
    std::string message;
    HttpHeaders extra;
    switch (last_kind) {
      case OutcomeKind::kTimeout:
        code = ErrorCode::kUpstreamTimeout;
        message = "The upstream provider did not answer in time.";
        break;
      case OutcomeKind::kRateLimited:
        code = ErrorCode::kRateLimited;
        message = "The upstream providers for this model are rate limited. Retry later.";
        if (last_retry_after_ms > 0)
          extra.emplace_back("retry-after", std::to_string((last_retry_after_ms + 999) / 1000));
        break;
      case OutcomeKind::kConnectError:
        message = "Could not reach the upstream provider.";
        break;
      case OutcomeKind::kAuthError:
        message = "The upstream provider refused Tollgate's credentials.";
        break;
      default:
        message = last_status > 0 ? "The upstream provider answered with HTTP " +
                                        std::to_string(last_status) + "."
                                  : "The upstream provider sent a malformed answer.";
        break;
    }
    co_await SendError(x, code, message, {}, std::move(extra));
    x.record.upstream_key_id = 0;  // nothing was generated: the record settles at zero
    Finish(x, Describe(code).http);
  }

  awaitable<void> RelayStream(Exchange& x, ParsedRequest& request, const UpstreamAttempt& attempt,
                              UpstreamCall& call, Clock::time_point t0, CancelSlot& slot) {
    auto headers = CommonHeaders(x);
    headers.emplace_back("content-type", "text/event-stream; charset=utf-8");
    headers.emplace_back("cache-control", "no-cache");
    headers.emplace_back("x-accel-buffering", "no");
    bool client_ok = co_await x.writer.BeginStream(200, std::move(headers));
    x.answering_key = attempt.api_key;
    if (x.keep_bodies) x.transcript.emplace(options_.store_bodies_max_bytes);

    StreamRelay relay(request.client_wants_usage);
    SseParser parser;
    std::vector<SseEvent> events;
    std::string data;
    UpstreamStatus st = UpstreamStatus::kOk;
    while (client_ok && !slot.client_gone) {
      data.clear();
      st = co_await call.Read(data);
      if (st != UpstreamStatus::kOk) break;
      events.clear();
      parser.Feed(data, events);
      for (const auto& event : events) {
        if (relay.OnEvent(event) != StreamRelay::Action::kForward) continue;
        if (x.transcript) x.transcript->OnData(event.data);
        client_ok = co_await x.writer.WriteChunk(event.raw);  // one write per event, flushed
        if (!client_ok) break;
      }
      if (call.finished()) break;
    }

    const bool client_left = !client_ok || slot.client_gone || st == UpstreamStatus::kCancelled;
    OutcomeKind kind = OutcomeKind::kSuccess;
    if (client_left) {
      call.Cancel();  // close the upstream socket: the provider stops generating
      x.record.client_disconnected = true;
      metrics_->cancelled->Increment();
    } else if (st != UpstreamStatus::kOk) {
      // Too late to fail over: the client has bytes. End the stream with an error event, the
      // way OpenAI reports mid-stream failures.
      kind = KindForFailure(st);
      LogAttempt(x, attempt, kind, 200, call.error_detail());
      ErrorCode code =
          st == UpstreamStatus::kTimeout ? ErrorCode::kUpstreamTimeout : ErrorCode::kUpstreamError;
      std::string event =
          "data: " +
          OpenAiErrorBody(code, st == UpstreamStatus::kTimeout
                                    ? "The upstream provider stopped sending."
                                    : "The upstream provider broke off the answer.") +
          "\n\n";
      if (co_await x.writer.WriteChunk(event)) co_await x.writer.EndStream();
    } else {
      if (co_await x.writer.WriteChunk("data: [DONE]\n\n")) {
        co_await x.writer.EndStream();
      } else {
        x.record.client_disconnected = true;
      }
    }
    Report(attempt, kind, 200, 0, Clock::now() - t0);
    SetUsage(x.record, request, relay.usage(), relay.relayed_chars());
    Finish(x, 200);
  }

  awaitable<void> Models(Exchange& x, std::optional<std::string> id) {
    AuthResult who = co_await Authenticate(x);
    if (who.failure) {
      co_await SendError(x, who.failure->code, who.failure->message);
      co_return;
    }
    Eventual<ModelsResult> listed(co_await asio::this_coro::executor);
    clients_.router.ListModels(listed.Setter());
    ModelsResult result = co_await listed.Wait();
    if (result.failure) {
      co_await SendError(x, result.failure->code, result.failure->message);
      co_return;
    }
    // Only the models this key may use: the others do not exist as far as it is concerned.
    if (!who.principal.allowed_models.empty())
      std::erase_if(result.models, [&](const ModelInfo& m) {
        return !auth::ModelAllowed(who.principal.allowed_models, m.id);
      });
    auto model_json = [](const ModelInfo& m) {
      return nlohmann::ordered_json{
          {"id", m.id}, {"object", "model"}, {"created", m.created}, {"owned_by", m.owned_by}};
    };
    std::string body;
    if (id) {
      auto it = std::find_if(result.models.begin(), result.models.end(),
                             [&](const ModelInfo& m) { return m.id == *id; });
      if (it == result.models.end()) {
        co_await SendError(
            x, ErrorCode::kModelNotFound,
            "The model '" + *id + "' does not exist or you do not have access to it.", "model");
        co_return;
      }
      body = model_json(*it).dump();
    } else {
      nlohmann::ordered_json list{{"object", "list"}, {"data", nlohmann::ordered_json::array()}};
      for (const auto& m : result.models) list["data"].push_back(model_json(m));
      body = list.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
    }
    auto headers = CommonHeaders(x);
    headers.emplace_back("content-type", "application/json");
    co_await x.writer.Send(200, std::move(headers), std::move(body));
  }

  awaitable<void> SendJson(Exchange& x, std::string body) {
    auto headers = CommonHeaders(x);
    headers.emplace_back("content-type", "application/json");
    co_await x.writer.Send(200, std::move(headers), std::move(body));
  }

  // GET /v1/usage[?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD | ?date=YYYY-MM-DD]: the calling
  // key's own usage per UTC day, both days inclusive (default: this month so far); see
  // OwnUsageBody. (JSON is built outside the coroutines: GCC 12 mishandles braced temporaries
  // inside them.)
  awaitable<void> OwnUsage(Exchange& x) {
    DayRange range = OwnUsageRange(x.request.target);
    if (!range.error.empty()) {
      co_await SendError(x, ErrorCode::kInvalidRequest, range.error, range.param);
      co_return;
    }
    AuthResult who = co_await Authenticate(x);
    if (who.failure) {
      co_await SendError(x, who.failure->code, who.failure->message);
      co_return;
    }
    Eventual<UsageResult> got(co_await asio::this_coro::executor);
    clients_.billing.GetUsage(who.principal, /*key_only=*/true, range.from, range.to, got.Setter());
    UsageResult usage = co_await got.Wait();
    if (usage.failure) {
      co_await SendError(x, usage.failure->code, usage.failure->message);
      co_return;
    }
    co_await SendJson(x, OwnUsageBody(usage, range));
  }

  // GET /dashboard/billing/subscription, as OpenAI-compatible chat front-ends read it: the
  // caller's user's prepaid account (SubscriptionBody).
  awaitable<void> BillingSubscription(Exchange& x) {
    AuthResult who = co_await Authenticate(x);
    if (who.failure) {
      co_await SendError(x, who.failure->code, who.failure->message);
      co_return;
    }
    Eventual<AccountResult> got(co_await asio::this_coro::executor);
    clients_.billing.GetAccount(who.principal, got.Setter());
    AccountResult account = co_await got.Wait();
    if (account.failure) {
      co_await SendError(x, account.failure->code, account.failure->message);
      co_return;
    }
    co_await SendJson(x, SubscriptionBody(account));
  }

  // GET /dashboard/billing/usage?start_date=YYYY-MM-DD&end_date=YYYY-MM-DD (end exclusive, as
  // OpenAI's; at most 100 days): the caller's user's cost in cents, per UTC day.
  awaitable<void> BillingUsage(Exchange& x) {
    DayRange range = DashboardRange(x.request.target);
    if (!range.error.empty()) {
      co_await SendError(x, ErrorCode::kInvalidRequest, range.error, range.param);
      co_return;
    }
    AuthResult who = co_await Authenticate(x);
    if (who.failure) {
      co_await SendError(x, who.failure->code, who.failure->message);
      co_return;
    }
    Eventual<UsageResult> got(co_await asio::this_coro::executor);
    clients_.billing.GetUsage(who.principal, /*key_only=*/false, range.from, range.to,
                              got.Setter());
    UsageResult usage = co_await got.Wait();
    if (usage.failure) {
      co_await SendError(x, usage.failure->code, usage.failure->message);
      co_return;
    }
    co_await SendJson(x, DashboardUsageBody(usage));
  }

  // Usage from the upstream when it sent some; otherwise the estimate (documented in openai.h).
  static void SetUsage(UsageRecord& record, const ParsedRequest& request, const Usage& usage,
                       int64_t completion_chars) {
    if (usage.present) {
      record.prompt_tokens = usage.prompt_tokens;
      record.completion_tokens = usage.completion_tokens;
      record.usage_estimated = false;
    } else {
      record.prompt_tokens = request.prompt_estimate;
      record.completion_tokens = EstimateTokens(completion_chars);
      record.usage_estimated = true;
    }
    if (!usage.service_tier.empty()) record.service_tier = usage.service_tier;
  }

  void LogAttempt(const Exchange& x, const UpstreamAttempt& attempt, OutcomeKind kind, int status,
                  const std::string& detail) {
    log::Write(log::Level::kWarn, "edge", "upstream attempt failed",
               {{"upstream_key_id", attempt.upstream_key_id},
                {"outcome", OutcomeName(kind)},
                {"http_status", status},
                {"detail", detail}},
               x.request.request_id);
  }

  const ProxyOptions options_;
  const FieldPolicy field_policy_;
  EdgeClients clients_;
  std::shared_ptr<Metrics> metrics_;
  UpstreamPool pool_;
};

}  // namespace

HandlerFactory MakeProxyHandlers(ProxyOptions options, EdgeClients clients,
                                 prometheus::Registry& registry) {
  auto metrics = std::make_shared<Metrics>(registry);
  return [options, clients, metrics](asio::io_context& io) -> std::unique_ptr<RequestHandler> {
    return std::make_unique<Proxy>(io, options, clients, metrics);
  };
}

}  // namespace tollgate::edge
