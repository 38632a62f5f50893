#include "src/provider.h"

#include <chrono>

#include "src/anthropic.h"

namespace tollgate::edge {
namespace {

using Json = nlohmann::json;

// Anthropic's API version this translation is written against (anthropic.h).
constexpr std::string_view kAnthropicVersion = "2023-06-01";

std::string Dump(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

int64_t NowSeconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The Messages request for an Anthropic attempt: the chat body translated, with the completion
// budget the edge decided as max_tokens (Anthropic requires one).
std::variant<Json, RequestError> MessagesBody(const ParsedRequest& request,
                                              const UpstreamAttempt& attempt) {
  if (request.endpoint != Endpoint::kChatCompletions) {
    return RequestError{
        "This model is served by an Anthropic upstream, which supports only "
        "/v1/chat/completions.",
        "model"};
  }
  std::string model = attempt.upstream_model.empty() ? request.model : attempt.upstream_model;
  auto translated =
      anthropic::ToMessagesRequest(Json(request.body), std::move(model), request.max_tokens);
  if (auto* error = std::get_if<anthropic::TranslationError>(&translated))
    return RequestError{std::move(error->message), std::move(error->param)};
  return std::move(std::get<Json>(translated));
}

}  // namespace

std::optional<RequestError> Unsupported(const ParsedRequest& request,
                                        const UpstreamAttempt& attempt) {
  if (attempt.provider != ProviderKind::kAnthropic) return std::nullopt;
  auto body = MessagesBody(request, attempt);
  if (auto* error = std::get_if<RequestError>(&body)) return std::move(*error);
  return std::nullopt;
}

std::variant<UpstreamRequest, RequestError, BadBaseUrl> BuildUpstreamRequest(
    ParsedRequest& request, const UpstreamAttempt& attempt) {
  const bool anthropic = attempt.provider == ProviderKind::kAnthropic;
  auto url = ParseUpstreamUrl(
      attempt.base_url, anthropic ? "/v1/messages"
                                  : UpstreamSuffix(attempt.provider, request.endpoint,
                                                   attempt.upstream_model, attempt.api_version));
  if (!url) return BadBaseUrl{};
  UpstreamRequest upstream{std::move(*url), "POST", {}, {}};
  upstream.headers.emplace_back("content-type", "application/json");
  upstream.headers.emplace_back("accept",
                                request.stream ? "text/event-stream" : "application/json");
  switch (attempt.provider) {
    case ProviderKind::kAnthropic: {
      auto body = MessagesBody(request, attempt);
      if (auto* error = std::get_if<RequestError>(&body)) return std::move(*error);
      upstream.headers.emplace_back("x-api-key", attempt.api_key);
      upstream.headers.emplace_back("anthropic-version", std::string(kAnthropicVersion));
      upstream.body = Dump(std::get<Json>(body));
      return upstream;
    }
    case ProviderKind::kAzureOpenAi:
      upstream.headers.emplace_back("api-key", attempt.api_key);
      break;
    case ProviderKind::kOpenAi:
    case ProviderKind::kOpenAiCompatible:
      upstream.headers.emplace_back("authorization", "Bearer " + attempt.api_key);
      break;
  }
  upstream.body = RenderUpstreamBody(request, attempt.upstream_model, attempt.provider);
  return upstream;
}

AnswerStatus AdaptWholeAnswer(const ParsedRequest& request, const UpstreamAttempt& attempt,
                              int status, std::string& body) {
  if (attempt.provider != ProviderKind::kAnthropic) return {status, status};
  Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (status >= 200 && status < 300) {
    if (!json.is_object()) return {502, 502};  // not an answer: another key may give one
    body = Dump(anthropic::ToChatCompletion(json, request.model, NowSeconds()).body);
    return {status, status};
  }
  anthropic::UpstreamError error =
      anthropic::MessagesErrorToOpenAi(status, json.is_discarded() ? Json() : json);
  body = Dump(error.body);
  return {error.client_status, error.outcome_status};
}

ClientStream::ClientStream(const ParsedRequest& request, const UpstreamAttempt& attempt,
                           SealResponseId seal)
    : relay_(request.client_wants_usage) {
  if (request.endpoint == Endpoint::kResponses)
    responses_ = std::make_unique<ResponsesStream>(std::move(seal));
  // The translator always writes the usage chunk, as an OpenAI upstream is always asked for it;
  // relay_ then drops it again unless the client asked for it.
  if (attempt.provider == ProviderKind::kAnthropic)
    translator_ = std::make_unique<anthropic::StreamTranslator>(request.model, true, NowSeconds());
}

ClientStream::~ClientStream() = default;

void ClientStream::Feed(std::string_view bytes, std::vector<SseEvent>& out) {
  if (responses_) {
    events_.clear();
    parser_.Feed(bytes, events_);
    for (auto& event : events_) {
      responses_->OnEvent(event);
      out.push_back(std::move(event));
    }
    return;
  }
  if (!translator_) {
    events_.clear();
    parser_.Feed(bytes, events_);
    for (auto& event : events_)
      if (relay_.OnEvent(event) == StreamRelay::Action::kForward) out.push_back(std::move(event));
    return;
  }
  for (std::string& chunk : translator_->Feed(bytes)) {
    // Each chunk is one whole event: "data: {...}\n\n".
    SseEvent event;
    event.data = chunk.substr(6, chunk.size() - 8);
    event.has_data = true;
    event.raw = std::move(chunk);
    if (relay_.OnEvent(event) == StreamRelay::Action::kForward) out.push_back(std::move(event));
  }
}

std::optional<ClientStream::Error> ClientStream::error() const {
  if (!translator_ || !translator_->error()) return std::nullopt;
  const anthropic::StreamError& e = *translator_->error();
  Json body{{"error", {{"type", e.type}, {"message", e.message}}}};
  anthropic::UpstreamError error = anthropic::MessagesErrorToOpenAi(500, body);
  return Error{error.client_status, Dump(error.body)};
}

}  // namespace tollgate::edge
