#include "src/provider.h"

#include <chrono>

#include "src/anthropic.h"
#include "src/anthropic_front.h"
#include "src/endpoint_kinds.h"

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

// The chat request for an Anthropic client's Messages request to an OpenAI-type attempt.
std::variant<Json, RequestError> ChatBody(const ParsedRequest& request,
                                          const UpstreamAttempt& attempt) {
  if (request.endpoint == Endpoint::kCountTokens) {
    return RequestError{"count_tokens goes upstream only to an Anthropic provider.", "model"};
  }
  std::string model = attempt.upstream_model.empty() ? request.model : attempt.upstream_model;
  auto translated = anthropic::ToChatRequest(Json(request.body), std::move(model),
                                             attempt.provider != ProviderKind::kOpenAiCompatible);
  if (auto* error = std::get_if<anthropic::TranslationError>(&translated))
    return RequestError{std::move(error->message), std::move(error->param)};
  return std::move(std::get<Json>(translated));
}

// The request's own body (same dialect on both sides): only `model` replaced.
std::string PassThroughBody(ParsedRequest& request, const UpstreamAttempt& attempt) {
  request.body["model"] = attempt.upstream_model.empty() ? request.model : attempt.upstream_model;
  return request.body.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

Json StopSequences(const ParsedRequest& request) {
  auto it = request.body.find("stop_sequences");
  return it == request.body.end() ? Json() : Json(*it);
}

}  // namespace

ClientDialect DialectOf(Endpoint endpoint) {
  return endpoint == Endpoint::kMessages || endpoint == Endpoint::kCountTokens
             ? ClientDialect::kAnthropic
             : ClientDialect::kOpenAi;
}

std::optional<RequestError> Unsupported(const ParsedRequest& request,
                                        const UpstreamAttempt& attempt) {
  const bool anthropic_upstream = attempt.provider == ProviderKind::kAnthropic;
  std::variant<Json, RequestError> body;
  if (DialectOf(request.endpoint) == ClientDialect::kAnthropic) {
    if (anthropic_upstream) return std::nullopt;  // passed through
    body = ChatBody(request, attempt);
  } else {
    if (!anthropic_upstream) return std::nullopt;
    body = MessagesBody(request, attempt);
  }
  if (auto* error = std::get_if<RequestError>(&body)) return std::move(*error);
  return std::nullopt;
}

std::variant<UpstreamRequest, RequestError, BadBaseUrl> BuildUpstreamRequest(
    ParsedRequest& request, const UpstreamAttempt& attempt) {
  const bool anthropic = attempt.provider == ProviderKind::kAnthropic;
  const bool anthropic_client = DialectOf(request.endpoint) == ClientDialect::kAnthropic;
  // An Anthropic client's request goes to an OpenAI-type upstream as a chat completion.
  const Endpoint upstream_endpoint =
      anthropic_client && !anthropic ? Endpoint::kChatCompletions : request.endpoint;
  auto url = ParseUpstreamUrl(
      attempt.base_url, anthropic ? (request.endpoint == Endpoint::kCountTokens
                                         ? EndpointSuffix(Endpoint::kCountTokens)
                                         : EndpointSuffix(Endpoint::kMessages))
                                  : UpstreamSuffix(attempt.provider, upstream_endpoint,
                                                   attempt.upstream_model, attempt.api_version));
  if (!url) return BadBaseUrl{};
  UpstreamRequest upstream{std::move(*url), "POST", {}, {}, nullptr};
  // A multipart body goes with the client's own content type (its boundary).
  upstream.headers.emplace_back(
      "content-type", request.raw_body.empty() && request.upload == nullptr ? "application/json"
                                                                            : request.content_type);
  upstream.headers.emplace_back("accept", request.stream ? "text/event-stream"
                                          : KindOf(request.endpoint).binary_answer
                                              ? "*/*"
                                              : "application/json");
  switch (attempt.provider) {
    case ProviderKind::kAnthropic: {
      upstream.headers.emplace_back("x-api-key", attempt.api_key);
      if (anthropic_client) {
        bool versioned = false;
        for (const auto& [name, value] : request.forward_headers) {
          versioned = versioned || name == "anthropic-version";
          upstream.headers.emplace_back(name, value);
        }
        if (!versioned)
          upstream.headers.emplace_back("anthropic-version", std::string(kAnthropicVersion));
        upstream.body = PassThroughBody(request, attempt);
        return upstream;
      }
      auto body = MessagesBody(request, attempt);
      if (auto* error = std::get_if<RequestError>(&body)) return std::move(*error);
      upstream.headers.emplace_back("anthropic-version", std::string(kAnthropicVersion));
      upstream.body = Dump(std::get<Json>(body));
      return upstream;
    }
    case ProviderKind::kAzureOpenAi:
      upstream.headers.emplace_back("api-key", attempt.api_key);
      break;
    case ProviderKind::kOpenAi:
    case ProviderKind::kOpenAiCompatible:
      upstream.headers.push_back(*OpenAiPathCredential(attempt));
      break;
  }
  if (anthropic_client) {
    auto body = ChatBody(request, attempt);
    if (auto* error = std::get_if<RequestError>(&body)) return std::move(*error);
    upstream.body = Dump(std::get<Json>(body));
    return upstream;
  }
  if (request.upload != nullptr) {  // streamed from the client as it is sent (upload.h)
    upstream.body_stream = request.upload->Open(
        attempt.upstream_model.empty() ? request.model : attempt.upstream_model);
    return upstream;
  }
  upstream.body = RenderUpstreamBody(request, attempt.upstream_model, attempt.provider);
  return upstream;
}

std::optional<std::pair<std::string, std::string>> OpenAiPathCredential(
    const UpstreamAttempt& attempt) {
  switch (attempt.provider) {
    case ProviderKind::kOpenAi:
    case ProviderKind::kOpenAiCompatible:
      return std::make_pair(std::string("authorization"), "Bearer " + attempt.api_key);
    case ProviderKind::kAzureOpenAi:
    case ProviderKind::kAnthropic:
      return std::nullopt;
  }
  return std::nullopt;
}

AnswerStatus AdaptWholeAnswer(const ParsedRequest& request, const UpstreamAttempt& attempt,
                              int status, std::string& body) {
  const bool anthropic = attempt.provider == ProviderKind::kAnthropic;
  if (DialectOf(request.endpoint) == ClientDialect::kAnthropic) {
    // An overloaded Anthropic upstream (529) fails over like a 503; the client, if it comes to
    // that, sees Anthropic's own status.
    if (anthropic) return {status, status == 529 ? 503 : status};
    Json json = Json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (status >= 200 && status < 300) {
      if (!json.is_object()) return {502, 502};
      body = Dump(anthropic::ToMessage(json, request.model, StopSequences(request)));
      return {status, status};
    }
    anthropic::ClientError error =
        anthropic::ChatErrorToMessages(status, json.is_discarded() ? Json() : json);
    body = std::move(error.body);
    return {error.status, status};
  }
  if (!anthropic) return {status, status};
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
    : dialect_(DialectOf(request.endpoint)),
      relay_(request.client_wants_usage, KindOf(request.endpoint).event),
      done_sentinel_(KindOf(request.endpoint).done_sentinel) {
  if (request.endpoint == Endpoint::kResponses) {  // its events relayed as sent, ids sealed
    responses_ = std::make_unique<ResponsesStream>(std::move(seal));
    return;
  }
  const bool anthropic = attempt.provider == ProviderKind::kAnthropic;
  if (dialect_ == ClientDialect::kAnthropic) {
    if (anthropic)
      meter_ = std::make_unique<anthropic::MessagesStreamMeter>();
    else
      chunks_ = std::make_unique<anthropic::ChunkTranslator>(request.model, StopSequences(request));
    return;
  }
  // The translator always writes the usage chunk, as an OpenAI upstream is always asked for it;
  // relay_ then drops it again unless the client asked for it.
  if (anthropic)
    translator_ = std::make_unique<anthropic::StreamTranslator>(request.model, true, NowSeconds());
}

ClientStream::~ClientStream() = default;

Usage ClientStream::usage() const {
  if (responses_) return responses_->usage();
  if (meter_) return anthropic::ToEdgeUsage(meter_->usage());
  if (chunks_) return chunks_->usage();
  return relay_.usage();
}

int64_t ClientStream::relayed_chars() const {
  if (responses_) return responses_->relayed_chars();
  if (meter_) return meter_->relayed_chars();
  if (chunks_) return chunks_->relayed_chars();
  return relay_.relayed_chars();
}

std::string ClientStream::Finish() {
  // Kinds whose own last event ends the stream (transcript.text.done) get no [DONE].
  if (dialect_ == ClientDialect::kOpenAi) return done_sentinel_ ? "data: [DONE]\n\n" : "";
  return chunks_ ? chunks_->Finish() : "";
}

std::string ClientStream::ErrorEvent(std::string_view body) const {
  if (dialect_ == ClientDialect::kAnthropic) return anthropic::ErrorEvent(body);
  return "data: " + std::string(body) + "\n\n";
}

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
  if (meter_) {
    events_.clear();
    parser_.Feed(bytes, events_);
    for (auto& event : events_) {
      if (meter_->error()) break;
      if (meter_->OnEvent(event)) out.push_back(std::move(event));
    }
    return;
  }
  if (chunks_) {
    for (std::string& raw : chunks_->Feed(bytes)) {
      SseEvent event;
      event.raw = std::move(raw);
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
  if (meter_ && meter_->error()) {
    const std::string& type = meter_->error()->type;
    int status = type == "rate_limit_error" ? 429 : type == "overloaded_error" ? 503 : 500;
    return Error{status, meter_->error_event()};
  }
  if (chunks_ && chunks_->error()) {
    const anthropic::StreamError& e = *chunks_->error();
    int status = e.type == "rate_limit_error" ? 429 : 500;
    return Error{status,
                 anthropic::ErrorEvent(Dump(Json{
                     {"type", "error"}, {"error", {{"type", e.type}, {"message", e.message}}}}))};
  }
  if (!translator_ || !translator_->error()) return std::nullopt;
  const anthropic::StreamError& e = *translator_->error();
  Json body{{"error", {{"type", e.type}, {"message", e.message}}}};
  anthropic::UpstreamError error = anthropic::MessagesErrorToOpenAi(500, body);
  return Error{error.client_status, "data: " + Dump(error.body) + "\n\n"};
}

}  // namespace tollgate::edge
