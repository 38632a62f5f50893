#include "src/exchange.h"

#include <boost/asio/this_coro.hpp>

#include <vector>

#include "src/anthropic_front.h"
#include "src/async.h"
#include "src/edge_metrics.h"
#include "tollgate/redact.h"

namespace tollgate::edge {

namespace asio = boost::asio;
using asio::awaitable;

EdgeContext::EdgeContext(asio::io_context& io, const ProxyOptions& options, EdgeClients clients,
                         std::shared_ptr<EdgeMetrics> metrics)
    : options(options),
      field_policy(options.fields),
      clients(clients),
      metrics(std::move(metrics)),
      pool(io, options.pool) {}

Exchange::Exchange(EdgeContext& edge, HttpRequest& request, ResponseWriter& writer,
                   ErrorDialect dialect, RouteParams params)
    : edge(edge),
      request(request),
      writer(writer),
      dialect(dialect),
      params(std::move(params)),
      start(request.received) {}

std::string_view ApiKey(const HttpRequest& request) {
  std::string_view auth = request.Header("authorization");
  if (auth.size() > 7 && (auth.substr(0, 7) == "Bearer " || auth.substr(0, 7) == "bearer "))
    return auth.substr(7);
  if (std::string_view key = request.Header("api-key"); !key.empty()) return key;
  return request.Header("x-api-key");
}

awaitable<std::optional<Principal>> Exchange::Authenticate() {
  Eventual<AuthResult> auth(co_await asio::this_coro::executor);
  edge.clients.auth.Authenticate(std::string(ApiKey(request)), request.client_ip, auth.Setter());
  AuthResult who = co_await auth.Wait();
  if (who.failure) {
    co_await SendError(who.failure->code, who.failure->message);
    co_return std::nullopt;
  }
  co_return std::move(who.principal);
}

HttpHeaders Exchange::CommonHeaders() {
  auto overhead = Clock::now() - start - upstream_wait;
  if (!overhead_observed) {
    overhead_observed = true;
    edge.metrics->ObserveOverhead(overhead);
  }
  HttpHeaders headers;
  // Room for what callers add (content-type; a stream's three), so the list never regrows.
  headers.reserve(2 + rate_limit_headers.size() + 3);
  headers.emplace_back("x-request-id", request.request_id);
  headers.emplace_back("x-tollgate-overhead-ms", FormatMillis(overhead));
  headers.insert(headers.end(), rate_limit_headers.begin(), rate_limit_headers.end());
  return headers;
}

namespace {

// Azure OpenAI's own errors carry Azure's codes: "401" for a bad key, "429" for limits,
// "DeploymentNotFound", "BadRequest" for a malformed request (as for a missing api-version);
// `type` and `param` as OpenAI's, which Azure passes on for the model's own validation errors.
std::string AzureErrorBody(ErrorCode code, std::string_view message, std::string_view param) {
  const ErrorInfo& info = Describe(code);
  std::string azure_code;
  switch (code) {
    case ErrorCode::kInvalidRequest:
    case ErrorCode::kRequestTooLarge:
      azure_code = "BadRequest";
      break;
    case ErrorCode::kPermissionDenied:
      azure_code = "PermissionDenied";
      break;
    case ErrorCode::kModelNotFound:
      azure_code = "DeploymentNotFound";
      break;
    case ErrorCode::kInvalidApiKey:
    case ErrorCode::kNotFound:
    case ErrorCode::kRateLimited:
      azure_code = std::to_string(info.http);
      break;
    default:
      azure_code = std::string(info.code);
  }
  nlohmann::json error = {{"code", azure_code},
                          {"message", message},
                          {"param", param.empty() ? nlohmann::json() : nlohmann::json(param)},
                          {"type", info.type}};
  return nlohmann::json{{"error", error}}.dump(-1, ' ', false,
                                               nlohmann::json::error_handler_t::replace);
}

}  // namespace

std::string DialectErrorBody(ErrorDialect dialect, ErrorCode code, std::string_view message,
                             std::string_view param) {
  switch (dialect) {
    case ErrorDialect::kOpenAi:
      return OpenAiErrorBody(code, message, param);
    case ErrorDialect::kAnthropic:
      return anthropic::ErrorBody(code, message);  // Anthropic's errors name no param
    case ErrorDialect::kAzure:
      return AzureErrorBody(code, message, param);
  }
  return OpenAiErrorBody(code, message, param);  // not reached: every dialect has its case
}

int DialectErrorStatus(ErrorDialect dialect, ErrorCode code) {
  switch (dialect) {
    case ErrorDialect::kOpenAi:
    case ErrorDialect::kAzure:
      return Describe(code).http;
    case ErrorDialect::kAnthropic:
      return anthropic::ErrorStatus(code);
  }
  return Describe(code).http;
}

std::string Exchange::ErrorBody(ErrorCode code, std::string_view message,
                                std::string_view param) const {
  return DialectErrorBody(dialect, code, message, param);
}

int Exchange::ErrorStatus(ErrorCode code) const { return DialectErrorStatus(dialect, code); }

awaitable<void> Exchange::SendError(ErrorCode code, std::string_view message,
                                    std::string_view param, HttpHeaders extra) {
  auto headers = CommonHeaders();
  headers.emplace_back("content-type", "application/json");
  for (auto& h : extra) headers.push_back(std::move(h));
  std::string body = ErrorBody(code, message, param);
  Capture(body);
  co_await writer.Send(ErrorStatus(code), std::move(headers), std::move(body));
}

awaitable<void> Exchange::SendDenied(const Failure& denied) {
  HttpHeaders extra;
  if (denied.retry_after_ms > 0)
    extra.emplace_back("retry-after", std::to_string((denied.retry_after_ms + 999) / 1000));
  co_await SendError(denied.code, denied.message,
                     denied.code == ErrorCode::kModelNotFound ? "model" : "", std::move(extra));
}

awaitable<void> Exchange::SendJson(std::string body) {
  auto headers = CommonHeaders();
  headers.emplace_back("content-type", "application/json");
  co_await writer.Send(200, std::move(headers), std::move(body));
}

awaitable<void> Exchange::SendNoRoute(const RouteMatch& match) {
  if (dialect == ErrorDialect::kAnthropic &&
      match.result == RouteMatch::Result::kMethodNotAllowed) {
    // Anthropic answers a known path under another method with a real 405.
    std::string allow;
    for (const auto& m : match.allowed_methods) allow += (allow.empty() ? "" : ", ") + m;
    auto headers = CommonHeaders();
    headers.emplace_back("content-type", "application/json");
    headers.emplace_back("allow", allow);
    std::string body =
        anthropic::ErrorBody(ErrorCode::kInvalidRequest,
                             "Method Not Allowed (" + request.method + " " + request.path + ")");
    Capture(body);
    co_await writer.Send(405, std::move(headers), std::move(body));
    co_return;
  }
  // OpenAI answers an unknown path and a known path under another method alike: 404 "Invalid
  // URL". A dialect with a real 405 sends it here, with match.allowed_methods as Allow.
  if (dialect == ErrorDialect::kAzure) {  // Azure's answer to a path it does not serve
    co_await SendError(ErrorCode::kNotFound, "Resource not found");
    co_return;
  }
  co_await SendError(ErrorCode::kNotFound,
                     "Invalid URL (" + request.method + " " + request.path + ")");
}

void Exchange::Capture(std::string_view bytes) {
  if (!keep_bodies) return;
  const size_t max = edge.options.store_bodies_max_bytes;
  const size_t room = max + 256 > response_capture.size() ? max + 256 - response_capture.size() : 0;
  if (bytes.size() > room) response_overflow = true;
  response_capture.append(bytes.substr(0, room));
}

void Exchange::Finish(int status) {
  record.http_status = status;
  record.latency = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  edge.metrics->CountRecord(record.usage_estimated);
  if (keep_bodies) StoreBodies();
  // A request that failed before any token gives its reservation back; one that produced
  // tokens, or succeeded, is settled with its actual usage.
  bool no_tokens = record.prompt_tokens == 0 && record.completion_tokens == 0;
  if (status >= 400 && no_tokens && !record.reservation_id.empty())
    edge.clients.quota.Release(record.reservation_id);
  else
    edge.clients.quota.Settle(record);
  edge.clients.billing.Record(std::move(record));
}

// The request as the client sent it and the response as it got it, secrets redacted (the
// client's own key and the upstream key by value, other credentials by shape), then cut at
// edge.store_bodies_max_bytes on a character boundary.
void Exchange::StoreBodies() {
  const size_t max = edge.options.store_bodies_max_bytes;
  std::vector<std::string_view> exact = {ApiKey(request), answering_key};
  bool cut_request = request.body.size() > max + 256;
  bool cut_response = response_overflow;
  const std::string_view type = request.Header("content-type");
  std::string request_text =
      binary_request
          ? "[" + std::string(type.substr(0, std::min<size_t>(type.find(';'), 64))) + " body of " +
                std::to_string(request.body_stream != nullptr ? request.body_stream->bytes_read()
                                                              : request.body.size()) +
                " bytes, not stored]"
          : RedactSecrets(std::string_view(request.body).substr(0, max + 256), exact);
  if (binary_request) cut_request = false;
  std::string response;
  if (transcript) {
    response = RedactSecrets(transcript->Json(), exact);
    cut_response = transcript->overflowed();
  } else {
    response = RedactSecrets(response_capture, exact);
  }
  bool cut = false;
  record.request_body = SanitizeText(request_text, max, &cut);
  cut_request = cut_request || cut;
  record.response_body = SanitizeText(response, max, &cut);
  cut_response = cut_response || cut;
  record.bodies_truncated = cut_request || cut_response;
  edge.metrics->CountStoredBodies();
}

}  // namespace tollgate::edge
