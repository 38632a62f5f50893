#include "src/relay.h"

#include <vector>

#include "src/attempts.h"
#include "src/edge_metrics.h"
#include "src/endpoint_kinds.h"
#include "src/exchange.h"
#include "src/provider.h"
#include "src/responses.h"

namespace tollgate::edge {
namespace {

using Clock = std::chrono::steady_clock;

// Usage from the upstream when it sent some; otherwise the estimate (documented in openai.h).
void SetUsage(UsageRecord& record, const ParsedRequest& request, const Usage& usage,
              int64_t completion_chars) {
  if (usage.present) {
    record.prompt_tokens = usage.prompt_tokens;
    record.completion_tokens = usage.completion_tokens;
    record.cached_tokens = usage.cached_tokens;
    record.cache_write_tokens = usage.cache_write_tokens;
    record.usage_estimated = false;
  } else {
    record.prompt_tokens = request.prompt_estimate;
    record.completion_tokens = EstimateTokens(completion_chars);
    record.usage_estimated = true;
  }
  if (!usage.service_tier.empty()) record.service_tier = usage.service_tier;
  ApplyUnits(record, request, usage);  // images, audio, characters (endpoint_kinds.h)
}

bool IsTextual(std::string_view content_type) {
  return content_type.empty() || content_type.starts_with("application/json") ||
         content_type.starts_with("text/");
}

// An upstream error body can quote the credential it was sent ("Incorrect API key provided:
// sk-..."); it never reaches the client with it.
void Scrub(std::string& body, const std::string& secret) {
  if (secret.size() < 4) return;
  for (size_t at = body.find(secret); at != std::string::npos; at = body.find(secret, at))
    body.replace(at, secret.size(), "***");
}

}  // namespace

boost::asio::awaitable<void> RelayWhole(Exchange& x, const ParsedRequest& request,
                                        const UpstreamAttempt& attempt, UpstreamCall& call,
                                        int status, OutcomeKind kind, std::string body,
                                        Clock::time_point t0) {
  ReportAttempt(x, attempt, kind, status, 0, Clock::now() - t0);
  x.record.upstream_key_id = attempt.upstream_key_id;
  if (kind == OutcomeKind::kSuccess) {
    int64_t completion_chars = 0;
    Usage usage = KindOf(request.endpoint).whole(body, &completion_chars);
    SetUsage(x.record, request, usage, completion_chars);
    if (request.endpoint == Endpoint::kResponses)  // ids the client can come back with
      body = SealResponseBody(body, ResponseSealFor(x, attempt));
  } else {
    Scrub(body, attempt.api_key);  // the upstream's own 4xx goes back as it was sent
  }
  x.answering_key = attempt.api_key;
  std::string content_type = call.Header("content-type");
  if (IsTextual(content_type))
    x.Capture(body);
  else  // binary answers are not stored with the record, only what they were
    x.Capture("[" + content_type.substr(0, 64) + " body of " + std::to_string(body.size()) +
              " bytes, not stored]");
  auto headers = x.CommonHeaders();
  headers.emplace_back("content-type", content_type.empty() ? "application/json" : content_type);
  bool delivered = co_await x.writer.Send(status, std::move(headers), std::move(body));
  x.record.client_disconnected = !delivered;
  x.Finish(status);
}

boost::asio::awaitable<void> RelayStream(Exchange& x, ParsedRequest& request,
                                         const UpstreamAttempt& attempt, UpstreamCall& call,
                                         Clock::time_point t0, CancelSlot& slot) {
  auto headers = x.CommonHeaders();
  headers.emplace_back("content-type", "text/event-stream; charset=utf-8");
  headers.emplace_back("cache-control", "no-cache");
  headers.emplace_back("x-accel-buffering", "no");
  bool client_ok = co_await x.writer.BeginStream(200, std::move(headers));
  x.answering_key = attempt.api_key;
  // OpenAI chat chunks are put back together; other events (Anthropic's, a transcription's, the
  // Responses API's) are kept as they came (Capture).
  const bool responses = request.endpoint == Endpoint::kResponses;
  const bool chat_chunks = x.dialect != ErrorDialect::kAnthropic && !responses &&
                           KindOf(request.endpoint).event == nullptr;
  if (x.keep_bodies && chat_chunks) x.transcript.emplace(x.edge.options.store_bodies_max_bytes);

  // The upstream's events as the client's (provider.h); Responses ids sealed (responses.h).
  ClientStream stream(request, attempt, responses ? ResponseSealFor(x, attempt) : SealResponseId{});
  std::vector<SseEvent> events;
  std::string data;
  UpstreamStatus st = UpstreamStatus::kOk;
  while (client_ok && !slot.client_gone) {
    data.clear();
    st = co_await call.Read(data);
    if (st != UpstreamStatus::kOk) break;
    events.clear();
    stream.Feed(data, events);
    for (const auto& event : events) {
      if (x.transcript)
        x.transcript->OnData(event.data);
      else
        x.Capture(event.raw);
      client_ok = co_await x.writer.WriteChunk(event.raw);  // one write per event, flushed
      if (!client_ok) break;
    }
    if (call.finished() || stream.error()) break;
  }

  const bool client_left = !client_ok || slot.client_gone || st == UpstreamStatus::kCancelled;
  OutcomeKind kind = OutcomeKind::kSuccess;
  if (client_left) {
    call.Cancel();  // close the upstream socket: the provider stops generating
    x.record.client_disconnected = true;
    x.edge.metrics->CountCancelled();
  } else if (st != UpstreamStatus::kOk) {
    // Too late to fail over: the client has bytes. End the stream with an error event, the
    // way OpenAI reports mid-stream failures.
    kind = KindForFailure(st);
    LogAttempt(x, attempt, kind, 200, call.error_detail());
    ErrorCode code =
        st == UpstreamStatus::kTimeout ? ErrorCode::kUpstreamTimeout : ErrorCode::kUpstreamError;
    const char* message = st == UpstreamStatus::kTimeout
                              ? "The upstream provider stopped sending."
                              : "The upstream provider broke off the answer.";
    std::string event = responses
                            ? ResponsesErrorEvent(Describe(code).code, message,
                                                  stream.responses()->last_sequence_number() + 1)
                            : stream.ErrorEvent(x.ErrorBody(code, message));
    if (co_await x.writer.WriteChunk(event)) co_await x.writer.EndStream();
  } else if (auto error = stream.error()) {
    // The upstream reported an error inside the stream: the client's stream ends with it.
    call.Cancel();
    kind = error->status == 429 ? OutcomeKind::kRateLimited : OutcomeKind::kServerError;
    LogAttempt(x, attempt, kind, error->status, "error event in the stream");
    if (co_await x.writer.WriteChunk(error->event)) co_await x.writer.EndStream();
  } else {
    // OpenAI's [DONE], or what Anthropic's stream still lacks (never an empty chunk: that
    // would end the chunked body).
    std::string tail = stream.Finish();
    bool written = true;
    if (!tail.empty()) written = co_await x.writer.WriteChunk(tail);
    if (written) {
      co_await x.writer.EndStream();
    } else {
      x.record.client_disconnected = true;
    }
  }
  ReportAttempt(x, attempt, kind, 200, 0, Clock::now() - t0);
  SetUsage(x.record, request, stream.usage(), stream.relayed_chars());
  // A background response's tokens are billed apart, once (responses.h).
  if (responses && stream.responses()->finished_background())
    BillFinishedBackground(x, attempt, *stream.responses()->finished_background());
  x.Finish(200);
}

boost::asio::awaitable<void> RelayBytes(Exchange& x, const ParsedRequest& request,
                                        const UpstreamAttempt& attempt, UpstreamCall& call,
                                        Clock::time_point t0, CancelSlot& slot) {
  std::string content_type = call.Header("content-type");
  auto headers = x.CommonHeaders();
  headers.emplace_back("content-type",
                       content_type.empty() ? "application/octet-stream" : content_type);
  bool client_ok = co_await x.writer.BeginStream(200, std::move(headers));
  x.answering_key = attempt.api_key;
  std::string data;
  int64_t relayed = 0;
  UpstreamStatus st = UpstreamStatus::kOk;
  while (client_ok && !slot.client_gone) {
    data.clear();
    st = co_await call.Read(data);
    if (st != UpstreamStatus::kOk) break;
    if (!data.empty()) {
      relayed += static_cast<int64_t>(data.size());
      client_ok = co_await x.writer.WriteChunk(data);  // each piece as it arrives
    }
    if (call.finished()) break;
  }
  const bool client_left = !client_ok || slot.client_gone || st == UpstreamStatus::kCancelled;
  OutcomeKind kind = OutcomeKind::kSuccess;
  if (client_left) {
    call.Cancel();
    x.record.client_disconnected = true;
    x.edge.metrics->CountCancelled();
  } else if (st != UpstreamStatus::kOk) {
    // Too late to fail over or to send an error: the client has audio bytes, and binary audio
    // has no error event. The body ends short; the attempt counts as failed.
    kind = KindForFailure(st);
    LogAttempt(x, attempt, kind, 200, call.error_detail());
    co_await x.writer.EndStream();
  } else {
    co_await x.writer.EndStream();
  }
  ReportAttempt(x, attempt, kind, 200, 0, Clock::now() - t0);
  x.Capture("[" + content_type.substr(0, 64) + " body of " + std::to_string(relayed) +
            " bytes, not stored]");
  SetUsage(x.record, request, Usage{}, 0);
  x.Finish(200);
}

}  // namespace tollgate::edge
