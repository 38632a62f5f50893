// Anthropic's Messages API in front (issue #11): POST /v1/messages and
// /v1/messages/count_tokens for clients of @anthropic-ai/sdk, with the same keys (x-api-key or
// Authorization: Bearer), limits, routing, billing and failover as the OpenAI API: the body is
// parsed as Anthropic's (anthropic_front.h), admitted by the one admission step (admission.h),
// and sent through the one attempt loop and relay (attempts.h, relay.h); provider.cpp decides per
// attempt whether it passes through (an Anthropic upstream) or is translated (OpenAI-type).
// Errors on these routes are Anthropic's (the route's ErrorDialect::kAnthropic).
#include "src/admission.h"
#include "src/anthropic_front.h"
#include "src/attempts.h"
#include "src/endpoints.h"
#include "src/exchange.h"

namespace tollgate::edge {
namespace {

using boost::asio::awaitable;

// Parsed, with the Anthropic headers an Anthropic upstream gets as the client sent them; nullopt
// when the body was refused (the 400 has been sent).
awaitable<std::optional<ParsedRequest>> Parse(Exchange& x, Endpoint endpoint) {
  auto parsed = anthropic::ParseMessagesRequest(endpoint, x.request.body);
  if (auto* error = std::get_if<RequestError>(&parsed)) {
    co_await x.SendError(ErrorCode::kInvalidRequest, error->message, error->param);
    co_return std::nullopt;
  }
  auto& request = std::get<ParsedRequest>(parsed);
  for (const char* name : {"anthropic-version", "anthropic-beta"}) {
    std::string_view value = x.request.Header(name);
    if (!value.empty()) request.forward_headers.emplace_back(name, std::string(value));
  }
  co_return std::move(request);
}

}  // namespace

awaitable<void> Messages(Exchange& x) {
  std::optional<ParsedRequest> request = co_await Parse(x, Endpoint::kMessages);
  if (!request) co_return;
  std::optional<RouteResult> plan = co_await Admit(x, *request);
  if (plan) co_await RunAttempts(x, *request, *plan);
}

// Counted by quota as a request (its tokens reserved while it runs, settled at zero) and billed
// zero: nothing is generated. An Anthropic upstream counts exactly; for any other the edge
// answers its own upper-bound estimate (openai.h: the body's bytes / 3, images at kImageTokens),
// never below what the upstream will count.
awaitable<void> CountTokens(Exchange& x) {
  std::optional<ParsedRequest> request = co_await Parse(x, Endpoint::kCountTokens);
  if (!request) co_return;
  std::optional<RouteResult> plan = co_await Admit(x, *request);
  if (!plan) co_return;
  if (!plan->attempts.empty() && plan->attempts.front().provider == ProviderKind::kAnthropic) {
    co_await RunAttempts(x, *request, *plan);  // the other providers' attempts leave the plan
    co_return;
  }
  x.record.upstream_key_id = 0;
  x.record.prompt_tokens = 0;
  x.record.completion_tokens = 0;
  std::string body = nlohmann::json{{"input_tokens", request->prompt_estimate}}.dump();
  x.Capture(body);
  co_await x.SendJson(std::move(body));
  x.Finish(200);
}

awaitable<void> MessagesMethodNotAllowed(Exchange& x) {
  RouteMatch match;
  match.result = RouteMatch::Result::kMethodNotAllowed;
  match.allowed_methods = {"POST"};
  match.dialect = ErrorDialect::kAnthropic;
  co_await x.SendNoRoute(match);
}

awaitable<void> MessagesNotFound(Exchange& x) {
  RouteMatch match;
  match.result = RouteMatch::Result::kNotFound;
  match.dialect = ErrorDialect::kAnthropic;
  co_await x.SendNoRoute(match);
}

}  // namespace tollgate::edge
