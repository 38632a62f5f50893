#include "src/attempts.h"

#include <algorithm>

#include "src/edge_metrics.h"
#include "src/endpoint_kinds.h"
#include "src/exchange.h"
#include "src/provider.h"
#include "src/relay.h"
#include "tollgate/log.h"

namespace tollgate::edge {
namespace {

using boost::asio::awaitable;
using Clock = std::chrono::steady_clock;

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

// Every attempt failed: the last failure decides what the client sees.
awaitable<void> SendLastFailure(Exchange& x, OutcomeKind last_kind, int last_status,
                                int64_t last_retry_after_ms) {
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
      // Anthropic's API answers overload with 529 overloaded_error (an Anthropic key's 529 is
      // counted as 503): a plan that ran out on overloaded or unavailable keys says so to
      // Anthropic's clients, whose SDKs retry it. OpenAI's clients keep the 502.
      if (x.dialect == ErrorDialect::kAnthropic && last_kind == OutcomeKind::kServerError &&
          (last_status == 503 || last_status == 529)) {
        code = ErrorCode::kOverloaded;
        message = "The upstream providers for this model are overloaded. Retry later.";
      }
      break;
  }
  co_await x.SendError(code, message, {}, std::move(extra));
  x.record.upstream_key_id = 0;  // nothing was generated: the record settles at zero
  x.Finish(x.ErrorStatus(code));
}

}  // namespace

void ReportAttempt(Exchange& x, const UpstreamAttempt& attempt, OutcomeKind kind, int status,
                   int64_t retry_after_ms, Clock::duration latency) {
  x.edge.metrics->CountAttempt(kind);
  x.edge.clients.router.Report(
      {attempt.upstream_key_id, kind, status, retry_after_ms,
       std::chrono::duration_cast<std::chrono::milliseconds>(latency).count(),
       attempt.upstream_model});
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

ErrorCode BodyFailureCode(int status) {
  return status == 413   ? ErrorCode::kRequestTooLarge
         : status >= 500 ? ErrorCode::kInternal
                         : ErrorCode::kInvalidRequest;
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

awaitable<void> RunAttempts(Exchange& x, ParsedRequest& request, RouteResult& plan) {
  auto slot = std::make_shared<CancelSlot>();
  // While Tollgate waits on the upstream, a client that hangs up cancels the upstream call.
  x.writer.WatchDisconnect([slot] {
    slot->client_gone = true;
    if (auto call = slot->current.lock()) call->Cancel();
  });
  // Attempts whose provider cannot take the request (an Anthropic upstream for a legacy
  // completion, a chat field it has no equivalent for) leave the plan; when none is left the
  // client gets the first reason as a 400, before any upstream call.
  std::optional<RequestError> unsupported;
  std::erase_if(plan.attempts, [&](const UpstreamAttempt& attempt) {
    auto why = Unsupported(request, attempt);
    if (why && !unsupported) unsupported = std::move(why);
    return why.has_value();
  });
  if (plan.attempts.empty() && unsupported) {
    co_await x.SendError(ErrorCode::kInvalidRequest, unsupported->message, unsupported->param);
    x.record.upstream_key_id = 0;
    x.Finish(400);
    co_return;
  }
  const int32_t max_attempts = x.edge.options.max_attempts;
  const size_t n =
      std::min<size_t>(plan.attempts.size(), static_cast<size_t>(std::max(1, max_attempts)));
  OutcomeKind last_kind = OutcomeKind::kConnectError;
  int last_status = 0;
  int64_t last_retry_after_ms = 0;
  const UpstreamAttempt* sent_to = nullptr;  // the attempt the client left during, if sent
  for (size_t i = 0; i < n && !slot->client_gone; ++i) {
    const UpstreamAttempt& attempt = plan.attempts[i];
    // A streamed upload is sent again only while the edge holds all of it (upload.h).
    if (request.upload != nullptr && !request.upload->Replayable()) break;
    x.record.attempts = static_cast<int32_t>(i + 1);
    x.record.upstream_model = attempt.upstream_model;
    auto built = BuildUpstreamRequest(request, attempt);
    auto* upstream = std::get_if<UpstreamRequest>(&built);
    if (!upstream) {  // Unsupported() already removed the attempts it would refuse
      log::Write(log::Level::kError, "edge", "upstream base_url is not an http(s) URL",
                 {{"upstream_key_id", attempt.upstream_key_id}}, x.request.request_id);
      ReportAttempt(x, attempt, OutcomeKind::kConnectError, 0, 0, {});
      last_kind = OutcomeKind::kConnectError;
      continue;
    }

    const BodyStream* sent_body = upstream->body_stream;
    std::shared_ptr<UpstreamCall> call =
        x.edge.pool.NewCall(std::move(*upstream), x.edge.options.upstream);
    slot->current = call;
    const auto t0 = Clock::now();
    UpstreamStatus st = co_await call->Start();
    if (st == UpstreamStatus::kCancelled || slot->client_gone) {
      x.upstream_wait += Clock::now() - t0;
      x.edge.metrics->CountCancelled();
      if (call->request_sent()) sent_to = &attempt;
      break;
    }
    if (st == UpstreamStatus::kClientBodyFailed && sent_body != nullptr) {
      // The client's streamed body failed (it left or stalled, or sent a malformed, refused or
      // oversized form): nothing to hold against the upstream, which got an unfinished request.
      x.upstream_wait += Clock::now() - t0;
      const auto& failure = sent_body->failure();
      x.record.upstream_key_id = 0;
      if (!failure || failure->status == 0) {
        x.record.client_disconnected = true;
        x.Finish(kClientClosedRequest);
        co_return;
      }
      co_await x.SendError(BodyFailureCode(failure->status), failure->message);
      x.Finish(failure->status);
      co_return;
    }
    if (st != UpstreamStatus::kOk) {
      x.upstream_wait += Clock::now() - t0;
      last_kind = KindForFailure(st);
      last_status = 0;
      LogAttempt(x, attempt, last_kind, 0, call->error_detail());
      ReportAttempt(x, attempt, last_kind, 0, 0, Clock::now() - t0);
      continue;
    }
    int status = call->status();
    if (status >= 200 && status < 300 && request.stream &&
        IsEventStream(call->Header("content-type"))) {
      x.upstream_wait += Clock::now() - t0;  // the first upstream byte is here
      x.record.upstream_key_id = attempt.upstream_key_id;
      co_await RelayStream(x, request, attempt, *call, t0, *slot);
      co_return;
    }
    if (status >= 200 && status < 300 && KindOf(request.endpoint).binary_answer &&
        !IsEventStream(call->Header("content-type")) &&
        !call->Header("content-type").starts_with("application/json")) {
      x.upstream_wait += Clock::now() - t0;  // audio: relayed as it arrives, never buffered
      x.record.upstream_key_id = attempt.upstream_key_id;
      co_await RelayBytes(x, request, attempt, *call, t0, *slot);
      co_return;
    }
    // Everything else is buffered: nothing has reached the client yet, so failover is safe.
    std::string body;
    st = co_await call->ReadAll(body);
    x.upstream_wait += Clock::now() - t0;
    // A complete answer is delivered (or, if the client left, charged) as it is.
    if (st == UpstreamStatus::kCancelled || (st != UpstreamStatus::kOk && slot->client_gone)) {
      x.edge.metrics->CountCancelled();
      sent_to = &attempt;
      break;
    }
    // In the client's format from here on (provider.h); `counted` is what failover goes by.
    int counted = status;
    if (st == UpstreamStatus::kOk) {
      AnswerStatus adapted = AdaptWholeAnswer(request, attempt, status, body);
      status = adapted.client;
      counted = adapted.outcome;
    }
    OutcomeKind kind = KindForStatus(counted);
    if (st != UpstreamStatus::kOk &&
        (kind == OutcomeKind::kSuccess || kind == OutcomeKind::kClientError)) {
      // An answer we cannot deliver whole counts as the upstream's failure.
      kind = KindForFailure(st);
      LogAttempt(x, attempt, kind, status, call->error_detail());
      ReportAttempt(x, attempt, kind, status, 0, Clock::now() - t0);
      last_kind = kind;
      last_status = status;
      continue;
    }
    if (kind == OutcomeKind::kSuccess || kind == OutcomeKind::kClientError) {
      co_await RelayWhole(x, request, attempt, *call, status, kind, std::move(body), t0);
      co_return;
    }
    last_kind = kind;
    last_status = counted;
    last_retry_after_ms = kind == OutcomeKind::kRateLimited ? RetryAfterMs(*call) : 0;
    LogAttempt(x, attempt, kind, counted, "");
    ReportAttempt(x, attempt, kind, counted, last_retry_after_ms, Clock::now() - t0);
  }

  if (slot->client_gone) {
    // Left before any answer: the upstream call was cancelled and nothing was delivered. Once
    // the provider had the request it was working (and billing) for it: the prompt is charged
    // at the whole-body estimate, which bounds what the provider counts.
    x.record.client_disconnected = true;
    if (sent_to != nullptr) {
      x.record.upstream_key_id = sent_to->upstream_key_id;
      x.record.upstream_model = sent_to->upstream_model;
      // count_tokens generates nothing and is free.
      x.record.prompt_tokens =
          request.endpoint == Endpoint::kCountTokens ? 0 : request.prompt_estimate;
      x.record.completion_tokens = 0;
      x.record.usage_estimated = true;
      ApplyUnits(x.record, request, Usage{});  // the units it asked for (endpoint_kinds.h)
    }
    x.Finish(kClientClosedRequest);
    co_return;
  }
  co_await SendLastFailure(x, last_kind, last_status, last_retry_after_ms);
}

}  // namespace tollgate::edge
