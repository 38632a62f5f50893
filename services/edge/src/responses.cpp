// The Responses API. POST /v1/responses is inference like chat (completions.cpp's admission, the
// attempts, the relay) with the ids it answers sealed (responses_format.h) and
// `previous_response_id` pinning the attempt to the upstream key that holds that response. The
// follow-ups (GET, DELETE, cancel, input_items on /v1/responses/{id}) open the sealed id: only
// its user may use it, and the call goes to its upstream key alone; they are admitted by request
// count and recorded at zero tokens. GET ?stream=true (a background response's events, from
// starting_after) is relayed event by event. A background response is billed once, by whichever
// of these sees it finished (BillFinishedBackground).
#include "src/responses.h"

#include <boost/asio/this_coro.hpp>

#include "src/async.h"
#include "src/attempts.h"
#include "src/edge_metrics.h"
#include "src/endpoints.h"
#include "src/exchange.h"
#include "tollgate/log.h"

namespace tollgate::edge {
namespace {

namespace asio = boost::asio;
using asio::awaitable;
using Clock = std::chrono::steady_clock;

ResponseIdSealer Sealer(const Exchange& x) {
  return ResponseIdSealer(x.edge.options.response_id_secret);
}

// OpenAI's answer for an id it does not have; also for an id of another user's (or a forged
// one), so nobody learns that it exists.
awaitable<void> SendUnknown(Exchange& x, std::string_view id, std::string_view param = {}) {
  co_await x.SendError(ErrorCode::kNotFound,
                       std::string(param.empty() ? "Response" : "Previous response") +
                           " with id '" + std::string(id.substr(0, 256)) + "' not found.",
                       param);
}

// previous_response_id: the new response continues one that lives in one upstream account, so
// the plan is that key's attempt alone (no failover: other accounts cannot see it).
awaitable<bool> PinToPrevious(Exchange& x, const Principal& who, ParsedRequest& request,
                              RouteResult& plan) {
  auto previous = request.body.find("previous_response_id");
  if (previous == request.body.end() || previous->is_null()) co_return true;
  if (!previous->is_string()) {
    co_await x.SendError(ErrorCode::kInvalidRequest,
                         "Invalid type for 'previous_response_id': expected a string.",
                         "previous_response_id");
    co_return false;
  }
  const std::string id = previous->get<std::string>();
  auto binding = Sealer(x).Open(id);
  if (!binding || binding->user_id != who.user_id) {
    co_await SendUnknown(x, id, "previous_response_id");
    co_return false;
  }
  Eventual<RouteResult> keyed(co_await asio::this_coro::executor);
  x.edge.clients.router.KeyAttempt(plan.model, binding->upstream_key_id, keyed.Setter());
  RouteResult pinned = co_await keyed.Wait();
  if (pinned.failure && pinned.failure->code == ErrorCode::kNotFound) {
    co_await x.SendError(ErrorCode::kInvalidRequest,
                         "The previous response is held by an upstream account that does not "
                         "serve model '" +
                             request.model.substr(0, 256) + "' (any more).",
                         "previous_response_id");
    co_return false;
  }
  if (pinned.failure) {
    co_await x.SendDenied(*pinned.failure);
    co_return false;
  }
  plan.attempts = std::move(pinned.attempts);
  *previous = binding->upstream_id;
  request.BodyChanged();  // the upstream gets its own id, not the client's bytes
  co_return true;
}

// The query string as the client sent it ("" or "?...").
std::string_view Query(const HttpRequest& request) {
  const size_t q = request.target.find('?');
  return q == std::string::npos ? std::string_view() : std::string_view(request.target).substr(q);
}

// True when the query asks for `name`=true (a streamed retrieve).
bool QueryFlag(std::string_view query, std::string_view name) {
  for (size_t pos = query.empty() ? 0 : 1; pos < query.size();) {
    size_t amp = query.find('&', pos);
    std::string_view param = query.substr(pos, amp - pos);
    if (param.starts_with(name) && param.size() > name.size() && param[name.size()] == '=') {
      std::string_view value = param.substr(name.size() + 1);
      return value == "true" || value == "1";
    }
    pos = amp == std::string_view::npos ? query.size() : amp + 1;
  }
  return false;
}

OutcomeKind KindOf(int status) {
  if (status == 429) return OutcomeKind::kRateLimited;
  if (status == 401 || status == 403) return OutcomeKind::kAuthError;
  if (status >= 500) return OutcomeKind::kServerError;
  if (status >= 400) return OutcomeKind::kClientError;
  return OutcomeKind::kSuccess;
}

void ReplaceAll(std::string& body, std::string_view from, std::string_view to) {
  if (from.size() < 4) return;
  for (size_t at = body.find(from); at != std::string::npos; at = body.find(from, at + to.size()))
    body.replace(at, from.size(), to);
}

// GET /v1/responses/{id}?stream=true: the upstream's events as they arrive, ids sealed, ended
// by an error event when the upstream breaks off (too late for anything else). The record stays
// at zero tokens; a background response that reaches its final event is billed once.
awaitable<void> RelayEvents(Exchange& x, const UpstreamAttempt& attempt, UpstreamCall& call,
                            Clock::time_point t0, CancelSlot& slot) {
  auto headers = x.CommonHeaders();
  headers.emplace_back("content-type", "text/event-stream; charset=utf-8");
  headers.emplace_back("cache-control", "no-cache");
  headers.emplace_back("x-accel-buffering", "no");
  bool client_ok = co_await x.writer.BeginStream(200, std::move(headers));
  SseParser parser;
  ResponsesStream stream(ResponseSealFor(x, attempt));
  std::vector<SseEvent> events;
  std::string data;
  UpstreamStatus st = UpstreamStatus::kOk;
  while (client_ok && !slot.client_gone) {
    data.clear();
    st = co_await call.Read(data);
    if (st != UpstreamStatus::kOk) break;
    events.clear();
    parser.Feed(data, events);
    for (auto& event : events) {
      stream.OnEvent(event);
      x.Capture(event.raw);
      client_ok = co_await x.writer.WriteChunk(event.raw);  // one write per event, flushed
      if (!client_ok) break;
    }
    if (call.finished()) break;
  }
  OutcomeKind kind = OutcomeKind::kSuccess;
  if (!client_ok || slot.client_gone || st == UpstreamStatus::kCancelled) {
    call.Cancel();
    x.record.client_disconnected = true;
    x.edge.metrics->CountCancelled();
  } else if (st != UpstreamStatus::kOk) {
    kind = KindForFailure(st);
    LogAttempt(x, attempt, kind, 200, call.error_detail());
    ErrorCode code =
        st == UpstreamStatus::kTimeout ? ErrorCode::kUpstreamTimeout : ErrorCode::kUpstreamError;
    std::string event = ResponsesErrorEvent(Describe(code).code,
                                            st == UpstreamStatus::kTimeout
                                                ? "The upstream provider stopped sending."
                                                : "The upstream provider broke off the answer.",
                                            stream.last_sequence_number() + 1);
    if (co_await x.writer.WriteChunk(event)) co_await x.writer.EndStream();
  } else {
    co_await x.writer.EndStream();
  }
  ReportAttempt(x, attempt, kind, 200, 0, Clock::now() - t0);
  if (stream.finished_background())
    BillFinishedBackground(x, attempt, *stream.finished_background());
  x.record.streamed = true;
  x.Finish(200);
}

// One follow-up call on a stored response: `method` on {base}/responses/{upstream id}{suffix}.
awaitable<void> FollowUp(Exchange& x, std::string method, std::string_view suffix) {
  std::optional<Principal> who = co_await x.Authenticate();
  if (!who) co_return;
  const std::string id(x.params.Get("response_id"));
  auto binding = Sealer(x).Open(id);
  if (!binding || binding->user_id != who->user_id) {
    co_await SendUnknown(x, id);
    co_return;
  }
  const std::string_view query = Query(x.request);
  const bool streamed = method == "GET" && suffix.empty() && QueryFlag(query, "stream");
  auto executor = co_await asio::this_coro::executor;
  Eventual<RouteResult> keyed(executor);
  x.edge.clients.router.KeyAttempt(binding->model, binding->upstream_key_id, keyed.Setter());
  RouteResult plan = co_await keyed.Wait();
  if (plan.failure && plan.failure->code == ErrorCode::kNotFound) {
    co_await SendUnknown(x, id);  // its upstream key is gone: so is the response, for us
    co_return;
  }
  if (plan.failure) {
    co_await x.SendDenied(*plan.failure);
    co_return;
  }
  const UpstreamAttempt& attempt = plan.attempts.front();
  if (attempt.provider == ProviderKind::kAnthropic) {  // cannot have made it; say what we know
    co_await SendUnknown(x, id);
    co_return;
  }

  // Admitted by request count: no tokens are generated, none are reserved or held.
  Eventual<AdmitResult> admit(executor);
  x.edge.clients.quota.Admit({x.request.request_id, *who, binding->model, 0, x.request.client_ip},
                             admit.Setter());
  AdmitResult admitted = co_await admit.Wait();
  if (admitted.failure) {
    co_await x.SendDenied(*admitted.failure);
    co_return;
  }
  auto& record = x.record;
  record.request_id = x.request.request_id;
  record.principal = *who;
  record.reservation_id = admitted.reservation_id;
  record.billing_id = AcceptOrMakeRequestId("");
  record.client_ip = x.request.client_ip;
  record.model = binding->model;
  record.upstream_model = attempt.upstream_model;
  record.upstream_key_id = attempt.upstream_key_id;
  record.attempts = 1;
  x.keep_bodies = who->store_bodies;

  const std::string path =
      (attempt.provider == ProviderKind::kAzureOpenAi ? std::string("/openai/v1/responses/")
                                                      : std::string("/responses/")) +
      PercentEncode(binding->upstream_id) + std::string(suffix) + std::string(query);
  auto url = ParseUpstreamUrl(attempt.base_url, path);
  if (!url) {
    co_await x.SendError(ErrorCode::kUpstreamError, "The upstream provider is misconfigured.");
    x.Finish(502);
    co_return;
  }
  UpstreamRequest upstream{std::move(*url),
                           method,
                           {{"accept", streamed ? "text/event-stream" : "application/json"}},
                           {}};
  if (attempt.provider == ProviderKind::kAzureOpenAi)
    upstream.headers.emplace_back("api-key", attempt.api_key);
  else
    upstream.headers.emplace_back("authorization", "Bearer " + attempt.api_key);
  if (method == "POST") {
    upstream.headers.emplace_back("content-type", "application/json");
    upstream.body = "{}";
  }
  x.answering_key = attempt.api_key;

  std::shared_ptr<UpstreamCall> call =
      x.edge.pool.NewCall(std::move(upstream), x.edge.options.upstream);
  const auto t0 = Clock::now();
  auto slot = std::make_shared<CancelSlot>();
  slot->current = call;
  // A client that hangs up while the upstream has not answered cancels the call.
  x.writer.WatchDisconnect([slot] {
    slot->client_gone = true;
    if (auto current = slot->current.lock()) current->Cancel();
  });
  UpstreamStatus st = co_await call->Start();
  // An event stream is relayed as it comes; anything else (an error, a server that answered
  // whole) is read whole.
  if (st == UpstreamStatus::kOk && streamed && call->status() >= 200 && call->status() < 300 &&
      call->Header("content-type").starts_with("text/event-stream")) {
    co_await RelayEvents(x, attempt, *call, t0, *slot);
    co_return;
  }
  std::string body;
  if (st == UpstreamStatus::kOk) st = co_await call->ReadAll(body);
  x.upstream_wait += Clock::now() - t0;
  if (slot->client_gone || st == UpstreamStatus::kCancelled) {
    // The client left: nobody to answer, and no fault of the upstream key's.
    x.record.client_disconnected = true;
    x.edge.metrics->CountCancelled();
    x.Finish(kClientClosedRequest);
    co_return;
  }
  if (st != UpstreamStatus::kOk) {
    OutcomeKind kind = KindForFailure(st);
    LogAttempt(x, attempt, kind, 0, call->error_detail());
    ReportAttempt(x, attempt, kind, 0, 0, Clock::now() - t0);
    ErrorCode code =
        st == UpstreamStatus::kTimeout ? ErrorCode::kUpstreamTimeout : ErrorCode::kUpstreamError;
    co_await x.SendError(code, st == UpstreamStatus::kTimeout
                                   ? "The upstream provider did not answer in time."
                                   : "Could not reach the upstream provider.");
    x.Finish(Describe(code).http);
    co_return;
  }
  const int status = call->status();
  ReportAttempt(x, attempt, KindOf(status), status, 0, Clock::now() - t0);
  if (status >= 200 && status < 300) {
    if (auto finished = FinishedBackgroundBody(body); finished && method != "DELETE")
      BillFinishedBackground(x, attempt, *finished);
    body = SealResponseBody(body, ResponseSealFor(x, attempt));
  } else {
    // The upstream's own error, with its credential scrubbed and its id as the client knows it.
    ReplaceAll(body, attempt.api_key, "***");
    ReplaceAll(body, binding->upstream_id, id);
  }
  x.Capture(body);
  std::string content_type = call->Header("content-type");
  auto headers = x.CommonHeaders();
  headers.emplace_back("content-type", content_type.empty() ? "application/json" : content_type);
  // A 5xx or 429 of the upstream keeps its status: there is no other account to try.
  bool delivered = co_await x.writer.Send(status, std::move(headers), std::move(body));
  record.client_disconnected = !delivered;
  x.Finish(status);
}

}  // namespace

SealResponseId ResponseSealFor(const Exchange& x, const UpstreamAttempt& attempt) {
  return [sealer = Sealer(x), key = attempt.upstream_key_id, user = x.record.principal.user_id,
          model = x.record.model](std::string_view upstream_id) {
    return sealer.Seal({key, user, model, std::string(upstream_id)}).value_or("");
  };
}

void BillFinishedBackground(Exchange& x, const UpstreamAttempt& attempt,
                            const FinishedBackground& finished) {
  UsageRecord r;
  r.request_id = x.request.request_id;  // the request that saw it finish (logs)
  r.billing_id = BackgroundBillingId(attempt.upstream_key_id, finished.upstream_id);
  r.principal = x.record.principal;
  r.model = x.record.model;
  r.upstream_model = attempt.upstream_model;
  r.upstream_key_id = attempt.upstream_key_id;
  r.attempts = 1;
  r.prompt_tokens = finished.usage.prompt_tokens;
  r.completion_tokens = finished.usage.completion_tokens;
  r.cached_tokens = finished.usage.cached_tokens;
  r.service_tier =
      finished.usage.service_tier.empty() ? x.record.service_tier : finished.usage.service_tier;
  r.endpoint_kind = "responses";
  r.http_status = 200;
  r.client_ip = x.request.client_ip;
  log::Debug("edge", "background response billed",
             {{"request_id", x.request.request_id}, {"billing_id", r.billing_id}});
  x.edge.clients.billing.Record(std::move(r));
}

awaitable<void> CreateResponse(Exchange& x) {
  co_await Infer(x, Endpoint::kResponses, PinToPrevious);
}

awaitable<void> RetrieveResponse(Exchange& x) { co_await FollowUp(x, "GET", ""); }

awaitable<void> DeleteResponse(Exchange& x) { co_await FollowUp(x, "DELETE", ""); }

awaitable<void> CancelResponse(Exchange& x) { co_await FollowUp(x, "POST", "/cancel"); }

awaitable<void> ListResponseInputItems(Exchange& x) { co_await FollowUp(x, "GET", "/input_items"); }

}  // namespace tollgate::edge
